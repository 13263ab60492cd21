"""``skipgan-edge demo`` / ``make demo``: the whole job on built-in synthetic data, on the CPU.

1. Write the synthetic brick-texture defects (MVTec layout, with masks).
2. Train a small Skip-GANomaly (isize 32, ngf = ndf = 32, 12 epochs; about a minute on 2 cores).
3. Evaluate it on the test split (AUROC, pixel AUROC, F1, plots).
4. Build a calibration set and export FP32, FP16 and INT8 scorers with the accuracy gate.
5. Write a synthetic line-camera video with defects at known frames, stream it through the FP32
   and INT8 scorers with ONNX Runtime, and compare the flagged frames with the truth.
6. Commission on the line: the camera's first 300 frames after installation (all normal) re-set the
   INT8 scorer's threshold and normalization for a promised 2 % false-alarm rate (``skipgan-edge
   threshold``), then the line video streams through it again: promised and achieved rate side by side.

Everything lands under ``--out`` (default ``demo_out/``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import typer

from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig

DEFECT_FRAMES = (20, 21, 22, 55, 90, 91, 130)


def write_demo_video(path: Path, n: int = 150, defects: tuple[int, ...] = DEFECT_FRAMES, seed: int = 7) -> Path:
    """A 64×64 video of brick crops from the validation/test region (.avi: MJPG; .mp4, .mkv, .mov, .m4v: mp4v); dark
    holes at ``defects``. Another suffix (OpenCV would pick no container and write nothing), a folder or a path OpenCV
    cannot open for writing is one line before anything is written."""
    from skipgan_edge.card import check_writable_file
    from skipgan_edge.data.synthetic import _crop, texture
    from skipgan_edge.errors import ConfigError, SinkError

    path = Path(path)
    fourcc = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "mp4v", ".mov": "mp4v", ".m4v": "mp4v"}.get(path.suffix.lower())
    if fourcc is None:
        raise ConfigError(f"--out {path}: a video is written as .avi (MJPG) or .mp4, .mkv, .mov, .m4v (mp4v); "
                          "give a file name ending in one")
    check_writable_file(path, "--out")
    rng = np.random.default_rng(seed)
    tex = texture("brick")
    h, w = tex.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 25, (64, 64))
    if not writer.isOpened():
        raise SinkError(f"OpenCV cannot write {path} ({fourcc}): its build lacks the encoder; try the other suffix (.mp4 or .avi)")
    for i in range(n):
        img = _crop(tex, rng, (int(0.6 * w), w, 0, h), 96, 64)
        if i in defects:
            cv2.circle(img, (int(rng.integers(18, 46)), int(rng.integers(18, 46))), 8, 0, -1)
        writer.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise SinkError(f"OpenCV wrote nothing to {path} (is the disk full?); free space or choose another path")
    return path


def stream_line(name: str, recs: list[dict[str, Any]], truth: set[int], summary: dict[str, Any]) -> str:
    """Step 5's line for one scorer: what it flagged against the truth, its throughput, and its processing latency
    (preprocess through sink, p50 and p99). The video is read ahead as fast as it decodes, so capture to result is
    mostly time queued behind the frames before it (runtime/pipeline.py), which says nothing about the scorer."""
    flagged = {r["frame"] for r in recs if r["anomalous"]}
    hit, fa = len(flagged & truth), len(flagged - truth)
    p = summary["latency_ms"]["processing"]
    return (f"      {name:17s} flagged {sorted(flagged)}: {hit}/{len(truth)} defects found, {fa} false alarm(s) in "
            f"{len(recs) - len(truth)} normal frames; {summary['throughput_fps']:.0f} frames/s, "
            f"processing latency p50 {p['median']:.2f} ms, p99 {p['p99']:.2f} ms ({summary['backend']})")


def run_demo(out: Path, epochs: int = 12, fast: bool = False) -> dict[str, Any]:
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic
    from skipgan_edge.evaluate import evaluate_cli
    from skipgan_edge.train.trainer import train

    t0 = time.perf_counter()
    out = Path(out)
    data_dir, run_dir, exp_dir = out / "data", out / "model", out / "export"
    for d in (data_dir, run_dir, exp_dir):
        if d.exists():
            shutil.rmtree(d)
    spec = SyntheticSpec(n_train=192, n_val_good=32, n_val_defect=4, n_test_good=40, n_test_defect=10) if fast else SyntheticSpec()
    write_synthetic(data_dir, spec)
    typer.echo(f"[1/6] synthetic data: {data_dir}")
    width = 8 if fast else 32
    cfg = RunConfig(
        model=ModelConfig(isize=32, channels=3, ngf=width, ndf=width),
        train=TrainConfig(epochs=2 if fast else epochs, batch=32 if fast else 64),
    )
    ds = load_folder(data_dir, cfg.model.isize, cfg.model.channels, seed=cfg.train.seed)
    train(ds, cfg, run_dir)
    typer.echo(f"[2/6] trained {run_dir} ({time.perf_counter() - t0:.0f} s so far)")
    rep = evaluate_cli(str(data_dir), run_dir, None, None, None)
    typer.echo(
        f"[3/6] test AUROC {rep['auroc']:.3f}"
        + (f", pixel AUROC {rep['pixel_auroc']:.3f}" if "pixel_auroc" in rep else "")
        + f", F1 {rep['f1_at_model_threshold']:.3f} at the model's threshold; plots in {Path(rep['report']).parent}"
    )
    result: dict[str, Any] = {"eval": rep}
    try:
        import modelopt  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        typer.echo("      (export extras not installed: pip install 'skipgan-edge[export]' to continue with export and run)")
        return result
    from skipgan_edge import calibration
    from skipgan_edge.errors import ExportError
    from skipgan_edge.export.api import export_all, format_table

    calib = calibration.build(str(data_dir), 256 if fast else 512, 32, 3)
    calibration.save(calib, exp_dir / "calib.npz")
    try:
        export = export_all(run_dir, exp_dir, fp16=True, int8=True, calib=exp_dir / "calib.npz")
    except ExportError as exc:
        typer.echo(f"[4/6] {exc}")
        export = json.loads((exp_dir / "export_report.json").read_text())
    typer.echo(f"[4/6] exported to {exp_dir}; accuracy gate (ONNX Runtime, test split):")
    typer.echo("      " + format_table(export).replace("\n", "\n      "))
    result["export"] = export
    video = write_demo_video(out / "line.mp4")
    from skipgan_edge.runtime.api import SinkOptions, run
    from skipgan_edge.runtime.artifact import Artifact

    typer.echo(f"[5/6] streaming {video} (defects at frames {list(DEFECT_FRAMES)}):")
    truth = set(DEFECT_FRAMES)
    for name in ("scorer.onnx", "scorer.int8.onnx"):
        path = exp_dir / name
        if not path.exists():
            continue
        jsonl = out / f"scores_{path.stem.replace('.', '_')}.jsonl"
        jsonl.unlink(missing_ok=True)
        # ONNX Runtime, the runtime every machine has (`run --backend auto` may pick OpenVINO)
        summary = run(Artifact("onnx", path), str(video), backend="onnxruntime",
                      sinks=SinkOptions(jsonl=jsonl, save_video=out / f"annotated_{path.stem}.mp4"))
        recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
        flagged = {r["frame"] for r in recs if r["anomalous"]}
        hit, fa = len(flagged & truth), len(flagged - truth)
        typer.echo(stream_line(name, recs, truth, summary))
        result[name] = {"flagged": sorted(flagged), "hits": hit, "false_alarms": fa, "summary": summary}
    int8 = exp_dir / "scorer.int8.onnx"
    if int8.exists():
        result["commissioning"] = _commission(out, int8, truth)
    typer.echo(f"demo finished in {time.perf_counter() - t0:.0f} s; everything is under {out}/")
    return result


COMMISSION_FRAMES = 300
COMMISSION_FPR = 0.02


def _commission(out: Path, scorer: Path, truth: set[int]) -> dict[str, Any]:
    """Step 6: re-threshold ``scorer`` on normal frames from the same camera, then stream the line video through it."""
    from skipgan_edge.runtime.api import SinkOptions, run
    from skipgan_edge.runtime.artifact import Artifact
    from skipgan_edge.runtime.commission import commission
    from skipgan_edge.thresholds import format_per_hour

    site = write_demo_video(out / "commissioning.mp4", COMMISSION_FRAMES, (), seed=11)  # same camera, before the line starts
    # every variant of the export gets the numbers scorer's scores set; the tour applies them even where they raise the
    # false alarms on these frames (it prints both)
    rep = commission({}, str(site), fpr=COMMISSION_FPR, backend="onnxruntime", export_dir=scorer.parent, score_with=scorer.name, yes=True)
    lo, hi = rep["fpr_interval_95"]
    # the raw score thresholds, as `threshold` prints them: the normalized ones are each on their own normalization
    # (commissioning resets it to the site's normal scores), so a lower normalized threshold can alarm less
    prev_raw = rep["previous_threshold_raw"]
    typer.echo(f"[6/6] commissioned {scorer.name} on {rep['frames']} normal frames of {site.name}: raw score threshold "
               + (f"{prev_raw:.4g} -> " if prev_raw is not None else "") + f"{rep['threshold_raw']:.4g} (normalized "
               f"{rep['previous_threshold_normalized']:.3f} -> {rep['threshold_normalized']:.3f}, each on its own normalization, "
               f"now the site's normal frames); promised false-alarm rate "
               f"<= {COMMISSION_FPR:.0%} (expected {rep['expected_fpr']:.3f}, 95 % interval {lo:.3f}-{hi:.3f}), "
               f"{format_per_hour(rep['expected_alarms_per_hour'])} false alarms per hour at {rep['fps']:g} fps")
    typer.echo(f"      on those frames: {rep['false_alarms_before']} false alarm(s) before "
               f"({format_per_hour(rep['false_alarms_per_hour_before'])} per hour), {rep['false_alarms_after']} after "
               f"({format_per_hour(rep['false_alarms_per_hour_after'])} per hour); threshold_id {rep['threshold_id']} in "
               + ", ".join(Path(p).name for p in rep["updated"]))
    jsonl = out / "scores_commissioned.jsonl"
    jsonl.unlink(missing_ok=True)
    run(Artifact("onnx", scorer), str(out / "line.mp4"), backend="onnxruntime", sinks=SinkOptions(jsonl=jsonl))
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    flagged = {r["frame"] for r in recs if r["anomalous"]}
    from skipgan_edge.thresholds import alarms_per_hour, rate_interval

    normal = len(recs) - len(truth)
    achieved = len(flagged - truth) / max(1, normal)
    a_lo, a_hi = rate_interval(len(flagged - truth), normal)
    typer.echo(f"      {scorer.name} on the line after commissioning: {len(flagged & truth)}/{len(truth)} defects found, "
               f"{len(flagged - truth)} false alarm(s) in {normal} normal frames: achieved rate {achieved:.3f} "
               f"(95 % interval {a_lo:.3f}-{a_hi:.3f} from {normal} frames), "
               f"{format_per_hour(alarms_per_hour(achieved, rep['fps']))} per hour, against the promised {COMMISSION_FPR:.3f}")
    return {**rep, "line_flagged": sorted(flagged), "line_hits": len(flagged & truth), "line_achieved_fpr": achieved}
