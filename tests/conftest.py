"""Shared fixtures: generated data and tiny real models (ngf 8, isize 32), built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "skipgan_edge"]

os.environ.setdefault("OMP_NUM_THREADS", "2")


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
