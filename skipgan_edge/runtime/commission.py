"""``skipgan-edge threshold``: re-set the alarm threshold and the score normalization from frames seen at the site.

New lighting, a new camera or a new product batch moves the normal scores; retraining for that is
out of proportion. Commissioning streams normal frames from any runtime source (folder, video,
camera for ``--frames`` frames, watch folder) through the artifact that will run on the line, and:

* sets the threshold at the ``fpr:Q`` order statistic of their raw scores
  (:func:`skipgan_edge.thresholds.fpr_threshold`): the expected false-alarm rate on further normal
  frames is (k+1)/(n+1) <= Q, reported with its 95 % interval; fewer frames than can promise Q
  are refused in one line, naming how many it needs. ``--alarms-per-hour N`` states Q in the line's
  units: Q = N / (3600 · fps), at ``--fps`` or the video's own frame rate;
* re-sets the normalization ``normalized_score`` uses, (s - min) / (max - min), to the site
  frames' min and max (so 1.0 is again "the most anomalous normal frame seen");
* gives the new setting an id, ``threshold_id`` (:func:`skipgan_edge.card.new_threshold_id`), that every
  record scored with it carries, so a trend of ``normalized_score`` can tell a re-commissioning from a drift;
* with ``--anomalous SOURCE``, reports the recall of the new threshold on those frames.

The promise assumes the frames stand for the running line. Frames that do not vary (a frozen camera, a
still scene, copies of one image) are refused in one line: fewer *different* scores (identical frames
score identically) than the rate needs, or scores spread over less than :data:`MIN_SPREAD` of the normal
spread the model's current normalization was set on.

It prints the false alarms the old and the new threshold raise on the commissioning frames themselves
(and per hour). When the new threshold raises more, nothing is written unless ``--yes`` is given;
``--dry-run`` reports and writes nothing. No question is asked: it runs unattended and under a pipe.

Every artifact given is updated with the same numbers; ``--export-dir`` names every scorer*.onnx and
*.engine of an export folder (FP32, FP16, INT8, engines):

* a model folder: the card embedded in ``model.safetensors`` (the authority) and ``model.json``;
  the tensors are not touched (the safetensors header is rewritten in place, no torch needed);
* an ONNX scorer: the two constants of the graph's ``normalized_score`` head and the card in its
  metadata (needs the ``onnx`` package: ``pip install 'skipgan-edge[onnx]'``), then checked with
  ONNX Runtime: its ``normalized_score`` must equal (score - min) / (max - min) with the new numbers;
* a TensorRT engine: its constants are compiled in and cannot change without a rebuild, so only
  its header's card changes; the card's ``score.graph_norm`` keeps the numbers the engine was built
  with, and the runtime re-normalizes its ``score`` output with the card's (``Backend.infer``).
  The engine bytes are kept exactly.

Safe under the ways a site fails: each artifact is locked for the whole run (``flock`` on the file itself:
a second run on it is refused in one line while the first holds it; ``--dry-run`` writes nothing and takes
no lock); every target is checked writable before a frame is scored; every new file is written and fsynced
before the first replaces its old one (all or nothing up to the renames); temporary files are unnamed
(O_TMPFILE) so a SIGKILL leaves none, and where the file system lacks O_TMPFILE the next run removes what a
killed one left.

``model_id`` stays that of the trained weights; the card's ``score.threshold.commissioning`` records
when, from what, how many frames, the promise, the interval and the threshold it replaced.
Scores come from one artifact: the engine if given, else the FP32 ONNX file (else another ONNX variant),
else the model folder, or the one ``--score-with`` names; FP16 and INT8 variants score within the export
gate's tolerance of FP32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import (
    CARD_NAME,
    WEIGHTS_NAME,
    ModelCard,
    StagedFile,
    Threshold,
    ValStats,
    clean_stale_temps,
    load_card,
    new_threshold_id,
    set_onnx_metadata,
    stage_bytes,
    threshold_id,
    weights_with_card,
)
from skipgan_edge.contract import PRECISION_KEY
from skipgan_edge.errors import ConfigError, MissingDependencyError, ModelFolderError
from skipgan_edge.runtime.backends import Artifact, BackendOptions, open_backend
from skipgan_edge.runtime.engine_file import MAGIC, EngineHeader, read_engine_file
from skipgan_edge.runtime.pipeline import Pipeline, PipelineConfig
from skipgan_edge.runtime.sinks import Sink
from skipgan_edge.runtime.sources import Source, SourceOptions, open_source
from skipgan_edge.thresholds import (
    DEFAULT_FPS,
    alarms_per_hour,
    format_per_hour,
    fpr_threshold,
    min_normal_images,
    order_statistic_fpr,
    rate_for_alarms_per_hour,
)

DEFAULT_FPR = 0.01
#: the order in which the artifact that scores the frames is picked: what the line runs
SCORE_WITH = ("engine", "onnx", "model")
#: the least spread (max - min) of the site's scores, as a share of the spread the current normalization was set on
#: (validation normals, or the previous commissioning): below it the frames hardly vary and cannot stand for a line. A still
#: frame with sensor noise (2 grey levels) spreads 3 % of the validation spread of the test models, normal frames of the same
#: camera over 100 %
MIN_SPREAD = 0.1


@dataclass(frozen=True)
class Target:
    """One artifact to update: ``kind`` is model, onnx or engine; ``path`` the folder or file."""

    kind: str
    path: Path

    @property
    def files(self) -> list[Path]:
        """The files commissioning rewrites."""
        return [self.path / WEIGHTS_NAME, self.path / CARD_NAME] if self.kind == "model" else [self.path]

    @property
    def lock_file(self) -> Path:
        """The file the artifact's lock is taken on (a model folder's weights: the card's authority)."""
        return self.files[0]

    @property
    def precision_rank(self) -> int:
        name = self.path.name.lower()
        return 2 if ".int8." in name else 1 if ".fp16." in name or ".bf16." in name else 0


class CommissioningRefused(ConfigError):
    """The new threshold raises the false alarms on the commissioning frames and neither --yes nor --dry-run was given;
    ``report`` is the full report (nothing was written)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class _Collect(Sink):
    name = "commissioning"
    needs_image = False

    def __init__(self) -> None:
        self.scores: list[float] = []
        self.normalized: list[float] = []

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.scores.append(float(record["score"]))
        self.normalized.append(float(record["normalized_score"]))


def source_fps(src: Source, opts: SourceOptions) -> float | None:
    """The frame rate a source delivers at: a video's own, a camera's requested one; None for folders."""
    fps = getattr(src, "fps", None) or opts.fps
    return float(fps) if fps and math.isfinite(fps) and fps > 0 else None


def collect_scores(backend: Any, spec: str, frames: int | None, mode: str, batch: int, opts: SourceOptions,
                   src: Source | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Raw scores of up to ``frames`` frames of ``spec`` through an active backend (the runtime's own pipeline);
    the summary carries ``normalized`` (the normalized scores as the line computed them, old numbers)."""
    src = src or open_source(spec, opts)
    if src.live and frames is None:
        src.close()
        raise ConfigError(f"{spec} is a live source: give --frames N (how many frames to collect)")
    sink = _Collect()
    summary = Pipeline(src, backend, [sink], PipelineConfig(batch=batch, mode=mode, max_frames=frames)).run()
    summary["normalized"] = np.asarray(sink.normalized, np.float64)
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


# ------------------------------------------------------------------------------------------------- the steps
def resolve_targets(artifacts: dict[str, Path], export_dir: Path | None) -> list[Target]:
    """Every artifact to update: those given by kind, and every scorer*.onnx and *.engine of ``export_dir``."""
    targets = [Target(kind, Path(path)) for kind, path in artifacts.items()]
    if export_dir is not None:
        export_dir = Path(export_dir)
        if not export_dir.is_dir():
            raise ConfigError(f"--export-dir {export_dir} is not a folder; give the folder skipgan-edge export wrote")
        found = [Target("onnx", p) for p in sorted(export_dir.glob("scorer*.onnx")) if not p.name.startswith(".")]
        found += [Target("engine", p) for p in sorted(export_dir.glob("*.engine")) if not p.name.startswith(".")]
        if not found:
            raise ConfigError(f"--export-dir {export_dir} holds no scorer*.onnx or *.engine; give the folder skipgan-edge export wrote")
        given = {t.path.resolve() for t in targets}
        targets += [t for t in found if t.path.resolve() not in given]
    if not targets:
        raise ConfigError("give at least one of --model RUN_DIR, --onnx FILE, --engine FILE or --export-dir DIR to re-threshold")
    return targets


def pick_scorer(targets: list[Target], score_with: str | None) -> Target:
    """The artifact that scores the frames: ``score_with`` (a kind or a file's path or name), else the engine, else the
    FP32 ONNX scorer (then FP16, INT8), else the model folder: what the line runs."""
    if score_with is not None:
        for t in targets:
            if score_with == t.kind or Path(score_with) == t.path or score_with == t.path.name:
                return t
        raise ConfigError(f"--score-with {score_with}: give that artifact too (--{score_with} PATH), or name one of "
                          + ", ".join(t.path.name for t in targets))
    return min(targets, key=lambda t: (SCORE_WITH.index(t.kind), t.precision_rank, str(t.path)))


def check_writable(targets: list[Target]) -> None:
    """One line, before a frame is scored, if any file to rewrite (or its folder) cannot be written: read-only files,
    folders and file systems, immutable files (root respects those too)."""
    for t in targets:
        if t.kind == "model" and not t.path.is_dir():
            load_card(t.path)  # its one-line error says what the folder lacks
        for f in t.files:
            if not f.exists():
                raise ConfigError(f"{f} does not exist; give an existing {t.kind} to re-threshold")
            if not os.access(f.parent, os.W_OK) or not os.access(f, os.W_OK):
                raise ConfigError(f"{f} is not writable (a read-only file, folder or file system): nothing was scored or "
                                  "changed; make it writable or leave it out")


@contextlib.contextmanager
def locked(targets: list[Target]) -> Iterator[None]:
    """An exclusive ``flock`` on every artifact for the whole commissioning; one line if another run holds one.

    The lock is on the artifact's file itself (no lock file to leave behind). A rename replaces the file, so after
    taking the lock the descriptor must still be the file under that name; if not, the lock is taken again."""
    fds: list[int] = []
    try:
        for t in targets:
            f = t.lock_file
            for _ in range(10):
                try:
                    fd = os.open(f, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise ConfigError(f"cannot open {f}: {exc.strerror or exc}") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise ConfigError(f"{t.path} is being commissioned by another skipgan-edge threshold run: nothing was "
                                      "scored or changed; wait for it to finish and run again") from None
                try:
                    same = os.fstat(fd).st_ino == os.stat(f).st_ino
                except OSError:
                    same = False
                if same:
                    fds.append(fd)
                    break
                os.close(fd)  # replaced while we waited for it: lock the new file
            else:
                raise ConfigError(f"{f} keeps being replaced by another process; stop it and run again")
        for t in targets:  # what a run killed on a file system without O_TMPFILE left (no other writer holds the lock)
            for f in t.files:
                clean_stale_temps(f)
        yield
    finally:
        for fd in fds:
            os.close(fd)


@dataclass
class SiteScores:
    """What scoring the site's frames gave: raw normal scores, their normalized scores as the line computed them
    (with the card in force), optional anomalous scores, the frame rate, and the scorer's card and name."""

    normal: np.ndarray
    normalized: np.ndarray
    unreadable: int
    anomalous: np.ndarray | None
    fps: float
    fps_from: str  # "--fps", "the source", "assumed"
    card: ModelCard
    backend: str
    probe: np.ndarray | None


def target_rate(fpr: float | None, per_hour: float | None, fps: float | None, fps_from: str, normal: str) -> float:
    """The per-frame false-alarm rate to promise: ``fpr``, or ``per_hour`` at ``fps``."""
    if per_hour is None:
        q = DEFAULT_FPR if fpr is None else fpr
        if not 0.0 < q < 0.5:
            raise ConfigError(f"--fpr must be in (0, 0.5), got {q}")
        return q
    if fpr is not None:
        raise ConfigError("give either --fpr or --alarms-per-hour, not both")
    if fps is None or fps_from == "assumed":
        raise ConfigError(f"--alarms-per-hour needs the line's frame rate and the frames of {normal} have none: give --fps F")
    q = rate_for_alarms_per_hour(per_hour, fps)
    if not q < 0.5:
        raise ConfigError(f"--alarms-per-hour {per_hour:g} at {fps:g} fps is a false alarm on every other frame or more; give fewer")
    return q


def too_few(n: int, q: float, per_hour: float | None, fps: float) -> str:
    """The one line that refuses ``n`` frames for rate ``q``, naming the frames needed (and how long that is at ``fps``)."""
    need = min_normal_images(q)
    what = (f"{per_hour:g} false alarm(s) per hour at {fps:g} fps (a per-frame rate of {q:.3g})" if per_hour is not None
            else f"a false-alarm rate of {q:g}")
    return (f"{n} normal frame(s) cannot set {what}: need at least {need} ({_duration(need / fps)} at {fps:g} fps); "
            "collect more (a longer video, more files, or a larger --frames) or " + ("allow more alarms per hour" if per_hour is not None
                                                                                   else "give a larger --fpr"))


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def score_site(scorer: Target, normal: str, anomalous: str | None, *, fpr: float | None, per_hour: float | None, fps: float | None,
               frames: int | None, mode: str, backend: str, batch: int, options: BackendOptions, source_opts: SourceOptions,
               need_probe: bool) -> tuple[SiteScores, float]:
    """Score the site's frames with the chosen artifact; returns the scores and the per-frame rate to promise."""
    with open_backend(scorer.kind, scorer.path, backend, options, batch=batch) as be:
        card = be.card
        src = open_source(normal, source_opts)
        own = source_fps(src, source_opts)
        fps_from = "--fps" if fps is not None else "the source" if own is not None else "assumed"
        line_fps = fps if fps is not None else own if own is not None else DEFAULT_FPS
        try:
            q = target_rate(fpr, per_hour, line_fps, fps_from, normal)
            if frames is not None and frames < min_normal_images(q):
                raise ConfigError(too_few(frames, q, per_hour, line_fps).replace("normal frame(s)", "frame(s) (--frames)", 1))
        except ConfigError:
            src.close()
            raise
        scores, summary = collect_scores(be, normal, frames, mode, batch, source_opts, src)
        anomalous_scores = None
        if anomalous is not None:
            anomalous_scores, _ = collect_scores(be, anomalous, frames, mode, batch, source_opts)
        probe = None
        if need_probe:  # a few frames for the rewritten graph's self-check
            probe = np.random.default_rng(0).integers(0, 256, (4, card.input.isize, card.input.isize, card.input.channels), dtype=np.uint8)
        site = SiteScores(scores, summary["normalized"], int(summary["unreadable"]), anomalous_scores, line_fps, fps_from, card,
                          be.name, probe)
    return site, q


def check_variation(site: SiteScores, q: float, normal: str, per_hour: float | None) -> None:
    """Refuse frames that cannot stand for a running line (one line): too few, too few different, or hardly varying."""
    n = len(site.normal)
    if n == 0:
        raise ConfigError(f"no frame of {normal} could be scored ({site.unreadable} unreadable); check the source")
    if n < min_normal_images(q):
        raise ConfigError(too_few(n, q, per_hour, site.fps))
    distinct = len(np.unique(site.normal.astype(np.float32)))
    if distinct < min_normal_images(q):
        raise ConfigError(f"only {distinct} of the {n} frames of {normal} score differently (identical frames: a frozen camera, a "
                          f"still scene?); a false-alarm rate of {q:.3g} needs at least {min_normal_images(q)} different normal "
                          "frames: commission on frames of the running line")
    spread, reference = float(site.normal.max() - site.normal.min()), site.card.score.val_stats.span
    if spread < MIN_SPREAD * reference:
        raise ConfigError(f"the scores of the {n} frames of {normal} hardly vary ({spread / reference:.2%} of the normal spread "
                          f"the model is set on; at least {MIN_SPREAD:.0%} expected): a frozen camera or a still scene cannot "
                          "stand for the line; commission on frames of the running line")


def set_threshold(site: SiteScores, q: float, normal: str, mode: str, scored_with: str, anomalous: str | None,
                  per_hour: float | None) -> tuple[Threshold, ValStats, dict[str, Any]]:
    """The new threshold and normalization from the site's normal scores, and the report (before/after false alarms)."""
    card, scores, n = site.card, site.normal, len(site.normal)
    raw, k = fpr_threshold(scores, q)
    expected, interval = order_statistic_fpr(k, n)
    smin, smax = float(scores.min()), float(scores.max())
    span = smax - smin if smax > smin else 1.0
    recall = float((site.anomalous > raw).mean()) if site.anomalous is not None and len(site.anomalous) else None
    old = card.score
    before = int((site.normalized > old.threshold.normalized).sum())  # as the line flagged these frames until now
    after = int((scores > raw).sum())
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tid = new_threshold_id(date, card.model_id, raw, (smin, smax), n)
    policy = f"fpr:{q:.6g}"
    commissioning = {
        "threshold_id": tid, "date": date, "normal_source": normal, "frames": n, "unreadable": site.unreadable, "mode": mode,
        "scored_with": scored_with, "promised_fpr": q, "alarms_per_hour": per_hour, "fps": site.fps, "fps_from": site.fps_from,
        "flagged_in_sample": k, "anomalous_source": anomalous, "model_id": card.model_id,
        "anomalous_frames": None if site.anomalous is None else len(site.anomalous),
        "false_alarms_before": before, "false_alarms_after": after,
        "previous": {"threshold_id": threshold_id(card), "threshold_normalized": old.threshold.normalized,
                     "threshold_raw": old.threshold.raw, "policy": old.threshold.policy or old.threshold.method,
                     "val_stats": [old.val_stats.min, old.val_stats.max]},
    }
    threshold = Threshold(
        normalized=(raw - smin) / span, raw=raw, method=f"commissioned: {policy} on {n} normal frames of {normal}",
        policy=policy, expected_fpr=expected, fpr_interval=[interval[0], interval[1]], expected_recall=recall,
        recall_source="site" if recall is not None else None, n_normal=n, commissioning=commissioning, threshold_id=tid,
    )
    stats = ValStats(min=smin, max=smax, mean=float(scores.mean()), std=float(scores.std()), n=n)
    report: dict[str, Any] = {
        "threshold_id": tid, "previous_threshold_id": threshold_id(card),  # as eval and every record named it
        "frames": n, "unreadable": site.unreadable, "promised_fpr": q, "expected_fpr": expected,
        "fpr_interval_95": list(interval), "flagged_in_sample": k, "achieved_fpr_in_sample": k / n,
        "fps": site.fps, "fps_from": site.fps_from, "alarms_per_hour_target": per_hour,
        "expected_alarms_per_hour": alarms_per_hour(expected, site.fps),
        "alarms_per_hour_interval_95": [alarms_per_hour(interval[0], site.fps), alarms_per_hour(interval[1], site.fps)],
        "false_alarms_before": before, "false_alarms_after": after,
        "false_alarms_per_hour_before": alarms_per_hour(before / n, site.fps),
        "false_alarms_per_hour_after": alarms_per_hour(after / n, site.fps),
        "threshold_raw": raw, "threshold_normalized": threshold.normalized, "normalization": [smin, smax],
        "previous_threshold_normalized": old.threshold.normalized, "previous_threshold_raw": old.threshold.raw,
        "scored_with": scored_with,
        "recall_on_anomalous": recall, "anomalous_frames": commissioning["anomalous_frames"], "updated": [],
        "model_id": card.model_id,
    }
    return threshold, stats, report


def _read_base(t: Target) -> tuple[ModelCard, EngineHeader | None, bytes | None]:
    """The artifact's card (:meth:`Artifact.read_card`, the one reader); for an engine also its typed header and plan."""
    if t.kind != "engine":
        return Artifact(t.kind, t.path).read_card(), None, None
    meta, blob = read_engine_file(t.path)
    return meta.need_card(t.path), meta, blob


def prepare_updates(targets: list[Target], card: ModelCard, stats: ValStats, threshold: Threshold,
                    probe: np.ndarray | None) -> list[tuple[Path, bytes]]:
    """Every file's new bytes, each checked (model ids agree; a rewritten graph normalizes right) before any is written."""
    pending: list[tuple[Path, bytes]] = []
    for t in targets:
        base, meta, blob = _read_base(t)
        if base.model_id is not None and card.model_id is not None and base.model_id != card.model_id:
            raise ConfigError(f"--{t.kind} {t.path} is model {base.model_id}, but the frames were scored with model {card.model_id}; "
                              "give the artifacts of one trained model")
        # the engine keeps the constants it was built with (graph_norm); the others get the new ones in their graph
        graph_norm = (base.score.graph_norm or [base.score.val_stats.min, base.score.val_stats.max]) if t.kind == "engine" else None
        new = base.replace(score=dataclasses.replace(base.score, val_stats=stats, threshold=threshold, graph_norm=graph_norm))
        if t.kind == "model":
            body = new.to_dict()
            body.pop("model_id", None)
            pending.append((t.path / WEIGHTS_NAME, weights_with_card(t.path / WEIGHTS_NAME, json.dumps(body))))
            pending.append((t.path / CARD_NAME, (json.dumps(new.to_dict(), indent=2) + "\n").encode()))
        elif t.kind == "onnx":
            data = _onnx_with(t.path, new)
            assert probe is not None
            err = _check_onnx(data, new, probe)
            if not err <= 1e-4 * max(1.0, abs(threshold.normalized)):
                raise ModelFolderError(f"{t.path}: the rewritten graph's normalized_score is off by {err:.3g}; nothing was written")
            pending.append((t.path, data))
        else:
            assert meta is not None and blob is not None
            header = json.dumps({**meta.to_dict(), "card": new.to_dict()}).encode()
            pending.append((t.path, MAGIC + struct.pack(">I", len(header)) + header + blob))
    return pending


def write_all(pending: list[tuple[Path, bytes]]) -> list[str]:
    """All or nothing: every file is written and fsynced under no name first (a full disk or an error changes nothing),
    then each is renamed over its old one."""
    staged: list[StagedFile] = []
    try:
        for path, data in pending:
            staged.append(stage_bytes(path, data))
    except BaseException:
        for s in staged:
            s.discard()
        raise
    for s in staged:
        s.commit()
    return [str(path) for path, _ in pending]


def commission(
    artifacts: dict[str, Path], normal: str, *, fpr: float | None = None, anomalous: str | None = None, frames: int | None = None,
    mode: str = "resize", backend: str = "auto", batch: int = 8, options: BackendOptions = BackendOptions(),
    source_opts: SourceOptions = SourceOptions(), dry_run: bool = False, score_with: str | None = None,
    alarms_per_hour: float | None = None, fps: float | None = None, export_dir: Path | None = None, yes: bool = False,
) -> dict[str, Any]:
    """Score the site's normal frames, set threshold and normalization, update every artifact; returns the report.

    ``fpr`` (default :data:`DEFAULT_FPR`) or ``alarms_per_hour`` at ``fps`` (default: the source's) is the promise.
    When the new threshold raises the false alarms on these frames, :class:`CommissioningRefused` (nothing written)
    unless ``yes``; ``dry_run`` writes nothing in any case."""
    if frames is not None and frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {frames}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"--fps must be a positive number, got {fps:g}")
    if fpr is not None and not 0.0 < fpr < 0.5:
        raise ConfigError(f"--fpr must be in (0, 0.5), got {fpr}")
    if alarms_per_hour is not None:
        rate_for_alarms_per_hour(alarms_per_hour, fps or DEFAULT_FPS)  # its one-line refusal of a number that is not a rate
    targets = resolve_targets(artifacts, export_dir)
    scorer = pick_scorer(targets, score_with)
    has_onnx = any(t.kind == "onnx" for t in targets)
    if has_onnx and not dry_run:  # before any frame is scored: the rewrite needs the onnx package
        _import_onnx()
    if not dry_run:
        check_writable(targets)
    with contextlib.ExitStack() as stack:
        if not dry_run:
            stack.enter_context(locked(targets))
        site, q = score_site(scorer, normal, anomalous, fpr=fpr, per_hour=alarms_per_hour, fps=fps, frames=frames, mode=mode,
                             backend=backend, batch=batch, options=options, source_opts=source_opts, need_probe=has_onnx)
        check_variation(site, q, normal, alarms_per_hour)
        scored_with = f"{scorer.kind}{'' if scorer.kind == 'model' else ' ' + scorer.path.name} ({site.backend})"
        threshold, stats, report = set_threshold(site, q, normal, mode, scored_with, anomalous, alarms_per_hour)
        report["dry_run"] = dry_run
        report["targets"] = [str(t.path) for t in targets]
        raises = report["false_alarms_after"] > report["false_alarms_before"]
        report["raises_false_alarms"] = raises
        if dry_run:
            return report
        if raises and not yes:
            n, fps_ = report["frames"], report["fps"]
            raise CommissioningRefused(
                f"the new threshold raises the false alarms on these {n} frames from {report['false_alarms_before']} to "
                f"{report['false_alarms_after']} ({format_per_hour(report['false_alarms_per_hour_before'])} -> "
                f"{format_per_hour(report['false_alarms_per_hour_after'])} per hour at {fps_:g} fps); nothing was written: "
                "pass --yes to apply it or --dry-run to only report", report)
        report["updated"] = write_all(prepare_updates(targets, site.card, stats, threshold, site.probe))
    return report


def format_report(r: dict[str, Any]) -> str:
    lo, hi = r["fpr_interval_95"]
    h_lo, h_hi = r["alarms_per_hour_interval_95"]
    fps = f"{r['fps']:g} fps" + (" assumed (--fps sets it)" if r["fps_from"] == "assumed" else "")
    target = (f"{r['alarms_per_hour_target']:g} false alarm(s) per hour at {fps}, a per-frame rate of {r['promised_fpr']:.3g}"
              if r.get("alarms_per_hour_target") is not None else f"<= {r['promised_fpr']:g}")
    lines = [
        f"{'commissioned on' if r['updated'] else 'measured on (nothing written)'} {r['frames']} normal frame(s) scored with "
        f"{r['scored_with']}" + (f" ({r['unreadable']} unreadable)" if r["unreadable"] else ""),
        # raw scores compare across the two thresholds; normalized ones do not: commissioning sets the normalization anew
        # on these frames, so a higher normalized threshold can alarm more
        "threshold: raw score " + (f"{r['previous_threshold_raw']:.6g} -> " if r.get("previous_threshold_raw") is not None else "")
        + f"{r['threshold_raw']:.6g}; normalized {r['previous_threshold_normalized']:.4f} -> {r['threshold_normalized']:.4f}, "
        f"each on its own normalization (the new one from these frames); threshold_id {r['threshold_id']}",
        f"false alarms: promised {target}, expected {r['expected_fpr']:.4f} (95 % interval {lo:.4f}-{hi:.4f}), "
        f"{r['flagged_in_sample']} of {r['frames']} collected frames flagged",
        f"false alarms per hour at {fps}: expected {format_per_hour(r['expected_alarms_per_hour'])} "
        f"(95 % interval {format_per_hour(h_lo)}-{format_per_hour(h_hi)})",
        f"on these {r['frames']} frames: {r['false_alarms_before']} false alarm(s) with the old threshold "
        f"({format_per_hour(r['false_alarms_per_hour_before'])} per hour), {r['false_alarms_after']} with the new "
        f"({format_per_hour(r['false_alarms_per_hour_after'])} per hour)",
    ]
    if r["recall_on_anomalous"] is not None:
        lines.append(f"recall on {r['anomalous_frames']} anomalous frame(s): {r['recall_on_anomalous']:.3f}")
    if r["updated"]:
        lines.append("updated: " + ", ".join(r["updated"]))
    else:
        lines.append("updated: nothing (" + ("--dry-run" if r["dry_run"] else "refused: pass --yes to apply") + ")")
    if not math.isfinite(r["threshold_raw"]):
        lines.append("warning: the threshold is not finite")
    return "\n".join(lines)
