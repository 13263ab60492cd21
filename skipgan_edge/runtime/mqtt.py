"""MQTT sink (``run --mqtt URL``): results to a line controller, a dashboard or a plant's broker (paho-mqtt).

``--mqtt mqtt://[user:pass@]host[:port]/topic-prefix`` (``mqtts://`` for TLS, with ``--mqtt-ca FILE`` for a
private CA). Topics, under ``PREFIX/CAMERA`` (``--camera-id``, default ``cam0``):

* ``PREFIX/CAMERA/result``: one message per frame (or per anomalous frame with ``--mqtt-anomalies-only``), the
  same JSON object as a ``--jsonl`` line (``skipgan_edge/schemas/record.schema.json``), QoS 1 (at least once: a consumer that must not count
  a frame twice keys on ``source`` + ``frame``).
* ``PREFIX/CAMERA/status``: retained ``{"state": "online"}`` once connected; ``offline`` when the run ends, and
  from the broker (the last will) when the process or its network dies.
* ``PREFIX/CAMERA/heartbeat``: every ``--mqtt-heartbeat`` seconds (default 10), frames and anomalies seen,
  messages published and dropped, the messages waiting, the time.

Scoring never waits for the network: ``write_batch`` hands messages to paho's client, whose own thread sends
them. While the broker is unreachable they wait in paho's queue, up to ``--mqtt-buffer`` messages (default
10,000); beyond that a message is counted as dropped (``dropped`` in the heartbeat and in the run summary), not
queued. paho reconnects with backoff (1 s doubling to 30 s) and sends what waited; a QoS 1 message is counted as
published when the broker acknowledges it. The connection is opened at start in the background: a broker that
is down at start does not stop the run, its messages wait like any others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.errors import ConfigError, MissingDependencyError
from skipgan_edge.runtime.sinks import Sink, check_camera_id, jsonl_line

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 10_000
DEFAULT_HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class MqttOptions:
    url: str
    camera: str = "cam0"
    ca: Path | None = None  # CA bundle for mqtts:// (None: the system's)
    anomalies_only: bool = False
    buffer: int = DEFAULT_BUFFER
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    client_id: str | None = None


@dataclass(frozen=True)
class BrokerUrl:
    tls: bool
    host: str
    port: int
    prefix: str
    username: str | None
    password: str | None


def parse_url(url: str) -> BrokerUrl:
    """``mqtt[s]://[user:pass@]host[:port]/prefix`` → its parts; one line naming what is wrong otherwise."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"--mqtt {url!r}: expected mqtt://[user:pass@]host[:port]/topic-prefix (or mqtts:// for TLS)")
    if not u.hostname:
        raise ConfigError(f"--mqtt {url!r}: no broker host; e.g. mqtt://localhost/line1")
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError(f"--mqtt {url!r}: the port is not a number in 1-65535") from None
    prefix = u.path.strip("/") or "skipgan-edge"
    if any(c in prefix for c in "+#\x00"):
        raise ConfigError(f"--mqtt {url!r}: the topic prefix may not contain + # or NUL (MQTT wildcards)")
    return BrokerUrl(u.scheme == "mqtts", u.hostname, port, prefix,
                     urllib.parse.unquote(u.username) if u.username else None, urllib.parse.unquote(u.password) if u.password else None)


def _acknowledged(info: Any) -> bool:
    """Whether the broker acknowledged this QoS 1 message. paho's ``is_published`` raises for a message first
    handed over while disconnected (its ``rc`` stays MQTT_ERR_NO_CONN after paho resends it on reconnect), so the
    flag paho sets on PUBACK is read directly, under paho's own lock (paho-mqtt 2.x; pinned below 3)."""
    with info._condition:
        return bool(info._published)


class MqttSink(Sink):
    needs_image = False

    def __init__(self, opts: MqttOptions) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise MissingDependencyError("--mqtt needs paho-mqtt: pip install 'skipgan-edge[mqtt]'") from None
        self.opts = opts
        b = parse_url(opts.url)
        camera = check_camera_id(opts.camera)
        if opts.buffer < 1:
            raise ConfigError(f"--mqtt-buffer must be at least 1, got {opts.buffer}")
        if opts.ca is not None and not Path(opts.ca).is_file():
            raise ConfigError(f"--mqtt-ca {opts.ca}: no such file")
        self.name = f"MQTT {b.host}:{b.port}/{b.prefix}"
        base = f"{b.prefix}/{camera}"
        self.topic_result, self.topic_status, self.topic_heartbeat = f"{base}/result", f"{base}/status", f"{base}/heartbeat"
        self.camera = camera
        self.lock = threading.Lock()
        self.seen = self.anomalies = self.queued = self.published = self.dropped = 0
        self.pending: deque[Any] = deque()  # paho's MQTTMessageInfo of each result message not yet acknowledged
        self.connected = threading.Event()
        self.connects = 0
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id or f"skipgan-edge-{camera}-{time.time_ns() % 10**9}",
                        clean_session=True)
        if b.username is not None:
            c.username_pw_set(b.username, b.password)
        if b.tls:
            c.tls_set(ca_certs=str(opts.ca) if opts.ca else None)
        c.max_queued_messages_set(opts.buffer)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(1, 30)
        c.will_set(self.topic_status, json.dumps({"state": "offline", "camera": camera, "reason": "connection lost"}), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self.client = c
        c.connect_async(b.host, b.port, keepalive=15)
        c.loop_start()
        self._stop = threading.Event()
        self._hb = threading.Thread(target=self._heartbeat, name="mqtt-heartbeat", daemon=True)
        self._hb.start()

    # paho's thread ---------------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker refused the connection: %s", reason)
            return
        self.connects += 1
        self.connected.set()
        client.publish(self.topic_status, json.dumps({"state": "online", "camera": self.camera}), qos=1, retain=True)
        if self.connects > 1:
            log.info("MQTT reconnected to the broker")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if self.connected.is_set():
            log.warning("MQTT connection lost (%s): messages wait, up to %d, and are sent on reconnect", reason, self.opts.buffer)
        self.connected.clear()

    # the pipeline's thread -------------------------------------------------------------------
    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.write_batch([record], None, None)

    def write_batch(self, records: list[dict[str, Any]], views: list[np.ndarray] | None, maps: list[np.ndarray] | None) -> None:
        import paho.mqtt.client as mqtt

        for r in records:
            anomalous = bool(r["anomalous"])
            with self.lock:
                self.seen += 1
                self.anomalies += anomalous
            if self.opts.anomalies_only and not anomalous:
                continue
            payload = jsonl_line(r).rstrip("\n")
            info = self.client.publish(self.topic_result, payload, qos=1)
            with self.lock:
                if info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN:
                    self.queued += 1  # sent, or waiting in paho's queue for the connection
                    self.pending.append(info)
                else:  # MQTT_ERR_QUEUE_SIZE: the buffer bound is reached
                    self.dropped += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            waiting = deque(i for i in self.pending if not _acknowledged(i))
            self.published += len(self.pending) - len(waiting)
            self.pending = waiting
            return {"topic": self.topic_result, "connected": self.connected.is_set(), "frames_seen": self.seen,
                    "anomalies": self.anomalies, "queued": self.queued, "published": self.published, "dropped": self.dropped,
                    "waiting": len(self.pending), "buffer": self.opts.buffer}

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.opts.heartbeat_s):
            s = self.stats()
            self.client.publish(self.topic_heartbeat, json.dumps({"camera": self.camera, "time": time.time(), **s}), qos=0)

    def close(self, drain_s: float = 10.0) -> None:
        """Send what waits (for up to ``drain_s``: a broker that is away costs the run's end that long), publish
        ``offline``, disconnect."""
        self._stop.set()
        deadline = time.monotonic() + drain_s
        # a short run may end before the (TLS) connection is up: messages that wait get until the deadline either way
        while self.stats()["waiting"] > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        s = self.stats()
        if s["waiting"]:
            log.warning("MQTT: %d message(s) were not acknowledged by the broker before the run ended", s["waiting"])
        if self.connected.is_set():
            info = self.client.publish(self.topic_status, json.dumps({"state": "offline", "camera": self.camera, "reason": "run ended"}),
                                       qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # paho raises these when the connection went meanwhile
                info.wait_for_publish(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
        self.client.disconnect()
        self.client.loop_stop()
