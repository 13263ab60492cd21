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

# Help is plain text, never Rich markup (rich_markup_mode=None). In Typer's "rich" mode every help string is parsed as
# Rich markup, so square brackets are tags: run's "triton://HOST:PORT/MODEL[/VERSION]" crashed `run --help` with a
# MarkupError, and "[train]", "[[camera]]" or "[user:pass@]" silently vanished from the text. Escaping every bracket
# in every string is a rule each new option would have to remember; plain help prints what is written, the same
# with or without Rich installed (the lean runtime install has none). tests/test_cli_help.py renders every verb.
# -h is --help everywhere; defaults are shown (options whose default comes from a config say it in their help).
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
app = typer.Typer(
    name="skipgan-edge",
    help="Skip-GANomaly from training to the edge: train, eval, calibrate, export, build, run, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=CONTEXT,
)
data_app = typer.Typer(help="Write a built-in dataset as an MVTec-style folder.", no_args_is_help=True, rich_markup_mode=None,
                       context_settings=CONTEXT)
app.add_typer(data_app, name="data")

log = logging.getLogger("skipgan_edge")


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _check(rename: Optional[dict[str, str]] = None, **values: Any) -> None:
    """The one validation of numeric options: each value against ``skipgan_edge.config.LIMITS[key]`` (the rules a cell
    file's keys meet too), before any work; one line naming the option (``--KEY``, or ``rename[key]``)."""
    from skipgan_edge.config import check_limits, option_name

    names = rename or {}
    check_limits(values, lambda key: names.get(key) or option_name(key))


def _default(table: str, key: str) -> str:
    """``[default: V]`` for a train option whose default lives in skipgan_edge/config.py (the option itself defaults to
    None: not given, so that a --config file's value is kept)."""
    from skipgan_edge import config

    cls = {"model": config.ModelConfig, "train": config.TrainConfig, "score": config.ScoreConfig}[table]
    value = getattr(cls(), key)
    if isinstance(value, bool):
        value = "on" if value else "off"
    return f"  [default: {value if value is not None else 'the architecture' + chr(39) + 's'}]"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"skipgan-edge {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    if ctx.invoked_subcommand is None:  # only options (-v): the help, as with no arguments at all
        typer.echo(ctx.get_help())
        raise typer.Exit()
    from skipgan_edge.logs import install

    install(logging.DEBUG if verbose else logging.INFO)  # every line: credentials redacted, control characters escaped
    import skipgan_edge.service  # noqa: F401  (the service wing: registers --backend triton:// with the runtime)


# ----------------------------------------------------------------------------------------- data
def _check_out_folder(folder: Path, what: str = "--out") -> None:
    """One line before any work if the folder ``folder`` cannot be made or written (a file, a path under a file)."""
    from skipgan_edge.card import check_writable_folder

    check_writable_folder(folder, what)


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
    _check({"image_size": "--size"}, image_size=size, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect)
    _check_out_folder(out)
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
    seed: Annotated[int, typer.Option(help="Seed of the subsets --max-train and --max-test keep (same seed, same files).")] = 0,
) -> None:
    """Fashion-MNIST leave-one-class-out (Debian's dataset-fashion-mnist) as PNG files."""
    _check(max_train=max_train, max_test=max_test)
    _check_out_folder(out)
    from skipgan_edge.data.export_folder import write_fmnist

    counts = write_fmnist(out, anomaly_class, max_train=max_train, max_test=max_test, seed=seed)
    typer.echo(f"wrote {sum(counts.values())} images to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("video")
def data_video(
    out: Annotated[Path, typer.Option(help="Video file to write (.avi = MJPG; .mp4, .mkv, .mov, .m4v = mp4v).")],
    frames: Annotated[int, typer.Option(help="Number of frames.")] = 150,
    seed: Annotated[int, typer.Option(help="Seed of the texture crops and the holes' positions (same seed, same video).")] = 7,
    defects_: Annotated[bool, typer.Option("--defects/--no-defects", help="Draw the defects (off: normal frames only, "
                                           "e.g. to commission a threshold with skipgan-edge threshold).")] = True,
) -> None:
    """A synthetic line-camera video (brick texture) with dark holes at known frames, to try `run` on."""
    _check({"video_frames": "--frames"}, video_frames=frames)
    from skipgan_edge.demo import DEFECT_FRAMES, write_demo_video

    defects = tuple(f for f in DEFECT_FRAMES if f < frames) if defects_ else ()
    write_demo_video(out, frames, defects, seed)
    typer.echo(f"wrote {out}: {frames} frames, defects at frames {list(defects)}")


# ---------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: Annotated[Optional[str], typer.Option(help="MVTec-style folder (train/good, test/...), a plain folder of good images, "
                                                     "or fmnist:<class>.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder to create.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with [model] [train] [score] tables"
                                                        " (keys as in skipgan_edge/config.py); options given here override it.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run folder.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture: skipganomaly (the paper), ganomaly, or auto (train both, "
                                                "keep the better validation AUROC, on synthetic anomalies without labelled ones)."
                                                    + _default("model", "arch"))] = None,
    isize: Annotated[Optional[int], typer.Option(help="Input size: 32, 64, 128 or 256." + _default("model", "isize"))] = None,
    channels: Annotated[Optional[int], typer.Option(help="1 (grayscale) or 3 (BGR)." + _default("model", "channels"))] = None,
    ngf: Annotated[Optional[int], typer.Option(help="Generator base width." + _default("model", "ngf"))] = None,
    ndf: Annotated[Optional[int], typer.Option(help="Discriminator base width." + _default("model", "ndf"))] = None,
    nz: Annotated[Optional[int], typer.Option(help="Feature size of f(x)." + _default("model", "nz"))] = None,
    batch: Annotated[Optional[int], typer.Option(help="Batch size; left unset, at most the number of training images."
                                                    + _default("train", "batch"))] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate." + _default("train", "lr"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs." + _default("train", "epochs"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed." + _default("train", "seed"))] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N." + _default("train", "device"))] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, bf16 (CPU autocast) or amp (CUDA fp16)." + _default("train", "precision"))] = None,
    lam: Annotated[Optional[float], typer.Option(help="Weight of the reconstruction term in the score." + _default("score", "lam"))] = None,
    score_mode: Annotated[Optional[str], typer.Option(help="paper (raw terms) or standardized (terms in units of their normal spread)."
                                                           + _default("score", "mode"))] = None,
    pool: Annotated[Optional[int], typer.Option(help="0: rec = mean of the map (paper); k: max of the k×k smoothed map."
                                                     + _default("score", "pool"))] = None,
    select_lam: Annotated[Optional[bool], typer.Option("--select-lam", help="Choose λ by validation AUROC (needs labelled val/).")] = None,
    paper: Annotated[bool, typer.Option("--paper", help="The exact paper formulation: raw terms, λ 0.9, mean map, no feature bank, "
                                                       "no training tweaks.")] = False,
    input_noise: Annotated[Optional[float], typer.Option(help="Std of noise on the generator input while training."
                                                              + _default("train", "input_noise"))] = None,
    skip_dropout: Annotated[Optional[float], typer.Option(help="Channel dropout on the UNet skips while training."
                                                               + _default("model", "skip_dropout"))] = None,
    feature_layer: Annotated[Optional[str], typer.Option(help="D layer used as f(x): last (paper) or penultimate."
                                                              + _default("model", "feature_layer"))] = None,
    skip_levels: Annotated[Optional[str], typer.Option(help="UNet skips kept: innermost (default, measured best), all (the paper), "
                                                      "none (autoencoder) or levels like 2,3,4 (1 = full resolution)."
                                                          + _default("model", "skip_levels"))] = None,
    threshold: Annotated[Optional[str], typer.Option(help="Alarm policy: auto (f1 with labelled validation anomalies, "
                                                    "else fpr:0.05), fpr:Q (at most Q of normal images flagged), f1 (on "
                                                    "labelled, else synthetic validation anomalies) or max-normal."
                                                    + _default("score", "threshold"))] = None,
    synthetic_val: Annotated[Optional[bool], typer.Option("--synthetic-val/--no-synthetic-val",
                                                          help="Synthetic defects on normal validation images when val/ has no anomalies."
                                                               + _default("score", "synthetic_val"))] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of the normal training images (train/good, or a plain folder) held out for "
                                                               "validation, seeded by --seed."
                                                               + _default("train", "val_fraction"))] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (0 = default)." + _default("train", "threads"))] = None,
    max_recoveries: Annotated[Optional[int], typer.Option(help="Restarts from the last good checkpoint after a non-finite loss or "
                                                          "gradient before the run stops (0: stop at the first)."
                                                          + _default("train", "max_recoveries"))] = None,
    recover_lr_factor: Annotated[Optional[float], typer.Option(help="Each restart multiplies both learning rates by this, in (0, 1)."
                                                               + _default("train", "recover_lr_factor"))] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="Keep an exponential moving average of the generator's weights with this "
                                                       "decay (0 = off, e.g. 0.999); the average is what is selected and written."
                                                       + _default("train", "ema_decay"))] = None,
    bank_size: Annotated[Optional[int], typer.Option(help="Feature-bank head, added to the score from constants in the exported graph: "
                                                     "the gaussian bank is fitted on at most this many training images, the nearest "
                                                     "bank keeps this many normal patch features (0 = off: the two-term score, λ 0.5 "
                                                     "unless --lam; skipganomaly's default is 4096 with λ 1, ganomaly's 0; measured cost and gain: "
                                                     "benchmarks/results/study_bank_gauss.md)." + _default("score", "bank_size"))] = None,
    bank_kind: Annotated[Optional[str], typer.Option(help="What the bank keeps: gaussian (a Gaussian of the generator encoder's 2x2 map; "
                                                     "the term is the Mahalanobis distance: skipganomaly's default) or nearest (normal "
                                                     "patch features; the term is the distance to the nearest; ganomaly has only this)."
                                                     + _default("score", "bank_kind"))] = None,
    bank_source: Annotated[Optional[str], typer.Option(help="Whose patch features a nearest bank keeps: encoder (the generator encoder's "
                                                       "4x4 map: skipganomaly's) or discriminator (D's features; ganomaly has only this). "
                                                       "Naming a source chooses a nearest bank unless --bank-kind says otherwise."
                                                       + _default("score", "bank_source"))] = None,
    bank_weight: Annotated[Optional[float], typer.Option(help="Weight of the bank term in the score, in (0, 1] (1: the bank term alone); "
                                                         "only with a bank (--bank-size 0 turns it off)."
                                                         + _default("score", "bank_weight"))] = None,
) -> None:
    """Train on normal images; writes RUN/model.json, RUN/model.safetensors, RUN/metrics.jsonl."""
    from skipgan_edge.train.api import train_from_cli

    overrides: dict[str, dict[str, Any]] = {
        "model": {"arch": arch, "isize": isize, "channels": channels, "ngf": ngf, "ndf": ndf, "nz": nz, "skip_dropout": skip_dropout,
                  "feature_layer": feature_layer, "skip_levels": skip_levels},
        "train": {"batch": batch, "lr": lr, "epochs": epochs, "seed": seed, "device": device, "precision": precision,
                  "val_fraction": val_fraction, "threads": threads, "input_noise": input_noise, "max_recoveries": max_recoveries,
                  "recover_lr_factor": recover_lr_factor, "ema_decay": ema_decay},
        "score": {"lam": lam, "mode": score_mode, "pool": pool, "select_lam": select_lam, "threshold": threshold,
                  "synthetic_val": synthetic_val, "bank_size": bank_size, "bank_weight": bank_weight,
                  "bank_source": bank_source, "bank_kind": bank_kind},
    }
    if paper:
        from skipgan_edge.config import paper_overrides

        overrides = paper_overrides(overrides)
    card, folder = train_from_cli(data, out, config, resume, overrides)
    m = card.metrics
    typer.echo(
        f"model folder: {folder}  best epoch {card.training['best_epoch']}  "
        + "  ".join(f"{k} {v:.4f}" for k, v in m.items())
    )


# ----------------------------------------------------------------------------------------- eval
@app.command("eval")
def eval_cmd(
    data: Annotated[str, typer.Option(help="A folder with test/good and test/<defect> (only test/ is read), or fmnist:<class>.")],
    model: Annotated[Optional[Path], typer.Option(help="Model folder (torch).")] = None,
    onnx: Annotated[Optional[Path], typer.Option(help="Exported scorer ONNX (ONNX Runtime).")] = None,
    engine: Annotated[Optional[Path], typer.Option(help="TensorRT engine (needs TensorRT).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write eval.json and plots (default: MODEL/eval_torch with --model; "
                                                "./eval_<file stem> in the current folder with --onnx or --engine, never "
                                                "inside the export folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    device: Annotated[str, typer.Option(help="torch device for --model.")] = "cpu",
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, openvino, tensorrt or torch (auto: as in every verb, "
                                         "see docs/runtime.md).")] = "auto",
    threads: Annotated[int, typer.Option(help="ONNX Runtime / OpenVINO intra-op threads (0 = all cores).")] = 0,
    fps: Annotated[float, typer.Option(help="The line's frame rate: false alarms per hour at the model's threshold are counted at it.")] = 25.0,
) -> None:
    """AUROC, AP, recall at 1 % and 5 % false alarms, the alarm at the model threshold (and its false alarms per hour);
    ROC, PR and histogram plots (with matplotlib: pip install 'skipgan-edge[plots]')."""
    _check(threads=threads, fps=fps)
    from skipgan_edge.evaluate import evaluate_cli
    from skipgan_edge.thresholds import format_per_hour

    report = evaluate_cli(data, model, onnx, engine, out, device, backend, threads, fps=fps)
    if as_json:
        _echo_json(report)
    else:
        head, bank = report.get("score_head"), report.get("score_bank")
        typer.echo(f"AUROC {report['auroc']:.4f}" + (f"  pixel AUROC {report['pixel_auroc']:.4f}" if "pixel_auroc" in report else "")
                   + (f"  (score head {head}{f', {bank} bank' if bank else ''})" if head else ""))
        at = report["at_model_threshold"]
        typer.echo(f"the alarm at the model's threshold {report['model_threshold_id']} ({report['model_threshold_set']}): "
                   f"false alarms {at['fpr']:.3f} ({format_per_hour(at['false_alarms_per_hour'])} per hour at {at['fps']:g} fps, "
                   f"95 % interval {'-'.join(format_per_hour(v) for v in at['false_alarms_per_hour_interval_95'])}), "
                   f"recall {at['recall']:.3f}, {at['flagged']} of {report['n_images']} flagged")
        typer.echo(f"F1 at the model's threshold {report['f1_at_model_threshold']:.4f}; best F1 {report['f1_optimal']:.4f}; "
                   f"average precision {report['average_precision']:.4f}" + (f"; AUPRO {report['aupro']:.4f}" if "aupro" in report else ""))
        typer.echo("recall at a false-alarm rate: " + ", ".join(f"{v['recall']:.3f} at {float(k):.0%} (false alarms {v['fpr']:.3f} on test)"
                                                               for k, v in report["recall_at_fpr"].items()))
        typer.echo(f"backend: {report['backend']} ({report['backend_chosen_by']})")
        if report.get("plots"):
            typer.echo("plots: " + "  ".join(report["plots"].values()))
        elif report.get("plots_skipped"):
            typer.echo(f"plots: none ({report['plots_skipped']})")
        typer.echo(f"report: {report['report']}")


# ------------------------------------------------------------------------------------ calibrate
def _parse_batch(text: str) -> tuple[int, int, int]:
    from skipgan_edge.errors import ConfigError

    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--batch takes min,opt,max (e.g. 1,4,8) or one number, got {text!r}") from None
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3:
        raise ConfigError(f"--batch takes min,opt,max (e.g. 1,4,8) or one number, got {text!r}")
    if not 1 <= parts[0] <= parts[1] <= parts[2] <= 4096:
        raise ConfigError(f"--batch min,opt,max must be 1 <= min <= opt <= max <= 4096, got {text!r}")
    return parts[0], parts[1], parts[2]


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option(help="The .npz file to write.")],
    data: Annotated[Optional[str], typer.Option(help="Folder of normal images (MVTec: train/good is used).")] = None,
    source: Annotated[Optional[str], typer.Option(help="Video file or camera (/dev/videoN or index) instead of --data.")] = None,
    size: Annotated[int, typer.Option(help="Number of distinct frames to keep.")] = 512,
    model: Annotated[Optional[Path], typer.Option(help="Model folder: takes its input size and channels.")] = None,
    isize: Annotated[int, typer.Option(help="Input size when no --model is given.")] = 32,
    channels: Annotated[int, typer.Option(help="Channels when no --model is given.")] = 3,
) -> None:
    """Build an INT8 calibration set of real normal frames (near-duplicates dropped)."""
    _check({"calib_size": "--size"}, calib_size=size, isize=isize, channels=channels)
    from skipgan_edge import calibration
    from skipgan_edge.config import VALID_ISIZES
    from skipgan_edge.errors import ConfigError

    if size < calibration.MIN_FRAMES:  # the set would be refused after reading the frames, naming the data, not --size
        raise ConfigError(f"--size must be at least {calibration.MIN_FRAMES}, got {size}: INT8 calibration needs "
                          f"{calibration.MIN_FRAMES} distinct frames ({calibration.RECOMMENDED_FRAMES}+ recommended)")
    if model is None and isize not in VALID_ISIZES:  # a set only a model of that size can use: train takes these
        raise ConfigError(f"--isize must be one of {', '.join(map(str, VALID_ISIZES))} (the sizes train takes), got {isize}")
    if (data is None) == (source is None):
        raise ConfigError("give exactly one of --data (folder) or --source (video or camera)")
    from skipgan_edge.card import check_writable

    check_writable(out, "--out")  # one line now, not after the frames are read
    if model is not None:
        from skipgan_edge.card import load_card

        card = load_card(model)
        isize, channels = card.input.isize, card.input.channels
    cs = calibration.build(str(data or source), size, isize, channels)
    calibration.save(cs, out)
    m = cs.manifest
    typer.echo(f"wrote {out}: {m['count']} frames {isize}x{isize}x{channels} ({m['duplicates_dropped']} near-duplicates dropped)")


# --------------------------------------------------------------------------------------- export
@app.command()
def export(
    model: Annotated[Path, typer.Option(help="Model folder from train.")],
    out: Annotated[Path, typer.Option(help="Output folder for scorer*.onnx and export_report.json.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write scorer.fp16.onnx (AutoCast).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write scorer.int8.onnx (Q/DQ, calibrated).")] = False,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration set from skipgan-edge calibrate.")] = None,
    calib_data: Annotated[Optional[str], typer.Option(help="Folder or video to build the calibration set from.")] = None,
    calib_method: Annotated[
        str, typer.Option(help="INT8 calibration: auto (best agreement with FP32 on validation), max, entropy, percentile.")
    ] = "auto",
    eval_data: Annotated[Optional[str], typer.Option(help="Labelled data for the accuracy gate (default: the model's).")] = None,
    max_drop: Annotated[float, typer.Option(help="Largest AUROC drop against FP32 a variant may have.")] = 0.01,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="Keep failing variants, marked failed.")] = False,
    engine: Annotated[bool, typer.Option("--engine", help="Also build TensorRT engines (needs TensorRT).")] = False,
    batch: Annotated[str, typer.Option(help="Engine batch profile min,opt,max.")] = "1,8,32",
    triton: Annotated[bool, typer.Option("--triton", help="Also write a Triton model repository (OUT/triton): the TensorRT plan with "
                                  "--engine (lowest precision that passed the gate), else the FP32 ONNX on Triton's Python backend. "
                                  "A changed model becomes the next version.")] = False,
    triton_name: Annotated[str, typer.Option(help="Triton model name.")] = "scorer",
    triton_instances: Annotated[int, typer.Option(help="Triton instance group count.")] = 1,
    triton_max_queue_us: Annotated[int, typer.Option(help="Triton dynamic batching: longest wait for more requests (µs).")] = 2000,
    triton_runtime: Annotated[str, typer.Option(help="Python backend runtime: onnxruntime or openvino.")] = "onnxruntime",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export the scorer to ONNX (+FP16, +INT8), check every variant's AUROC against FP32."""
    _check(max_drop=max_drop)
    from skipgan_edge.export.api import export_all, format_table
    from skipgan_edge.service.triton_repo import TritonSettings, check_name

    b = _parse_batch(batch)
    settings = TritonSettings.for_profile(b, max_queue_delay_us=triton_max_queue_us, instances=triton_instances, runtime=triton_runtime)
    if triton:
        settings.check()  # one line before the export runs
        check_name(triton_name)
    report = export_all(
        model, out, fp16=fp16, int8=int8, calib=calib, calib_data=calib_data, eval_data=eval_data, max_drop=max_drop,
        enforce_gate=not no_gate, calibration_method=calib_method, engine=engine, triton=triton, batch=b,
        triton_settings=settings, triton_name=triton_name,
    )
    if as_json:
        _echo_json(report)
        return
    # the parity check and each step are in the log (stderr), once; stdout has the gate's table and where things are
    typer.echo(f"accuracy gate on {report['eval_data']} ({report['eval_images']} images, "
               f"max AUROC drop {report['gate']['max_auroc_drop']}):")
    typer.echo(format_table(report))
    t = report.get("triton")
    if t:
        how = (f"serve it: skipgan-edge triton-serve --export-dir {out}" if t["platform"] == "python"
               else "serve it with NVIDIA's Triton on the GPU that built the plan: tritonserver --model-repository " + t["repository"])
        typer.echo(f"triton: {t['repository']}/{t['model']} version {t['version']}{'' if t['new_version'] else ' (unchanged)'} "
                   f"({t['platform']}); {how}")
    typer.echo(f"report: {report['report']}")


@app.command()
def build(
    onnx: Annotated[Path, typer.Option(help="scorer*.onnx from export.")],
    out: Annotated[Optional[Path], typer.Option(help="Engine file to write (not needed with --dry-run).")] = None,
    batch: Annotated[str, typer.Option(help="Optimisation profile over the batch axis: min,opt,max.")] = "1,8,32",
    workspace: Annotated[int, typer.Option(help="Builder workspace limit in MiB.")] = 1024,
    timing_cache: Annotated[Optional[Path], typer.Option(help="Persistent timing cache file (read and updated).")] = None,
    dla_core: Annotated[Optional[int], typer.Option(help="Jetson DLA core (static batch, fp16/int8 only; GPU fallback on).")] = None,
    opt_level: Annotated[int, typer.Option(help="Builder optimisation level 0-5.")] = 3,
    plan: Annotated[bool, typer.Option("--plan", help="Also write the raw serialized plan (OUT.plan, for trtexec, Triton, "
                                       "DeepStream) with our header as a sidecar OUT.plan.json.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the ONNX against onnx-tensorrt's support table; needs no "
                                          "TensorRT or GPU. Exits non-zero with one line per violation.")] = False,
    trt: Annotated[Optional[str], typer.Option("--trt", help="TensorRT version the dry run checks against: 8.6 (JetPack 6.0), "
                                               "10.3 (JetPack 6.1/6.2) or 11; default all three.")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Run the engine on held-out frames against ONNX Runtime "
                                        "and refuse it beyond the export gate's AUROC drop or when its alarms differ from ONNX "
                                        "Runtime's on more than 5 % of them (default on).")] = True,
    check_frames: Annotated[Optional[Path], typer.Option(help="Held-out frames for the check (export's heldout.npz; default: "
                                                         "heldout.npz beside the ONNX).")] = None,
    sm: Annotated[Optional[int], typer.Option("--sm", help="GPU compute capability the dry run checks FP8 support for, e.g. 87 "
                                              "(Jetson Orin), 89 (Ada); default: Orin for 8.6 and 10.3, any for 11.")] = None,
) -> None:
    """Build a TensorRT engine on the device that will run it (strongly typed: precision from the ONNX)."""
    _check(workspace=workspace, dla_core=dla_core, opt_level=opt_level, sm=sm)
    if dry_run:
        from skipgan_edge.export.trtcheck import DEFAULT_TARGETS, verdict

        if dla_core is not None:  # what a DLA build refuses, the dry run refuses too
            from skipgan_edge.export.engine import BuildConfig, onnx_precision

            BuildConfig(_parse_batch(batch), workspace, timing_cache, dla_core, opt_level).validate(onnx_precision(onnx)[0])

        rep = verdict(onnx, [trt] if trt else list(DEFAULT_TARGETS), sm=sm, batch=_parse_batch(batch))
        bad = 0
        for target, r in rep.items():
            for line in r["violations"]:
                typer.echo(f"TensorRT {target}: {line}", err=True)
            bad += len(r["violations"])
            typer.echo(f"TensorRT {target}: {'ok' if r['ok'] else str(len(r['violations'])) + ' violation(s)'}: {onnx}")
        if bad:
            raise typer.Exit(2)
        return
    if out is None:
        from skipgan_edge.errors import EngineError

        raise EngineError("build needs --out ENGINE_FILE (or --dry-run to only check the ONNX)")
    from skipgan_edge.export.engine import BuildConfig, build_engine

    meta = build_engine(onnx, out, BuildConfig(_parse_batch(batch), workspace, timing_cache, dla_core, opt_level, plan=plan,
                                                   check=check, check_frames=check_frames))
    typer.echo(f"wrote {out}: {meta['precision']}, TensorRT {meta['tensorrt']}, {meta['gpu']} (sm_{meta['compute_capability']}), "
               f"batch {meta['profile']['min']}/{meta['profile']['opt']}/{meta['profile']['max']}")
    if plan:
        typer.echo(f"wrote {meta['plan']} and {meta['plan']}.json")
    if "check" in meta:
        c = meta["check"]
        typer.echo(f"checked on {c['frames']} held-out frames: AUROC {c['engine_auroc']:.4f} (FP32 {c['fp32_auroc']:.4f}, "
                   f"gate {c['max_auroc_drop']}), max |Δscore| vs ONNX Runtime {c['outputs']['score']['max_abs']:.3g}")


# ------------------------------------------------------------------------------------------ run
@app.command("run")
def run_cmd(
    source: Annotated[str, typer.Option(help="/dev/videoN, v4l2:///dev/videoN, N, csi://N, 'gst:PIPELINE ! appsink', "
                                             "'genicam://NAME?exposure_us=..', rtsp://..., video, image/folder/glob, watch:DIR.")],
    model: Annotated[Optional[Path], typer.Option(help="Model folder (torch backend).")] = None,
    onnx: Annotated[Optional[Path], typer.Option(help="Exported scorer ONNX (ONNX Runtime).")] = None,
    engine: Annotated[Optional[Path], typer.Option(help="TensorRT engine.")] = None,
    backend: Annotated[str, typer.Option(help="auto, tensorrt, onnxruntime, openvino, torch, or a Triton server: "
                                         "triton://HOST:PORT/MODEL[/VERSION][?retry=SECONDS&shm=auto|0|1] (gRPC; then no "
                                         "--model/--onnx/--engine; retry: how long an absent server is waited for, default 60).")] = "auto",
    batch: Annotated[int, typer.Option(help="Frames per backend call.")] = 1,
    max_wait_ms: Annotated[float, typer.Option(help="Batcher wait for more frames after the first.")] = 5.0,
    mode: Annotated[str, typer.Option(help="Frame to input: resize, crop or tiles.")] = "resize",
    overlap: Annotated[float, typer.Option(help="Tile overlap (tiles mode).")] = 0.25,
    threshold: Annotated[Optional[float], typer.Option(help="Normalized-score threshold (default: the model's).")] = None,
    jsonl: Annotated[Optional[Path], typer.Option(help="JSON Lines output, one record per frame (- = standard output; "
                                                 "the summary then goes to standard error).")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="CSV output.")] = None,
    save_video: Annotated[Optional[Path], typer.Option(help="Annotated video (mp4v).")] = None,
    save_images: Annotated[Optional[Path], typer.Option(help="Folder for annotated images.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Show annotated frames in a window.")] = False,
    summary: Annotated[Optional[Path], typer.Option(help="Write the run summary JSON here.")] = None,
    mqtt: Annotated[Optional[str], typer.Option(help="Publish results: mqtt://[user:pass@]host[:port]/topic-prefix "
                                               "(mqtts:// for TLS); topics PREFIX/CAMERA/result, status, heartbeat.")] = None,
    mqtt_ca: Annotated[Optional[Path], typer.Option(help="CA bundle for mqtts:// (default: the system's).")] = None,
    mqtt_anomalies_only: Annotated[bool, typer.Option("--mqtt-anomalies-only", help="Publish anomalous frames only.")] = False,
    mqtt_buffer: Annotated[int, typer.Option(help="Messages kept while the broker is unreachable; more are counted as dropped.")] = 10000,
    mqtt_heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeat messages.")] = 10.0,
    mqtt_flush_ms: Annotated[float, typer.Option(help="Results arriving within this long are sent together (lower: less latency, "
                                                 "more broker wake-ups; 20 ms cost 3 % of throughput here, 10 ms 13 %).")] = 20.0,
    camera_id: Annotated[str, typer.Option(help="This camera's id (the MQTT topic level under the prefix, the metrics' camera label).")] = "cam0",
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve Prometheus /metrics on this port (1-65535) while the run lasts.")] = None,
    metrics_addr: Annotated[str, typer.Option(help="Address the metrics server binds (0.0.0.0: reachable from other hosts).")] = "127.0.0.1",
    width: Annotated[Optional[int], typer.Option(help="Capture width (cameras).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Capture height (cameras).")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Capture frame rate asked of a camera; a video file keeps its own "
                                                 "(--replay-fps paces it). --save-video plays at the frames' rate.")] = None,
    loop: Annotated[bool, typer.Option("--loop", help="Loop a video file (soak tests).")] = False,
    replay_fps: Annotated[Optional[float], typer.Option(help="Play a video file as a live camera at this frame rate.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(help="Stop after this many frames.")] = None,
    debounce: Annotated[int, typer.Option(help="Alarm events: one opens after this many anomalous frames in a row and closes "
                                          "after as many normal ones (records carry its id; MQTT PREFIX/CAMERA/events).")] = 1,
    stop_after_idle: Annotated[Optional[float], typer.Option(help="watch: stop after this many idle seconds.")] = None,
    watch_state: Annotated[Optional[Path], typer.Option(help="watch: file remembering scored names (default: in "
                                                    "$XDG_STATE_HOME/skipgan-edge/watch, never inside the watched folder).")] = None,
    watch_follow_symlinks: Annotated[bool, typer.Option("--watch-follow-symlinks", help="watch: also score symbolic links "
                                                        "that point out of the folder (off: skipped).")] = False,
    reconnect_attempts: Annotated[int, typer.Option(help="Camera/RTSP reopen attempts before giving up.")] = 10,
    decode_threads: Annotated[int, typer.Option(help="FFmpeg decoder threads for video files and RTSP (0 = one per core).")] = 1,
    cuda_api: Annotated[str, typer.Option(help="TensorRT buffers: auto, cuda-python or pycuda.")] = "auto",
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="TensorRT: capture each batch size's "
                                              "enqueue in a CUDA graph (cuda-python only; falls back without them if capture fails).")] = True,
    pad_batch: Annotated[bool, typer.Option("--pad-batch/--no-pad-batch", help="TensorRT: pad a batch below the engine "
                                            "profile's min (a max-wait flush) and drop the padding; off: refuse it.")] = True,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = all cores).")] = 0,
    device: Annotated[str, typer.Option(help="torch device for --model.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Stream frames through the scorer: scores, heatmaps, and a latency summary."""
    flags = dict(locals())  # the parsed options, by name: grouped into the library call's option objects by RunRequest
    del flags["as_json"]
    from skipgan_edge.runtime.pipeline import format_summary
    from skipgan_edge.service.api import RunRequest

    s = RunRequest.from_flags(flags).run()
    to_stderr = jsonl is not None and str(jsonl) == "-"  # standard output carries the records
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=str), err=to_stderr)
    else:
        typer.echo(format_summary(s), err=to_stderr)
    # a file or folder read to its end of which every frame or file failed to decode inspected nothing (a watch folder, a
    # live source and a --max-frames run may have met one bad upload or frame and stopped: not an error)
    if s["scored"] == 0 and s["unreadable"] > 0 and not s["live"] and not source.startswith("watch:") and max_frames is None:
        from skipgan_edge.errors import SourceError

        raise SourceError(f"nothing was scored: none of the {s['unreadable']} frame(s) or file(s) from {s['source']} could "
                          "be decoded; check the source (a video OpenCV reads, a folder of images)")


# ---------------------------------------------------------------------------------------- serve
@app.command("serve")
def serve_cmd(
    config: Annotated[Optional[Path], typer.Option(help="The cell's TOML: [serve] defaults and one [[camera]] table per camera.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as JSON.")] = False,
    print_unit: Annotated[bool, typer.Option("--print-unit", help="Print the systemd unit for serve and exit.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Check the config, and open every model, source and output it names "
                                        "as serve would, without running; exit 2 with one line on the first that fails.")] = False,
) -> None:
    """An inspection cell in one process: many cameras, one backend per model, MQTT, metrics, model hot-reload."""
    from skipgan_edge.service.serve import UNIT, check_cell, load_cell, run_cell

    if print_unit:
        typer.echo(UNIT, nl=False)
        return
    if config is None:
        from skipgan_edge.errors import ConfigError

        raise ConfigError("serve needs --config cell.toml (see skipgan-edge serve --help and docs/line.md)")
    cell = load_cell(config)
    if check:
        for line in check_cell(cell, config):
            typer.echo(line)
        typer.echo(f"{config}: ok, {len(cell.cameras)} camera(s)")
        return
    s = run_cell(cell)
    if as_json:
        _echo_json(s)
    else:
        for cid, c in s["cameras"].items():
            state = ("finished" if c["finished"] else "stopped") if c["opens"] else \
                "never opened" + (f" (last error: {c['last_error']})" if c.get("last_error") else "")
            typer.echo(f"{cid}: scored {c['scored']}, anomalies {c['anomalies']}, dropped {c['dropped']}, unreadable {c['unreadable']}, "
                       f"{state} (model {c['model_id']})")


# --------------------------------------------------------------------------------- triton-serve
@app.command("triton-serve")
def triton_serve_cmd(
    onnx: Annotated[Optional[Path], typer.Option(help="A scorer ONNX: written into a repository (Python backend) and served.")] = None,
    export_dir: Annotated[Optional[Path], typer.Option(help="An export folder with a Triton repository (export --triton), or a "
                                                      "repository itself: served as it is.")] = None,
    http_port: Annotated[int, typer.Option(help="Triton's HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="Triton's gRPC port (what --backend triton:// uses).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Triton's Prometheus metrics port.")] = 8002,
    address: Annotated[str, typer.Option(help="Address the three ports bind (0.0.0.0: serve other hosts).")] = "127.0.0.1",
    model_name: Annotated[str, typer.Option(help="Model name (with --onnx).")] = "scorer",
    repository: Annotated[Optional[Path], typer.Option(help="With --onnx: write the repository here and keep it (default: a "
                                                      "temporary folder, removed on exit). A changed ONNX becomes the next version.")] = None,
    max_batch: Annotated[int, typer.Option(help="With --onnx: Triton's max_batch_size.")] = 32,
    preferred_batch: Annotated[str, typer.Option(help="With --onnx: dynamic batching's preferred sizes, comma separated.")] = "4,8",
    max_queue_delay_us: Annotated[int, typer.Option(help="With --onnx: longest wait for more requests to batch (µs; 0: batch only "
                                                    "what is already queued).")] = 2000,
    dynamic_batching: Annotated[bool, typer.Option("--dynamic-batching/--no-dynamic-batching", help="With --onnx: Triton's dynamic "
                                                   "batching across requests (off: every request runs alone).")] = True,
    instances: Annotated[int, typer.Option(help="With --onnx: model instances (instance group count).")] = 1,
    runtime: Annotated[str, typer.Option(help="With --onnx: onnxruntime or openvino, in Triton's Python backend.")] = "onnxruntime",
    threads: Annotated[int, typer.Option(help="With --onnx: intra-op threads per instance (0 = the runtime's default).")] = 0,
    trust_repository: Annotated[bool, typer.Option("--trust-repository", help="Serve a repository whose model.py or parameters "
                                                   "are not the ones skipgan-edge writes (Triton runs that code).")] = False,
) -> None:
    """A Triton Inference Server around the scorer, from PyTriton's bundled tritonserver: dynamic batching, metrics, gRPC."""
    _check({"triton_metrics_port": "--metrics-port"}, http_port=http_port, grpc_port=grpc_port, triton_metrics_port=metrics_port)
    from skipgan_edge.service.triton_server import triton_serve

    triton_serve(onnx, export_dir, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, address=address,
                 model_name=model_name, repository=repository, preferred_batch=preferred_batch, trust=trust_repository,
                 settings={"max_batch": max_batch, "max_queue_delay_us": max_queue_delay_us, "instances": instances,
                           "runtime": runtime, "threads": threads, "dynamic": dynamic_batching},
                 echo=lambda text, err: typer.echo(text, err=err))


# ------------------------------------------------------------------------------------ threshold
@app.command("threshold")
def threshold_cmd(
    normal: Annotated[str, typer.Option(help="Normal frames from the site: a folder, video, camera (with --frames) or any run --source.")],
    model: Annotated[Optional[Path], typer.Option(help="Model folder to update.")] = None,
    onnx: Annotated[Optional[Path], typer.Option(help="Scorer ONNX to update (its graph constants and card).")] = None,
    engine: Annotated[Optional[Path], typer.Option(help="TensorRT engine to update (its header's card; the runtime "
                                                  "re-normalizes).")] = None,
    export_dir: Annotated[Optional[Path], typer.Option(help="An export folder: update every scorer*.onnx and *.engine in it "
                                                      "(FP32, FP16, INT8, engines) with the same numbers.")] = None,
    fpr: Annotated[Optional[float], typer.Option(help="False-alarm rate per frame to promise on normal frames [default: 0.01].")] = None,
    alarms_per_hour: Annotated[Optional[float], typer.Option(help="False alarms per hour to promise instead of --fpr: a per-frame "
                                                            "rate of N / (3600 x fps).")] = None,
    fps: Annotated[Optional[float], typer.Option(help="The line's frame rate, for false alarms per hour (default: the video's; "
                                                "25 for folders, which --alarms-per-hour refuses).")] = None,
    anomalous: Annotated[Optional[str], typer.Option(help="Anomalous frames, to report the new threshold's recall.")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Frames to collect per source (required for a camera).")] = None,
    mode: Annotated[str, typer.Option(help="Frame to input, as the line runs it: resize, crop or tiles.")] = "resize",
    backend: Annotated[str, typer.Option(help="auto, tensorrt, onnxruntime, openvino or torch.")] = "auto",
    batch: Annotated[int, typer.Option(help="Frames per backend call.")] = 8,
    width: Annotated[Optional[int], typer.Option(help="Capture width (cameras).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Capture height (cameras).")] = None,
    camera_fps: Annotated[Optional[float], typer.Option("--camera-fps", help="Capture frame rate (cameras).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Apply the new threshold even where it raises the false alarms on "
                                      "the commissioning frames (without it, nothing is written then).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what the new threshold would be; change nothing.")] = False,
    score_with: Annotated[Optional[str], typer.Option(help="Which given artifact scores the frames: engine, onnx, model or a "
                                                     "file's name (default: the engine, else the FP32 ONNX, else the model).")] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime / OpenVINO intra-op threads (0 = all cores).")] = 0,
    device: Annotated[str, typer.Option(help="torch device for --model.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Commission on the line: re-set the threshold and normalization from normal frames seen at the site, no retraining.
    Prints the false alarms (per frame and per hour) before and after on those frames; a threshold that raises them
    is applied only with --yes."""
    _check({"fps": "--camera-fps"}, fpr=fpr, frames=frames, batch=batch, width=width, height=height, fps=camera_fps, threads=threads)
    _check({"fps": "--fps"}, fps=fps)
    from skipgan_edge.runtime.backends import BackendOptions
    from skipgan_edge.runtime.commission import CommissioningRefused, commission, format_report
    from skipgan_edge.runtime.preprocess import check_mode
    from skipgan_edge.runtime.sources import SourceOptions

    check_mode(mode)  # one line before the model loads

    arts = {k: Path(p) for k, p in (("model", model), ("onnx", onnx), ("engine", engine)) if p is not None}
    try:
        r = commission(arts, normal, fpr=fpr, anomalous=anomalous, frames=frames, mode=mode, backend=backend, batch=batch,
                       options=BackendOptions(device=device, threads=threads),
                       source_opts=SourceOptions(width=width, height=height, fps=camera_fps), dry_run=dry_run, score_with=score_with,
                       alarms_per_hour=alarms_per_hour, fps=fps, export_dir=export_dir, yes=yes)
    except CommissioningRefused as exc:  # the report on stdout, the refusal in one line on stderr
        _echo_json(exc.report) if as_json else typer.echo(format_report(exc.report))
        raise
    if as_json:
        _echo_json(r)
    else:
        typer.echo(format_report(r))


# ---------------------------------------------------------------------------------------- bench
@app.command()
def bench(
    onnx: Annotated[Optional[Path], typer.Option(help="A scorer ONNX file.")] = None,
    engine: Annotated[Optional[Path], typer.Option(help="A TensorRT engine.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="A model folder (torch eager).")] = None,
    export_dir: Annotated[Optional[Path], typer.Option(help="Every scorer*.onnx and *.engine in this folder.")] = None,
    backend: Annotated[str, typer.Option(help="auto, or a comma list: onnxruntime,openvino,tensorrt,torch (each file is timed "
                                         "with those that run it: onnx on onnxruntime/openvino, engine on tensorrt, model on "
                                         "torch); or a Triton server: triton://HOST:PORT/MODEL (alone).")] = "auto",
    batch: Annotated[str, typer.Option(help="Batch sizes, comma separated.")] = "1,8,64",
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 10,
    iterations: Annotated[Optional[int], typer.Option(help="Timed calls (default: run for --duration); not with --pipeline, "
                                                      "which plays the source once.")] = None,
    duration: Annotated[float, typer.Option(help="Seconds of timed calls per configuration; not with --pipeline, which "
                                            "plays the source once.")] = 3.0,
    threads: Annotated[int, typer.Option(help="CPU runtime threads (0 = all cores).")] = 0,
    pipeline: Annotated[bool, typer.Option("--pipeline", help="End to end from --source, per-stage latency.")] = False,
    source: Annotated[Optional[str], typer.Option(help="Source for --pipeline (a video file, folder, ...).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,
    plots: Annotated[Optional[Path], typer.Option(help="Write latency, throughput and roofline PNGs into this folder "
                                                  "(default with --json: beside it; needs matplotlib).")] = None,
) -> None:
    """Latency (min/mean/median/p90/p95/p99) and throughput per backend × precision × batch, like trtexec."""
    _check(warmup=warmup, iterations=iterations, duration=duration, threads=threads)
    from skipgan_edge.card import atomic_write_json, check_writable_file

    if json_out is not None:
        check_writable_file(json_out, "--json")
    if plots is not None:
        _check_out_folder(plots, "--plots")
    from skipgan_edge.bench.latency import BenchConfig, backends_for, discover, format_table, pipeline_bench, run_bench
    from skipgan_edge.errors import ConfigError

    arts: list[tuple[str, Path]] = []
    for kind, p in (("onnx", onnx), ("engine", engine), ("model", model)):
        if p is not None:
            arts.append((kind, p))
    named = list(arts)  # the files given one by one: a --backend that runs none of them is refused below
    if export_dir is not None:
        arts += discover(export_dir)
    from skipgan_edge.runtime.backends import Artifact, is_remote

    if is_remote(backend):  # a Triton server: its model, timed from this client (network and server queue included)
        if arts:
            raise ConfigError("--backend triton://... times the server's model: give no --onnx, --engine, --model or --export-dir with it")
        arts = [Artifact.given(None, None, None, backend).pair]
    if not arts:
        raise ConfigError("give --onnx, --engine, --model or --export-dir (or --backend triton://HOST:PORT/MODEL)")
    try:
        batches = tuple(int(b) for b in batch.split(","))
    except ValueError:
        raise ConfigError(f"--batch takes comma-separated integers, got {batch!r}") from None
    for b in batches:
        _check(batch=b)
    names = None if backend == "auto" else backend.split(",")
    if names is not None and not is_remote(backend):  # artifacts named one by one: each must run on one of them
        from skipgan_edge.runtime.backends import RUNS

        for kind, p in named:
            if not backends_for(kind, names):
                runs = ", ".join(b for k, b in sorted(RUNS) if k == kind)
                raise ConfigError(f"--backend {backend} cannot run {p} ({kind}): {kind} runs on {runs}; give one of those, "
                                  "or auto")
    if pipeline:
        if not source:
            raise ConfigError("--pipeline needs --source (a video file or image folder)")
        from skipgan_edge.runtime.pipeline import format_summary

        res = pipeline_bench(arts, source, batches, names, threads)
        for s in res:
            typer.echo(f"{Path(s['artifact']).name} batch {s['batch']}:\n" + format_summary(s))
        if json_out:
            atomic_write_json(json_out, {"pipeline": res})
        return
    cfg = BenchConfig(batches=batches, warmup=warmup, iterations=iterations, duration=duration, threads=threads)
    result = run_bench(arts, cfg, names)
    typer.echo(format_table(result))
    if json_out:
        atomic_write_json(json_out, result)
        typer.echo(f"results: {json_out}")
    if plots is not None or json_out is not None:
        from skipgan_edge.metrics import plots_available

        if plots_available():
            from skipgan_edge.bench.plots import latency_plots

            folder = plots if plots is not None else Path(json_out or ".").parent
            prefix = Path(json_out).stem if json_out is not None else "bench"
            typer.echo("plots: " + "  ".join(str(p) for p in latency_plots(result, folder, prefix)))
        else:
            typer.echo("plots: none (matplotlib is not installed: pip install 'skipgan-edge[plots]')")


# ----------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the data, model and reports.")] = Path("demo_out"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    fast: Annotated[bool, typer.Option(help="Tiny settings, for tests.")] = False,
) -> None:
    """Synthetic data → train → eval → export (FP32/FP16/INT8, gated) → stream a video with known defects."""
    _check(epochs=epochs)
    _check_out_folder(out)
    from skipgan_edge.demo import run_demo

    run_demo(out, epochs=epochs, fast=fast)


@app.command()
def doctor(
    require_gpu: Annotated[bool, typer.Option("--require-gpu", help="Only check the GPU stack (GPU, cuda-python, TensorRT): "
                                              "one line and a non-zero exit if any is missing (make test-gpu runs this first).")] = False,
) -> None:
    """What this machine can run: backends, providers, TensorRT, CUDA, GStreamer."""
    from skipgan_edge.doctor import gpu_stack_missing, report

    if require_gpu:
        missing = gpu_stack_missing()
        if missing:
            typer.echo("error: the GPU tests cannot run here: missing " + "; ".join(missing), err=True)
            raise typer.Exit(2)
        typer.echo("GPU stack ready: GPU, cuda-python, TensorRT")
        return
    for line in report():
        typer.echo(line)


#: The pip extra that provides each optional module (pip install skipgan-edge is the runtime only).
EXTRA_OF = {"torch": "train", "safetensors": "train", "matplotlib": "plots", "skimage": "train", "scipy": "train",
            "onnx": "export", "onnxscript": "export", "modelopt": "export", "onnxconverter_common": "export",
            "openvino": "openvino", "tensorrt": "tensorrt", "cuda": "tensorrt", "pycuda": "pycuda",
            "prometheus_client": "metrics"}


def main() -> None:
    """Entry point: run the app; a SkipganError becomes one line on stderr and a non-zero exit."""
    try:
        app()
    except SkipganError as exc:
        from skipgan_edge.logs import safe_line

        typer.echo(safe_line(f"{exc.prefix}: {exc}"), err=True)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:  # an optional dependency this verb needs and the install lacks
        top = (exc.name or "").split(".")[0]
        if top not in EXTRA_OF:
            raise
        verb = next((a for a in sys.argv[1:] if not a.startswith("-")), "this command")
        typer.echo(f"error: {verb} needs '{top}', which this install lacks: pip install 'skipgan-edge[{EXTRA_OF[top]}]'", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # a path the checks before the work did not foresee (/proc, a file made meanwhile): one line
        if exc.filename is None:
            raise
        from skipgan_edge.logs import safe_line

        path = exc.filename2 if exc.filename2 is not None else exc.filename  # a rename's target, not its staging file
        typer.echo(safe_line(f"error: {path}: {exc.strerror or exc}; choose another path, or check its permissions"), err=True)
        sys.exit(2)
