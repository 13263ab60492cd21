"""``skipgan-edge threshold``: commissioning on real videos through real ONNX Runtime sessions and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_cli, write_defect_video

from skipgan_edge.card import load_card
from skipgan_edge.runtime.backends import CPU_ONLY, open_backend
from skipgan_edge.runtime.backends.onnxrt import read_card
from skipgan_edge.runtime.engine_file import read_engine_file, write_engine_file


def _copy(demo_model: Path, demo_onnx: Path, tmp: Path) -> tuple[Path, Path]:
    model = tmp / "model"
    shutil.copytree(demo_model, model)
    onnx = tmp / "scorer.int8.onnx"
    shutil.copy(demo_onnx / "scorer.int8.onnx", onnx)
    return model, onnx


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_commissioning_updates_the_model_folder_and_the_onnx_graph(demo_model: Path, demo_onnx: Path, tmp_path: Path) -> None:
    model, onnx = _copy(demo_model, demo_onnx, tmp_path)
    before_card, before_tensors = load_card(model), _tensors(model / "model.safetensors")
    normal = write_defect_video(tmp_path / "site.avi", 120, set(), "MJPG", seed=11)
    line = write_defect_video(tmp_path / "line.avi", 40, {5, 17, 30}, "MJPG", seed=12)
    # --yes: the trained threshold may flag fewer of these 40 normal frames than the site's fpr:0.05 one does (the
    # default head's does); raising false alarms asks for it (test_rates_in_the_operators_units_and_a_raising_threshold_needs_yes)
    p = run_cli("threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(normal), "--anomalous", str(line),
                "--frames", "40", "--fpr", "0.05", "--backend", "onnxruntime", "--yes", "--json")
    # --frames caps each source: 40 normal frames, 40 line frames
    r = json.loads(p.stdout)
    assert r["false_alarms_after"] == r["flagged_in_sample"]
    assert r["frames"] == 40 and r["scored_with"] == "onnx scorer.int8.onnx (onnxruntime)"
    assert r["flagged_in_sample"] == 1 and r["expected_fpr"] == pytest.approx(2 / 41)  # k = floor(0.05*41) - 1 = 1
    lo, hi = r["fpr_interval_95"]
    assert 0 < lo < r["expected_fpr"] < hi < 0.2
    assert r["recall_on_anomalous"] is not None and r["anomalous_frames"] == 40
    assert sorted(r["updated"]) == sorted([str(model / "model.safetensors"), str(model / "model.json"), str(onnx)])

    # the model folder: new threshold and normalization, same tensors, same model id, model.json agrees with the weights
    card = load_card(model)
    assert card.model_id == before_card.model_id
    assert card.score.threshold.normalized == pytest.approx(r["threshold_normalized"]) != before_card.score.threshold.normalized
    assert [card.score.val_stats.min, card.score.val_stats.max] == pytest.approx(r["normalization"])
    assert card.score.threshold.policy == "fpr:0.05" and card.score.threshold.commissioning["frames"] == 40
    assert card.score.threshold.commissioning["previous"]["threshold_normalized"] == before_card.score.threshold.normalized
    after = _tensors(model / "model.safetensors")
    assert after.keys() == before_tensors.keys() and all(np.array_equal(after[k], before_tensors[k]) for k in after)
    assert json.loads((model / "model.json").read_text())["score"]["threshold"]["raw"] == pytest.approx(r["threshold_raw"])

    # the ONNX graph now normalizes with the site's numbers: check with a fresh ONNX Runtime session on real frames
    from skipgan_edge.runtime.sources import SourceOptions, open_source

    frames = np.stack([f.image for f in open_source(str(normal), SourceOptions()).frames()][:8])
    import cv2

    x = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in frames])
    score, _, norm = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    smin, smax = r["normalization"]
    assert np.allclose(norm, (score - smin) / (smax - smin), atol=1e-5)
    assert read_card(onnx).score.threshold.normalized == pytest.approx(r["threshold_normalized"])

    # run uses the new threshold, and its normalized scores match the model folder's torch scorer
    s = json.loads(run_cli("run", "--onnx", str(onnx), "--source", str(normal), "--backend", "onnxruntime", "--json").stdout)
    assert s["threshold"] == pytest.approx(r["threshold_normalized"]) and s["model_id"] == before_card.model_id
    assert s["anomalies"] <= 0.2 * s["scored"]  # normal frames: the new threshold does not flood the line with alarms


def test_too_few_frames_are_refused_and_nothing_changes(demo_model: Path, demo_onnx: Path, tmp_path: Path) -> None:
    model, onnx = _copy(demo_model, demo_onnx, tmp_path)
    snapshot = {p: p.read_bytes() for p in (onnx, model / "model.json", model / "model.safetensors")}
    normal = write_defect_video(tmp_path / "site.avi", 30, set(), "MJPG", seed=11)
    p = run_cli("threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.01",
                "--backend", "onnxruntime", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "30 normal frame(s) cannot set a false-alarm rate of 0.01: need at least 99" in lines[0]
    assert all(path.read_bytes() == data for path, data in snapshot.items())


def test_artifacts_of_different_models_are_refused(demo_onnx: Path, tiny_model: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    model = tmp_path / "other"
    shutil.copytree(tiny_model, model)
    normal = write_defect_video(tmp_path / "site.avi", 30, set(), "MJPG", seed=11)
    p = run_cli("threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.05",
                "--backend", "onnxruntime", check=False)
    assert p.returncode == 2 and "give the artifacts of one trained model" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_an_engine_keeps_its_bytes_and_the_runtime_renormalizes(demo_onnx: Path, tmp_path: Path) -> None:
    """TensorRT is not here, so the engine's serialized bytes are a stand-in: commissioning must not touch them, only the
    header's card; the runtime half (re-normalizing with the card when graph_norm is set) runs on a real ONNX session."""
    from skipgan_edge.runtime.commission import commission

    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    card = read_card(onnx)
    blob = bytes(range(256)) * 16
    engine = tmp_path / "scorer.engine"
    write_engine_file(engine, {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "precision": "int8",
                               "profile": {"min": 1, "opt": 4, "max": 8}, "card": card.to_dict()}, blob)
    normal = write_defect_video(tmp_path / "site.avi", 60, set(), "MJPG", seed=11)
    r = commission({"engine": engine, "onnx": onnx}, str(normal), fpr=0.05, backend="onnxruntime", score_with="onnx", yes=True)
    meta, after = read_engine_file(engine)
    assert after == blob and meta["tensorrt"] == "10.3.0" and meta["profile"] == {"min": 1, "opt": 4, "max": 8}
    new = meta["card"]["score"]
    assert new["graph_norm"] == [card.score.val_stats.min, card.score.val_stats.max]  # what the engine was built with
    assert [new["val_stats"]["min"], new["val_stats"]["max"]] == pytest.approx(r["normalization"])
    assert new["threshold"]["normalized"] == pytest.approx(r["threshold_normalized"])

    # a backend whose graph normalizes with the old constants, and a card that says graph_norm: infer re-normalizes
    from skipgan_edge.card import ModelCard

    old_onnx = tmp_path / "old.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", old_onnx)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with open_backend("onnx", old_onnx, "onnxruntime", CPU_ONLY) as be:
        plain = be.infer(x)
        be.card = ModelCard.from_dict(meta["card"], "engine header")
        fixed = be.infer(x)
    smin, smax = r["normalization"]
    assert np.array_equal(fixed.score, plain.score)
    assert np.allclose(fixed.normalized_score, (plain.score - smin) / (smax - smin), atol=1e-5)
    assert not np.allclose(fixed.normalized_score, plain.normalized_score)


def test_a_dry_run_changes_nothing_and_a_live_source_needs_frames(demo_onnx: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    data = onnx.read_bytes()
    normal = write_defect_video(tmp_path / "site.avi", 25, set(), "MJPG", seed=11)
    out = run_cli("threshold", "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.05", "--dry-run", "--backend", "onnxruntime").stdout
    assert "promised <= 0.05" in out and "updated: nothing (--dry-run)" in out and onnx.read_bytes() == data
    p = run_cli("threshold", "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.7", check=False)
    assert p.returncode == 2 and "--fpr must be in (0, 0.5)" in p.stderr


def _snapshot(*paths: Path) -> dict[Path, bytes]:
    out = {}
    for p in paths:
        for f in ([p] if p.is_file() else sorted(p.iterdir())):
            out[f] = f.read_bytes()
    return out


def test_rates_in_the_operators_units_and_a_raising_threshold_needs_yes(demo_onnx: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    normal = write_defect_video(tmp_path / "site.avi", 120, set(), "MJPG", seed=11)  # OpenCV writes it at 25 fps
    # 10 % false alarms: k = floor(0.1 * 121) - 1 = 11 of the 120 frames flagged, more than the trained threshold flags
    base = ["threshold", "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.1", "--backend", "onnxruntime"]
    before = onnx.read_bytes()

    # --dry-run: the per-hour numbers at the video's own 25 fps, before/after on the 120 frames; nothing written
    r = json.loads(run_cli(*base, "--dry-run", "--json").stdout)
    assert r["fps"] == 25 and r["fps_from"] == "the source"
    assert r["expected_alarms_per_hour"] == pytest.approx(r["expected_fpr"] * 25 * 3600)
    assert r["false_alarms_per_hour_after"] == pytest.approx(r["false_alarms_after"] / 120 * 25 * 3600)
    assert r["false_alarms_after"] == r["flagged_in_sample"] == 11 and r["false_alarms_before"] < 11 and r["raises_false_alarms"]
    assert r["updated"] == [] and onnx.read_bytes() == before

    # without --yes or --dry-run: the report on stdout, one line on stderr saying what to pass, nothing written
    p = run_cli(*base, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert f"from {r['false_alarms_before']} to 11" in lines[0] and "pass --yes to apply it or --dry-run" in lines[0]
    assert "per hour at 25 fps" in lines[0] and onnx.read_bytes() == before
    assert f"on these 120 frames: {r['false_alarms_before']} false alarm(s) with the old threshold" in p.stdout
    assert "11 with the new (8250 per hour)" in p.stdout and "updated: nothing (refused: pass --yes to apply)" in p.stdout
    # the report says nothing was commissioned, and compares the thresholds as raw scores, the only scale the two share
    assert p.stdout.startswith("measured on (nothing written) 120 normal frame(s)"), p.stdout
    raw = f"threshold: raw score {r['previous_threshold_raw']:.6g} -> {r['threshold_raw']:.6g}; normalized "
    assert raw in p.stdout and "each on its own normalization" in p.stdout and r["threshold_raw"] < r["previous_threshold_raw"]

    # --yes applies it; --fps says the line's rate
    out = run_cli(*base, "--yes", "--fps", "10").stdout
    assert "false alarms per hour at 10 fps: expected" in out and "11 with the new (3300 per hour)" in out
    assert f"updated: {onnx}" in out and onnx.read_bytes() != before and out.startswith("commissioned on 120 normal frame(s)")
    # a second commissioning on the same frames does not raise them: no --yes needed
    assert "updated:" in run_cli(*base).stdout


def test_alarms_per_hour_sets_the_rate_and_refuses_what_the_sample_cannot_promise(demo_onnx: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    normal = write_defect_video(tmp_path / "site.avi", 120, set(), "MJPG", seed=11)
    base = ["threshold", "--onnx", str(onnx), "--normal", str(normal), "--backend", "onnxruntime", "--dry-run"]
    # 180 an hour at 1 fps: 180 / 3600 = 0.05 per frame, k = floor(0.05 * 121) - 1 = 5
    r = json.loads(run_cli(*base, "--alarms-per-hour", "180", "--fps", "1", "--json").stdout)
    assert r["promised_fpr"] == pytest.approx(0.05) and r["alarms_per_hour_target"] == 180 and r["flagged_in_sample"] == 5
    assert r["expected_alarms_per_hour"] == pytest.approx(6 / 121 * 3600)
    text = run_cli(*base, "--alarms-per-hour", "180", "--fps", "1").stdout
    assert "promised 180 false alarm(s) per hour at 1 fps, a per-frame rate of 0.05" in text

    # 2 an hour at the video's 25 fps is 2 / 90000 per frame: 44999 normal frames (30 min of video)
    p = run_cli(*base, "--alarms-per-hour", "2", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "120 normal frame(s) cannot set 2 false alarm(s) per hour at 25 fps" in lines[0]
    assert "need at least 44999 (30 min at 25 fps)" in lines[0]
    # --frames below what the rate needs is refused before a frame is scored
    p = run_cli(*base, "--alarms-per-hour", "2", "--frames", "1000", check=False)
    assert p.returncode == 2 and "1000 frame(s) (--frames) cannot set" in p.stderr and "44999" in p.stderr

    # a folder of images has no frame rate: --alarms-per-hour needs --fps
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2

    cap = cv2.VideoCapture(str(normal))
    for i in range(30):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cap.read()[1])
    p = run_cli(*base, "--alarms-per-hour", "100", "--normal", str(folder), check=False)
    assert p.returncode == 2 and "give --fps F" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli(*base, "--alarms-per-hour", "100", "--fpr", "0.05", check=False)
    assert p.returncode == 2 and "either --fpr or --alarms-per-hour" in p.stderr
    p = run_cli(*base, "--alarms-per-hour", "-1", check=False)
    assert p.returncode == 2 and "--alarms-per-hour must be a positive number" in p.stderr
    # folders are counted at 25 fps, said to be assumed
    out = run_cli(*base, "--fpr", "0.05", "--normal", str(folder)).stdout
    assert "false alarms per hour at 25 fps assumed (--fps sets it)" in out


def test_threshold_id_in_the_card_and_in_every_record(demo_model: Path, demo_onnx: Path, tmp_path: Path) -> None:
    model, onnx = _copy(demo_model, demo_onnx, tmp_path)
    video = write_defect_video(tmp_path / "line.avi", 20, {5}, "MJPG", seed=12)
    run_args = ["run", "--onnx", str(onnx), "--source", str(video), "--backend", "onnxruntime"]

    def records(*extra: str) -> list[dict]:
        out = tmp_path / "r.jsonl"
        out.unlink(missing_ok=True)
        run_cli(*run_args, "--jsonl", str(out), *extra)
        return [json.loads(line) for line in out.read_text().splitlines()]

    model_id = read_card(onnx).model_id
    assert {r["threshold_id"] for r in records()} == {f"trained-{model_id}"}  # training's threshold has its own id

    normal = write_defect_video(tmp_path / "site.avi", 60, set(), "MJPG", seed=11)
    r = json.loads(run_cli("threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.05",
                           "--backend", "onnxruntime", "--yes", "--json").stdout)
    tid = r["threshold_id"]
    assert tid.startswith("c") and tid != f"trained-{model_id}"
    # the setting it replaced is named as eval and every record named it, not null: trained-MODEL_ID
    assert r["previous_threshold_id"] == f"trained-{model_id}"
    assert load_card(model).score.threshold.commissioning["previous"]["threshold_id"] == f"trained-{model_id}"
    assert load_card(model).score.threshold.threshold_id == tid == read_card(onnx).score.threshold.threshold_id
    assert json.loads((model / "model.json").read_text())["score"]["threshold"]["threshold_id"] == tid
    assert load_card(model).score.threshold.commissioning["threshold_id"] == tid
    recs = records()
    assert len(recs) == 20 and {x["threshold_id"] for x in recs} == {tid}
    # a threshold given on the command line keeps the commissioning's normalization: the id says so
    assert {x["threshold_id"] for x in records("--threshold", "0.5")} == {f"{tid}+override"}
    # the CSV sink carries it too
    run_cli(*run_args, "--csv", str(tmp_path / "r.csv"))
    import csv

    assert {row["threshold_id"] for row in csv.DictReader((tmp_path / "r.csv").open())} == {tid}
    # the next commissioning gets a new id and remembers the one it replaced
    r2 = json.loads(run_cli("threshold", "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.1", "--backend", "onnxruntime",
                            "--yes", "--json").stdout)
    assert r2["threshold_id"] != tid and r2["previous_threshold_id"] == tid


def test_an_export_folder_updates_every_variant(demo_onnx: Path, tmp_path: Path) -> None:
    exp = tmp_path / "export"
    exp.mkdir()
    for name in ("scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx", "export_report.json"):
        shutil.copy(demo_onnx / name, exp / name)
    card = read_card(exp / "scorer.onnx")
    blob = bytes(range(256)) * 4
    write_engine_file(exp / "scorer.int8.engine", {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7",
                                                  "precision": "int8", "profile": {"min": 1, "opt": 4, "max": 8},
                                                  "card": card.to_dict()}, blob)
    report = (exp / "export_report.json").read_bytes()
    normal = write_defect_video(tmp_path / "site.avi", 60, set(), "MJPG", seed=11)
    p = run_cli("threshold", "--export-dir", str(exp), "--normal", str(normal), "--fpr", "0.05", "--backend", "onnxruntime",
                "--score-with", "scorer.onnx", "--yes")
    names = ["scorer.fp16.onnx", "scorer.int8.onnx", "scorer.onnx", "scorer.int8.engine"]
    assert "updated: " + ", ".join(str(exp / n) for n in names) in p.stdout and "scored with onnx scorer.onnx" in p.stdout
    cards = {n: read_card(exp / n) for n in names[:3]}
    meta, after = read_engine_file(exp / "scorer.int8.engine")
    ids = {c.score.threshold.threshold_id for c in cards.values()} | {meta["card"]["score"]["threshold"]["threshold_id"]}
    assert len(ids) == 1 and None not in ids and after == blob
    assert len({(c.score.threshold.raw, c.score.val_stats.min, c.score.val_stats.max) for c in cards.values()}) == 1
    assert {c.precision for c in cards.values()} == {"fp32", "fp16", "int8"}  # each keeps its own precision
    assert (exp / "export_report.json").read_bytes() == report
    # every variant now normalizes with the new numbers
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    vs = cards["scorer.onnx"].score.val_stats
    for n in names[:3]:
        score, _, norm = ort.InferenceSession(str(exp / n), providers=["CPUExecutionProvider"]).run(None, {"images": x})
        assert np.allclose(norm, (score - vs.min) / (vs.max - vs.min), atol=1e-4), n
    # an export folder without scorers is one line
    p = run_cli("threshold", "--export-dir", str(tmp_path), "--normal", str(normal), check=False)
    assert p.returncode == 2 and "holds no scorer*.onnx or *.engine" in p.stderr


def test_eval_names_the_threshold_in_force_and_where_it_was_set(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    """eval on still images after a commissioning on video frames: the alarm is labelled with the commissioning's
    threshold_id and the frames it was set on, not only a policy string that reads like training's."""
    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    model_id = read_card(onnx).model_id
    eval_args = ["eval", "--onnx", str(onnx), "--data", str(synth_dir), "--backend", "onnxruntime", "--out", str(tmp_path / "ev")]

    def alarm_line() -> str:
        lines = [x for x in run_cli(*eval_args).stdout.splitlines() if x.startswith("the alarm at the model's threshold")]
        assert len(lines) == 1
        return lines[0]

    trained = read_card(onnx).score.threshold
    assert alarm_line().startswith(f"the alarm at the model's threshold trained-{model_id} (set in training: {trained.method}): ")
    normal = write_defect_video(tmp_path / "site.avi", 60, set(), "MJPG", seed=11)
    r = json.loads(run_cli("threshold", "--onnx", str(onnx), "--normal", str(normal), "--fpr", "0.05", "--backend", "onnxruntime",
                           "--yes", "--json").stdout)
    date = read_card(onnx).score.threshold.commissioning["date"]
    assert alarm_line().startswith(f"the alarm at the model's threshold {r['threshold_id']} (commissioned {date}: fpr:0.05 on "
                                   f"{r['frames']} normal frames of {normal}): false alarms ")
    report = json.loads(run_cli(*eval_args, "--json").stdout)
    assert report["model_threshold_id"] == r["threshold_id"] and report["model_threshold"] == pytest.approx(r["threshold_normalized"])
    assert report["model_threshold_set"] == f"commissioned {date}: fpr:0.05 on {r['frames']} normal frames of {normal}"
    # and which score head the numbers measure: the default's, as the card says
    assert report["score_head"] == read_card(onnx).score.head["name"] == "rec+bank"
    assert report["score_bank"] == read_card(onnx).score.bank["kind"] == "gaussian"
    assert run_cli(*eval_args).stdout.splitlines()[0].endswith("(score head rec+bank, gaussian bank)")
