"""What the operator meets (issue 23): alarm events with a debounce, where an alarm comes from, and a latency that
says what it measures. A synthetic score sequence through the event tracker, then real CLI runs on a real video."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import run_cli, separating_threshold, write_defect_video

from skipgan_edge.demo import DEFECT_FRAMES, stream_line
from skipgan_edge.runtime.events import EventTracker
from skipgan_edge.schemas import load

ANOMALOUS = {3, 4, 5, 10, 15, 16, 17, 18, 20, 21, 22, 28, 29}  # frames 0-29


def _sequence(k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], EventTracker]:
    tracker = EventTracker("cam0", k)
    recs, messages = [], []
    for i in range(30):
        score = 2.0 + i / 100 if i in ANOMALOUS else 0.5
        rec = {"frame": i, "source": "s", "model_id": "m", "threshold": 1.0, "timestamp": 100.0 + i / 25,
               "time": f"t{i}", "score": score * 10, "normalized_score": score, "anomalous": i in ANOMALOUS,
               "where": "latent" if i in ANOMALOUS else None}
        messages += tracker.update(rec)
        recs.append(rec)
    return recs, messages + tracker.finish(), tracker


def test_debounce_on_a_score_sequence() -> None:
    validator = jsonschema.Draft202012Validator(load("event"))
    # K = 1: every run of anomalous frames is one event; the last is open when the sequence ends
    recs, msgs, tracker = _sequence(1)
    for m in msgs:
        validator.validate(m)
    starts = [(m["event"], m["first_frame"]) for m in msgs if m["type"] == "start"]
    ends = [(m["event"], m["first_frame"], m["last_frame"], m["frames"], m["closed_by"]) for m in msgs if m["type"] == "end"]
    assert starts == [(1, 3), (2, 10), (3, 15), (4, 20), (5, 28)]
    assert ends == [(1, 3, 5, 3, "normal frames"), (2, 10, 10, 1, "normal frames"), (3, 15, 18, 4, "normal frames"),
                    (4, 20, 22, 3, "normal frames"), (5, 28, 29, 2, "end of run")]
    assert tracker.count == 5
    assert [r["event"] for r in recs if r["event"] is not None] == [1, 1, 1, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5]
    assert all((r["event"] is not None) == r["anomalous"] for r in recs)  # K = 1: exactly the anomalous frames
    # K = 3: three anomalous frames in a row open an event, three normal ones close it; a gap of one stays inside
    recs, msgs, tracker = _sequence(3)
    for m in msgs:
        validator.validate(m)
    assert tracker.count == 2 and tracker.open is None
    start1, end1, start2, end2 = msgs
    assert (start1["type"], start1["first_frame"], start1["opened_frame"]) == ("start", 3, 5)
    assert (end1["last_frame"], end1["frames"], end1["anomalous_frames"], end1["closed_frame"]) == (5, 3, 3, 8)
    assert (start2["first_frame"], start2["opened_frame"]) == (15, 17)
    assert (end2["last_frame"], end2["frames"], end2["anomalous_frames"], end2["closed_frame"]) == (22, 8, 7, 25)
    assert end2["peak_frame"] == 22 and end2["peak_normalized_score"] == 2.22 and end2["peak_score"] == pytest.approx(22.2)
    assert end2["duration_s"] == pytest.approx(7 / 25) and end2["peak_where"] == "latent"
    ids = {r["frame"]: r["event"] for r in recs}
    # the frame that opens carries the id, so do the frames up to the one that closes; the K - 1 before it do not
    assert [ids[i] for i in (3, 4, 5, 6, 7, 8)] == [None, None, 1, 1, 1, None]
    assert [ids[i] for i in range(15, 27)] == [None, None, 2, 2, 2, 2, 2, 2, 2, 2, None, None]
    assert ids[10] is None and ids[28] is None and ids[29] is None  # one and two anomalous frames: no event
    with pytest.raises(ValueError):
        EventTracker("cam0", 0)


@pytest.fixture(scope="module")
def line(demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The demo's line video (its defect frames) and a threshold at which exactly its defects are anomalous."""
    video = write_defect_video(tmp_path_factory.mktemp("line") / "line.avi", 150, set(DEFECT_FRAMES), "MJPG")
    return video, separating_threshold(demo_onnx / "scorer.onnx", video, set(DEFECT_FRAMES))


def test_debounce_through_the_cli(demo_onnx: Path, line: tuple[Path, float], tmp_path: Path) -> None:
    video, thr = line
    got = {}
    for k in (1, 3):
        out = tmp_path / f"k{k}.jsonl"
        p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                    "--threshold", repr(thr), "--debounce", str(k), "--jsonl", str(out), "--summary", str(tmp_path / f"k{k}.json"))
        summary = json.loads((tmp_path / f"k{k}.json").read_text())
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        assert {r["frame"] for r in recs if r["anomalous"]} == set(DEFECT_FRAMES)
        got[k] = {r["frame"]: r["event"] for r in recs if r["event"] is not None}
        assert summary["events"] == {"count": 4 if k == 1 else 1, "open_at_end": 0, "debounce": k}
        assert f"alarm events {summary['events']['count']}" in p.stdout
    # defects at 20-22, 55, 90-91, 130: four events frame by frame; with K = 3 only 20-22, open from 22 until 25 closes it
    assert got[1] == {20: 1, 21: 1, 22: 1, 55: 2, 90: 3, 91: 3, 130: 4}
    assert got[3] == {22: 1, 23: 1, 24: 1}
    # a run that stops inside a defect (frames 0-20): the event is open at the end, and counted so
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--threshold", repr(thr), "--max-frames", "21", "--json")
    assert json.loads(p.stdout)["events"] == {"count": 1, "open_at_end": 1, "debounce": 1}


def test_latency_of_a_file_is_its_processing(demo_onnx: Path, line: tuple[Path, float], tmp_path: Path) -> None:
    video, _ = line
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--jsonl", str(tmp_path / "r.jsonl"), "--summary", str(tmp_path / "s.json"))
    s = json.loads((tmp_path / "s.json").read_text())
    lat = s["latency_ms"]
    assert s["headline_latency"] == "processing" and "queue" not in lat
    # read as fast as it decodes, a frame waits in the queue far longer than it takes to score
    assert lat["processing"]["median"] < lat["total"]["median"] and lat["queue_wait"]["median"] > lat["processing"]["median"]
    assert lat["processing"]["median"] >= lat["infer"]["median"]  # preprocess through sink: the inference is in it
    assert set(lat["processing"]) >= {"median", "p90", "p99"}
    headline = p.stdout.splitlines()[1]
    assert headline.startswith(f"latency p50 {lat['processing']['median']:.3f} ms") and "(processing: preprocess through sink" in headline
    assert f"waited {lat['queue_wait']['median']:.3f} ms median in the read-ahead queue" in headline
    rec = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert set(rec["stages_ms"]) == {"capture", "preprocess", "queue_wait", "infer", "postprocess"}
    # the demo prints the processing latency, p50 and p99
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    text = stream_line("scorer.onnx", recs, set(DEFECT_FRAMES), s)
    assert f"processing latency p50 {lat['processing']['median']:.2f} ms, p99 {lat['processing']['p99']:.2f} ms" in text
    assert f"{lat['total']['median']:.2f}" not in text.split("frames/s")[1]
    # the same video played as a camera: capture to result is the headline
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--replay-fps", "200", "--max-frames", "40", "--json")
    s = json.loads(p.stdout)
    assert s["headline_latency"] == "total" and s["live"]
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--replay-fps", "200", "--max-frames", "20")
    assert "(capture to result)" in p.stdout.splitlines()[1]


def test_every_alarm_says_where(demo_onnx: Path, line: tuple[Path, float], tmp_path: Path) -> None:
    """At threshold 0 (the least anomalous normal validation image) normal frames alarm too: their maps stay below the
    normal maps' peak, so their alarms are the latent term's; the defects' maps outline the hole."""
    video, _ = line
    out = tmp_path / "r.jsonl"
    run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
            "--threshold", "0", "--jsonl", str(out), "--csv", str(tmp_path / "r.csv"))
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    validator = jsonschema.Draft202012Validator(load("record"))
    for r in recs:
        validator.validate(r)
        assert (r["where"] is None) == (not r["anomalous"])
        if r["anomalous"]:
            assert r["where"] == "latent" if r["bbox"] is None else r["where"] == {"bbox": r["bbox"]}
    for i in DEFECT_FRAMES:
        assert recs[i]["anomalous"] and recs[i]["where"] == {"bbox": recs[i]["bbox"]}, recs[i]
    latent = [r["frame"] for r in recs if r["where"] == "latent"]
    assert len(latent) >= 10 and not set(latent) & set(DEFECT_FRAMES), latent
    import csv

    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["where"] for row in rows] == ["" if r["where"] is None else "latent" if r["where"] == "latent" else "bbox" for r in recs]


def test_the_overlay_names_a_latent_alarm() -> None:
    """A latent alarm has no region to outline: the annotated frame says which term fired instead."""
    import numpy as np

    from skipgan_edge.runtime.sinks import annotate

    view, amap = np.full((64, 64, 3), 128, np.uint8), np.zeros((64, 64), np.float32)
    rec = {"anomalous": True, "normalized_score": 2.0}

    def red(img: np.ndarray) -> int:  # the verdict's text is drawn in red
        return int(((img[..., 2] > 200) & (img[..., 1] < 80) & (img[..., 0] < 80)).sum())

    latent, boxed = annotate(view, amap, {**rec, "where": "latent"}, 1.0), annotate(view, amap, {**rec, "where": {"bbox": [0, 0, 4, 4]}}, 1.0)
    assert red(latent) > red(boxed) > 0  # "ANOMALY (latent) 2.00" against "ANOMALY 2.00"
