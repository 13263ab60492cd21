"""The runtime-only installs stream a model exported by the full install.

``make test`` builds three runtime venvs first, each holding the base dependencies and this tree, editable, and
nothing of the training stack:

- ``.venv-lean``: ``pip install skipgan-edge`` on this machine's Python (numpy 2).
- ``.venv-jp6``: JetPack 6's userland: Python 3.10 with JetPack 6's pins (numpy 1, OpenCV 4.8, onnxruntime 1.21;
  ``constraints/jetpack6.txt``).
- ``.venv-jetson``: ``make jetson``'s own recipe over the system Python with ``--system-site-packages``: Debian's
  OpenCV built with GStreamer on Debian's numpy 1, kept, not replaced (tests/test_jetson.py has its own checks).

These tests run the runtime verbs (run, eval, bench, threshold, serve, doctor) in each, as real subprocesses, on a
scorer exported in ``.venv``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, write_defect_video

RUNTIME_VENVS = {"lean": ".venv-lean", "jp6": ".venv-jp6", "jetson": ".venv-jetson"}
BUILT_BY = {"lean": "make lean-venv", "jp6": "make jp6-venv", "jetson": "make jetson-ci"}


@pytest.fixture(scope="module", params=sorted(RUNTIME_VENVS))
def lean(request: pytest.FixtureRequest) -> Path:
    name = request.param
    bin_ = ROOT / RUNTIME_VENVS[name] / "bin"
    assert (bin_ / "skipgan-edge").exists(), f"no {RUNTIME_VENVS[name]}: make test builds it ({BUILT_BY[name]}), then runs these tests"
    return bin_


def _lean(lean: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(lean / "skipgan-edge"), *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_lean_venv_has_no_training_stack(lean: Path) -> None:
    heavy = "('torch', 'matplotlib', 'skimage', 'scipy', 'onnx', 'safetensors', 'modelopt')"
    code = f"import importlib.util as u; print([m for m in {heavy} if u.find_spec(m)])"
    p = subprocess.run([str(lean / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"


def test_the_jetpack6_lane_is_python310_on_numpy1() -> None:
    py = ROOT / RUNTIME_VENVS["jp6"] / "bin" / "python"
    p = subprocess.run([str(py), "-c", "import sys, numpy, cv2, onnxruntime; print(sys.version_info[:2], numpy.__version__, cv2.__version__)"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = (ROOT / "constraints" / "jetpack6.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    assert p.stdout.split() == ["(3,", "10)", pins["numpy"], pins["opencv-python-headless"].rsplit(".", 1)[0]], p.stdout


def test_runtime_verbs_in_the_lean_install(lean: Path, demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "line.mp4", 40, {12, 30}, "mp4v")
    p = _lean(lean, "run", "--onnx", str(demo_onnx / "scorer.int8.onnx"), "--source", str(video), "--jsonl", "s.jsonl", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["scored"] == 40 and s["backend"] == "onnxruntime"
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 40
    p = _lean(lean, "eval", "--onnx", str(demo_onnx / "scorer.onnx"), "--data", str(synth_dir), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["auroc"] > 0.7 and rep["plots"] is None and "skipgan-edge[plots]" in rep["plots_skipped"]
    p = _lean(lean, "bench", "--onnx", str(demo_onnx / "scorer.onnx"), "--batch", "1,4", "--iterations", "5", "--warmup", "1",
              "--json", "b.json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    b = json.loads((tmp_path / "b.json").read_text())
    assert {r["batch"] for r in b["records"]} == {1, 4} and "skipgan-edge[export]" in b["flops_unavailable"]
    p = _lean(lean, "doctor", cwd=tmp_path)
    assert p.returncode == 0 and re.search(r"^torch +missing", p.stdout, re.M)
    # commissioning on the device: a dry run needs nothing more; rewriting the ONNX graph needs the onnx package,
    # and says so in one line before any frame is scored
    normal = write_defect_video(tmp_path / "site.mp4", 40, set(), "mp4v", seed=3)
    p = _lean(lean, "threshold", "--onnx", str(demo_onnx / "scorer.onnx"), "--normal", str(normal), "--fpr", "0.05", "--dry-run",
              "--json", cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["frames"] == 40, p.stderr
    p = _lean(lean, "threshold", "--onnx", str(demo_onnx / "scorer.onnx"), "--normal", str(normal), "--fpr", "0.05", cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "pip install 'skipgan-edge[onnx]'" in lines[0], p.stderr
    # a cell of two cameras on one shared model, to the end of their files
    b = write_defect_video(tmp_path / "b.avi", 24, {5}, "MJPG", seed=4)
    (tmp_path / "cell.toml").write_text(f"""
[serve]
batch = 4

[[camera]]
id = "a"
source = "{video}"
onnx = "{demo_onnx / 'scorer.onnx'}"
jsonl = "cell-a.jsonl"

[[camera]]
id = "b"
source = "{b}"
onnx = "{demo_onnx / 'scorer.onnx'}"
jsonl = "cell-b.jsonl"
""")
    p = _lean(lean, "serve", "--config", "cell.toml", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cams = json.loads(p.stdout)["cameras"]
    assert cams["a"]["scored"] == 40 and cams["b"]["scored"] == 24, cams
    assert len((tmp_path / "cell-b.jsonl").read_text().splitlines()) == 24


@pytest.mark.parametrize(("args", "extra"), [
    (["train", "--data", "d", "--out", "r"], "train"),
    (["export", "--model", "m", "--out", "e"], "export"),
    (["build", "--onnx", "x.onnx", "--dry-run"], "onnx"),  # the device needs onnx only, not the export stack
    (["run", "--model", "m", "--source", "v.mp4"], "train"),
    (["run", "--backend", "triton://127.0.0.1:8001/scorer", "--source", "v.mp4"], "triton"),
    (["triton-serve", "--onnx", "x.onnx"], "triton-serve"),
])
def test_a_verb_whose_extra_is_missing_says_which(tmp_path: Path, args: list[str], extra: str) -> None:
    lean = ROOT / RUNTIME_VENVS["lean"] / "bin"  # the install hints are the same in every runtime venv
    assert (lean / "skipgan-edge").exists(), "no .venv-lean: make test builds it (make lean-venv), then runs these tests"
    (tmp_path / "x.onnx").write_bytes(b"")
    p = _lean(lean, *args, cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and f"pip install 'skipgan-edge[{extra}]'" in lines[0], p.stderr
