"""Shared fixtures: generated data and tiny real models (ngf 8, isize 32), built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "skipgan_edge"]

os.environ.setdefault("OMP_NUM_THREADS", "2")
# watch folders remember scored names under $XDG_STATE_HOME: keep the tests' state out of the user's home
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="skipgan-edge-test-state-")


def need_gpu_stack(tensorrt: bool) -> None:
    """Skip a GPU test where the GPU stack is missing, or fail it under ``make test-gpu`` (SKIPGAN_REQUIRE_GPU=1):
    that target must never pass with its tests skipped."""
    from skipgan_edge.doctor import gpu_stack_missing

    missing = gpu_stack_missing(tensorrt=tensorrt)
    if not missing:
        return
    msg = "missing " + "; ".join(missing)
    if os.environ.get("SKIPGAN_REQUIRE_GPU") == "1":
        pytest.fail(f"make test-gpu needs the GPU stack: {msg}", pytrace=False)
    pytest.skip(msg)


def model_with_card(src: Path, dest: Path, mutate: Any) -> tuple[Path, dict[str, Any]]:
    """A copy of model folder ``src`` at ``dest`` whose weights embed the card ``mutate(card)`` left (the authority
    over model.json); returns the folder and the mutated card."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.numpy import save_file

    shutil.copytree(src, dest)
    with safe_open(str(dest / "model.safetensors"), "np") as fh:
        meta = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    card = json.loads(meta["card"])
    mutate(card)
    save_file(tensors, str(dest / "model.safetensors"), metadata={**meta, "card": json.dumps(card)})
    return dest, card


def run_cli(*args: str, check: bool = True, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=kw.pop("cwd", None))  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"CLI {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SyntheticSpec(n_train=256, n_val_good=32, n_val_defect=4, n_test_good=40, n_test_defect=10))
    return out


@pytest.fixture(scope="session")
def tiny_model(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained model folder (in-process, a few seconds)."""
    from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import train

    cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=8, ndf=8), train=TrainConfig(epochs=3, batch=32))
    out = tmp_path_factory.mktemp("runs") / "tiny"
    ds = load_folder(synth_dir, 32, 3, seed=0)
    train(ds, cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_model(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model good enough to find synthetic defects in video frames (ngf 16, 6 epochs)."""
    from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import train

    cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=16, ndf=16), train=TrainConfig(epochs=6, batch=32))
    out = tmp_path_factory.mktemp("runs") / "demo"
    train(load_folder(synth_dir, 32, 3, seed=0), cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_onnx(demo_model: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scorer.onnx, scorer.fp16.onnx and scorer.int8.onnx of demo_model (gate not enforced: tests check it)."""
    from skipgan_edge import calibration
    from skipgan_edge.export.api import export_all

    out = tmp_path_factory.mktemp("demo_export")
    calibration.save(calibration.build(str(synth_dir), 128, 32, 3), out / "calib.npz")
    export_all(demo_model, out, fp16=True, int8=True, calib=out / "calib.npz", enforce_gate=False)
    return out


def write_defect_video(path: Path, n: int, defect_frames: set[int], fourcc: str, size: int = 64, seed: int = 0,
                       fps: float = 25) -> Path:
    """A real video written by OpenCV: normal texture crops, strong holes at ``defect_frames``."""
    import cv2
    import numpy as np

    from skipgan_edge.data.synthetic import _crop, texture

    rng = np.random.default_rng(seed)
    tex = texture("brick")
    h, w = tex.shape
    region = (int(0.6 * w), w, 0, h)  # the region the synthetic validation/test crops come from
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (size, size))
    for i in range(n):
        img = _crop(tex, rng, region, 96, size)
        if i in defect_frames:
            cv2.circle(img, (int(rng.integers(20, 44)), int(rng.integers(20, 44))), 9, 0, -1)
        writer.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def separating_threshold(onnx: Path, video: Path, defects: set[int]) -> float:
    """A normalized-score threshold halfway between the video's most anomalous normal frame and its least anomalous
    defect frame (scored once, in process, by the real pipeline), so that exactly the defects are anomalous."""
    import json

    from skipgan_edge.runtime.api import SinkOptions, run
    from skipgan_edge.runtime.artifact import Artifact

    out = video.with_suffix(".scores.jsonl")
    run(Artifact("onnx", onnx), str(video), backend="onnxruntime", sinks=SinkOptions(jsonl=out))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    out.unlink()
    normal = max(r["normalized_score"] for r in recs if r["frame"] not in defects)
    defect = min(r["normalized_score"] for r in recs if r["frame"] in defects)
    assert defect > normal, f"the model does not separate the defects ({defect} <= {normal})"
    return (normal + defect) / 2


@pytest.fixture(scope="session")
def triton_server(demo_onnx: Path):  # type: ignore[no-untyped-def]
    """A real Triton server (``triton-serve`` from the Triton venv) on demo_onnx's FP32 scorer, with a 5 ms batching window."""
    from helpers.triton import Server

    server = Server(demo_onnx / "scorer.onnx", None, "--max-queue-delay-us", "5000").start()
    yield server
    server.stop()
