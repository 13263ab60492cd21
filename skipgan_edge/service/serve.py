"""``skipgan-edge serve --config cell.toml``: an inspection cell in one process: many cameras, shared backends, a
service that stays up.

The config: optional global defaults in ``[serve]``, then one ``[[camera]]`` table per camera::

    [serve]
    backend = "auto"            # as in run
    batch = 8                   # frames per backend call, across the cameras that share a model
    max_wait_ms = 5.0
    mode = "resize"             # resize, crop or tiles (a camera may override)
    metrics_port = 9100         # Prometheus /metrics for every camera (omit: none)
    metrics_addr = "127.0.0.1"
    mqtt = "mqtt://broker/line1"   # results, status and heartbeat per camera (omit: none)
    summary_every_s = 60        # a one-line summary per camera to the log and the metrics
    reload = true               # watch each model file; a replaced file (atomic rename) is loaded between batches
    retry_max_s = 30            # cap of the backoff when a camera is missing or fails

    [[camera]]
    id = "press-1"
    source = "rtsp://10.0.0.21/stream"    # anything run --source takes
    onnx = "models/scorer.int8.onnx"      # or model = "RUN_DIR", engine = "scorer.engine", or a Triton server:
                                          # triton = "triton://gpu-server:8001/scorer" (cameras naming one URL share a client)
    threshold = 0.9                       # optional: override the model's
    debounce = 3                          # optional: an alarm event opens after 3 anomalous frames in a row (default 1)
    jsonl = "results/press-1.jsonl"       # optional sinks: jsonl, csv
    mqtt_topic = "line1"                  # optional: this camera's topic prefix (default: the URL's)

How it runs:

* **One backend per model**, opened once and shared by every camera that names the same artifact: their frames
  go through one :class:`~skipgan_edge.runtime.pipeline.Pipeline`, batched together (``batch``, ``max_wait_ms``).
* **One capture thread per camera** (:class:`CameraFeed`): it opens the source, decodes and preprocesses in that
  camera's mode, and hands frames to its model's queue (a live source's frames are dropped, and counted, when the
  queue is full; a file's wait). A camera that is missing or fails, at start or later, does not stop the others: it
  is retried forever with a backoff doubling from 1 s to ``retry_max_s``, and shows ``skipgan_up 0`` meanwhile. A file
  or folder that ended is finished; the process ends when every camera has finished or on SIGTERM / SIGINT.
* **Model hot-reload**: replacing a model file (write a new one, rename it over the old) or SIGHUP loads the new
  model on the side, checks it (its card, an inference at the old input shape), and swaps it in between two batches:
  no frame is dropped, and each record names the ``model_id`` that scored it. A broken file is refused with one log
  line and ``skipgan_model_reloads_total{outcome="refused"}``; the old model keeps running.
* **As a service** (``skipgan-edge.service``, ``serve --print-unit``): log lines are plain, one event per line (journald
  adds the time); with systemd's ``Type=notify`` it reports ``READY=1`` once every model is loaded, ``STATUS=`` with
  the periodic summary, and ``WATCHDOG=1`` while the process is healthy when the unit sets ``WatchdogSec``.

A bad config is one line naming the table and the key, before anything opens; an error met while opening what a camera
names is in the file's words too (``'backend'``, not ``--backend``: :func:`as_keys`). ``serve --check``
(:func:`check_cell`) opens every model, source and output as ``serve`` would, and runs nothing. SIGTERM / SIGINT end every
camera's waits at once (:meth:`CameraFeed.halt`), so a cell of idle cameras stops within a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.config import check_limits, read_toml, typed_values
from skipgan_edge.errors import ConfigError, SkipganError
from skipgan_edge.logs import redact
from skipgan_edge.runtime.backends import Artifact, BackendOptions, open_backend
from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.pipeline import Pipeline, PipelineConfig
from skipgan_edge.runtime.preprocess import MODES, Preprocessor, prepare_frame
from skipgan_edge.runtime.sinks import CsvSink, JsonlSink, Sink, check_camera_id
from skipgan_edge.runtime.sources import Frame, LiveSource, Source, SourceOptions, open_source

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class ServeDefaults:
    backend: str = "auto"
    batch: int = 8
    max_wait_ms: float = 5.0
    mode: str = "resize"
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    mqtt: str | None = None
    mqtt_anomalies_only: bool = False
    mqtt_heartbeat_s: float = 10.0
    mqtt_flush_ms: float = 20.0
    summary_every_s: float = 60.0
    reload: bool = True
    reload_poll_s: float = 1.0
    retry_max_s: float = 30.0
    threads: int = 0
    queue_size: int = 64

    def validate(self, where: str) -> None:
        """Every numeric key against the same rules as run's options (``skipgan_edge.config.LIMITS``), and the MQTT URL;
        one line naming ``where`` and the key."""
        check_limits({k: getattr(self, k) for k in _SERVE_LIMITED}, lambda key: f"{where}: '{key}'")
        if self.mode not in MODES:
            raise ConfigError(f"{where}: 'mode' must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mqtt is not None:
            from skipgan_edge.service.mqtt import parse_url

            parse_url(self.mqtt, f"{where}: 'mqtt'")


_SERVE_LIMITED = ("batch", "max_wait_ms", "metrics_port", "mqtt_heartbeat_s", "mqtt_flush_ms", "summary_every_s", "reload_poll_s",
                  "retry_max_s", "threads", "queue_size")
_CAMERA_LIMITED = ("threshold", "replay_fps", "width", "height", "fps", "stop_after_idle", "debounce")


def camera_mqtt_url(url: str, topic: str | None) -> str:
    """The broker URL a camera publishes to: the cell's, with the camera's own topic prefix (``mqtt_topic``) when it has one."""
    if not topic:
        return url
    import urllib.parse

    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + topic.strip("/")))


@dataclass(frozen=True)
class CameraConfig:
    id: str
    source: str
    model: str | None = None
    onnx: str | None = None
    engine: str | None = None
    triton: str | None = None
    threshold: float | None = None
    mode: str | None = None
    jsonl: str | None = None
    csv: str | None = None
    mqtt_topic: str | None = None
    replay_fps: float | None = None
    loop: bool = False
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    stop_after_idle: float | None = None
    debounce: int = 1  # alarm events: consecutive anomalous frames that open one, normal ones that close it

    def validate(self, where: str, mqtt: str | None) -> None:
        """The camera's numeric keys (the same rules as run's options) and its MQTT topic; one line naming the key."""
        check_limits({k: getattr(self, k) for k in _CAMERA_LIMITED}, lambda key: f"{where}: '{key}'")
        if self.mqtt_topic is not None:
            if any(c in self.mqtt_topic for c in "+#?\x00"):
                raise ConfigError(f"{where}: 'mqtt_topic' may not contain + # (MQTT wildcards), ? or NUL, got {self.mqtt_topic!r}")
            if mqtt is not None:
                from skipgan_edge.service.mqtt import parse_url

                parse_url(camera_mqtt_url(mqtt, self.mqtt_topic), f"{where}: 'mqtt_topic'")

    @property
    def artifact(self) -> Artifact:
        given = [(k, getattr(self, k)) for k in ("model", "onnx", "engine", "triton") if getattr(self, k) is not None]
        kind, where = given[0]
        return Artifact(kind, url=where) if kind == "triton" else Artifact(kind, Path(where))


@dataclass(frozen=True)
class CellConfig:
    defaults: ServeDefaults
    cameras: list[CameraConfig] = field(default_factory=list)


def _typed(cls: type[Any], values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} is not a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; known: {', '.join(known)}")
    out = typed_values(cls, values, f"{where}: ")
    missing = [f.name for f in known.values() if f.default is dataclasses.MISSING and f.name not in out]
    if missing:
        raise ConfigError(f"{where}: '{missing[0]}' is required")
    return cls(**out)


def load_cell(path: Path) -> CellConfig:
    """Read and check a cell config; one line naming the table and key for every mistake."""
    data = read_toml(path)
    unknown = sorted(set(data) - {"serve", "camera"})
    if unknown:
        raise ConfigError(f"{path}: unknown table '{unknown[0]}'; expected [serve] and [[camera]]")
    d = _typed(ServeDefaults, data.get("serve", {}), f"{path} [serve]")
    d.validate(f"{path} [serve]")
    tables = data.get("camera", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: no [[camera]] table; add one per camera (id, source, and model, onnx or engine)")
    cams: list[CameraConfig] = []
    for i, t in enumerate(tables, 1):
        name = t.get("id") if isinstance(t, dict) else None
        where = f"{path} [[camera]] {i}" + (f" ('{name}')" if isinstance(name, str) else "")
        cam = _typed(CameraConfig, t, where)
        cam.validate(where, d.mqtt)
        try:
            check_camera_id(cam.id)
        except ConfigError:
            raise ConfigError(f"{where}: 'id' must be 1-64 printable ASCII characters without spaces, / + or #") from None
        n_art = sum(getattr(cam, k) is not None for k in ("model", "onnx", "engine", "triton"))
        if n_art != 1:
            raise ConfigError(f"{where}: give exactly one of 'model', 'onnx', 'engine' or 'triton'")
        if cam.triton is not None:
            from skipgan_edge.service.triton_client import parse_url

            try:
                parse_url(cam.triton)
            except ConfigError as exc:
                raise ConfigError(f"{where}: 'triton': {exc}") from None
        if cam.mode is not None and cam.mode not in MODES:
            raise ConfigError(f"{where}: 'mode' must be one of {', '.join(MODES)}, got {cam.mode!r}")
        if any(c.id == cam.id for c in cams):
            raise ConfigError(f"{where}: 'id' {cam.id!r} is used by another camera")
        cams.append(cam)
    return CellConfig(d, cams)


# ------------------------------------------------------------------------------------------- key names
_FLAG = __import__("re").compile(r"--([a-z][a-z0-9-]*)")
_FLAG_KEYS = {"camera-id": "id", "camera-fps": "fps", "mqtt": "mqtt"}


def as_keys(message: str) -> str:
    """A runtime message in the cell file's words: each command-line option that is a cell key (``--backend``,
    ``--onnx``, ``--camera-id``) is named as its key (``'backend'``, ``'onnx'``, ``'id'``)."""
    keys = {f.name for cls in (ServeDefaults, CameraConfig) for f in dataclasses.fields(cls)}

    def sub(m: Any) -> str:
        flag = m.group(1)
        key = _FLAG_KEYS.get(flag, flag.replace("-", "_"))
        return f"'{key}'" if key in keys else m.group(0)

    return _FLAG.sub(sub, message)


def in_cell(where: str, exc: BaseException, path: str | None = None) -> ConfigError:
    """``exc`` raised while opening what a cell names, as one line naming the table (``where``) in the file's words.
    ``path``: the value opened, when it is a file path: a relative one not found says where relative paths start."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if path is not None and "not found" in text and not Path(path).is_absolute():  # the unit sets WorkingDirectory
        text += f"; relative paths in a cell start from the folder serve runs in, {Path.cwd()}"
    return ConfigError(f"{where}: {as_keys(text)}")


def _file_path(value: str) -> str | None:
    """``value`` when a cell names a file by it (not a URL, a device, a camera index or a watch folder)."""
    return None if "://" in value or value.startswith(("watch:", "gst:", "/dev/")) or value.isdigit() else value


def _where(path: Path, i: int, cam: CameraConfig) -> str:
    return f"{path} [[camera]] {i} ('{cam.id}')"


def check_cell(cfg: CellConfig, path: Path) -> list[str]:
    """``serve --check``: open every model, source and output the cell names as ``serve`` would, run nothing; the first
    that cannot be opened is one line naming its table and key. Returns a line per model and camera that opened."""
    from skipgan_edge.card import check_writable

    d = cfg.defaults
    report: list[str] = []
    if d.metrics_port is not None:
        try:
            with socket.socket(socket.AF_INET6 if ":" in d.metrics_addr else socket.AF_INET) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((d.metrics_addr, d.metrics_port))
        except OSError as exc:
            raise ConfigError(f"{path} [serve]: 'metrics_port' {d.metrics_port} on {d.metrics_addr} cannot be bound: "
                              f"{exc.strerror or exc}; choose another port") from None
    seen: dict[tuple[str, Path], str] = {}
    for i, cam in enumerate(cfg.cameras, 1):
        where = _where(path, i, cam)
        kind, art = cam.artifact.pair
        key = (kind, art.resolve() if kind != "triton" else art)
        if key not in seen:
            try:
                with open_backend(kind, art, d.backend, BackendOptions(threads=d.threads), batch=d.batch, race=False) as be:
                    seen[key] = f"{be.name} {be.precision}, model {be.card.model_id}"
            except (SkipganError, OSError, ValueError, RuntimeError) as exc:
                raise in_cell(f"{where}: '{kind}'", exc, None if kind == "triton" else str(art)) from None
        opts = SourceOptions(width=cam.width, height=cam.height, fps=cam.fps, loop=cam.loop, replay_fps=cam.replay_fps,
                             stop_after_idle=cam.stop_after_idle)
        try:
            src = open_source(cam.source, opts)
        except (SkipganError, OSError, ValueError) as exc:
            raise in_cell(f"{where}: 'source'", exc, _file_path(cam.source)) from None
        with contextlib.suppress(Exception):
            src.close()
        for sink_key in ("jsonl", "csv"):
            out = getattr(cam, sink_key)
            if out is not None:
                try:
                    check_writable(Path(out), f"'{sink_key}'")
                except SkipganError as exc:
                    raise in_cell(where, exc) from None
        report.append(f"camera {cam.id}: {redact(cam.source)} opened; {kind} {art.name}: {seen[key]}")
    return report


# -------------------------------------------------------------------------------------------- the cameras
class MergedSource(Source):
    """The frames of every camera that shares one model, in arrival order (the Pipeline batches them together)."""

    live = False

    def __init__(self, spec: str, size: int) -> None:
        super().__init__(spec, SourceOptions())
        self.q: queue.Queue[Frame] = queue.Queue(maxsize=size)
        self.feeds: list[CameraFeed] = []
        self._stop = threading.Event()

    def frames(self) -> Iterator[Frame]:
        while True:
            try:
                yield self.q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set() or (self.feeds and all(f.finished.is_set() for f in self.feeds) and self.q.empty()):
                    return

    def put(self, frame: Frame, live: bool, stop: threading.Event) -> bool:
        """Hand a frame on; a live camera's frame is dropped (False) when the queue is full, a file's waits."""
        if live:
            try:
                self.q.put_nowait(frame)
                return True
            except queue.Full:
                return False
        while not stop.is_set():
            try:
                self.q.put(frame, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def ack(self, frame: Frame) -> None:
        feed = frame.extra.get("feed")
        if feed is not None:
            feed.ack(frame)

    def stop(self) -> None:
        super().stop()
        self._stop.set()
        for f in self.feeds:
            f.halt()


class CameraFeed(threading.Thread):
    """One camera's capture thread: open, read, preprocess, hand on; reopen forever with a capped backoff."""

    def __init__(self, cam: CameraConfig, merged: MergedSource, pre: Preprocessor, retry_max_s: float,
                 on_up: Any = None) -> None:
        super().__init__(name=f"camera-{cam.id}", daemon=True)
        self.cam, self.merged, self.pre, self.retry_max_s, self.on_up = cam, merged, pre, retry_max_s, on_up
        self.opts = SourceOptions(width=cam.width, height=cam.height, fps=cam.fps, loop=cam.loop, replay_fps=cam.replay_fps,
                                  stop_after_idle=cam.stop_after_idle)
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.up = False
        self.frames_in = self.dropped = self.unreadable = self.opens = self.failures = 0
        self.undecodable = 0  # frames handed on that could not be decoded or prepared (the pipeline skips them)
        self.last_error: str | None = None
        self.src: Source | None = None

    def halt(self) -> None:
        """Stop this camera: its source's waits (a watch folder's poll, a reopen's backoff) end at once, so an idle camera
        stops within a poll, not at its next frame."""
        self.stop.set()
        src = self.src
        if src is not None:
            src.stop()

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            if self.on_up is not None:
                self.on_up(self.cam.id, up)

    def ack(self, frame: Frame) -> None:
        src = self.src
        if src is not None:
            src.ack(frame)

    def run(self) -> None:
        delay = 1.0
        try:
            while not self.stop.is_set():
                try:
                    self.src = open_source(self.cam.source, self.opts)
                except SkipganError as exc:
                    self._failed(as_keys(str(exc)), delay)
                    delay = min(delay * 2, self.retry_max_s)
                    continue
                if self.stop.is_set():  # halted while it opened
                    self._close_source()
                    return
                self.opens += 1
                self._set_up(True)
                if self.opens > 1:
                    log.info("camera %s: %s is back", self.cam.id, self.cam.source)
                before = self.frames_in
                try:
                    self._stream(self.src)
                    error = None
                except SkipganError as exc:
                    error = str(exc)
                # a file, folder or watch folder that ends is finished; a camera or stream that ends has failed
                finite = not isinstance(self.src, LiveSource)
                self._close_source()
                if self.stop.is_set():
                    return
                if finite and error is None:
                    log.info("camera %s: %s ended", self.cam.id, self.cam.source)
                    return
                if self.frames_in > before:
                    delay = 1.0  # it worked for a while: start the backoff again
                self._failed(error or "the stream stopped delivering frames", delay)
                delay = min(delay * 2, self.retry_max_s)
        finally:
            self._set_up(False)
            self.finished.set()

    def _close_source(self) -> None:
        if self.src is not None:
            self.unreadable += self.src.unreadable
            with contextlib.suppress(Exception):
                self.src.close()

    def _failed(self, why: str, delay: float) -> None:
        self._set_up(False)
        self.failures += 1
        if why != self.last_error:  # one line per new reason, not one per retry
            log.warning("camera %s: %s; retrying every %.0f s at most", self.cam.id, why, self.retry_max_s)
        self.last_error = why
        self.stop.wait(delay)

    def _stream(self, src: Source) -> None:
        live = src.live
        for frame in src.frames():
            if self.stop.is_set():
                src.stop()
                return
            t0 = time.perf_counter()
            prepared = frame.extra["prepared"] = prepare_frame(self.pre, frame.image)
            frame.extra["preprocess_ms"] = (time.perf_counter() - t0) * 1e3
            frame.extra["camera"] = self.cam.id
            frame.extra["feed"] = self
            if self.cam.threshold is not None:
                frame.extra["threshold"] = float(self.cam.threshold)
            frame.extra["debounce"] = self.cam.debounce
            if not self.merged.put(frame, live, self.stop):
                if self.stop.is_set():
                    return
                self.dropped += 1
                continue
            self.frames_in += 1
            if prepared is None:
                self.undecodable += 1


class RoutingSink(Sink):
    """Hands each record to its camera's own sinks (JSONL, CSV, MQTT, metrics) and counts per camera."""

    needs_image = False

    def __init__(self, per_camera: dict[str, list[Sink]]) -> None:
        self.name = "cameras"
        self.per_camera = per_camera
        self.scored = dict.fromkeys(per_camera, 0)
        self.anomalies = dict.fromkeys(per_camera, 0)
        self.batches = self.shared_batches = 0  # backend calls, and those that scored frames of several cameras together

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.write_batch([record], None, None)

    def write_batch(self, records: list[dict[str, Any]], views: list[np.ndarray] | None, maps: list[np.ndarray] | None) -> None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            groups.setdefault(r["camera"], []).append(r)
        self.batches += 1
        self.shared_batches += len(groups) > 1
        for cam, recs in groups.items():
            self.scored[cam] = self.scored.get(cam, 0) + len(recs)
            self.anomalies[cam] = self.anomalies.get(cam, 0) + sum(1 for r in recs if r["anomalous"])
            for sink in self.per_camera.get(cam, []):
                sink.write_batch(recs, None, None)

    def events(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:  # alarm events to their camera's sinks that take them (MQTT, metrics)
            for sink in self.per_camera.get(m["camera"], []):
                if type(sink).events is not Sink.events:
                    sink.events([m])

    def close(self) -> None:
        errors = []
        for sinks in self.per_camera.values():
            for s in sinks:
                try:
                    s.close()
                except (SkipganError, OSError) as exc:
                    errors.append(str(exc))
        if errors:
            from skipgan_edge.errors import SinkError

            raise SinkError("; ".join(errors))


# ----------------------------------------------------------------------------------------- one model
@dataclass
class ModelGroup:
    kind: str
    path: Path
    cameras: list[CameraConfig]
    pipeline: Pipeline | None = None
    merged: MergedSource | None = None
    feeds: list[CameraFeed] = field(default_factory=list)
    router: RoutingSink | None = None
    thread: threading.Thread | None = None
    summary: dict[str, Any] | None = None
    error: BaseException | None = None
    signature: tuple[int, int, int] | None = None
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "refused": 0})

    @property
    def label(self) -> str:
        return str(self.path)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat() if not path.is_dir() else (path / "model.safetensors").stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def sd_notify(message: str) -> bool:
    """systemd's notification protocol (sd_notify(3)) without libsystemd: a datagram to $NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


class Cell:
    """The running cell: model groups, camera feeds, metrics, reloads, periodic summaries."""

    def __init__(self, cfg: CellConfig) -> None:
        self.cfg = cfg
        self.groups: dict[tuple[str, Path], ModelGroup] = {}
        for cam in cfg.cameras:
            kind, path = cam.artifact.pair
            key = (kind, path.resolve())
            self.groups.setdefault(key, ModelGroup(kind, path, [])).cameras.append(cam)
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.metrics: Any = None
        self.metric_sinks: dict[str, Any] = {}
        self.started_at = 0.0

    # ---------------------------------------------------------------------------------- start
    def _options(self) -> BackendOptions:
        return BackendOptions(threads=self.cfg.defaults.threads)

    def start(self) -> None:
        d = self.cfg.defaults
        self.started_at = time.monotonic()
        if d.metrics_port is not None:
            from skipgan_edge.service.prom import Metrics

            self.metrics = Metrics(d.metrics_port, d.metrics_addr)
        try:
            for g in self.groups.values():
                self._start_group(g)
        except BaseException:
            self.stop()
            raise
        for target, name in ((self._watch, "reload-watch"), (self._periodic, "periodic-summary")):
            threading.Thread(target=target, name=name, daemon=True).start()
        sd_notify(f"READY=1\nSTATUS=serving {len(self.cfg.cameras)} camera(s) with {len(self.groups)} model(s)")
        log.info("serving %d camera(s) with %d model(s)", len(self.cfg.cameras), len(self.groups))

    def _start_group(self, g: ModelGroup) -> None:
        d = self.cfg.defaults
        try:
            be = open_backend(g.kind, g.path, d.backend, self._options(), batch=d.batch)
            be.__enter__()
        except SkipganError as exc:
            raise in_cell(f"camera {', '.join(c.id for c in g.cameras)}: '{g.kind}' {g.path}", exc) from None
        g.signature = _signature(g.path)
        card = be.card
        merged = MergedSource(f"cell:{g.label}", d.queue_size)
        per_camera: dict[str, list[Sink]] = {}
        for cam in g.cameras:
            sinks: list[Sink] = []
            if cam.jsonl:
                sinks.append(JsonlSink(Path(cam.jsonl)))
            if cam.csv:
                sinks.append(CsvSink(Path(cam.csv)))
            if d.mqtt:
                from skipgan_edge.service.mqtt import MqttOptions, MqttSink

                url = camera_mqtt_url(d.mqtt, cam.mqtt_topic)  # this camera's topic prefix on the same broker
                sinks.append(MqttSink(MqttOptions(url, camera=cam.id, anomalies_only=d.mqtt_anomalies_only, heartbeat_s=d.mqtt_heartbeat_s,
                                                  flush_ms=d.mqtt_flush_ms)))
            if self.metrics is not None:
                from skipgan_edge.service.prom import MetricsSink

                ms = MetricsSink(self.metrics, cam.id)
                thr = cam.threshold if cam.threshold is not None else card.score.threshold.normalized
                ms.model(card.model_id, be.name, be.precision, float(thr))
                self.metric_sinks[cam.id] = ms
                sinks.append(ms)
            per_camera[cam.id] = sinks
            pre = Preprocessor(card.input.isize, card.input.channels, cam.mode or d.mode)
            feed = CameraFeed(cam, merged, pre, d.retry_max_s, on_up=self._on_up)
            merged.feeds.append(feed)
            g.feeds.append(feed)
        g.merged = merged
        g.router = RoutingSink(per_camera)
        # tiles need the per-frame path (a camera in tiles mode makes its frames' results combine their tiles)
        mode = "tiles" if any((c.mode or d.mode) == "tiles" for c in g.cameras) else "resize"
        g.pipeline = Pipeline(merged, be, [g.router], PipelineConfig(batch=d.batch, max_wait_ms=d.max_wait_ms, mode=mode,
                                                                     queue_size=max(d.queue_size, 2 * d.batch), camera=g.cameras[0].id))
        g.pipeline.on_swap = lambda old, new, g=g: self._swapped(g, old, new)
        for feed in g.feeds:
            feed.start()

        def work(g: ModelGroup = g) -> None:
            try:
                assert g.pipeline is not None
                g.summary = g.pipeline.run(handle_signals=False)
            except BaseException as exc:  # noqa: BLE001 - reported by run_cell
                g.error = exc
                log.error("model %s stopped: %s", g.label, exc)
            finally:
                self._group_done()

        g.thread = threading.Thread(target=work, name=f"model-{g.path.name}", daemon=True)
        g.thread.start()

    def _on_up(self, camera: str, up: bool) -> None:
        ms = self.metric_sinks.get(camera)
        if ms is not None:
            ms.set_up(up)

    def _group_done(self) -> None:
        if all(g.thread is None or not g.thread.is_alive() or g.thread is threading.current_thread() for g in self.groups.values()):
            self.stop_event.set()

    # --------------------------------------------------------------------------------- reload
    def _watch(self) -> None:
        d = self.cfg.defaults
        while not self.stop_event.wait(d.reload_poll_s):
            forced = self.reload_event.is_set()
            self.reload_event.clear()
            for g in self.groups.values():
                sig = _signature(g.path)
                if forced or (d.reload and sig is not None and sig != g.signature):
                    if not forced:
                        time.sleep(min(0.5, d.reload_poll_s))  # let a copy that is still being written settle
                        if _signature(g.path) != sig:
                            continue
                    g.signature = _signature(g.path)
                    self.reload(g)

    def reload(self, g: ModelGroup) -> bool:
        """Load ``g``'s artifact again on the side, check it, and hand it to the pipeline; False (old kept) when broken."""
        assert g.pipeline is not None
        old = g.pipeline.backend
        try:
            new = open_backend(g.kind, g.path, old.name, self._options(), batch=self.cfg.defaults.batch, race=False)
            new.__enter__()
            try:
                inp, want = new.card.input, old.card.input
                if (inp.isize, inp.channels) != (want.isize, want.channels):
                    raise ConfigError(f"its input is {inp.isize}x{inp.isize}x{inp.channels}, the running model's "
                                      f"{want.isize}x{want.isize}x{want.channels}; restart serve to change the input")
                new.infer(np.zeros((1, inp.isize, inp.isize, inp.channels), np.uint8))
            except BaseException:
                new.deactivate()
                raise
        except (SkipganError, ValueError, RuntimeError, OSError) as exc:
            g.reloads["refused"] += 1
            if self.metrics is not None:
                self.metrics.reloads.labels(g.label, "refused").inc()
            log.error("model reload refused for %s: %s; model %s keeps running", g.label, str(exc).splitlines()[0], old.card.model_id)
            return False
        g.pipeline.next_backend = new
        return True

    def _swapped(self, g: ModelGroup, old: Backend, new: Backend) -> None:
        g.reloads["ok"] += 1
        if self.metrics is not None:
            self.metrics.reloads.labels(g.label, "ok").inc()
            for cam in g.cameras:
                ms = self.metric_sinks.get(cam.id)
                if ms is not None:
                    thr = cam.threshold if cam.threshold is not None else new.card.score.threshold.normalized
                    ms.model(new.card.model_id, new.name, new.precision, float(thr))
        log.info("model reloaded for %s: %s -> %s", g.label, old.card.model_id, new.card.model_id)

    # ---------------------------------------------------------------------------- summaries
    def camera_stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for g in self.groups.values():
            for feed in g.feeds:
                cid = feed.cam.id
                router = g.router
                out[cid] = {"source": redact(feed.cam.source), "model": g.label,
                            "model_id": g.pipeline.backend.card.model_id if g.pipeline else None,
                            "up": feed.up, "finished": feed.finished.is_set(), "frames_in": feed.frames_in,
                            "scored": router.scored.get(cid, 0) if router else 0, "anomalies": router.anomalies.get(cid, 0) if router else 0,
                            "dropped": feed.dropped,
                            "unreadable": feed.unreadable + feed.undecodable + (feed.src.unreadable if feed.src and feed.up else 0),
                            "opens": feed.opens, "failures": feed.failures, "last_error": feed.last_error}
        return out

    def _periodic(self) -> None:
        d = self.cfg.defaults
        last = {cid: s["scored"] for cid, s in self.camera_stats().items()}
        t_last = time.monotonic()
        watchdog = os.environ.get("WATCHDOG_USEC")
        beat = max(0.5, int(watchdog) / 2e6) if watchdog and watchdog.isdigit() else None
        next_summary = t_last + d.summary_every_s
        while not self.stop_event.wait(min(beat or d.summary_every_s, d.summary_every_s)):
            if beat is not None:
                sd_notify("WATCHDOG=1")
            now = time.monotonic()
            if now < next_summary:
                continue
            next_summary = now + d.summary_every_s
            stats = self.camera_stats()
            parts = []
            for cid, s in stats.items():
                fps = (s["scored"] - last.get(cid, 0)) / max(1e-9, now - t_last)
                last[cid] = s["scored"]
                if self.metrics is not None:
                    self.metrics.periodic.labels(cid).set(fps)
                state = "up" if s["up"] else ("finished" if s["finished"] else "down")
                log.info("camera %s %s: %.1f frames/s, scored %d, anomalies %d, dropped %d, unreadable %d, model %s",
                         cid, state, fps, s["scored"], s["anomalies"], s["dropped"], s["unreadable"], s["model_id"])
                parts.append(f"{cid} {state} {fps:.1f}/s")
            t_last = now
            sd_notify("STATUS=" + "; ".join(parts))

    # ------------------------------------------------------------------------------------ stop
    def stop(self) -> None:
        self.stop_event.set()
        for g in self.groups.values():
            if g.merged is not None:
                g.merged.stop()
            if g.pipeline is not None:
                g.pipeline.stop_event.set()

    def wait(self) -> None:
        while not self.stop_event.wait(0.2):
            pass
        self.stop()
        feeds_by = time.monotonic() + 10  # one budget for every camera, not 10 s each: systemd's TimeoutStopSec is 30
        for g in self.groups.values():
            if g.thread is not None:
                g.thread.join(timeout=60)
            for feed in g.feeds:
                feed.join(timeout=max(0.0, feeds_by - time.monotonic()))
            if g.pipeline is not None:
                # here, on this thread: each backend makes its CUDA context current for the release and pops it again
                pending, g.pipeline.next_backend = g.pipeline.next_backend, None  # a reload the worker never swapped in
                if g.thread is not None and g.thread.is_alive():  # never free under a batch still in flight
                    log.warning("model %s: its worker is still busy after 60 s; its backend is left to the process exit", g.label)
                    continue
                for be in (g.pipeline.backend, pending):
                    if be is not None:
                        with contextlib.suppress(Exception):
                            be.deactivate()
        if self.metrics is not None:
            self.metrics.close()
        sd_notify("STOPPING=1")

    def summary(self) -> dict[str, Any]:
        return {"schema": 1, "cameras": self.camera_stats(),
                "models": {g.label: {"kind": g.kind, "backend": g.pipeline.backend.name if g.pipeline else None,
                                     "model_id": g.pipeline.backend.card.model_id if g.pipeline else None,
                                     "cameras": [c.id for c in g.cameras], "reloads": g.reloads,
                                     "batches": g.router.batches if g.router else 0,
                                     "shared_batches": g.router.shared_batches if g.router else 0,
                                     "scored": (g.summary or {}).get("scored"),
                                     "throughput_fps": (g.summary or {}).get("throughput_fps"),
                                     "latency_ms": (g.summary or {}).get("latency_ms"),
                                     "error": None if g.error is None else str(g.error)}
                           for g in self.groups.values()},
                "elapsed_s": round(time.monotonic() - self.started_at, 3)}


def run_cell(cfg: CellConfig) -> dict[str, Any]:
    """Run until every camera finished or SIGINT/SIGTERM; SIGHUP reloads every model. Returns the summary."""
    cell = Cell(cfg)
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_stop(signum: int, frame: Any) -> None:
            log.warning("%s received: stopping cameras, finishing frames in flight", signal.Signals(signum).name)
            cell.stop()

        def on_hup(signum: int, frame: Any) -> None:
            log.info("SIGHUP: reloading every model")
            cell.reload_event.set()

        old = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        cell.start()
        cell.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    errors = [g.error for g in cell.groups.values() if g.error is not None]
    summary = cell.summary()
    if errors and isinstance(errors[0], SkipganError):
        raise errors[0]
    return summary


UNIT = """\
# skipgan-edge serve as a systemd service. Install: copy to /etc/systemd/system/skipgan-edge.service, adjust
# User, WorkingDirectory, the venv path and the config, then: systemctl daemon-reload && systemctl enable --now skipgan-edge
[Unit]
Description=skipgan-edge inspection cell (serve)
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
User=skipgan
WorkingDirectory=/opt/skipgan-edge
ExecStart=/opt/skipgan-edge/.venv/bin/skipgan-edge serve --config /etc/skipgan-edge/cell.toml
# SIGHUP reloads every model; a replaced model file is picked up on its own
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=always
RestartSec=5
WatchdogSec=30
# plain lines to the journal (journald adds the time)
Environment=PYTHONUNBUFFERED=1
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
"""
