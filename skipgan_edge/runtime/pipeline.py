"""capture thread → bounded queue → batcher → backend → sinks.

* The capture thread reads the source, decodes and preprocesses each frame (so that decoding
  overlaps inference) and hands it on: a bounded blocking queue for files, folders and watch
  folders (never drops); a one-slot "newest frame" mailbox for live sources (a new frame
  replaces an unconsumed one, and the replacement is counted as dropped).
* The batcher takes the first waiting frame, then more until ``batch`` frames or ``max_wait_ms``
  after the first; the backend scores all their inputs in one call (tiles included).
* Every frame keeps its source, index and capture time; its record carries per-stage timings:
  capture (read + decode; for a real-time source from the frame's arrival, the wait for it not
  counted), preprocess, queue_wait (waiting in the queue for the batcher), infer (transfer +
  compute), postprocess (splitting, stitching), and, in the summary only, sink (writing every
  sink): a record is what the sinks write, so it is complete before its own sink time is known.
  infer, postprocess and sink are the batch's times: every frame of a batch waits for all of
  them. Results of a batch are handed to each sink together (``Sink.write_batch``): the JSONL
  sink writes and flushes them in one system call, so a record is on disk as soon as its batch
  is scored.
* Latency that means what it says. ``total`` is capture to result: the record's ``latency_ms``, taken
  when the record is made, before the sinks (the summary's ``total`` summarizes exactly those values,
  as Prometheus's ``total`` does); ``processing`` is the frame's own work, preprocess through sink,
  without the queue wait. A
  real-time source (a camera, RTSP, ``csi://``, ``genicam://``, a ``gst:`` pipeline, a video with
  ``--replay-fps``: frames come at the pace of the world) is headlined by ``total``; a video file,
  folder or watch folder by ``processing``: they are read ahead as fast as they decode into a
  32-frame queue, so their ``total`` is mostly ``queue_wait``, time that says how far ahead the
  reader got, not how fast a frame is scored. The summary names the headline (``headline_latency``).
* Alarm events (``debounce``, runtime/events.py): each record carries ``event`` (the id of the alarm
  event open when it was scored, or null) and, on anomalous frames, ``where`` (:func:`where`); the
  events' start and end messages go to the sinks that take them (``Sink.events``: MQTT, metrics).
* SIGINT / SIGTERM: stop capture, finish the frames already captured, flush and close every
  sink, write the summary, return normally (exit 0).
* A sink error stops the run after the other sinks are flushed and closed.

Memory is bounded: records are not kept; latency statistics use a fixed-size reservoir.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard, atomic_write_json, threshold_id
from skipgan_edge.errors import SinkError, SkipganError
from skipgan_edge.logs import redact
from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.events import EventTracker
from skipgan_edge.runtime.preprocess import Prepared, Preprocessor, combine, locate, prepare_frame
from skipgan_edge.runtime.sinks import DEFAULT_MAP_SCALE, OUTLINE_OF_VMAX, SCHEMA_VERSION, Sink, iso_time
from skipgan_edge.runtime.sources import Frame, Source
from skipgan_edge.runtime.stats import Reservoir

log = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "queue_wait", "infer", "postprocess", "sink", "processing", "total")


@dataclass(frozen=True)
class PipelineConfig:
    batch: int = 1  # frames per backend call
    max_wait_ms: float = 5.0  # how long the batcher waits for more frames after the first
    queue_size: int = 32  # bounded queue between capture and batcher (files, folders, watch); at least 2 batches
    threshold: float | None = None  # normalized-score threshold; None = the model card's
    mode: str = "resize"  # resize, crop or tiles (see preprocess.py)
    overlap: float = 0.25  # tile overlap
    max_frames: int | None = None  # stop after this many frames (None = until the source ends)
    camera: str = "cam0"  # this camera's id, in every record, the summary, MQTT topics and metrics labels
    debounce: int = 1  # an alarm event opens after this many consecutive anomalous frames, closes after as many normal ones


class _Channel:
    """What the capture thread and the batcher share: a condition, the end flag, the drop count."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ended = False
        self.dropped = 0

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()


class FrameQueue(_Channel):
    """Bounded FIFO between capture and batcher for sources that never drop (files, folders, watch).

    ``take`` hands over up to ``n`` frames under one lock and wakes the batcher only when what it
    waits for is there, not once per frame. ``put`` blocks when the queue is full until it has
    drained to half (hysteresis): the capture thread then decodes in bursts of half a queue
    instead of being woken for every frame the model consumes (at batch 1 that was one thread
    wake-up and GIL hand-over per frame, competing with the model for the same cores)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.items: deque[Any] = deque()
        self.maxsize = max(1, maxsize)
        self.resume_at = self.maxsize // 2  # a blocked put continues once this few frames wait
        self.blocked = False
        self.want = 0  # frames the batcher is waiting for (0: it is not waiting, nobody to wake)

    def put(self, item: Any, stop: threading.Event) -> None:
        with self.cond:
            if len(self.items) >= self.maxsize:
                self.blocked = True
                while len(self.items) > self.resume_at and not stop.is_set():
                    self.cond.wait(0.1)
                self.blocked = False
                if stop.is_set():
                    return
            self.items.append(item)
            if self.want and len(self.items) >= self.want:
                self.cond.notify_all()

    def take(self, n: int, timeout: float, max_wait: float) -> tuple[list[Any], bool]:
        """Up to ``n`` frames: waits ``timeout`` for the first, then until ``n`` are there or
        ``max_wait`` has passed. Returns the frames and whether the source has ended and
        nothing is left."""
        with self.cond:
            if not self.items and not self.ended:
                self.want = 1
                arrived = self.cond.wait_for(lambda: self.items or self.ended, timeout)
                self.want = 0
                if not arrived:
                    return [], False
            if len(self.items) < n and not self.ended:
                self.want = n
                deadline = time.perf_counter() + max_wait
                while len(self.items) < n and not self.ended:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                self.want = 0
            got = [self.items.popleft() for _ in range(min(n, len(self.items)))]
            if self.blocked and len(self.items) <= self.resume_at:
                self.cond.notify_all()  # the capture thread may go on
            return got, self.ended and not self.items


class LatestSlot(_Channel):
    """One-slot mailbox for live sources: ``put`` replaces an unconsumed frame and counts it as
    dropped; the end never replaces a waiting frame (that frame is still scored)."""

    def __init__(self) -> None:
        super().__init__()
        self.item: Any = None
        self.has = False

    def put(self, item: Any, stop: threading.Event | None = None) -> None:
        with self.cond:
            if self.has:
                self.dropped += 1
            self.item, self.has = item, True
            self.cond.notify_all()

    def take(self, n: int, timeout: float, max_wait: float) -> tuple[list[Any], bool]:
        """The newest frame (waiting ``timeout`` for one), then each newer one that arrives within
        ``max_wait``, up to ``n``."""
        got: list[Any] = []
        deadline = 0.0  # set when the first frame is taken: max_wait counts from it
        with self.cond:
            while len(got) < n:
                wait = timeout if not got else deadline - time.perf_counter()
                if not self.has and not self.ended and (wait <= 0 or not self.cond.wait_for(lambda: self.has or self.ended, wait)):
                    break
                if not self.has:  # ended
                    break
                got.append(self.item)
                self.item, self.has = None, False
                if len(got) == 1:
                    deadline = time.perf_counter() + max_wait
            return got, self.ended and not self.has


class Pipeline:
    def __init__(self, source: Source, backend: Backend, sinks: list[Sink], cfg: PipelineConfig = PipelineConfig()) -> None:
        self.source, self.backend, self.sinks, self.cfg = source, backend, sinks, cfg
        self.stop_event = threading.Event()
        self.frames_in = 0
        self.scored = 0
        self.unreadable = 0
        self.anomalies = 0
        self.lat = Reservoir(width=len(STAGES))  # one row of stage timings per frame
        self._capture_error: BaseException | None = None
        self._unreadable_logged = False
        self.need_images = any(getattr(s, "needs_image", False) for s in sinks)
        self.events_open_at_end = 0
        self.trackers: dict[str, EventTracker] = {}  # alarm events, per camera (serve merges several into one pipeline)
        self.extra_summary: dict[str, Any] = {}  # recorded as they are in the summary (e.g. how the backend was chosen)
        self._shown_sources: dict[str, str] = {}  # each source as records show it (credentials redacted)
        self.next_backend: Backend | None = None  # set (active) by a reloader thread; the run loop swaps it in
        self.on_swap: Any = None  # called with the old and the new backend after a swap
        # one input per frame and no sink draws: the backend's outputs are the results as they are
        self.direct = cfg.mode != "tiles" and not self.need_images

    # ---------------------------------------------------------------------------------- capture
    def _capture(self, chan: Any, pre: Preprocessor) -> None:
        try:
            for frame in self.source.frames():
                if self.stop_event.is_set():
                    break
                t0 = time.perf_counter()
                # serve: each camera's own thread preprocessed it already, in its own mode
                prepared = frame.extra.pop("prepared") if "prepared" in frame.extra else prepare_frame(pre, frame.image)
                frame.extra.setdefault("preprocess_ms", (time.perf_counter() - t0) * 1e3)
                frame.extra["t_queued_ns"] = time.perf_counter_ns()
                self.frames_in += 1
                chan.put((frame, prepared), self.stop_event)
                if self.cfg.max_frames is not None and self.frames_in >= self.cfg.max_frames:
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises
            self._capture_error = exc
        finally:
            chan.end()

    # ------------------------------------------------------------------------------------- run
    def _handler(self, signum: int, frame: FrameType | None) -> None:
        log.warning("%s received: finishing frames in flight", signal.Signals(signum).name)
        self.stop_event.set()
        self.source.stop()

    def run(self, summary_path: Path | None = None, handle_signals: bool = True) -> dict[str, Any]:
        card = self.backend.card
        pre = Preprocessor(card.input.isize, card.input.channels, self.cfg.mode, self.cfg.overlap)
        self._adopt(card)
        self.backend.expect_batch(max(1, self.cfg.batch))  # OpenVINO compiles for it, once (no-op when opened with it)
        chan: FrameQueue | LatestSlot = LatestSlot() if self.source.live else FrameQueue(max(self.cfg.queue_size, 2 * self.cfg.batch))
        old = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        t_start, cpu_start = time.perf_counter(), time.process_time()
        hooks = [sk for sk in self.sinks if type(sk).counts is not Sink.counts]  # sinks that report on the run (metrics)
        for sk in hooks:
            sk.started(card.model_id, self.backend.name, self.backend.precision, self.threshold)
        cap = threading.Thread(target=self._capture, args=(chan, pre), name="capture", daemon=True)
        cap.start()
        error: BaseException | None = None
        try:
            ended = False
            while not ended:
                batch, ended = chan.take(self.cfg.batch, 0.2, self.cfg.max_wait_ms / 1e3)
                if self.next_backend is not None:  # a reloaded model: swapped between batches, no frame is lost
                    self._swap()
                if batch:
                    self._process(batch)
                for sk in hooks:
                    sk.counts(chan.dropped, self.unreadable + self.source.unreadable)
        except BaseException as exc:  # noqa: BLE001 - sinks are closed below, then it is re-raised
            error = exc
            self.stop_event.set()
            self.source.stop()
        finally:
            t_streamed = time.perf_counter()  # the last frame is scored; closing the sinks (an MQTT flush) is not streaming
            cpu_streamed = time.process_time()
            cap.join(timeout=10)
            for s, h in old.items():
                signal.signal(s, h)
            close_errors = []
            self.events_open_at_end = sum(t.open is not None for t in self.trackers.values())
            ends = [m for t in self.trackers.values() for m in t.finish()]
            if ends:  # the events still open end with the run: every start has its end
                try:
                    self._publish(ends)
                except SkipganError as exc:
                    close_errors.append(str(exc))
            for sink in self.sinks:
                try:
                    sink.close()
                except SkipganError as exc:
                    close_errors.append(str(exc))
                except OSError as exc:
                    close_errors.append(f"{sink.name}: {exc}")
            self.source.close()
        summary = self._summary(t_streamed - t_start, chan.dropped)
        summary["close_s"] = round(time.perf_counter() - t_streamed, 3)
        # this process's CPU time while streaming (every thread: capture, runtime pool, sinks); with a server backend the
        # server's own CPU is not in it
        summary["cpu_s"] = round(cpu_streamed - cpu_start, 3)
        self.summary = summary
        if summary_path is not None:
            try:
                atomic_write_json(summary_path, summary)
            except SkipganError as exc:  # the summary is never lost: it goes to stdout, and the run fails with one line
                sys.stdout.write(json.dumps(summary, default=str) + "\n")
                sys.stdout.flush()
                close_errors.append(f"{exc} (the summary went to stdout instead)")
        if error is not None:
            raise error
        if self._capture_error is not None and not isinstance(self._capture_error, GeneratorExit):
            raise self._capture_error
        if close_errors:
            raise SinkError("; ".join(close_errors))
        return summary

    def _adopt(self, card: ModelCard) -> None:
        """The threshold (``--threshold`` wins over the card's) and the map level a record's bbox encloses: the anomaly
        map at or above the normal validation maps' p99 peak (the level the overlay outlines; map_scale is 1.5x it)."""
        self.threshold = float(self.cfg.threshold if self.cfg.threshold is not None else card.score.threshold.normalized)
        self.map_level = (card.score.map_scale or DEFAULT_MAP_SCALE) * OUTLINE_OF_VMAX

    def _swap(self) -> None:
        new, self.next_backend = self.next_backend, None
        assert new is not None
        old, self.backend = self.backend, new
        self._adopt(new.card)
        log.info("model %s replaced %s between batches", new.card.model_id, old.card.model_id)
        if self.on_swap is not None:
            self.on_swap(old, new)
        old.deactivate()

    # --------------------------------------------------------------------------------- process
    def _process(self, batch: list[tuple[Frame, Prepared | None]]) -> None:
        t_deq = time.perf_counter_ns()
        good: list[tuple[Frame, Prepared]] = []
        for f, p in batch:
            if p is None:
                self.unreadable += 1
                if not self._unreadable_logged:
                    log.warning("skipping unreadable frame/file %s (further ones are counted, see the summary)", f.name or f.index)
                    self._unreadable_logged = True
                self.source.ack(f)
            else:
                good.append((f, p))
        if not good:
            return
        inputs = good[0][1].inputs if len(good) == 1 else np.concatenate([p.inputs for _, p in good])
        t0 = time.perf_counter()
        out = self.backend.infer_all(inputs)
        t1 = time.perf_counter()
        infer_ms = (t1 - t0) * 1e3
        if self.direct:
            results: list[dict[str, Any]] = [{"score": a, "normalized_score": b}
                                             for a, b in zip(out.score.tolist(), out.normalized_score.tolist(), strict=True)]
        else:
            results, k = [], 0
            for _, p in good:
                n = len(p.inputs)
                results.append(combine(p, out.score[k : k + n], out.normalized_score[k : k + n], out.anomaly_map[k : k + n], self.need_images))
                k += n
        records = []
        events: list[dict[str, Any]] = []
        model_id = self.backend.card.model_id
        tid = threshold_id(self.backend.card, self.threshold)
        k = 0
        for (f, p), res in zip(good, results, strict=True):
            # serve: the frame's camera, and that camera's threshold where its config overrides the model's
            camera, thr = f.extra.get("camera", self.cfg.camera), f.extra.get("threshold", self.threshold)
            anomalous = res["normalized_score"] > thr
            box = None
            if anomalous:  # where the defect is, in frame pixels: found on the model's own map and scaled (tiles: on the
                # map assembled at the frame's size), whether or not an image sink asked combine for the full map, and at
                # the cost of a model-size map (a 4K one would take tens of ms)
                m = out.anomaly_map[k, 0] if self.direct or p.layout is None else res["map"]
                box = locate(m, self.map_level, p.view.shape[:2], p.offset)
            k += len(p.inputs)
            rec: dict[str, Any] = {
                "schema": SCHEMA_VERSION, "camera": camera, "source": self._shown(f.source), "frame": f.index, "file": f.name,
                "timestamp": f.timestamp, "time": iso_time(f.timestamp), "model_id": model_id, "threshold": thr,
                "threshold_id": tid if thr == self.threshold else threshold_id(self.backend.card, thr),
                "score": res["score"], "normalized_score": res["normalized_score"], "anomalous": anomalous, "bbox": box,
                "where": where(anomalous, box, res.get("tiles")), "event": None,
            }
            if "camera_frame_id" in f.extra:  # a GenICam camera's own frame id and timestamp (genicam.py)
                rec["camera_frame_id"], rec["camera_timestamp_ns"] = f.extra["camera_frame_id"], f.extra["camera_timestamp_ns"]
            if "tiles" in res:
                rec["tiles"] = res["tiles"]
            rec["latency_ms"] = (time.perf_counter_ns() - f.t_capture_ns) / 1e6 + f.capture_ms
            rec["stages_ms"] = {"capture": f.capture_ms, "preprocess": f.extra["preprocess_ms"],
                                "queue_wait": (t_deq - f.extra["t_queued_ns"]) / 1e6, "infer": infer_ms, "postprocess": 0.0}
            tracker = self.trackers.get(camera)
            if tracker is None:  # serve: a camera's own debounce where its config sets one
                tracker = self.trackers[camera] = EventTracker(camera, f.extra.get("debounce", self.cfg.debounce))
            events += tracker.update(rec)
            records.append(rec)
        post_ms = (time.perf_counter() - t1) * 1e3
        for rec in records:
            rec["stages_ms"]["postprocess"] = post_ms
        t2 = time.perf_counter()
        views = [p.view for _, p in good] if self.need_images else None
        maps = [r["map"] for r in results] if self.need_images else None
        for sink in self.sinks:
            try:
                sink.write_batch(records, views, maps)
            except SkipganError:
                raise
            except OSError as exc:
                raise SinkError(f"{sink.name} sink failed: {exc.strerror or exc}") from None
        if events:
            self._publish(events)
        t_end = time.perf_counter_ns()
        sink_ms = (time.perf_counter() - t2) * 1e3
        batch_ms = (t_end - t_deq) / 1e6  # dequeue to the last sink: infer, postprocess and sink, plus the batch's own overhead
        # total is each record's own latency_ms (capture to result, before the sinks), so that the summary, the records and
        # the Prometheus histograms name the same span; sink, and processing which includes it, only the summary can hold
        self.lat.extend([(st["capture"], st["preprocess"], st["queue_wait"], infer_ms, post_ms, sink_ms, st["preprocess"] + batch_ms,
                          r["latency_ms"]) for r, st in ((r, r["stages_ms"]) for r in records)])
        for f, _ in good:
            self.source.ack(f)
        self.scored += len(good)
        self.anomalies += sum(r["anomalous"] for r in records)

    def _publish(self, events: list[dict[str, Any]]) -> None:
        """Event start and end messages to the sinks that take them (MQTT, metrics)."""
        for sink in self.sinks:
            if type(sink).events is not Sink.events:
                try:
                    sink.events(events)
                except SkipganError:
                    raise
                except OSError as exc:
                    raise SinkError(f"{sink.name} sink failed: {exc.strerror or exc}") from None

    def _shown(self, source: str) -> str:
        """``source`` as records and the summary show it: a URL's password redacted (``rtsp://user:***@cam``), once per source."""
        shown = self._shown_sources.get(source)
        if shown is None:
            shown = self._shown_sources[source] = redact(source)
        return shown

    def _summary(self, elapsed: float, dropped: int) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION, "camera": self.cfg.camera, "source": self._shown(self.source.spec), "live": self.source.live,
            "backend": self.backend.name, "precision": self.backend.precision,
            "model_id": self.backend.card.model_id, "frames_in": self.frames_in, "scored": self.scored,
            "dropped": dropped, "unreadable": self.unreadable + self.source.unreadable, "anomalies": self.anomalies,
            "threshold": self.threshold, "batch": self.cfg.batch, "mode": self.cfg.mode, "elapsed_s": round(elapsed, 3),
            "throughput_fps": round(self.scored / elapsed, 2) if elapsed > 0 else None,
            "latency_ms": {s: self.lat.summary(i) for i, s in enumerate(STAGES)},
            "headline_latency": "total" if self.source.realtime else "processing",
            "events": {"count": sum(t.count for t in self.trackers.values()), "open_at_end": self.events_open_at_end,
                       "debounce": self.cfg.debounce},
            **({"sinks": stats} if (stats := {s.name: s.stats() for s in self.sinks if hasattr(s, "stats")}) else {}),
            **getattr(self.source, "source_summary", {}),  # a source's own counts (genicam: missing, incomplete frames)
            **self.extra_summary,
        }


def where(anomalous: bool, box: list[int] | None, tiles: dict[str, Any] | None) -> dict[str, Any] | str | None:
    """Where an anomalous frame's alarm comes from; None on a normal frame.

    * ``{"bbox": [x0, y0, x1, y1]}`` (frame pixels, x1 and y1 exclusive): the anomaly map reaches the normal validation
      maps' p99 peak (the card's ``map_scale`` / 1.5, the level the annotated video outlines): the connected region
      that holds the map's maximum, as the record's ``bbox``;
    * ``"latent"``: no pixel of the map reaches that level, so there is no region to show: the score came from the
      latent (feature) term, or the feature-bank term, or a reconstruction error spread thinly over the whole frame;
    * tiles mode: ``"tile": [row, col]`` (the worst tile, which decided the frame's score) is always there, with
      ``bbox`` when the map shows a region (a tile alone: its latent term fired)."""
    if not anomalous:
        return None
    out: dict[str, Any] = {}
    if box is not None:
        out["bbox"] = box
    if tiles is not None:
        out["tile"] = [tiles["worst"] // tiles["cols"], tiles["worst"] % tiles["cols"]]
    return out or "latent"


def format_summary(s: dict[str, Any]) -> str:
    """The summary as ``run`` prints it: counts, the headline latency (what it measures named), alarm events, the stages."""
    ev = s.get("events") or {}
    lines = [
        f"frames in {s['frames_in']}  scored {s['scored']}  dropped {s['dropped']}  unreadable {s['unreadable']}  "
        f"anomalies {s['anomalies']}  ({s['throughput_fps']} frames/s, {s['backend']} {s['precision']})",
    ]
    lat = s["latency_ms"]
    head = s.get("headline_latency", "total")
    h = lat.get(head) or {}
    if h:
        text = f"latency p50 {h['median']:.3f} ms  p90 {h['p90']:.3f} ms  p99 {h['p99']:.3f} ms  "
        if head == "processing":
            q = lat.get("queue_wait") or {}
            text += "(processing: preprocess through sink, per frame"
            text += f"; frames also waited {q['median']:.3f} ms median in the read-ahead queue)" if q else ")"
        else:
            text += "(capture to result)"
        lines.append(text)
    if ev:
        lines.append(f"alarm events {ev['count']}  (an event: {ev['debounce']} or more anomalous frames in a row; "
                     f"{ev['open_at_end']} open at the end)")
    lines.append("stage        min     median  p90     p95     p99     (ms)")
    for stage, st in lat.items():
        if st:
            lines.append(f"{stage:11s}  {st['min']:<7.3f} {st['median']:<7.3f} {st['p90']:<7.3f} {st['p95']:<7.3f} {st['p99']:<7.3f}")
    return "\n".join(lines)
