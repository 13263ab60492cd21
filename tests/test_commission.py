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
    p = run_cli("threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(normal), "--anomalous", str(line),
                "--frames", "40", "--fpr", "0.05", "--backend", "onnxruntime", "--json")
    # --frames caps each source: 40 normal frames, 40 line frames
    r = json.loads(p.stdout)
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
