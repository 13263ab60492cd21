"""Where results go: JSON Lines, CSV, annotated video or images, a window, and the run summary.

* JSON Lines (``--jsonl``): one object per frame, written and flushed as soon as the frame is
  scored (a killed run keeps every line written so far), with at least ``source``, ``frame``,
  ``timestamp``, ``score``, ``normalized_score``, ``anomalous``, ``where``, ``event``, ``latency_ms``. The frames of
  one batch are scored together, so their lines are written and flushed together.
* CSV (``--csv``): the same columns, flushed likewise.
* ``--save-video FILE``: annotated video (mp4v), heatmap overlaid, score and verdict drawn.
* ``--save-images DIR``: the same annotation, one PNG per frame.
* ``--show``: a window (needs a display and an OpenCV with GUI support).

A sink that fails (disk full, unwritable path) stops the run: the pipeline flushes and closes
the other sinks first, then exits with one line naming the sink and the reason.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skipgan_edge.card import stage_bytes
from skipgan_edge.data.images import opencv_path
from skipgan_edge.errors import ConfigError, SinkError

#: version of the record and summary format: skipgan_edge/schemas/record.schema.json and summary.schema.json
SCHEMA_VERSION = 1
FIELDS = ["schema", "camera", "source", "frame", "file", "timestamp", "time", "model_id", "threshold", "threshold_id", "score",
          "normalized_score", "anomalous", "bbox", "where", "event", "latency_ms"]
CSV_FIELDS = [*FIELDS, "tile"]
#: a record's per-stage timings (``stages_ms``); ``queue_wait`` is the time a frame waited for the batcher
STAGE_FIELDS = ("capture", "preprocess", "queue_wait", "infer", "postprocess")

#: the heatmap's full-red level for cards written before ``map_scale`` existed: the map is a squared error of
#: pixels in [-1, 1], and a visible defect is well above 0.5 while a normal reconstruction stays far below it
DEFAULT_MAP_SCALE = 0.5

_encode = json.JSONEncoder(check_circular=False).encode  # records are plain trees: no cycle check per line
# JSON string literal, ASCII only (C-accelerated): a name with a newline, U+2028 or bytes that are not UTF-8
# (surrogateescape) is escaped losslessly, never written raw, so no name can break a line or the encoding
_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_FAST_KEYS = frozenset([*FIELDS, "stages_ms"])
_STAGE_SET = frozenset(STAGE_FIELDS)
_FAST_LINE = (
    '{"schema": %d, "camera": %s, "source": %s, "frame": %d, "file": %s, "timestamp": %r, "time": %s, "model_id": %s, '
    '"threshold": %r, "threshold_id": %s, "score": %r, "normalized_score": %r, "anomalous": %s, "bbox": %s, "where": %s, "event": %s, '
    '"latency_ms": %r, "stages_ms": {"capture": %.4f, "preprocess": %.4f, "queue_wait": %.4f, "infer": %.4f, "postprocess": %.4f}}\n'
)


def _box(box: list[int]) -> str:
    return f"[{box[0]:d}, {box[1]:d}, {box[2]:d}, {box[3]:d}]"


def _fast_where(w: Any) -> str | None:
    """``where`` formatted directly when it is one of the usual forms (None, "latent", a bbox alone), else None."""
    if w is None:
        return "null"
    if w == "latent":
        return '"latent"'
    if type(w) is dict and w.keys() == {"bbox"}:
        return '{"bbox": ' + _box(w["bbox"]) + "}"
    return None


def check_camera_id(camera: str) -> str:
    """A camera id is a record field, an MQTT topic level and a metrics label: non-empty, printable ASCII, no / + #."""
    if not camera or len(camera) > 64 or not camera.isascii() or not camera.isprintable() or any(c in camera for c in "/+# "):
        raise ConfigError(f"--camera-id {camera!r}: give 1-64 printable ASCII characters without spaces, / + or #")
    return camera


_second: tuple[int, str] = (-1, "")  # the last whole second formatted and its text (one tuple: threads read it whole)


def iso_time(ts: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-28T21:53:46.123Z (the date and time part is formatted once per second)."""
    global _second
    sec = int(ts)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{int((ts - sec) * 1000):03d}Z"


def jsonl_line(r: dict[str, Any]) -> str:
    """One record as a line of JSON, stage timings to 0.1 µs. The pipeline's usual record (the
    fields above, finite numbers) is formatted directly: json.dumps with rounding spent 6.1 µs per
    record, half of the main thread's own work per frame; the direct formatting a third of that. Any other
    record (tiles, non-finite scores) goes through json; both give the same parsed values."""
    st = r.get("stages_ms")
    if r.keys() == _FAST_KEYS and type(st) is dict and st.keys() == _STAGE_SET and math.isfinite(r["score"]) \
            and math.isfinite(r["normalized_score"]) and math.isfinite(r["threshold"]) and (w := _fast_where(r["where"])) is not None:
        f, mid, box, ev = r["file"], r["model_id"], r["bbox"], r["event"]
        return _FAST_LINE % (
            r["schema"], _string(r["camera"]), _string(r["source"]), r["frame"], "null" if f is None else _string(f),
            float(r["timestamp"]), _string(r["time"]), "null" if mid is None else _string(mid), float(r["threshold"]),
            _string(r["threshold_id"]),
            float(r["score"]), float(r["normalized_score"]), "true" if r["anomalous"] else "false",
            "null" if box is None else _box(box), w, "null" if ev is None else f"{ev:d}", float(r["latency_ms"]),
            st["capture"], st["preprocess"], st["queue_wait"], st["infer"], st["postprocess"],
        )
    if type(st) is dict:
        r = {**r, "stages_ms": {k: round(v, 4) for k, v in st.items()}}
    return _encode(r) + "\n"


def csv_row(r: dict[str, Any]) -> dict[str, Any]:
    """The record's CSV cells: booleans as true/false, the box as "x0 y0 x1 y1", the worst tile as "row col", ``where``
    as ``bbox`` (the box is in its column), ``tile`` (a tile without a box), ``latent`` or empty (a normal frame)."""
    row = {k: r.get(k) for k in FIELDS}
    row["anomalous"] = "true" if r["anomalous"] else "false"
    row["bbox"] = "" if r.get("bbox") is None else " ".join(str(v) for v in r["bbox"])
    w = r.get("where")
    row["where"] = "" if w is None else w if isinstance(w, str) else "bbox" if "bbox" in w else "tile"
    row["event"] = "" if r.get("event") is None else r["event"]
    t = r.get("tiles")
    row["tile"] = "" if not t else f"{t['worst'] // t['cols']} {t['worst'] % t['cols']}"
    return row


class Sink:
    name = "sink"

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        raise NotImplementedError

    def write_batch(self, records: list[dict[str, Any]], views: list[np.ndarray] | None, maps: list[np.ndarray] | None) -> None:
        """A batch's results, in frame order (views and maps are None when no sink draws)."""
        for i, rec in enumerate(records):
            self.write(rec, views[i] if views is not None else None, maps[i] if maps is not None else None)

    def close(self) -> None:
        pass

    # hooks for sinks that report on the run itself (metrics); the pipeline calls them only where overridden
    def started(self, model_id: str | None, backend: str, precision: str, threshold: float) -> None:
        """The run starts: what scores it."""

    def counts(self, dropped: int, unreadable: int) -> None:
        """After each batch: totals so far of the frames no sink sees (dropped, unreadable)."""

    def events(self, messages: list[dict[str, Any]]) -> None:
        """After a batch's records: the alarm events' start and end messages it caused (runtime/events.py), in order;
        at the end of a run, the end of each event still open."""


def _fail(sink: Sink, exc: OSError) -> SinkError:
    if exc.errno == errno.EPIPE:
        return SinkError(f"{sink.name} sink failed: the reader of the pipe went away (broken pipe)")
    return SinkError(f"{sink.name} sink failed: {exc.strerror or exc}; free disk space or choose another path")


class JsonlSink(Sink):
    """One JSON record per line, a batch per ``write`` system call, never a partial record on disk.

    A write that fails or comes up short (disk full, file-size limit) is cut back to the end of the last
    whole record (``ftruncate``) before the run stops with one line; every line in the file parses.
    """

    needs_image = False

    def __init__(self, path: Path) -> None:
        self.name = f"JSONL {path}"
        self.stdout = str(path) == "-"  # --jsonl -: records to standard output (the summary then goes to stderr)
        try:
            if self.stdout:
                self.fd = os.dup(1)
            else:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise _fail(self, exc) from None

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.write_batch([record], None, None)

    def write_batch(self, records: list[dict[str, Any]], views: list[np.ndarray] | None, maps: list[np.ndarray] | None) -> None:
        data = "".join([jsonl_line(r) for r in records]).encode("ascii")
        start = 0 if self.stdout else os.lseek(self.fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as exc:
            if not self.stdout:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, start)  # no partial record left behind
            raise _fail(self, exc) from None

    def close(self) -> None:
        try:
            if not self.stdout:
                os.fsync(self.fd)
        except OSError:
            pass
        finally:
            os.close(self.fd)


class CsvSink(Sink):
    """The records' fields as CSV rows, flushed after each batch."""

    needs_image = False

    def __init__(self, path: Path) -> None:
        self.name = f"CSV {path}"
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            new = not Path(path).exists() or Path(path).stat().st_size == 0
            # surrogateescape: a file name that is not UTF-8 is written back as its original bytes, never an error
            self.fh = open(path, "a", newline="", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed in close()
            self.w = csv.DictWriter(self.fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new:
                self.w.writeheader()
        except OSError as exc:
            raise _fail(self, exc) from None

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.write_batch([record], None, None)

    def write_batch(self, records: list[dict[str, Any]], views: list[np.ndarray] | None, maps: list[np.ndarray] | None) -> None:
        try:
            self.w.writerows([csv_row(r) for r in records])
            self.fh.flush()
        except OSError as exc:
            raise _fail(self, exc) from None

    def close(self) -> None:
        self.fh.close()


#: the heatmap's full-red level is 1.5x the normal validation maps' p99 peak (card ``score.map_scale``): a region is
#: outlined where the map exceeds that p99 peak itself, i.e. where no normal validation image's map reached
OUTLINE_OF_VMAX = 1 / 1.5


def annotate(view: np.ndarray, amap: np.ndarray, record: dict[str, Any], vmax: float) -> np.ndarray:
    """The frame with the anomaly map as a JET overlay (fixed scale: ``vmax`` is always full red), score and verdict
    drawn, and on an anomalous frame the region above the normal maps' peak level outlined in white."""
    base = view if view.ndim == 3 and view.shape[2] == 3 else cv2.cvtColor(view, cv2.COLOR_GRAY2BGR)
    level = np.clip(amap / max(vmax, 1e-12), 0, 1)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    if base.shape[1] < 256:  # small frames are drawn at 256 px wide so that the text is legible
        f = 256 / base.shape[1]
        base = cv2.resize(base, (256, round(base.shape[0] * f)), interpolation=cv2.INTER_LINEAR)
    if heat.shape[:2] != base.shape[:2]:
        heat = cv2.resize(heat, (base.shape[1], base.shape[0]))
    out = cv2.addWeighted(base, 0.6, heat, 0.4, 0)
    if record["anomalous"]:
        region: Any = (level >= OUTLINE_OF_VMAX).astype(np.uint8)
        if region.shape[:2] != out.shape[:2]:
            region = cv2.resize(region, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 2, cv2.LINE_AA)
    scale = max(1.2, base.shape[1] / 320)
    verdict = "ANOMALY" if record["anomalous"] else "ok"
    if record.get("where") == "latent":  # nothing to outline: say which term fired
        verdict = "ANOMALY (latent)"
    color = (0, 0, 255) if record["anomalous"] else (0, 200, 0)
    cv2.putText(out, f"{verdict} {record['normalized_score']:.2f}", (4, int(16 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * scale, color, max(1, int(scale)), cv2.LINE_AA)
    return out


class VideoSink(Sink):
    needs_image = True

    def __init__(self, path: Path, fps: float = 25.0, vmax: float = 1.0) -> None:
        self.name = f"video {path}"
        self.path, self.fps, self.vmax = Path(path), fps, vmax
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.cv_path = opencv_path(self.path, SinkError)
        self.written = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(self, exc) from None

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        if view is None or amap is None:
            return
        img = annotate(view, amap, record, self.vmax)
        if self.writer is None:
            self.size = (img.shape[1], img.shape[0])
            self.writer = cv2.VideoWriter(self.cv_path, cv2.VideoWriter.fourcc(*"mp4v"), self.fps, self.size)
            if not self.writer.isOpened():
                raise SinkError(f"{self.name} sink failed: OpenCV cannot write mp4v to {self.path}; check the folder is writable")
        if (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size)
        self.writer.write(img)
        self.written += 1

    def close(self) -> None:
        """Release the writer, then check the file holds every frame: OpenCV's writer reports no write errors,
        so a full disk would otherwise leave an unplayable file behind a successful run."""
        if self.writer is None:
            return
        self.writer.release()
        cap = cv2.VideoCapture(self.cv_path)
        found = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
        if found < self.written:
            raise SinkError(f"{self.name} sink failed: the file holds {found} of the {self.written} frames written "
                            "(disk full or the file cannot grow); free disk space or choose another path")


class ImageFolderSink(Sink):
    """An annotated PNG per frame: ``FRAME_STEM.png`` (``frame_FRAME.png`` without a file name). A file is never
    replaced: when a restarted run meets a name an earlier run wrote, the new image is ``FRAME_STEM.1.png`` (then
    ``.2``...). Each PNG is written under no name and linked into place complete (``card.StagedFile``), so a full disk
    or a killed run leaves no partial PNG."""

    needs_image = True

    def __init__(self, folder: Path, vmax: float = 1.0) -> None:
        self.name = f"images {folder}"
        self.folder, self.vmax = Path(folder), vmax
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(self, exc) from None

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        if view is None or amap is None:
            return
        # the frame index first: two files with the same stem (two folders, two suffixes) never share an image
        stem = f"{record['frame']:06d}_{Path(record['file']).stem}" if record.get("file") else f"frame_{record['frame']:06d}"
        path = self.folder / f"{stem}.png"
        ok, buf = cv2.imencode(".png", annotate(view, amap, record, self.vmax))  # encoded in memory: any file name works
        if not ok:
            raise SinkError(f"{self.name} sink failed: OpenCV could not encode frame {record['frame']}")
        try:
            stage_bytes(path, buf.tobytes()).commit_new()
        except SinkError as exc:
            raise SinkError(f"{self.name} sink failed: {exc}") from None


class ShowSink(Sink):
    needs_image = True
    name = "window"

    def __init__(self, vmax: float = 1.0) -> None:
        self.vmax = vmax
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            raise SinkError("--show needs a display (DISPLAY is not set); use --save-video or --save-images instead")
        try:
            cv2.namedWindow("skipgan-edge", cv2.WINDOW_NORMAL)
        except cv2.error:
            raise SinkError("--show needs OpenCV with GUI support (pip's headless build has none): pip install opencv-python") from None

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        if view is None or amap is None:
            return
        cv2.imshow("skipgan-edge", annotate(view, amap, record, self.vmax))
        cv2.waitKey(1)

    def close(self) -> None:
        cv2.destroyAllWindows()
