"""The ``skipgan-edge`` command: a thin Typer app. Each verb builds a config and calls one library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from skipgan_edge import __version__
from skipgan_edge.errors import SkipganError

app = typer.Typer(
    name="skipgan-edge",
    help="Skip-GANomaly from training to the edge: train, eval, calibrate, export, build, run, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Write a built-in dataset as an MVTec-style folder.", no_args_is_help=True)
app.add_typer(data_app, name="data")

log = logging.getLogger("skipgan_edge")


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"skipgan-edge {__version__}")
        raise typer.Exit()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr, force=True
    )


# ----------------------------------------------------------------------------------------- data
@data_app.command("synthetic")
def data_synthetic(
    out: Annotated[Path, typer.Option(help="Folder to write (MVTec layout).")],
    texture: Annotated[str, typer.Option(help="brick, grass or gravel.")] = "brick",
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    n_train: Annotated[int, typer.Option(help="Normal training images.")] = 640,
    n_test_good: Annotated[int, typer.Option(help="Normal test images.")] = 100,
    n_test_defect: Annotated[int, typer.Option(help="Test images per defect kind.")] = 25,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
) -> None:
    """Synthetic defect textures (scratch, spot, crack, hole) with masks; no download."""
    from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic

    spec = SyntheticSpec(texture=texture, size=size, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect, seed=seed)
    counts = write_synthetic(out, spec)
    typer.echo(f"wrote {sum(counts.values())} images to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("fmnist")
def data_fmnist(
    out: Annotated[Path, typer.Option(help="Folder to write (MVTec layout).")],
    anomaly_class: Annotated[str, typer.Option(help="Anomalous class: 0-9 or a name (e.g. sandal).")] = "0",
    max_train: Annotated[Optional[int], typer.Option(help="Keep a seeded subset of the normal training images.")] = None,
    max_test: Annotated[Optional[int], typer.Option(help="Keep a seeded subset of the test images.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fashion-MNIST leave-one-class-out (Debian's dataset-fashion-mnist) as PNG files."""
    from skipgan_edge.data.export_folder import write_fmnist

    counts = write_fmnist(out, anomaly_class, max_train=max_train, max_test=max_test, seed=seed)
    typer.echo(f"wrote {sum(counts.values())} images to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ---------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: Annotated[Optional[str], typer.Option(help="MVTec-style folder, or fmnist:<class>.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder to create.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with [model] [train] [score] tables.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run folder.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture (skipganomaly).")] = None,
    isize: Annotated[Optional[int], typer.Option(help="Input size: 32, 64, 128 or 256.")] = None,
    channels: Annotated[Optional[int], typer.Option(help="1 (grayscale) or 3 (BGR).")] = None,
    ngf: Annotated[Optional[int], typer.Option(help="Generator base width.")] = None,
    ndf: Annotated[Optional[int], typer.Option(help="Discriminator base width.")] = None,
    nz: Annotated[Optional[int], typer.Option(help="Feature size of f(x).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, bf16 (CPU autocast) or amp (CUDA fp16).")] = None,
    lam: Annotated[Optional[float], typer.Option(help="Weight of the reconstruction term in the score.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of train/good held out for validation.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (0 = default).")] = None,
) -> None:
    """Train on normal images; writes RUN/model.json, RUN/model.safetensors, RUN/metrics.jsonl."""
    from skipgan_edge.train.api import train_from_cli

    overrides: dict[str, dict[str, Any]] = {
        "model": {"arch": arch, "isize": isize, "channels": channels, "ngf": ngf, "ndf": ndf, "nz": nz},
        "train": {"batch": batch, "lr": lr, "epochs": epochs, "seed": seed, "device": device, "precision": precision,
                  "val_fraction": val_fraction, "threads": threads},
        "score": {"lam": lam},
    }
    card = train_from_cli(data, out, config, resume, overrides)
    m = card["metrics"]
    typer.echo(
        f"model folder: {card['_folder']}  best epoch {card['training']['best_epoch']}  "
        + "  ".join(f"{k} {v:.4f}" for k, v in m.items())
    )


# ----------------------------------------------------------------------------------------- eval
@app.command("eval")
def eval_cmd(
    data: Annotated[str, typer.Option(help="MVTec-style folder with test/, or fmnist:<class>.")],
    model: Annotated[Optional[Path], typer.Option(help="Model folder (torch).")] = None,
    onnx: Annotated[Optional[Path], typer.Option(help="Exported scorer ONNX (ONNX Runtime).")] = None,
    engine: Annotated[Optional[Path], typer.Option(help="TensorRT engine (needs TensorRT).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write eval.json and plots (default: next to the model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    device: Annotated[str, typer.Option(help="torch device for --model.")] = "cpu",
) -> None:
    """Image AUROC, pixel AUROC (with masks), F1, ROC and histogram plots."""
    from skipgan_edge.evaluate import evaluate_cli

    report = evaluate_cli(data, model, onnx, engine, out, device)
    if as_json:
        _echo_json(report)
    else:
        typer.echo(f"AUROC {report['auroc']:.4f}" + (f"  pixel AUROC {report['pixel_auroc']:.4f}" if "pixel_auroc" in report else ""))
        typer.echo(f"F1 at the model's threshold {report['f1_at_model_threshold']:.4f}; best F1 {report['f1_optimal']:.4f}")
        if "plots" in report:
            typer.echo(f"plots: {report['plots']['roc']}  {report['plots']['histogram']}\nreport: {report['report']}")


# ----------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the data, model and reports.")] = Path("demo_out"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 8,
    fast: Annotated[bool, typer.Option(help="Tiny settings, for tests.")] = False,
) -> None:
    """Synthetic data → train → eval (→ export → run when those extras are installed)."""
    from skipgan_edge.demo import run_demo

    run_demo(out, epochs=epochs, fast=fast)


@app.command()
def doctor() -> None:
    """What this machine can run: backends, providers, TensorRT, CUDA, GStreamer."""
    from skipgan_edge.doctor import report

    for line in report():
        typer.echo(line)


def main() -> None:
    """Entry point: run the app; a SkipganError becomes one line on stderr and a non-zero exit."""
    try:
        app()
    except SkipganError as exc:
        typer.echo(f"{exc.prefix}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
