"""MQTT sink (``run --mqtt URL``): results to a line controller, a dashboard or a plant's broker.

``--mqtt mqtt://[user:pass@]host[:port]/topic-prefix`` (``mqtts://`` for TLS, with ``--mqtt-ca FILE`` for a
private CA). Topics, under ``PREFIX/CAMERA`` (``--camera-id``, default ``cam0``):

* ``PREFIX/CAMERA/result``: one message per frame (or per anomalous frame with ``--mqtt-anomalies-only``), the
  same JSON object as a ``--jsonl`` line (``skipgan_edge/schemas/record.schema.json``), QoS 1 (at least once: a consumer that must not count
  a frame twice keys on ``source`` + ``frame``).
* ``PREFIX/CAMERA/status``: retained ``{"state": "online"}`` once connected; ``offline`` when the run ends, and
  from the broker (the last will) when the process or its network dies.
* ``PREFIX/CAMERA/events``: alarm events (``--debounce``, skipgan_edge/runtime/events.py), QoS 1, not retained: a
  ``start`` message when an event opens (``event`` id, ``first_frame``, ``opened_frame``, ``start_time``) and an
  ``end`` message when it closes or the run ends with it open (``last_frame``, ``frames``, ``anomalous_frames``,
  ``peak_normalized_score``, ``peak_frame``, ``peak_where``, ``duration_s``, ``closed_by``). Sent whatever
  ``--mqtt-anomalies-only`` says, in order with the results.
* ``PREFIX/CAMERA/heartbeat``: every ``--mqtt-heartbeat`` seconds (default 10), frames and anomalies seen,
  messages published and dropped, the messages waiting, the time.

Scoring never waits for the network, nor for MQTT work: ``write_batch`` only hands the batch's records to the
MQTT thread, which formats them, writes what arrived within ``--mqtt-flush-ms`` (default 20 ms) with one ``send``
and reads the broker's acknowledgements. Each write wakes the broker, and on a box whose model uses every core each
wake-up stalls the model: at 1,300 frames/s a 10 ms window cost 13 % of the throughput, 20 ms 3 %
(``benchmarks/results/serve_cell.md``); a line controller hears about a defect that much later. While the broker
is unreachable messages wait, up to ``--mqtt-buffer`` (default 10,000,
acknowledgements pending included); beyond that a message is counted as dropped (``dropped`` in the heartbeat
and in the run summary). The thread reconnects with a backoff doubling from 1 s to 30 s and sends again every
message not acknowledged (DUP set where it had been sent); a message counts as published when the broker
acknowledges it. The connection is made in that thread: a broker that is down at start does not stop the run.

The client is MQTT 3.1.1 written here (:class:`MqttConnection`: CONNECT with will, user and password, QoS 0 and
1 PUBLISH, PUBACK, PINGREQ, DISCONNECT; TLS through :mod:`ssl`), not paho-mqtt: paho spent about 45 µs of Python
per message, and on a 2-core box whose model uses both cores that cost 12-24 % of the pipeline's throughput at
1,300 frames/s (``benchmarks/results/serve_cell.md``). No dependency is needed.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.errors import ConfigError
from skipgan_edge.logs import redact
from skipgan_edge.runtime.sinks import Sink, check_camera_id, jsonl_line

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 10_000
RESULT, EVENT, STATUS = 1, 2, 0  # what an in-flight message is
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
    flush_ms: float = 20.0  # results that arrive within this long are written together (one send, one broker wake-up)

    def __post_init__(self) -> None:  # the command line checks these first, the cell file under its own keys
        from skipgan_edge.config import check_limits, option_name

        check_limits({"mqtt_buffer": self.buffer, "mqtt_heartbeat_s": self.heartbeat_s, "mqtt_flush_ms": self.flush_ms}, option_name)


@dataclass(frozen=True)
class BrokerUrl:
    tls: bool
    host: str
    port: int
    prefix: str
    username: str | None
    password: str | None


#: The longest topic prefix, in UTF-8 bytes: a topic is at most 65,535 bytes (MQTT 3.1.1, 4.7.3), and the prefix is
#: followed by /CAMERA (up to 64) and /heartbeat; a prefix that long is a mistake long before that.
MAX_PREFIX_BYTES = 1024


def parse_url(url: str, name: str = "--mqtt") -> BrokerUrl:
    """``mqtt[s]://[user:pass@]host[:port]/prefix`` → its parts; one line naming what is wrong otherwise (``name``: the option or
    the cell file's key the URL came from)."""
    usage = "expected mqtt://[user:pass@]host[:port]/topic-prefix (or mqtts:// for TLS)"
    shown = redact(url)  # for error lines: the URL may not parse
    if any(c in url for c in " \t\r\n\0"):
        raise ConfigError(f"{name} {shown!r}: no spaces or control characters; {usage}")
    try:
        u = urllib.parse.urlsplit(url)
        host = u.hostname
    except ValueError as exc:  # an unterminated [IPv6 host
        raise ConfigError(f"{name} {shown!r}: {exc}; {usage}") from None
    if u.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"{name} {shown!r}: {usage}")
    if not host:
        raise ConfigError(f"{name} {shown!r}: no broker host; e.g. mqtt://localhost/line1")
    try:
        port = u.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"{name} {shown!r}: the port must be a number in 1-65535 (or none: 1883, mqtts 8883)")
    if port is None:
        port = 8883 if u.scheme == "mqtts" else 1883
    if u.query or u.fragment or "#" in url or "?" in url:  # '#' would end the prefix there and drop the rest
        raise ConfigError(f"{name} {shown!r}: the topic prefix may not contain + # (MQTT wildcards) or ?; "
                          "percent-encode # and ? in a password")
    prefix = u.path.strip("/") or "skipgan-edge"
    if any(c in prefix for c in "+#\x00"):
        raise ConfigError(f"{name} {shown!r}: the topic prefix may not contain + # or NUL (MQTT wildcards)")
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES:
        raise ConfigError(f"{name}: the topic prefix is {len(prefix.encode('utf-8', 'surrogatepass'))} bytes; "
                          f"at most {MAX_PREFIX_BYTES}")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} {shown!r}: the topic prefix is not valid UTF-8") from None
    return BrokerUrl(u.scheme == "mqtts", host, port, prefix,
                     urllib.parse.unquote(u.username) if u.username else None, urllib.parse.unquote(u.password) if u.password else None)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, pid: int = 0, retain: bool = False, dup: bool = False) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet (QoS 0 or 1)."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return _packet(first, _str(topic) + (struct.pack(">H", pid) if qos else b"") + payload)


class MqttError(OSError):
    pass


class MqttConnection:
    """One MQTT 3.1.1 connection: connect (blocking, with a timeout), then non-blocking sends and reads."""

    def __init__(self, b: BrokerUrl, client_id: str, keepalive: int, will: tuple[str, str] | None, ca: Path | None,
                 timeout: float = 5.0) -> None:
        raw = socket.create_connection((b.host, b.port), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            if b.tls:
                ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
                sock = ctx.wrap_socket(raw, server_hostname=b.host)
            flags = 0x02  # clean session
            payload = _str(client_id)
            if will is not None:
                flags |= 0x04 | (1 << 3) | 0x20  # will, will QoS 1, will retain
                payload += _str(will[0]) + _str(will[1])
            if b.username is not None:
                flags |= 0x80
                payload += _str(b.username)
                if b.password is not None:
                    flags |= 0x40
                    payload += _str(b.password)
            sock.sendall(_packet(0x10, _str("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + payload))
            ack = b""
            while len(ack) < 4:
                chunk = sock.recv(4 - len(ack))
                if not chunk:
                    raise MqttError("the broker closed the connection before CONNACK")
                ack += chunk
            if ack[0] != 0x20 or ack[3] != 0:
                reasons = {1: "protocol version", 2: "client id", 3: "server unavailable", 4: "user name or password", 5: "not authorized"}
                raise MqttError(f"the broker refused the connection ({reasons.get(ack[3], ack[3])})")
            sock.setblocking(False)
        except BaseException:
            raw.close()
            raise
        self.sock = sock
        self.buf = bytearray()
        self.last_send = time.monotonic()

    def send(self, data: bytes) -> None:
        """Write all of ``data`` (waits for the socket while the kernel's buffer is full, 10 s at most)."""
        view = memoryview(data)
        deadline = time.monotonic() + 10.0
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                if time.monotonic() > deadline:
                    raise MqttError("the broker stopped reading") from None
                select.select([], [self.sock], [], 0.05)
        self.last_send = time.monotonic()

    def read(self, timeout: float) -> list[tuple[int, bytes]]:
        """Packets that arrived within ``timeout`` as (type, body); MqttError when the connection is gone."""
        if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return []
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not chunk:
                raise MqttError("the broker closed the connection")
            self.buf += chunk
            if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                break
        out: list[tuple[int, bytes]] = []
        while len(self.buf) >= 2:
            n, mult, i = 0, 1, 1
            while True:
                if i >= len(self.buf):
                    return out
                b = self.buf[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            if len(self.buf) < i + n:
                break
            out.append((self.buf[0] >> 4, bytes(self.buf[i : i + n])))
            del self.buf[: i + n]
        return out

    def close(self, graceful: bool) -> None:
        try:
            if graceful:
                self.sock.setblocking(True)
                self.sock.settimeout(1.0)
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT: the broker drops the will
        except OSError:
            pass
        finally:
            self.sock.close()


class MqttSink(Sink):
    needs_image = False

    def __init__(self, opts: MqttOptions) -> None:
        self.opts = opts
        b = parse_url(opts.url)
        camera = check_camera_id(opts.camera)
        if opts.buffer < 1:
            raise ConfigError(f"--mqtt-buffer must be at least 1, got {opts.buffer}")
        if opts.ca is not None and not Path(opts.ca).is_file():
            raise ConfigError(f"--mqtt-ca {opts.ca}: no such file")
        self.broker = b
        self.name = f"MQTT {b.host}:{b.port}/{b.prefix}"
        base = f"{b.prefix}/{camera}"
        self.topic_result, self.topic_status, self.topic_heartbeat = f"{base}/result", f"{base}/status", f"{base}/heartbeat"
        self.topic_events = f"{base}/events"
        self._topic = self.topic_result.encode()
        self.camera = camera
        self.client_id = opts.client_id or f"skipgan-edge-{camera}-{time.time_ns() % 10**9}"
        self.keepalive = 15
        self.lock = threading.Lock()
        self.seen = self.anomalies = self.queued = self.published = self.dropped = 0
        self.events_queued = self.events_published = self.events_dropped = 0
        # QoS 1 messages not yet acknowledged, in order: packet id -> [PUBLISH packet, sent?, what: RESULT, EVENT or STATUS]
        self.inflight: dict[int, list[Any]] = {}
        self._pid = 0
        self._cond = threading.Condition(self.lock)  # one lock: the hand-over, the in-flight table and the counters
        # handed over by the pipeline, not yet published, in order: (True, a batch's records) or (False, event messages)
        self._outbox: deque[tuple[bool, list[dict[str, Any]]]] = deque()
        self._closing = False
        self.connected = threading.Event()
        self.connects = 0
        self.conn: MqttConnection | None = None
        self._next_connect = 0.0
        self._backoff = 1.0
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    # the pipeline's thread -------------------------------------------------------------------
    def write(self, record: dict[str, Any], view: np.ndarray | None, amap: np.ndarray | None) -> None:
        self.write_batch([record], None, None)

    def write_batch(self, records: list[dict[str, Any]], views: list[np.ndarray] | None, maps: list[np.ndarray] | None) -> None:
        """Hand the batch's records to the MQTT thread: the pipeline's thread does no MQTT work at all."""
        n_anom = sum(1 for r in records if r["anomalous"])
        with self._cond:
            self.seen += len(records)
            self.anomalies += n_anom
            self._outbox.append((True, records))
            self._cond.notify()

    def events(self, messages: list[dict[str, Any]]) -> None:
        """Alarm event start/end messages, after the records of their batch: to the MQTT thread, like the records."""
        with self._cond:
            self._outbox.append((False, messages))
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            waiting = sum(1 for e in self.inflight.values() if e[2] != STATUS)
            handed = sum(len(b) for _, b in self._outbox)
            return {"topic": self.topic_result, "connected": self.connected.is_set(), "frames_seen": self.seen,
                    "anomalies": self.anomalies, "queued": self.queued, "published": self.published, "dropped": self.dropped,
                    "events_queued": self.events_queued, "events_published": self.events_published, "events_dropped": self.events_dropped,
                    "waiting": waiting + handed, "buffer": self.opts.buffer}

    # the MQTT thread -------------------------------------------------------------------------
    def _next_pid(self) -> int:
        for _ in range(65535):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid
        raise MqttError("65,535 messages await acknowledgement")

    def _enqueue(self, topic: bytes, payload: bytes, what: int, retain: bool = False) -> bytes | None:
        """A QoS 1 message (``what``: RESULT, EVENT or STATUS) into the in-flight table; its packet to send now (None: it
        waits for the connection)."""
        pid = self._next_pid()
        pkt = publish_packet(topic, payload, 1, pid, retain)
        with self.lock:
            self.inflight[pid] = [pkt, self.conn is not None, what]
        return pkt if self.conn is not None else None

    def _connect(self) -> None:
        now = time.monotonic()
        if now < self._next_connect:
            return
        try:
            will = (self.topic_status, json.dumps({"state": "offline", "camera": self.camera, "reason": "connection lost"}))
            self.conn = MqttConnection(self.broker, self.client_id, self.keepalive, will, self.opts.ca)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS handshake failed, CONNACK refused
            if not self._warned:
                log.warning("MQTT broker %s:%d not reachable (%s); retrying, messages wait up to %d",
                            self.broker.host, self.broker.port, exc, self.opts.buffer)
                self._warned = True
            self._next_connect = now + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            return
        self._backoff, self._warned = 1.0, False
        self.connects += 1
        if self.connects > 1:
            log.info("MQTT reconnected to the broker")
        # everything not acknowledged goes (again) first, in order; DUP where it had been sent
        with self.lock:
            entries = list(self.inflight.items())
        parts = []
        for _, e in entries:
            pkt = e[0]
            if e[1]:
                pkt = bytes([pkt[0] | 0x08]) + pkt[1:]
            e[1] = True
            parts.append(pkt)
        status = self._enqueue(self.topic_status.encode(), json.dumps({"state": "online", "camera": self.camera}).encode(), STATUS, True)
        self._send(b"".join([*parts, status or b""]))
        if self.conn is not None:
            self.connected.set()

    def _lost(self, why: str) -> None:
        if self.conn is not None:
            self.conn.close(False)
            self.conn = None
            if self.connected.is_set():
                log.warning("MQTT connection lost (%s): messages wait, up to %d, and are sent on reconnect", why, self.opts.buffer)
            self.connected.clear()  # the messages sent and not acknowledged are resent, with DUP, on reconnect
            self._next_connect = time.monotonic() + self._backoff

    def _send(self, data: bytes) -> None:
        if self.conn is None or not data:
            return
        try:
            self.conn.send(data)
        except OSError as exc:
            self._lost(str(exc))

    def _network(self, timeout: float) -> None:
        if self.conn is None:
            self._connect()
            if self.conn is None:
                time.sleep(min(timeout, 0.05))
                return
        try:
            packets = self.conn.read(timeout)
        except OSError as exc:
            self._lost(str(exc))
            return
        acked = events = 0
        with self.lock:
            for kind, body in packets:
                if kind == 4 and len(body) >= 2:  # PUBACK
                    e = self.inflight.pop(struct.unpack(">H", body[:2])[0], None)
                    if e is not None:
                        acked += e[2] == RESULT
                        events += e[2] == EVENT
            self.published += acked
            self.events_published += events
        if self.conn is not None and time.monotonic() - self.conn.last_send > self.keepalive / 2:
            self._send(b"\xc0\x00")  # PINGREQ

    def _run(self) -> None:
        """Format and publish what the pipeline handed over, in order; read acknowledgements; keep the connection."""
        topic, only_anomalies, bound = self._topic, self.opts.anomalies_only, self.opts.buffer
        topic_events = self.topic_events.encode()
        next_beat = time.monotonic() + self.opts.heartbeat_s
        flush = self.opts.flush_ms / 1e3
        last_flush = 0.0
        while True:
            with self._cond:
                if not self._outbox and not self._closing:
                    self._cond.wait(0.02)
                # what arrived within flush_ms goes out together: one write, one wake-up of the broker
                wait = last_flush + flush - time.monotonic()
                if wait > 0 and not self._closing:
                    self._cond.wait(wait)
                batches, self._outbox = self._outbox, deque()
                closing = self._closing
            if batches:
                last_flush = time.monotonic()
            out: list[bytes] = []
            queued = dropped = n_events = events_dropped = 0
            for is_records, items in batches:
                for r in items:
                    if is_records and only_anomalies and not r["anomalous"]:
                        continue
                    if len(self.inflight) >= bound:  # the buffer bound: unacknowledged messages included
                        if is_records:
                            dropped += 1
                        else:
                            events_dropped += 1
                        continue
                    if is_records:
                        pkt = self._enqueue(topic, jsonl_line(r)[:-1].encode("ascii"), RESULT)
                        queued += 1
                    else:
                        pkt = self._enqueue(topic_events, json.dumps(r).encode(), EVENT)
                        n_events += 1
                    if pkt is not None:
                        out.append(pkt)
            if queued or dropped or n_events or events_dropped:
                with self.lock:
                    self.queued += queued
                    self.dropped += dropped
                    self.events_queued += n_events
                    self.events_dropped += events_dropped
            if out:
                self._send(b"".join(out))
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.opts.heartbeat_s
                if self.conn is not None:
                    beat = json.dumps({"camera": self.camera, "time": time.time(), **self.stats()}).encode()
                    self._send(publish_packet(self.topic_heartbeat.encode(), beat, 0))
            self._network(0.0 if batches else 0.01)
            if closing and not batches:
                return

    def close(self, drain_s: float = 10.0) -> None:
        """Publish what was handed over, wait for the broker's acknowledgements (up to ``drain_s``: a broker that is away
        costs the run's end that long), publish ``offline``, disconnect."""
        deadline = time.monotonic() + drain_s
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=drain_s)
        # the MQTT thread has ended: this thread runs the loop now. A short run may end before the (TLS) connection is
        # up: messages that wait get until the deadline either way
        while self.stats()["waiting"] > 0 and time.monotonic() < deadline:
            self._network(0.02)
        s = self.stats()
        if s["waiting"] and self.connects == 0:  # not one connection: nothing was sent, the run's end waited drain_s
            log.warning("MQTT: the broker %s:%d was never reached: nothing was sent (%d message(s) waiting, %d dropped; the "
                        "run's end waited %.0f s for it)", self.broker.host, self.broker.port, s["waiting"], s["dropped"], drain_s)
        elif s["waiting"]:
            log.warning("MQTT: %d message(s) were not acknowledged by the broker before the run ended", s["waiting"])
        if self.conn is not None:
            pkt = self._enqueue(self.topic_status.encode(), json.dumps({"state": "offline", "camera": self.camera,
                                                                        "reason": "run ended"}).encode(), STATUS, True)
            self._send(pkt or b"")
            end = time.monotonic() + min(5.0, max(0.1, deadline - time.monotonic()))
            while self.conn is not None and any(e[2] == STATUS for e in self.inflight.values()) and time.monotonic() < end:
                self._network(0.02)
        if self.conn is not None:
            self.conn.close(True)
            self.conn = None
        self.connected.clear()
