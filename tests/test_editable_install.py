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
    # --target, not --prefix: with --prefix pip finds this tree's editable install in the running venv and uninstalls it
    # first; --target ignores what the environment has installed and leaves it alone
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-index",
                        "--no-build-isolation", "--target", str(site), "-e", str(ROOT)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == "", p.stdout + p.stderr
    assert [x.read_text().strip() for x in site.glob("*.pth")] == [str(ROOT)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"import site; site.addsitedir({str(site)!r}); import skipgan_edge.schemas as s; print(s.__file__); s.load('record')"
    # -S: no site-packages of the running venv (whose own install of the project would answer first); only the .pth
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=True)
    assert out.stdout.strip() == str(ROOT / "skipgan_edge" / "schemas" / "__init__.py")
    # the running venv still has its own install of the project
    dist = subprocess.run([sys.executable, "-m", "pip", "show", "-q", "skipgan-edge"], capture_output=True, text=True, timeout=60)
    assert dist.returncode == 0, "the test uninstalled skipgan-edge from the venv running it"
