"""``make test-gpu`` never passes vacuously, on every machine: where the GPU stack is missing it fails with one line
naming what; where it is there, its GPU tests run (and pass) rather than skip; and on any machine the target selects
the GPU tests of every file that has them, the backend parity test's TensorRT case included."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cli

from skipgan_edge.doctor import gpu_stack_missing

MISSING = gpu_stack_missing()


def test_doctor_require_gpu_names_what_is_missing() -> None:
    p = run_cli("doctor", "--require-gpu", check=False)
    if not MISSING:  # a GPU machine with TensorRT: the check passes
        assert p.returncode == 0 and "GPU stack ready" in p.stdout, p.stdout + p.stderr
        return
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "missing" in lines[0]
    assert ("TensorRT" in lines[0]) == any("TensorRT" in m for m in MISSING)


def _target_pytest() -> list[str]:
    """The pytest command ``make test-gpu`` runs (``make -n``: printed, not run), as an argv."""
    p = subprocess.run(["make", "-n", "-o", ".venv/.installed", "test-gpu"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (line,) = [ln for ln in p.stdout.splitlines() if " -m pytest " in ln]
    words = shlex.split(line)
    while "=" in words[0]:  # the environment assignments in front (SKIPGAN_REQUIRE_GPU=1)
        words.pop(0)
    assert words[1:3] == ["-m", "pytest"], line
    return [sys.executable, *(w for w in words[1:] if w != "-q")]


def test_make_test_gpu_selects_the_gpu_tests_of_every_file() -> None:
    cmd = [*_target_pytest(), "--collect-only", "-q", "-p", "no:cacheprovider"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    ids = {ln.split("[")[0] for ln in p.stdout.splitlines() if "::" in ln}
    files = {i.split("::")[0] for i in ids}
    assert "tests/test_runtime.py::test_backend_parity_tensorrt" in ids, sorted(ids)
    assert {"tests/test_cuda.py", "tests/test_tensorrt.py", "tests/test_runtime.py"} <= files, sorted(files)


def test_make_test_gpu_fails_where_tensorrt_is_missing(tmp_path: Path) -> None:
    """On every machine: with TensorRT hidden (a ``tensorrt`` package that fails to import, first on the path) the
    target stops at its first step with one line naming TensorRT, before any test could pass or skip."""
    hider = tmp_path / "tensorrt"
    hider.mkdir()
    (hider / "__init__.py").write_text("raise ImportError('tensorrt hidden by test_gpu_target')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(["make", "-o", ".venv/.installed", "test-gpu"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("make")]
    assert p.returncode != 0 and len(lines) == 1 and "missing" in lines[0] and "TensorRT" in lines[0], p.stderr
    assert "pytest" not in p.stdout, p.stdout


def test_gpu_tests_run_under_the_target_where_the_gpu_is_and_fail_where_not() -> None:
    env = {**os.environ, "SKIPGAN_REQUIRE_GPU": "1"}
    q = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-o", "addopts=",
                        str(ROOT / "tests" / "test_cuda.py")], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    last = q.stdout.splitlines()[-1]
    if not gpu_stack_missing(tensorrt=False):  # a GPU and cuda-python: the tests run and pass, none skipped
        assert q.returncode == 0 and "passed" in last and "skipped" not in last, q.stdout[-2000:]
        return
    assert q.returncode == 1 and "skipped" not in last and "error" in last, q.stdout[-2000:]
    assert "make test-gpu needs the GPU stack" in q.stdout
