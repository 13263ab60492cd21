"""``skipgan-edge eval``: image AUROC, AP, recall at stated false-alarm rates, AUPRO and pixel AUROC (with masks),
the alarm at the model's threshold (false-alarm rate, recall, precision, F1, counted as the runtime flags:
``normalized_score > threshold``), ROC (operating point marked), precision-recall and histogram plots, a JSON report.

Any scorer can be evaluated: a model folder (torch), or an exported ONNX file (ONNX Runtime),
or a TensorRT engine where TensorRT exists; all go through the same report. Scores are
computed in eval mode and do not depend on batch size or order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard, atomic_write_json, threshold_id
from skipgan_edge.contract import ScoreBatch
from skipgan_edge.data.datasets import Split
from skipgan_edge.errors import DataError
from skipgan_edge.metrics import (
    aupro,
    auroc,
    average_precision,
    f1_optimal_threshold,
    plot_histogram,
    plot_pr,
    plot_roc,
    plots_available,
    recall_at_fpr,
)
from skipgan_edge.thresholds import DEFAULT_FPS, alarms_per_hour, rate_interval

#: the false-alarm rates every accuracy report states the recall at (share of normal images flagged)
ALARM_FPRS = (0.01, 0.05)

ScoreFn = Callable[[np.ndarray], ScoreBatch]

#: why an install without matplotlib writes no plots, and how to get them (the numbers never need it)
PLOTS_HINT = "matplotlib is not installed: pip install 'skipgan-edge[plots]' for ROC, precision-recall and histogram PNGs"


def threshold_origin(card: ModelCard) -> str:
    """Where the threshold in ``card`` was set, in words: ``commissioned <date>: <policy> on <n> normal frames of <source>``
    (``skipgan-edge threshold`` on the line), or ``set in training: <policy> on <n> normal validation images`` (the
    threshold training chose). Its promised false-alarm rate holds for frames like those, not for any images."""
    thr = card.score.threshold
    com = thr.commissioning
    if com:
        return (f"commissioned {com.get('date', '(date unknown)')}: {thr.policy or 'fpr'} on {com.get('frames')} normal frames of "
                f"{com.get('normal_source')}")
    return f"set in training: {thr.method}"


def evaluate_split(
    score_fn: ScoreFn, split: Split, card: ModelCard, out: Path | None = None, title: str = "", fps: float = DEFAULT_FPS,
) -> dict[str, Any]:
    """Score a labelled split and build the report; write plots and ``eval.json`` under ``out``. The false alarms at the
    model's threshold are also given per hour of a line running at ``fps`` frames a second."""
    if not split.has_anomalies or (split.labels == 0).sum() == 0:
        raise DataError("evaluation data needs both normal (test/good) and anomalous (test/<defect>) images")
    res = score_fn(split.images)
    norm = res.normalized_score.astype(np.float64)
    thr_model = card.score.threshold.normalized
    thr_best, f1_best = f1_optimal_threshold(split.labels, norm)
    # the alarm as the runtime raises it (normalized_score > threshold): what an operator meets
    flagged = norm > thr_model
    y = split.labels.astype(bool)
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    n_normal = int((~y).sum())
    op_fpr, op_recall = fp / n_normal, tp / int(y.sum())
    op_precision = tp / (tp + fp) if tp + fp else None
    lo, hi = rate_interval(fp, n_normal)  # a few dozen normal test images say little about a rate per hour
    at_model = {"fpr": op_fpr, "recall": op_recall, "precision": op_precision, "flagged": int(flagged.sum()),
                "false_alarms_per_hour": alarms_per_hour(op_fpr, fps), "fps": fps,
                "false_alarms_per_hour_interval_95": [alarms_per_hour(lo, fps), alarms_per_hour(hi, fps)]}
    report: dict[str, Any] = {
        "auroc": auroc(split.labels, res.score),
        "average_precision": average_precision(split.labels, res.score),
        # what an operator meets: the share of defects caught when at most this share of good parts raises an alarm
        "recall_at_fpr": {str(f): dict(zip(("recall", "fpr"), recall_at_fpr(split.labels, res.score, f))) for f in ALARM_FPRS},
        "n_images": len(split),
        "n_anomalous": int(split.labels.sum()),
        "f1_at_model_threshold": 2 * tp / (int(flagged.sum()) + int(y.sum())),
        "at_model_threshold": at_model,
        "model_threshold_policy": card.score.threshold.policy,
        "model_threshold": thr_model,
        "model_threshold_method": card.score.threshold.method,
        # which threshold the alarm above is judged by, and where it was set (a commissioning on the line, or training)
        "model_threshold_id": threshold_id(card),
        "model_threshold_set": threshold_origin(card),
        "f1_optimal_threshold": thr_best,
        "f1_optimal": f1_best,
        "model_id": card.model_id,
        # the score head the numbers above measure (model/networks.py head_record); None in a card from before it
        "score_head": (card.score.head or {}).get("name"),
        # the kind of bank that head scores with (gaussian or nearest), None without one
        "score_bank": card.score.bank_kind,
    }
    if split.masks is not None:
        ok = split.mask_valid if split.mask_valid is not None else np.ones(len(split), bool)
        anomalous = split.labels == 1
        report["pixel_coverage"] = {"anomalous_images": int(anomalous.sum()), "with_usable_mask": int((ok & anomalous).sum()),
                                    **(split.mask_issues or {})}
        gt = split.masks[ok].reshape(-1)
        amap = res.anomaly_map[ok, 0]
        if amap.shape[1:] != split.masks.shape[1:]:
            import cv2

            amap = np.stack([cv2.resize(m, split.masks.shape[1:][::-1], interpolation=cv2.INTER_LINEAR) for m in amap])
        if gt.any() and (~gt).any():
            # computed on the images whose masks could be read (pixel_coverage says how many); withheld if none
            report["pixel_auroc"] = auroc(gt, amap.reshape(-1))
            report["aupro"] = aupro(split.masks[ok], amap)
        cov = report["pixel_coverage"]
        if cov["with_usable_mask"] < cov["anomalous_images"]:  # said on the console, not only in eval.json
            issues = ", ".join(f"{k} {v}" for k, v in (split.mask_issues or {}).items() if v)
            logging.getLogger(__name__).warning(
                "pixel AUROC and AUPRO %s on %d of %d anomalous images' masks (%s)",
                "computed" if "pixel_auroc" in report else "withheld: no usable mask", cov["with_usable_mask"],
                cov["anomalous_images"], issues or "the others unusable")
    kinds: dict[str, list[int]] = {}
    for i, name in enumerate(split.names):
        parts = name.split("/")
        if len(parts) >= 3:
            kinds.setdefault(parts[1], []).append(i)
    per_kind = {}
    normal_idx = np.flatnonzero(split.labels == 0)
    for kind, idx in kinds.items():
        if kind == "good":
            continue
        sel = np.r_[normal_idx, idx]
        per_kind[kind] = auroc(split.labels[sel], res.score[sel])
    if per_kind:
        report["auroc_per_defect"] = per_kind
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if plots_available():
            plot_roc(split.labels, res.score, out / "roc.png", title, (op_fpr, op_recall))
            plot_pr(split.labels, res.score, out / "pr.png", title, (op_recall, op_precision) if op_precision is not None else None)
            plot_histogram(split.labels, norm, thr_model, out / "histogram.png", title)
            report["plots"] = {"roc": str(out / "roc.png"), "pr": str(out / "pr.png"), "histogram": str(out / "histogram.png")}
        else:  # the runtime install has no matplotlib: the numbers do not need it
            report["plots"] = None
            report["plots_skipped"] = PLOTS_HINT
        atomic_write_json(out / "eval.json", report)
        report["report"] = str(out / "eval.json")
    return report


def torch_score_fn(model_dir: Path, device: str = "cpu", batch: int = 256) -> tuple[ModelCard, ScoreFn]:
    from skipgan_edge.model.folder import build_scorer

    card, scorer = build_scorer(model_dir, device)
    return card, lambda imgs: scorer.score_numpy(imgs, batch=batch)


#: the batch ``eval`` scores in, and the size ``--backend auto`` times the CPU runtimes at
EVAL_BATCH = 64


def default_out(kind: str, path: Path) -> Path:
    """Where ``eval`` writes without ``--out``: a model folder's ``eval_torch/`` inside it (the folder is the training
    run's); for an ONNX file or engine ``./eval_<file stem>/`` in the current folder, never inside an export folder
    (that folder is what gets shipped to the device)."""
    if kind == "model":
        return Path(path) / "eval_torch"
    return Path.cwd() / f"eval_{Path(path).stem}"


def evaluate_cli(
    data: str, model: Path | None, onnx: Path | None, engine: Path | None, out: Path | None, device: str = "cpu",
    backend: str = "auto", threads: int = 0, fps: float = DEFAULT_FPS,
) -> dict[str, Any]:
    """Evaluate exactly one of a model folder, an ONNX scorer or a TensorRT engine on ``data``'s test split.

    Only ``test/`` is read (``data.datasets.load_test``): a device's folder with ``test/good`` and ``test/<defect>``
    is enough; the normalization and threshold come from the artifact's card. ``out`` (default: :func:`default_out`)
    is checked writable before any work."""
    from skipgan_edge.card import check_writable_folder
    from skipgan_edge.data.datasets import load_test
    from skipgan_edge.data.progress import score_in_chunks
    from skipgan_edge.errors import ConfigError
    from skipgan_edge.runtime.backends import BackendOptions, open_backend

    given = [(k, p) for k, p in (("model", model), ("onnx", onnx), ("engine", engine)) if p is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --model, --onnx or --engine")
    kind, path = given[0]
    out = Path(out) if out is not None else default_out(kind, Path(path))
    check_writable_folder(out, "--out")
    be = open_backend(kind, Path(path), backend, BackendOptions(device=device, threads=threads), batch=EVAL_BATCH)
    with be:
        card = be.card
        test = load_test(data, card.input.isize, card.input.channels)

        def score(images: np.ndarray) -> ScoreBatch:
            return score_in_chunks(lambda chunk: be.infer_all(chunk, EVAL_BATCH), images, "scoring test images", EVAL_BATCH)

        report = evaluate_split(score, test, card, out, title=f"{Path(path).name} on {Path(data).name}", fps=fps)
        report["backend"] = be.name
        report["backend_chosen_by"] = (be.chosen_by or {}).get("rule")
        report["precision"] = be.precision
        report["data"] = data
        atomic_write_json(out / "eval.json", report)
    return report
