"""What differs between the Python versions the toolkit runs on (3.10 on JetPack 6 / Ubuntu 22.04, 3.11+ elsewhere).

Only the standard library's TOML parser today: ``tomllib`` is 3.11+, and ``tomli`` (a runtime dependency on 3.10)
is the same parser under its original name.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by the Python 3.10 lane of make test
    import tomli as tomllib

__all__ = ["tomllib"]
