"""``pip install -e .`` as ``make demo`` and ``make test`` run it: quiet (no setuptools banner), and the install imports
this tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_editable_install_is_quiet_and_imports_this_tree(tmp_path: Path) -> None:
    """setuptools' meta-path-finder strategy ends every editable install with an 'InformationOnly: Editable installation'
    banner that pip shows even under -q; pyproject.toml's package-dir makes it write a plain .pth file instead."""
    prefix = tmp_path / "prefix"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-index",
                        "--no-build-isolation", "--prefix", str(prefix), "-e", str(ROOT)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == "", p.stdout + p.stderr
    site = next(prefix.glob("lib/python3*/site-packages"))
    assert [x.read_text().strip() for x in site.glob("*.pth")] == [str(ROOT)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"import site; site.addsitedir({str(site)!r}); import skipgan_edge.schemas as s; print(s.__file__); s.load('record')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=True)
    assert out.stdout.strip() == str(ROOT / "skipgan_edge" / "schemas" / "__init__.py")
