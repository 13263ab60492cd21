"""``run --metrics-port``: a real run scraped over plain HTTP while it streams, parsed with Prometheus' own text parser."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import CLI, run_cli, write_defect_video
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_a_running_camera_is_scraped(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "line.avi", 90, {20, 60}, "MJPG")
    port = _free_port()
    proc = subprocess.Popen([*CLI, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                             "--replay-fps", "30", "--camera-id", "cam7", "--metrics-port", str(port), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cam = (("camera", "cam7"),)
    seen: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            m = _scrape(port)
        except OSError:
            time.sleep(0.1)
            continue
        if m.get(("skipgan_frames_total", (*cam, ("outcome", "scored")))):
            seen.append(m)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"INFO metrics: http://127.0.0.1:{port}/metrics while this runs" in err.splitlines()  # where to point Prometheus
    summary = json.loads(out)
    assert len(seen) >= 2, "the run must be scraped while it streams"
    mid, last = seen[0], seen[-1]
    assert mid[("skipgan_up", cam)] == 1.0
    scored = [m[("skipgan_frames_total", (*cam, ("outcome", "scored")))] for m in seen]
    assert scored == sorted(scored) and scored[-1] <= summary["scored"]  # a counter only grows
    info = [k for k in last if k[0] == "skipgan_model_info"]
    assert info and dict(info[0][1]) == {"camera": "cam7", "model_id": summary["model_id"], "backend": "onnxruntime",
                                         "precision": summary["precision"]}
    assert last[("skipgan_threshold", cam)] == summary["threshold"]
    for stage in ("capture", "preprocess", "queue_wait", "infer", "postprocess", "total"):
        count = last[("skipgan_stage_latency_seconds_count", (*cam, ("stage", stage)))]
        assert scored[-1] <= count <= summary["scored"]  # one observation per scored frame and stage
    assert ("skipgan_frames_total", (*cam, ("outcome", "dropped"))) in last and ("skipgan_anomalies_total", cam) in last
    # alarm events: the defects at frames 20 and 60 each opened one before the last scrape (a counter only grows)
    events = [m[("skipgan_events_total", cam)] for m in seen]
    assert events == sorted(events) and 2 <= events[-1] <= summary["events"]["count"], (events, summary["events"])
    assert ("skipgan_event_open", cam) in last
    # the server goes with the run
    try:
        _scrape(port)
        raise AssertionError("the metrics server outlived the run")
    except OSError:
        pass


def test_a_busy_metrics_port_is_one_line(demo_onnx: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        video = write_defect_video(tmp_path / "line.avi", 5, set(), "MJPG")
        p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--source", str(video), "--metrics-port", str(port), check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and f"--metrics-port {port}" in lines[0], p.stderr
