"""Prometheus metrics (``run --metrics-port PORT``): ``/metrics`` over plain HTTP while the run lasts (prometheus-client).

Every series carries the ``camera`` label (``--camera-id``):

* ``skipgan_frames_total{outcome}``: frames scored, dropped (a live source's newer frame replaced an unconsumed
  one) and unreadable (undecodable files or frames);
* ``skipgan_anomalies_total``: frames over the threshold;
* ``skipgan_events_total``: alarm events opened (``--debounce``; skipgan_edge/runtime/events.py), and
  ``skipgan_event_open``: 1 while an event is open, else 0;
* ``skipgan_stage_latency_seconds{stage}``: histograms of each pipeline stage (capture, preprocess, queue_wait,
  infer, postprocess: a record's ``stages_ms``) and of the whole way from capture to result (``total``: a record's
  ``latency_ms``, as the run summary's ``total``); the summary's ``sink`` stage has no histogram, as this sink sees a
  record before the sinks' time is known;
* ``skipgan_model_info{model_id, backend, precision}`` = 1, and ``skipgan_threshold``: what is scoring;
* ``skipgan_up``: 1 while the source delivers frames, 0 once it ended or failed (``serve``: while it is retried);
* ``serve`` adds ``skipgan_model_reloads_total{model, outcome}`` and ``skipgan_frames_per_second`` (over the last
  periodic summary).

It is a sink (it sees each batch's records after they are scored) plus a counter hook the pipeline calls after
each batch for what sinks do not see (drops and unreadable frames). The HTTP server is prometheus-client's, on a
daemon thread, bound to ``--metrics-addr`` (default 127.0.0.1; 0.0.0.0 to let a remote Prometheus scrape).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from skipgan_edge.errors import ConfigError, MissingDependencyError
from skipgan_edge.runtime.sinks import STAGE_FIELDS, Sink

log = logging.getLogger(__name__)

#: latency buckets in seconds: 0.25 ms to 10 s (an edge GPU batch is about a millisecond, a CPU batch tens of them)
BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """The registry, the metric families and the HTTP server: one per process, shared by every camera."""

    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise MissingDependencyError("--metrics-port needs prometheus-client: pip install 'skipgan-edge[metrics]'") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port must be in 0-65535, got {port}")
        reg = pc.CollectorRegistry()
        self.frames = pc.Counter("skipgan_frames", "Frames by outcome", ["camera", "outcome"], registry=reg)
        self.anomalies = pc.Counter("skipgan_anomalies", "Frames over the threshold", ["camera"], registry=reg)
        self.events = pc.Counter("skipgan_events", "Alarm events opened (consecutive anomalous frames, debounced)", ["camera"],
                                 registry=reg)
        self.event_open = pc.Gauge("skipgan_event_open", "1 while an alarm event is open", ["camera"], registry=reg)
        self.latency = pc.Histogram("skipgan_stage_latency_seconds", "Pipeline stage latency", ["camera", "stage"],
                                    buckets=BUCKETS, registry=reg)
        self.info = pc.Gauge("skipgan_model_info", "The model and backend scoring this camera",
                             ["camera", "model_id", "backend", "precision"], registry=reg)
        self.threshold = pc.Gauge("skipgan_threshold", "Normalized-score threshold", ["camera"], registry=reg)
        self.up = pc.Gauge("skipgan_up", "1 while the source delivers frames", ["camera"], registry=reg)
        self.reloads = pc.Counter("skipgan_model_reloads", "Model reloads by outcome", ["model", "outcome"], registry=reg)
        self.periodic = pc.Gauge("skipgan_frames_per_second", "Frames scored per second over the last summary period",
                                 ["camera"], registry=reg)
        self.registry = reg
        try:
            self.server, self.thread = pc.start_http_server(port, addr=addr, registry=reg)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {addr}:{port} ({exc.strerror or exc}); choose another port") from None
        self.port = int(self.server.server_address[1])
        host = f"[{addr}]" if ":" in addr else addr
        log.info("metrics: http://%s:%d/metrics while this runs", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MetricsSink(Sink):
    """One camera's series in a shared :class:`Metrics` (``own``: this sink also closes the server, as ``run`` does)."""

    needs_image = False

    def __init__(self, metrics: Metrics, camera: str, own: bool = False) -> None:
        self.name = f"metrics :{metrics.port} {camera}"
        self.m, self.camera, self.own = metrics, camera, own
        for outcome in ("scored", "dropped", "unreadable"):
            metrics.frames.labels(camera, outcome)  # every series exists from the first scrape
        metrics.anomalies.labels(camera)
        self._events, self._event_open = metrics.events.labels(camera), metrics.event_open.labels(camera)
        self._event_open.set(0)
        self._stages = {st: metrics.latency.labels(camera, st) for st in (*STAGE_FIELDS, "total")}
        self._scored, self._anom = metrics.frames.labels(camera, "scored"), metrics.anomalies.labels(camera)
        self._dropped, self._unreadable = metrics.frames.labels(camera, "dropped"), metrics.frames.labels(camera, "unreadable")
        self._seen = {"dropped": 0, "unreadable": 0}
        self._info: tuple[str, ...] | None = None
        metrics.up.labels(camera).set(0)

    def started(self, model_id: str | None, backend: str, precision: str, threshold: float) -> None:
        self.model(model_id, backend, precision, threshold)
        self.set_up(True)

    def model(self, model_id: str | None, backend: str, precision: str, threshold: float) -> None:
        """What scores this camera now (a reload replaces the info series)."""
        labels = (self.camera, model_id or "unknown", backend, precision)
        if self._info is not None and self._info != labels:
            self.m.info.remove(*self._info)
        self.m.info.labels(*labels).set(1)
        self._info = labels
        self.m.threshold.labels(self.camera).set(threshold)

    def set_up(self, up: bool) -> None:
        self.m.up.labels(self.camera).set(1 if up else 0)

    def counts(self, dropped: int, unreadable: int) -> None:
        """Totals so far of what the sinks do not see; the counters advance by the difference."""
        for key, total, counter in (("dropped", dropped, self._dropped), ("unreadable", unreadable, self._unreadable)):
            if total > self._seen[key]:
                counter.inc(total - self._seen[key])
                self._seen[key] = total

    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.write_batch([record], None, None)

    def write_batch(self, records: list[dict[str, Any]], views: list[np.ndarray] | None, maps: list[np.ndarray] | None) -> None:
        for r in records:  # latencies first, then the counters: a scrape never sees more frames than observations
            st = r["stages_ms"]
            for name in STAGE_FIELDS:
                self._stages[name].observe(st[name] / 1e3)
            self._stages["total"].observe(r["latency_ms"] / 1e3)
        self._scored.inc(len(records))
        n_anom = sum(1 for r in records if r["anomalous"])
        if n_anom:
            self._anom.inc(n_anom)

    def events(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            if m["type"] == "start":
                self._events.inc()
                self._event_open.set(1)
            else:
                self._event_open.set(0)

    def close(self) -> None:
        self.set_up(False)
        if self.own:
            self.m.close()
