"""``skipgan-edge threshold``: re-set the alarm threshold and the score normalization from frames seen at the site.

New lighting, a new camera or a new product batch moves the normal scores; retraining for that is
out of proportion. Commissioning streams normal frames from any runtime source (folder, video,
camera for ``--frames`` frames, watch folder) through the artifact that will run on the line, and:

* sets the threshold at the ``fpr:Q`` order statistic of their raw scores
  (:func:`skipgan_edge.thresholds.fpr_threshold`): the expected false-alarm rate on further normal
  frames is (k+1)/(n+1) <= Q, reported with its 95 % interval; fewer frames than can promise Q
  are refused in one line;
* re-sets the normalization ``normalized_score`` uses, (s - min) / (max - min), to the site
  frames' min and max (so 1.0 is again "the most anomalous normal frame seen");
* with ``--anomalous SOURCE``, reports the recall of the new threshold on those frames.

Every artifact given is updated, atomically, with the same numbers:

* a model folder: the card embedded in ``model.safetensors`` (the authority) and ``model.json``;
  the tensors are not touched (the safetensors header is rewritten in place, no torch needed);
* an ONNX scorer: the two constants of the graph's ``normalized_score`` head and the card in its
  metadata (needs the ``onnx`` package: ``pip install 'skipgan-edge[onnx]'``), then checked with
  ONNX Runtime: its ``normalized_score`` must equal (score - min) / (max - min) with the new numbers;
* a TensorRT engine: its constants are compiled in and cannot change without a rebuild, so only
  its header's card changes; the card's ``score.graph_norm`` keeps the numbers the engine was built
  with, and the runtime re-normalizes its ``score`` output with the card's (``Backend.infer``).
  The engine bytes are kept exactly.

``model_id`` stays that of the trained weights; the card's ``score.threshold.commissioning`` records
when, from what, how many frames, the promise, the interval and the threshold it replaced.
Scores come from one artifact: the engine if given, else the ONNX file, else the model folder
(the one the line runs); FP16 and INT8 variants score within the export gate's tolerance of FP32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import (
    CARD_NAME,
    WEIGHTS_NAME,
    ModelCard,
    Threshold,
    ValStats,
    atomic_write_bytes,
    set_onnx_metadata,
    weights_with_card,
)
from skipgan_edge.contract import PRECISION_KEY
from skipgan_edge.errors import ConfigError, MissingDependencyError, ModelFolderError
from skipgan_edge.runtime.backends import Artifact, BackendOptions, open_backend
from skipgan_edge.runtime.engine_file import MAGIC, read_engine_file
from skipgan_edge.runtime.pipeline import Pipeline, PipelineConfig
from skipgan_edge.runtime.sinks import Sink
from skipgan_edge.runtime.sources import SourceOptions, open_source
from skipgan_edge.thresholds import fpr_threshold, min_normal_images, order_statistic_fpr

DEFAULT_FPR = 0.01
#: the order in which the artifact that scores the frames is picked: what the line runs
SCORE_WITH = ("engine", "onnx", "model")


class _Collect(Sink):
    name = "commissioning"
    needs_image = False

    def __init__(self) -> None:
        self.scores: list[float] = []

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.scores.append(float(record["score"]))


def collect_scores(backend: Any, spec: str, frames: int | None, mode: str, batch: int, opts: SourceOptions) -> tuple[np.ndarray, dict[str, Any]]:
    """Raw scores of up to ``frames`` frames of ``spec`` through an active backend (the runtime's own pipeline)."""
    src = open_source(spec, opts)
    if src.live and frames is None:
        src.close()
        raise ConfigError(f"{spec} is a live source: give --frames N (how many frames to collect)")
    sink = _Collect()
    summary = Pipeline(src, backend, [sink], PipelineConfig(batch=batch, mode=mode, max_frames=frames)).run()
    return np.asarray(sink.scores, np.float64), summary


def _normalization_constants(model: Any) -> tuple[Any, Any]:
    """The Constant nodes (or initializers) of ``normalized_score = (score - MIN) * INV_SPAN`` in an exported graph."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}

    def const(name: str) -> Any:
        if name in inits:
            return inits[name]
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return next(a.t for a in node.attribute if a.name == "value")
        return None

    mul = producer.get("normalized_score")
    if mul is None or mul.op_type != "Mul":
        raise ModelFolderError("this ONNX file's normalized_score is not (score - min) * (1 / span): re-export it with skipgan-edge export")
    sub_name = next((i for i in mul.input if const(i) is None), None)
    inv = next((const(i) for i in mul.input if const(i) is not None), None)
    sub = producer.get(sub_name or "")
    if sub is None or sub.op_type != "Sub" or sub.input[0] != "score" or const(sub.input[1]) is None or inv is None:
        raise ModelFolderError("this ONNX file's normalized_score is not (score - min) * (1 / span): re-export it with skipgan-edge export")
    return const(sub.input[1]), inv


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("threshold --onnx rewrites the graph's constants and needs the onnx package: "
                                     "pip install 'skipgan-edge[onnx]'") from None
    return onnx


def _onnx_with(path: Path, card: ModelCard) -> bytes:
    onnx = _import_onnx()
    from onnx import numpy_helper

    m = onnx.load(str(path))
    c_min, c_inv = _normalization_constants(m)
    vs = card.score.val_stats
    for tensor, value in ((c_min, vs.min), (c_inv, 1.0 / vs.span)):
        old = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(np.full(old.shape, value, old.dtype), tensor.name))
    set_onnx_metadata(m, card, next((p.value for p in m.metadata_props if p.key == PRECISION_KEY), "fp32"))
    out: bytes = m.SerializeToString()
    return out


def _check_onnx(data: bytes, card: ModelCard, images: np.ndarray) -> float:
    """ONNX Runtime on the rewritten graph: max |normalized - (score - min)/span| over ``images``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    score, _, norm = sess.run(["score", "anomaly_map", "normalized_score"], {"images": images})
    vs = card.score.val_stats
    return float(np.abs(norm - (score - vs.min) / vs.span).max())


def commission(
    artifacts: dict[str, Path], normal: str, *, fpr: float = DEFAULT_FPR, anomalous: str | None = None, frames: int | None = None,
    mode: str = "resize", backend: str = "auto", batch: int = 8, options: BackendOptions = BackendOptions(),
    source_opts: SourceOptions = SourceOptions(), dry_run: bool = False, score_with: str | None = None,
) -> dict[str, Any]:
    """Score the site's normal frames, set threshold and normalization, update every artifact; returns the report."""
    if not artifacts:
        raise ConfigError("give at least one of --model RUN_DIR, --onnx FILE or --engine FILE to re-threshold")
    if not 0.0 < fpr < 0.5:
        raise ConfigError(f"--fpr must be in (0, 0.5), got {fpr}")
    if frames is not None and frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {frames}")
    if score_with is not None and score_with not in artifacts:
        raise ConfigError(f"--score-with {score_with}: give that artifact too (--{score_with} PATH)")
    kind = score_with or next(k for k in SCORE_WITH if k in artifacts)
    if "onnx" in artifacts and not dry_run:  # before any frame is scored: the rewrite needs the onnx package
        _import_onnx()
    with open_backend(kind, artifacts[kind], backend, options, batch=batch) as be:
        card = be.card
        normal_scores, normal_summary = collect_scores(be, normal, frames, mode, batch, source_opts)
        anomalous_scores = None
        if anomalous is not None:
            anomalous_scores, _ = collect_scores(be, anomalous, frames, mode, batch, source_opts)
        probe = None
        if "onnx" in artifacts:  # a few real frames for the rewritten graph's self-check
            probe = np.random.default_rng(0).integers(0, 256, (4, card.input.isize, card.input.isize, card.input.channels), dtype=np.uint8)
        backend_name = be.name
    n = len(normal_scores)
    if n == 0:
        raise ConfigError(f"no frame of {normal} could be scored ({normal_summary['unreadable']} unreadable); check the source")
    if n < min_normal_images(fpr):
        raise ConfigError(f"{n} normal frame(s) cannot set a false-alarm rate of {fpr:g}: need at least {min_normal_images(fpr)}; "
                          "collect more (a longer video, more files, or a larger --frames) or give a larger --fpr")
    raw, k = fpr_threshold(normal_scores, fpr)
    expected, interval = order_statistic_fpr(k, n)
    smin, smax = float(normal_scores.min()), float(normal_scores.max())
    span = smax - smin if smax > smin else 1.0
    recall = float((anomalous_scores > raw).mean()) if anomalous_scores is not None and len(anomalous_scores) else None
    old = card.score
    commissioning = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "normal_source": normal, "frames": n,
        "unreadable": int(normal_summary["unreadable"]), "mode": mode, "scored_with": f"{kind} ({backend_name})",
        "promised_fpr": fpr, "flagged_in_sample": k, "anomalous_source": anomalous, "model_id": card.model_id,
        "anomalous_frames": None if anomalous_scores is None else len(anomalous_scores),
        "previous": {"threshold_normalized": old.threshold.normalized, "threshold_raw": old.threshold.raw,
                     "policy": old.threshold.policy or old.threshold.method, "val_stats": [old.val_stats.min, old.val_stats.max]},
    }
    threshold = Threshold(
        normalized=(raw - smin) / span, raw=raw, method=f"commissioned: fpr:{fpr:g} on {n} normal frames of {normal}",
        policy=f"fpr:{fpr:g}", expected_fpr=expected, fpr_interval=[interval[0], interval[1]], expected_recall=recall,
        recall_source="site" if recall is not None else None, n_normal=n, commissioning=commissioning,
    )
    stats = ValStats(min=smin, max=smax, mean=float(normal_scores.mean()), std=float(normal_scores.std()), n=n)
    report: dict[str, Any] = {
        "frames": n, "unreadable": int(normal_summary["unreadable"]), "promised_fpr": fpr, "expected_fpr": expected,
        "fpr_interval_95": list(interval), "flagged_in_sample": k, "achieved_fpr_in_sample": k / n,
        "threshold_raw": raw, "threshold_normalized": threshold.normalized, "normalization": [smin, smax],
        "previous_threshold_normalized": old.threshold.normalized, "scored_with": commissioning["scored_with"],
        "recall_on_anomalous": recall, "anomalous_frames": commissioning["anomalous_frames"], "dry_run": dry_run, "updated": [],
        "model_id": card.model_id,
    }
    if dry_run:
        return report
    # every file is prepared and checked before the first one changes; each write is atomic
    pending: list[tuple[Path, bytes]] = []
    for what, path in artifacts.items():
        base = Artifact(what, path).read_card()
        if what == "engine":
            meta, blob = read_engine_file(path)
        if base.model_id is not None and card.model_id is not None and base.model_id != card.model_id:
            raise ConfigError(f"--{what} {path} is model {base.model_id}, but the frames were scored with model {card.model_id}; "
                              "give the artifacts of one trained model")
        # the engine keeps the constants it was built with (graph_norm); the others get the new ones in their graph
        graph_norm = (base.score.graph_norm or [base.score.val_stats.min, base.score.val_stats.max]) if what == "engine" else None
        new = base.replace(score=dataclasses.replace(base.score, val_stats=stats, threshold=threshold, graph_norm=graph_norm))
        if what == "model":
            body = new.to_dict()
            body.pop("model_id", None)
            pending.append((path / WEIGHTS_NAME, weights_with_card(path / WEIGHTS_NAME, json.dumps(body))))
            pending.append((path / CARD_NAME, (json.dumps(new.to_dict(), indent=2) + "\n").encode()))
        elif what == "onnx":
            data = _onnx_with(path, new)
            assert probe is not None
            err = _check_onnx(data, new, probe)
            if not err <= 1e-4 * max(1.0, abs(threshold.normalized)):
                raise ModelFolderError(f"{path}: the rewritten graph's normalized_score is off by {err:.3g}; nothing was written")
            pending.append((path, data))
        else:
            header = json.dumps({**meta, "card": new.to_dict()}).encode()
            pending.append((path, MAGIC + struct.pack(">I", len(header)) + header + blob))
    for path, data in pending:
        atomic_write_bytes(path, data)
        report["updated"].append(str(path))
    return report


def format_report(r: dict[str, Any]) -> str:
    lo, hi = r["fpr_interval_95"]
    lines = [
        f"commissioned on {r['frames']} normal frame(s) scored with {r['scored_with']}"
        + (f" ({r['unreadable']} unreadable)" if r["unreadable"] else ""),
        f"threshold {r['threshold_normalized']:.4f} normalized (was {r['previous_threshold_normalized']:.4f}), raw {r['threshold_raw']:.6g}",
        f"false alarms: promised <= {r['promised_fpr']:g}, expected {r['expected_fpr']:.4f} (95 % interval {lo:.4f}-{hi:.4f}), "
        f"{r['flagged_in_sample']} of {r['frames']} collected frames flagged",
    ]
    if r["recall_on_anomalous"] is not None:
        lines.append(f"recall on {r['anomalous_frames']} anomalous frame(s): {r['recall_on_anomalous']:.3f}")
    lines.append("updated: " + (", ".join(r["updated"]) if r["updated"] else "nothing (--dry-run)"))
    if not math.isfinite(r["threshold_raw"]):
        lines.append("warning: the threshold is not finite")
    return "\n".join(lines)
