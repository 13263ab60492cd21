"""Repair the two kinds of syntax errors in tensorrt-stubs 10.13 so that mypy can read them.

1. Parameters named ``in`` (a Python keyword), renamed ``in_``.
2. A parameter without a default after one with a default (``add_scale_nd``), given ``= ...``.

Usage: python tools/fix_trt_stubs.py STUBS_DIR  (the folder pip installed the stubs into).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def fix_def(line: str) -> str:
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not m:
        return line
    params = [p.strip() for p in m.group(2).split(",")] if m.group(2).strip() else []
    seen_default = False
    out = []
    for p in params:
        p = re.sub(r"^in:", "in_:", p)
        if "=" in p:
            seen_default = True
        elif seen_default and not p.startswith("*") and ":" in p:
            p += " = ..."
        out.append(p)
    return m.group(1) + ", ".join(out) + m.group(3)


def main(root: str) -> None:
    for pyi in Path(root).rglob("*.pyi"):
        text = pyi.read_text()
        fixed = "\n".join(fix_def(ln) if ln.lstrip().startswith("def ") else ln for ln in text.split("\n"))
        if fixed != text:
            pyi.write_text(fixed)


if __name__ == "__main__":
    main(sys.argv[1])
