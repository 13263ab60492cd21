"""``run --mqtt``: a real Mosquitto broker started on loopback, real subscribers, real CLI runs (a broker restart included)."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, run_cli, separating_threshold, write_defect_video

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs Debian's mosquitto (make test installs it)")
# run as root, mosquitto drops to the 'mosquitto' user, which cannot read the test's private folders: stay this user
USER = f"user {getpass.getuser()}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """Mosquitto on 127.0.0.1:port with persistence in a temporary folder (a restart keeps durable sessions)."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.conf = folder / "mosquitto.conf"
        folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nautosave_interval 1\n{USER}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto writes its persistence file, durable sessions survive the restart
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A durable QoS 1 subscriber (clean_session False): the broker keeps its messages while it is away."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict[str, object], bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.reconnect_delay_set(0.1, 0.5)
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10)

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))  # type: ignore[attr-defined]

    def on(self, suffix: str) -> list[dict[str, object]]:
        with self.lock:
            return [m for t, m, _ in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_every_frame_reaches_the_broker_with_status_and_heartbeat(broker: Broker, demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "line.avi", 60, {10, 40}, "MJPG")
    sub = Subscriber(broker.port, "line1/#", "test-sub-1")
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--replay-fps", "40", "--mqtt", f"mqtt://127.0.0.1:{broker.port}/line1", "--camera-id", "camA",
                "--mqtt-heartbeat", "0.3", "--jsonl", str(tmp_path / "s.jsonl"), "--json")
    summary = json.loads(p.stdout)
    stats = next(iter(summary["sinks"].values()))
    time.sleep(0.5)
    results = sub.on("/camA/result")
    local = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert stats["published"] == stats["queued"] == summary["scored"] == len(local) and stats["dropped"] == 0
    assert sorted({r["frame"] for r in results}) == [r["frame"] for r in local]  # at least once, none missing
    by_frame = {r["frame"]: r for r in results}
    for rec in local:  # the same record as the JSONL line, plus the camera
        got = by_frame[rec["frame"]]
        assert got["camera"] == "camA" and got["score"] == rec["score"] and got["anomalous"] == rec["anomalous"]
    assert any(r["anomalous"] for r in results)
    import jsonschema

    from skipgan_edge.schemas import load

    validator = jsonschema.Draft202012Validator(load("record"))
    for r in results:  # the message is the shipped record schema
        validator.validate(r)
    beats = sub.on("/camA/heartbeat")
    assert len(beats) >= 2 and beats[-1]["camera"] == "camA" and beats[-1]["frames_seen"] > 0
    assert [s["state"] for s in sub.on("/camA/status")][-1] == "offline"
    sub.close()
    # the status is retained: a subscriber arriving later learns the camera is offline
    late = Subscriber(broker.port, "line1/camA/status", "test-sub-late")
    deadline = time.monotonic() + 5
    while not late.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert late.messages and late.messages[0][1]["state"] == "offline" and late.messages[0][2] is True
    late.close()


def test_a_broker_restart_mid_run_loses_nothing_within_the_buffer(broker: Broker, demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "line.avi", 150, {30, 100}, "MJPG")
    sub = Subscriber(broker.port, "line1/camB/result", "test-sub-2")
    proc = subprocess.Popen([*CLI, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                             "--replay-fps", "30", "--mqtt", f"mqtt://127.0.0.1:{broker.port}/line1", "--camera-id", "camB",
                             "--jsonl", str(tmp_path / "s.jsonl"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    before = len(sub.on("result"))
    broker.stop()  # the broker goes away for about 1.5 s of a 5 s run
    time.sleep(1.5)
    broker.start()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    stats = next(iter(summary["sinks"].values()))
    deadline = time.monotonic() + 10
    local = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    while len({r["frame"] for r in sub.on("result")}) < len(local) and time.monotonic() < deadline:
        time.sleep(0.1)
    got = {r["frame"] for r in sub.on("result")}
    assert 0 < before < len(local), "the broker must go away mid-run for this test to mean anything"
    assert got == {r["frame"] for r in local}, f"missing frames: {sorted({r['frame'] for r in local} - got)}"
    assert stats["dropped"] == 0 and stats["published"] >= len(local)
    assert "connection lost" in err  # the run said so, in one warning
    sub.close()


def test_without_a_broker_messages_beyond_the_buffer_are_counted_as_dropped(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "line.avi", 30, {5}, "MJPG")
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--mqtt", f"mqtt://127.0.0.1:{port}/x", "--mqtt-buffer", "5", "--json")
    summary = json.loads(p.stdout)
    stats = next(iter(summary["sinks"].values()))
    assert (stats["queued"], stats["dropped"], stats["published"], stats["connected"]) == (5, 25, 0, False)
    assert time.monotonic() - t0 < 60  # scoring did not wait for the network
    # the end waited for the broker (10 s): not streaming, so not in the throughput, and said in one warning
    assert summary["close_s"] >= 9 and summary["elapsed_s"] < summary["close_s"], summary
    assert abs(30 / summary["throughput_fps"] - summary["elapsed_s"]) <= 0.0006, summary  # elapsed_s is rounded to 1 ms
    assert f"WARNING MQTT: the broker 127.0.0.1:{port} was never reached: nothing was sent (5 message(s) waiting, 25 dropped" \
        in p.stderr, p.stderr


def test_bad_mqtt_options_are_one_line(demo_onnx: Path, tmp_path: Path) -> None:
    for args, msg in ((["--mqtt", "http://x/y"], "expected mqtt://"), (["--mqtt", "mqtt://h/a+b"], "wildcards"),
                      (["--mqtt", "mqtt://h/x", "--camera-id", "a/b"], "--camera-id"),
                      (["--mqtt", "mqtts://h/x", "--mqtt-ca", str(tmp_path / "none.pem")], "--mqtt-ca")):
        p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--source", "missing.mp4", *args, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and msg in lines[0], (args, p.stderr)
    assert sys.executable


def test_mqtts_with_a_private_ca(demo_onnx: Path, tmp_path: Path) -> None:
    """TLS to a Mosquitto listener whose certificate a private CA signed (openssl CLI makes both), verified with --mqtt-ca."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make the test certificates")
    d = tmp_path / "pki"
    d.mkdir()

    def ssl(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2",
        "-extfile", "san.ext")
    port = _free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\n"
                    f"keyfile {d / 'server.key'}\n{USER}")
    assert MOSQUITTO is not None
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        video = write_defect_video(tmp_path / "line.avi", 12, {4}, "MJPG")
        p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                    "--mqtt", f"mqtts://127.0.0.1:{port}/secure", "--mqtt-ca", str(d / "ca.crt"), "--json")
        stats = next(iter(json.loads(p.stdout)["sinks"].values()))
        assert stats["published"] == 12 and stats["dropped"] == 0
        # without the CA the broker's certificate is not trusted: nothing is published, every message waits or drops
        p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                    "--mqtt", f"mqtts://127.0.0.1:{port}/secure", "--json")
        stats = next(iter(json.loads(p.stdout)["sinks"].values()))
        assert stats["published"] == 0 and stats["connected"] is False
    finally:
        broker.terminate()
        broker.wait()


def test_anomalies_only_and_the_last_will(broker: Broker, demo_onnx: Path, tmp_path: Path) -> None:
    """--mqtt-anomalies-only publishes the anomalous frames alone; a process killed mid-run leaves the broker to publish
    the retained offline status (the last will)."""
    video = write_defect_video(tmp_path / "line.avi", 30, {6, 21}, "MJPG")
    sub = Subscriber(broker.port, "cell/#", "test-sub-3")
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--mqtt", f"mqtt://127.0.0.1:{broker.port}/cell", "--camera-id", "camC", "--mqtt-anomalies-only",
                "--jsonl", str(tmp_path / "s.jsonl"), "--json")
    local = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    flagged = {r["frame"] for r in local if r["anomalous"]}
    assert {6, 21} <= flagged and len(local) == 30
    stats = next(iter(json.loads(p.stdout)["sinks"].values()))
    assert stats["published"] == len(flagged) and stats["frames_seen"] == 30
    deadline = time.monotonic() + 5
    while len(sub.on("/camC/result")) < len(flagged) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {r["frame"] for r in sub.on("/camC/result")} == flagged
    # SIGKILL mid-run: no DISCONNECT reaches the broker, which publishes the will
    long = write_defect_video(tmp_path / "long.avi", 300, set(), "MJPG")
    proc = subprocess.Popen([*CLI, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(long),
                             "--replay-fps", "20", "--mqtt", f"mqtt://127.0.0.1:{broker.port}/cell", "--camera-id", "camK"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any(s.get("state") == "online" for s in sub.on("/camK/status")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(s.get("state") == "online" for s in sub.on("/camK/status"))
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while not (st := sub.on("/camK/status")) or st[-1].get("state") != "offline":
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    assert st[-1] == {"state": "offline", "camera": "camK", "reason": "connection lost"}
    sub.close()


def test_alarm_events_start_and_end_on_the_events_topic(broker: Broker, demo_onnx: Path, tmp_path: Path) -> None:
    """The demo's line video (defects at frames 20-22, 55, 90-91, 130) at a threshold where exactly the defects alarm:
    one start and one end message per defect run on PREFIX/CAMERA/events, in order, with the defect's frames."""
    from skipgan_edge.demo import DEFECT_FRAMES

    video = write_defect_video(tmp_path / "line.avi", 150, set(DEFECT_FRAMES), "MJPG")
    thr = separating_threshold(demo_onnx / "scorer.onnx", video, set(DEFECT_FRAMES))
    sub = Subscriber(broker.port, "line1/camE/events", "test-sub-events")
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--threshold", repr(thr), "--mqtt", f"mqtt://127.0.0.1:{broker.port}/line1", "--camera-id", "camE",
                "--mqtt-anomalies-only", "--jsonl", str(tmp_path / "r.jsonl"), "--json")
    summary = json.loads(p.stdout)
    stats = next(iter(summary["sinks"].values()))
    assert summary["events"]["count"] == 4 and stats["events_queued"] == stats["events_published"] == 8
    deadline = time.monotonic() + 5
    while len(sub.messages) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    msgs = [m for _, m, _ in sub.messages]
    import jsonschema

    from skipgan_edge.schemas import load

    validator = jsonschema.Draft202012Validator(load("event"))
    for m in msgs:
        validator.validate(m)
    assert [(m["type"], m["event"]) for m in msgs] == [(t, i) for i in (1, 2, 3, 4) for t in ("start", "end")]
    ends = [m for m in msgs if m["type"] == "end"]
    assert [(m["first_frame"], m["last_frame"], m["frames"]) for m in ends] == [(20, 22, 3), (55, 55, 1), (90, 91, 2), (130, 130, 1)]
    assert [m["first_frame"] for m in msgs if m["type"] == "start"] == [20, 55, 90, 130]
    local = {r["frame"]: r for r in (json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines())}
    for m in ends:
        assert m["camera"] == "camE" and m["closed_by"] == "normal frames" and m["closed_frame"] == m["last_frame"] + 1
        assert m["first_frame"] <= m["peak_frame"] <= m["last_frame"]
        assert m["peak_normalized_score"] == max(local[f]["normalized_score"] for f in range(m["first_frame"], m["last_frame"] + 1))
        assert m["duration_s"] == pytest.approx(local[m["last_frame"]]["timestamp"] - local[m["first_frame"]]["timestamp"], abs=1e-5)
        assert "bbox" in m["peak_where"]  # a defect the map outlines
        assert all(local[f]["event"] == m["event"] for f in range(m["first_frame"], m["last_frame"] + 1))
    sub.close()
