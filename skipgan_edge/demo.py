"""``skipgan-edge demo`` / ``make demo``: the whole job on built-in synthetic data, on the CPU.

Stages: write the synthetic brick-texture defects, train a small Skip-GANomaly (isize 32,
ngf = ndf = 16, 8 epochs: about two minutes on 2 cores), evaluate it on the test split, then,
when the export extras are installed, export FP32/FP16/INT8 scorers with the accuracy gate and
stream a synthetic video through them.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import typer

from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig

log = logging.getLogger(__name__)


def run_demo(out: Path, epochs: int = 8, fast: bool = False) -> dict[str, object]:
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic
    from skipgan_edge.evaluate import evaluate_cli
    from skipgan_edge.train.trainer import train

    t0 = time.perf_counter()
    out = Path(out)
    data_dir, run_dir = out / "data", out / "model"
    spec = SyntheticSpec(n_train=192, n_val_good=32, n_val_defect=4, n_test_good=40, n_test_defect=10) if fast else SyntheticSpec()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    write_synthetic(data_dir, spec)
    typer.echo(f"[1/3] synthetic data: {data_dir}")
    cfg = RunConfig(
        model=ModelConfig(isize=32, channels=3, ngf=8 if fast else 16, ndf=8 if fast else 16),
        train=TrainConfig(epochs=2 if fast else epochs, batch=32 if fast else 64),
    )
    if run_dir.exists():
        shutil.rmtree(run_dir)
    ds = load_folder(data_dir, cfg.model.isize, cfg.model.channels, seed=cfg.train.seed)
    train(ds, cfg, run_dir)
    typer.echo(f"[2/3] trained: {run_dir}  ({time.perf_counter() - t0:.0f} s so far)")
    rep = evaluate_cli(str(data_dir), run_dir, None, None, None)
    typer.echo(
        f"[3/3] test AUROC {rep['auroc']:.3f}"
        + (f", pixel AUROC {rep['pixel_auroc']:.3f}" if "pixel_auroc" in rep else "")
        + f", F1 {rep['f1_at_model_threshold']:.3f} at the model's threshold"
    )
    typer.echo(f"      model folder {run_dir}\n      report {rep['report']}\n      plots {rep['plots']['roc']} {rep['plots']['histogram']}")
    typer.echo(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return {"eval": rep}
