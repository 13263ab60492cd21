"""A second architecture through the same contract: GANomaly trains, exports, calibrates, runs and
benchmarks through the same CLI verbs, with no model-specific code outside skipgan_edge/model/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import ROOT, run_cli, write_defect_video

from skipgan_edge.card import load_card
from skipgan_edge.config import ModelConfig
from skipgan_edge.model.folder import build_scorer
from skipgan_edge.model.networks import Ganomaly


def test_ganomaly_score_is_latent_distance() -> None:
    torch.manual_seed(0)
    m = Ganomaly(ModelConfig(arch="ganomaly", isize=32, channels=1, ngf=4, ndf=4, nz=8)).eval()
    from skipgan_edge.model.scorer import Scorer

    sc = Scorer(m, lam=0.0).eval()
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    with torch.no_grad():
        score, amap, _ = sc(torch.from_numpy(imgs))
        x = torch.from_numpy(imgs).float().permute(0, 3, 1, 2) / 127.5 - 1
        fake, z, z_hat = m.generator(x)
    np.testing.assert_allclose(score.numpy(), ((z - z_hat) ** 2).mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(amap.numpy()[:, 0], ((x - fake) ** 2).mean(1).numpy(), rtol=1e-4, atol=1e-9)


def test_ganomaly_end_to_end_through_the_cli(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "g"
    run_cli("train", "--arch", "ganomaly", "--data", str(synth_dir), "--out", str(run), "--epochs", "2", "--ngf", "8", "--ndf", "8",
            "--batch", "32")
    card = load_card(run)
    assert card.arch == "ganomaly" and (card.score.mode, card.score.lam, card.score.pool) == ("standardized", 0.5, 3)
    rep = json.loads(run_cli("eval", "--model", str(run), "--data", str(synth_dir), "--json").stdout)
    assert 0.0 <= rep["auroc"] <= 1.0
    run_cli("calibrate", "--data", str(synth_dir), "--model", str(run), "--size", "64", "--out", str(tmp_path / "c.npz"))
    run_cli("export", "--model", str(run), "--fp16", "--int8", "--calib", str(tmp_path / "c.npz"), "--out", str(tmp_path / "e"), "--no-gate")
    rep = json.loads((tmp_path / "e" / "export_report.json").read_text())
    assert all(r["ok"] for v in rep["tensorrt_check"].values() for r in v.values()), rep["tensorrt_check"]
    assert set(rep["tensorrt_check"]) == {"fp32", "fp16", "int8"}
    _, scorer = build_scorer(run)
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    from skipgan_edge.runtime.backends.onnxrt import OnnxRuntimeBackend

    with OnnxRuntimeBackend(tmp_path / "e" / "scorer.onnx") as be:
        np.testing.assert_allclose(be.infer(imgs).score, scorer.score_numpy(imgs).score, rtol=1e-4, atol=1e-7)
    video = write_defect_video(tmp_path / "v.avi", 20, {5}, "MJPG")
    s = json.loads(run_cli("run", "--onnx", str(tmp_path / "e" / "scorer.int8.onnx"), "--source", str(video), "--json").stdout)
    assert s["scored"] == 20
    b = run_cli("bench", "--onnx", str(tmp_path / "e" / "scorer.onnx"), "--batch", "1,4", "--iterations", "5", "--warmup", "1",
                "--json", str(tmp_path / "b.json"))
    assert "openvino" in b.stdout or "onnxruntime" in b.stdout


def test_no_architecture_branches_outside_model() -> None:
    for path in (ROOT / "skipgan_edge").rglob("*.py"):
        if "model" in path.parts[-2:] or path.name == "cli.py":
            continue
        text = path.read_text()
        assert '"ganomaly"' not in text and "'ganomaly'" not in text and "Ganomaly" not in text, path
