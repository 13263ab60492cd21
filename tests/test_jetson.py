"""JetPack 6's userland, emulated on this machine: ``make jetson``'s recipe keeps the system's binaries, a ``gst:``
GStreamer pipeline is scored end to end through the system's OpenCV, and the Jetson requirement set resolves to
binary wheels for aarch64 / CPython 3.10.

``make test`` builds ``.venv-jetson`` with ``JETSON_PYTHON=/usr/bin/python3.11 JETSON_TENSORRT=optional make jetson``
(make jetson-ci) over Debian's ``python3-opencv``: OpenCV built with GStreamer, on Debian's numpy 1, the nearest
thing here to JetPack's OpenCV. The runtime verbs themselves run there in tests/test_lean_install.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

JETSON = ROOT / ".venv-jetson"
LEAN = ROOT / ".venv-lean"


@pytest.fixture(scope="module")
def jetson() -> Path:
    assert (JETSON / "bin" / "skipgan-edge").exists(), "no .venv-jetson: make test builds it (make jetson-ci), then runs these tests"
    return JETSON


def _py(venv: Path, code: str) -> str:
    p = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_the_jetson_venv_keeps_the_systems_opencv_and_numpy(jetson: Path) -> None:
    got = json.loads(_py(jetson, (
        "import json, sys, cv2, numpy, onnxruntime; print(json.dumps({"
        "'cv2': cv2.__file__, 'numpy': numpy.__file__, 'np': numpy.__version__, 'prefix': sys.prefix, "
        "'gst': [l for l in cv2.getBuildInformation().splitlines() if 'GStreamer' in l][0]}))"
    )))
    assert got["np"].startswith("1."), got  # Debian's numpy 1, never a second major
    assert not got["cv2"].startswith(got["prefix"]) and not got["numpy"].startswith(got["prefix"]), got  # the system's own
    assert "YES" in got["gst"], got
    # nothing of pip's OpenCV or numpy inside the venv
    site = _py(jetson, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    assert not [p.name for p in Path(site).iterdir() if p.name.lower().startswith(("numpy", "opencv", "cv2"))]
    # doctor says which OpenCV and numpy the runtime uses and whether GStreamer is there
    out = subprocess.run([str(jetson / "bin" / "skipgan-edge"), "doctor"], capture_output=True, text=True, timeout=120).stdout
    assert "Aravis (genicam://): API 0.8" in out, out
    assert "GStreamer: YES" in out and f"numpy {got['np']} (from the system" in out and "(from the system" in out.split("OpenCV", 1)[1], out


def test_make_jetson_again_installs_nothing(jetson: Path) -> None:
    p = subprocess.run([str(jetson / "bin" / "python"), str(ROOT / "tools" / "jetson_install.py")], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "JETSON_TENSORRT": "optional"})
    assert p.returncode == 0, p.stderr
    assert "installed: nothing" in p.stdout and "kept: numpy 1." in p.stdout and "(system)" in p.stdout, p.stdout


def test_make_jetson_without_tensorrt_is_one_line(tmp_path: Path) -> None:
    p = subprocess.run(["make", "-s", "--no-print-directory", "jetson", "JETSON_PYTHON=/usr/bin/python3.11", f"JETSON_VENV={tmp_path / 'v'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode != 0 and len(errors) == 1 and "python3-libnvinfer" in errors[0], p.stderr
    assert not (tmp_path / "v").exists()  # refused before anything is made
    # JetPack 5's Python is 3.8: an interpreter older than 3.10 is refused, naming JetPack 6.1 (pyenv's 3.9 stands in)
    old = subprocess.run([str(ROOT / "tools" / "find_python.sh"), "3.9"], capture_output=True, text=True).stdout.strip()
    assert old, "this check needs a Python 3.9 (pyenv's, as on CI) to stand in for JetPack 5's 3.8"
    p = subprocess.run(["make", "-s", "--no-print-directory", "jetson", f"JETSON_PYTHON={old}", "JETSON_TENSORRT=optional",
                        f"JETSON_VENV={tmp_path / 'v'}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode != 0 and len(errors) == 1 and "upgrade to JetPack 6.1" in errors[0], p.stderr
    p = subprocess.run(["make", "-s", "--no-print-directory", "jp6-venv", "JP6_PYTHON=", f"JP6_VENV={tmp_path / 'jp6'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stderr.strip().startswith("error: no Python 3.10 found") and len(p.stderr.strip().splitlines()) <= 2, p.stderr
    p = subprocess.run(["make", "-s", "--no-print-directory", "jp6-venv", "JP6_PYTHON=/usr/bin/python3.11", f"JP6_VENV={tmp_path / 'jp6'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stderr.strip().startswith("error: JP6_PYTHON=/usr/bin/python3.11 is not a Python 3.10"), p.stderr
    assert not (tmp_path / "jp6").exists()


def test_a_gstreamer_pipeline_is_scored_frame_by_frame(jetson: Path, demo_onnx: Path, tmp_path: Path) -> None:
    pipeline = "gst:videotestsrc num-buffers=37 pattern=ball ! video/x-raw,width=96,height=72,framerate=30/1 ! videoconvert ! appsink"
    p = subprocess.run([str(jetson / "bin" / "skipgan-edge"), "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--source", pipeline,
                        "--jsonl", "g.jsonl", "--batch", "4", "--json"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    recs = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert s["scored"] == 37 and s["dropped"] == 0 and not s["live"], s  # every buffer, in order
    assert s["headline_latency"] == "total"  # paced by the pipeline's clock: capture to result is the latency that counts
    assert [r["frame"] for r in recs] == list(range(37))
    assert len({round(r["score"], 6) for r in recs}) > 5  # a moving ball: the scores move too


def test_gst_errors_are_one_line(jetson: Path, demo_onnx: Path, tmp_path: Path) -> None:
    cases = [
        (jetson, "gst:videotestsrc ! videoconvert ! fakesink", "must end in '! appsink'"),
        (jetson, "gst:nosuchelement ! videoconvert ! appsink", 'GStreamer cannot parse \'nosuchelement ! videoconvert ! appsink\': '
                                                              'no element "nosuchelement"'),
        (jetson, f"gst:filesrc location={tmp_path / 'none.mp4'} ! decodebin ! videoconvert ! appsink", "GStreamer could not start"),
        (LEAN, "gst:videotestsrc ! videoconvert ! appsink", "needs OpenCV built with GStreamer"),  # pip's OpenCV has none
        (jetson, "gst:videotestsrc ! videoconvert ! appsink name=sink", "OpenCV finds its sink by a name that contains 'appsink'"),
        (jetson, "csi://x", "a CSI camera is csi://N"),
        (jetson, "csi://0", 'GStreamer cannot build the CSI pipeline (no element "nvarguscamerasrc")'),  # not a Jetson
    ]
    for venv, spec, msg in cases:
        p = subprocess.run([str(venv / "bin" / "skipgan-edge"), "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--source", spec],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        lines = [line for line in p.stderr.strip().splitlines() if "WARN" not in line]
        assert p.returncode == 2 and len(lines) == 1 and msg in lines[0], (spec, p.stderr)


def test_the_csi_pipeline_is_a_gstreamer_pipeline_the_system_parses(jetson: Path) -> None:
    """csi:// is a gst: pipeline around nvarguscamerasrc; off a Jetson that element is missing, so check the rest
    parses by swapping in videotestsrc (nvvidconv too is Jetson-only)."""
    text = _py(jetson, "from skipgan_edge.runtime.sources import csi_pipeline, SourceOptions; print(csi_pipeline(0, SourceOptions()))")
    assert text.startswith("nvarguscamerasrc sensor-id=0 ") and text.endswith("appsink drop=1 max-buffers=1")
    here = text.replace("nvarguscamerasrc sensor-id=0", "videotestsrc num-buffers=3").replace("(memory:NVMM)", "")
    here = here.replace("nvvidconv ! ", "videoconvert ! ")
    p = subprocess.run(["gst-launch-1.0", "-q", *here.replace("appsink drop=1 max-buffers=1", "fakesink").split()],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def _runtime_requirements() -> list[str]:
    from skipgan_edge.compat import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    cuda = [r for r in extras["tensorrt"] if r.startswith("cuda-python")]  # TensorRT itself is JetPack's
    return [*project["dependencies"], *extras["metrics"], *extras["onnx"], *cuda]


def test_the_jetson_requirements_resolve_to_aarch64_wheels(tmp_path: Path) -> None:
    """What make jetson may install on a JetPack 6 device (Ubuntu 22.04: glibc 2.35, CPython 3.10, numpy 1) resolves to
    binary wheels only: nothing needs a compiler on the device."""
    # JetPack 6's pins, but numpy as make jetson resolves it on a device: Ubuntu 22.04's numpy 1.21.5 is older than the
    # runtime's floor, so the newest numpy 1 goes into the venv
    jp6 = (ROOT / "constraints" / "jetpack6.txt").read_text().splitlines()
    pins = tmp_path / "pins.txt"
    pins.write_text("\n".join([*(line for line in jp6 if not line.startswith("numpy")), "numpy<2"]) + "\n")
    platforms = [f"manylinux_2_{g}_aarch64" for g in (17, 24, 26, 27, 28, 31, 34, 35)] + ["manylinux2014_aarch64", "linux_aarch64"]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--python-version", "3.10",
           "--implementation", "cp", "--target", str(tmp_path / "t"), "--report", str(tmp_path / "r.json"), "-q",
           "--disable-pip-version-check", "-c", str(pins)]
    for plat in platforms:
        cmd += ["--platform", plat]
    p = subprocess.run([*cmd, *_runtime_requirements()], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    wheels = {i["metadata"]["name"].lower(): i["download_info"]["url"].rsplit("/", 1)[-1] for i in report["install"]}
    assert {"numpy", "opencv-python-headless", "onnxruntime", "cuda-python", "onnx", "typer"} <= set(wheels), wheels
    for name, wheel in wheels.items():
        assert wheel.endswith(".whl") and ("aarch64" in wheel or "-none-any" in wheel), (name, wheel)
    assert wheels["numpy"].startswith("numpy-1.") and "cp310" in wheels["numpy"], wheels["numpy"]
