"""Library entry point behind ``skipgan-edge run``: the runtime's :func:`skipgan_edge.runtime.api.run` plus the
service wing's sinks (MQTT, Prometheus ``/metrics``), which the runtime does not know."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from skipgan_edge.runtime import api as runtime_api
from skipgan_edge.runtime.api import SinkOptions
from skipgan_edge.runtime.artifact import Artifact
from skipgan_edge.runtime.backends import BackendOptions
from skipgan_edge.runtime.pipeline import PipelineConfig
from skipgan_edge.runtime.sinks import Sink
from skipgan_edge.runtime.sources import SourceOptions
from skipgan_edge.service.mqtt import MqttOptions


@dataclass(frozen=True)
class ServiceOptions:
    """Where a run reports besides its files: an MQTT broker, and a Prometheus endpoint while the run lasts."""

    mqtt: MqttOptions | None = None
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    camera: str = "cam0"  # the camera label of the metrics


def service_sinks(service: ServiceOptions) -> list[Callable[[], Sink]]:
    """Makers of the sinks ``service`` asks for, in the order they are opened (metrics, then MQTT)."""
    makers: list[Callable[[], Sink]] = []
    if service.metrics_port is not None:
        port, addr, camera = service.metrics_port, service.metrics_addr, service.camera

        def metrics() -> Sink:
            from skipgan_edge.service.prom import Metrics, MetricsSink

            return MetricsSink(Metrics(port, addr), camera, own=True)

        makers.append(metrics)
    if service.mqtt is not None:
        mqtt = service.mqtt

        def broker() -> Sink:
            from skipgan_edge.service.mqtt import MqttSink

            return MqttSink(mqtt)

        makers.append(broker)
    return makers


def run(art: Artifact, source: str, *, service: ServiceOptions = ServiceOptions(), **kw: Any) -> dict[str, Any]:
    """:func:`skipgan_edge.runtime.api.run` (its keyword arguments) with the sinks of ``service`` added."""
    return runtime_api.run(art, source, extra_sinks=service_sinks(service), **kw)


#: ``run``'s command-line options, by the option group (the library call's argument) each belongs to; a name maps to
#: itself unless a group field is named differently (field=option)
RUN_GROUPS: dict[str, tuple[str, ...]] = {
    "pipeline": ("batch", "max_wait_ms", "threshold", "mode", "overlap", "max_frames", "camera=camera_id", "debounce"),
    "sinks": ("jsonl", "csv", "save_video", "save_images", "show", "summary"),
    "source_opts": ("width", "height", "fps", "loop", "replay_fps", "stop_after_idle", "watch_state", "watch_follow_symlinks",
                    "reconnect_attempts", "decode_threads"),
    "options": ("device", "threads", "cuda_api", "cuda_graphs", "pad_to_profile=pad_batch"),
    "mqtt": ("url=mqtt", "camera=camera_id", "ca=mqtt_ca", "anomalies_only=mqtt_anomalies_only", "buffer=mqtt_buffer",
             "heartbeat_s=mqtt_heartbeat", "flush_ms=mqtt_flush_ms"),
    "service": ("metrics_port", "metrics_addr", "camera=camera_id"),
}
#: the numeric options checked against skipgan_edge.config.LIMITS (the limit's key=option where they differ)
RUN_LIMITED = ("batch", "max_wait_ms", "threshold", "overlap", "max_frames", "replay_fps", "debounce", "fps", "width", "height", "stop_after_idle",
               "reconnect_attempts", "decode_threads", "threads", "metrics_port", "mqtt_buffer", "mqtt_heartbeat_s=mqtt_heartbeat",
               "mqtt_flush_ms")


def _pick(names: tuple[str, ...], flags: dict[str, Any]) -> dict[str, Any]:
    pairs = [n.split("=", 1) if "=" in n else (n, n) for n in names]
    return {field: flags[option] for field, option in pairs}


@dataclass(frozen=True)
class RunRequest:
    """Everything ``skipgan-edge run`` was told, grouped into the option objects :func:`run` takes."""

    artifact: Artifact
    source: str
    backend: str = "auto"
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sinks: SinkOptions = field(default_factory=SinkOptions)
    source_opts: SourceOptions = field(default_factory=SourceOptions)
    options: BackendOptions = field(default_factory=BackendOptions)
    service: ServiceOptions = field(default_factory=ServiceOptions)

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> RunRequest:
        """From ``run``'s parsed options (by their parameter names): the numeric ones checked against their limits, the
        artifact, the camera id and the MQTT URL checked, each mistake one line before the model loads."""
        from skipgan_edge.config import check_limits, option_name
        from skipgan_edge.runtime.preprocess import check_mode
        from skipgan_edge.runtime.sinks import check_camera_id

        check_limits(_pick(RUN_LIMITED, flags), option_name)
        check_mode(flags["mode"])
        art = Artifact.given(flags["model"], flags["onnx"], flags["engine"], flags["backend"])
        check_camera_id(flags["camera_id"])
        mqtt = None
        if flags["mqtt"] is not None:
            from skipgan_edge.service.mqtt import parse_url

            parse_url(flags["mqtt"])
            mqtt = MqttOptions(**_pick(RUN_GROUPS["mqtt"], flags))
        return cls(
            art, flags["source"], flags["backend"],
            pipeline=PipelineConfig(**_pick(RUN_GROUPS["pipeline"], flags)),
            sinks=SinkOptions(**_pick(RUN_GROUPS["sinks"], flags)),
            source_opts=SourceOptions(**_pick(RUN_GROUPS["source_opts"], flags)),
            options=BackendOptions(**_pick(RUN_GROUPS["options"], flags)),
            service=ServiceOptions(mqtt, **_pick(RUN_GROUPS["service"], flags)),
        )

    def run(self) -> dict[str, Any]:
        """:func:`run` with these options; the summary."""
        return run(self.artifact, self.source, backend=self.backend, pipeline=self.pipeline, sinks=self.sinks,
                   source_opts=self.source_opts, options=self.options, service=self.service)
