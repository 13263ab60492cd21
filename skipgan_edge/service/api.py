"""Library entry point behind ``skipgan-edge run``: the runtime's :func:`skipgan_edge.runtime.api.run` plus the
service wing's sinks (MQTT, Prometheus ``/metrics``), which the runtime does not know."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skipgan_edge.runtime import api as runtime_api
from skipgan_edge.runtime.artifact import Artifact
from skipgan_edge.runtime.sinks import Sink
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
