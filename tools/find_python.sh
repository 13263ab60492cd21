#!/bin/sh
# find_python.sh X.Y: print the first interpreter that is Python X.Y (on PATH, then pyenv's, then the system's); nothing if none.
want="$1"
for p in $(command -v "python$want" 2>/dev/null) $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python"$want" 2>/dev/null | sort -V -r) "/usr/bin/python$want"; do
  if [ -x "$p" ] && "$p" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$want' else 1)" 2>/dev/null; then
    echo "$p"; exit 0
  fi
done
