"""The feature-bank head is Skip-GANomaly's default (issue 22, benchmarks/results/study_bank_gauss.md): s = 0.25·rec +
0.75·bank, standardised, rec the max of the 3×3 smoothed map, the bank a Gaussian of the generator encoder's 2×2 map
(the term its Mahalanobis distance), fitted on at most 4,096 training images.

The session fixtures (tiny_model, demo_model, demo_onnx) are trained with the default, so every test on them (the export
gate in test_export.py, build --dry-run in test_trtcheck.py, commissioning in test_commission.py, the runtime venvs in
test_lean_install.py, Triton in test_triton.py) runs the bank head; the first test here proves they carry it. The rest:
``--paper`` stays the paper's, ``bank_size = 0`` without a λ is the two-term score, the Gaussian is the one its
formula says (also with fewer images than dimensions), a nearest bank on a training set with fewer patch features than
its size keeps all of them, and the lean install (no torch) scores as torch does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, model_with_card, run_cli

from skipgan_edge.card import load_card
from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig, paper_overrides
from skipgan_edge.model.bank import BANK_KEY, GAUSS_SHRINK, fit_gaussian, gaussian_distance, patch_features, subsample
from skipgan_edge.model.networks import default_score, head_record

DEFAULT_HEAD = {"name": "rec+bank", "default": True, "measured_in": "benchmarks/results/study_bank_gauss.md"}
TINY = ["--ngf", "8", "--ndf", "8", "--epochs", "1", "--batch", "32", "--threads", "1"]


def _bank_matmuls(path: Path, dim: int, size: int) -> list[onnx.NodeProto]:
    """The graph's MatMul nodes against a constant (dim, size) tensor: the bank."""
    m = onnx.load(str(path))
    consts = {i.name: i for i in m.graph.initializer}
    return [n for n in m.graph.node if n.op_type == "MatMul" and any(i in consts and list(consts[i].dims) == [dim, size] for i in n.input)]


def test_the_default_is_rec_plus_bank_and_the_paper_and_other_architectures_keep_theirs() -> None:
    d = RunConfig().validate(default_score("skipganomaly")).score
    assert (d.mode, d.lam, d.pool, d.bank_size, d.bank_weight, d.bank_kind, d.bank_source) == (
        "standardized", 1.0, 3, 4096, 0.75, "gaussian", "encoder")
    assert head_record("skipganomaly", d, d.lam) == DEFAULT_HEAD and (ROOT / DEFAULT_HEAD["measured_in"]).is_file()
    p = RunConfig.from_dict(paper_overrides({})).validate(default_score("skipganomaly")).score
    assert (p.mode, p.lam, p.pool, p.bank_size) == ("paper", 0.9, 0, 0)
    assert head_record("skipganomaly", p, p.lam)["name"] == "paper" and not head_record("skipganomaly", p, p.lam)["default"]
    g = RunConfig(model=ModelConfig(arch="ganomaly")).validate(default_score("ganomaly")).score
    assert (g.mode, g.lam, g.pool, g.bank_size, g.bank_source, g.bank_kind) == ("standardized", 0.5, 3, 0, "discriminator", "nearest")
    assert head_record("ganomaly", g, g.lam) == {"name": "rec+lat", "default": True, "measured_in": "benchmarks/results/peers.md"}


def test_bank_size_0_without_a_lam_is_the_two_term_score() -> None:
    """Turning the bank off must not leave the reconstruction term alone (λ 1 without a bank): λ not given is the
    measured two-term default, 0.5; a λ given is kept; a bank of another size keeps the default's λ 1."""
    def score(**kw: object) -> ScoreConfig:
        return RunConfig(score=ScoreConfig(**kw)).validate(default_score("skipganomaly")).score  # type: ignore[arg-type]

    off = score(bank_size=0)
    assert (off.lam, off.bank_size, off.mode, off.pool) == (0.5, 0, "standardized", 3)
    rec = head_record("skipganomaly", off, off.lam)
    assert rec["name"] == "rec+lat" and rec["default"] is False and rec["default_name"] == "rec+bank"
    assert rec["differs"] == ["bank_size", "lam"] and rec["measured_in"] == DEFAULT_HEAD["measured_in"]
    assert score(bank_size=0, lam=0.8).lam == 0.8 and score(bank_size=1024).lam == 1.0 and score(lam=0.3).bank_size == 4096
    assert head_record("skipganomaly", score(lam=0.3), 0.3)["name"] == "rec+lat+bank"


def test_train_bank_size_0_from_the_cli_and_the_config_file(synth_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "flag"), *TINY, "--bank-size", "0")
    (tmp_path / "c.toml").write_text("[score]\nbank_size = 0\n")
    run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "file"), *TINY, "--config", str(tmp_path / "c.toml"))
    for run in ("flag", "file"):
        card = load_card(tmp_path / run)
        assert card.score.bank is None and card.score.lam == 0.5 and card.config.score.bank_size == 0, run
        assert "bank" not in card.score.formula and card.score.head is not None and card.score.head["name"] == "rec+lat"
        with safe_open(str(tmp_path / run / "model.safetensors"), "pt") as fh:
            assert BANK_KEY not in fh.keys()  # noqa: SIM118 - safe_open has no __contains__


def test_the_session_fixtures_carry_the_default_bank_head(tiny_model: Path, demo_model: Path, demo_onnx: Path) -> None:
    """What makes the export, TensorRT, commissioning, lean-runtime and Triton tests on these fixtures tests of the bank
    head: the cards say the default, the bank is the Gaussian of the encoder's 2×2 map (4·8·ngf values) fitted on the
    fixtures' 256 training images, and every exported variant has it as a constant FP32 MatMul inside the score head."""
    from skipgan_edge.export.precision import head_nodes, head_violations
    from skipgan_edge.runtime.backends.onnxrt import read_card

    for folder, ngf in ((tiny_model, 8), (demo_model, 16)):
        card = load_card(folder)
        bank = card.score.bank
        assert card.score.head == DEFAULT_HEAD and (card.score.lam, card.score.mode, card.score.pool) == (1.0, "standardized", 3)
        assert bank is not None and bank["kind"] == "gaussian" and bank["source"] == "encoder" and bank["dim"] == 32 * ngf
        assert bank["weight"] == 0.75 and bank["subsample"] == "all" and bank["size"] == bank["from_features"] == 256
        assert bank["shrink"] == GAUSS_SHRINK and bank["bytes"] == 4 * (32 * ngf + 1) * 32 * ngf
        assert card.score.formula.startswith("(1-0.75)*[lam*(rec-rec_mean)/rec_std") and "Mahalanobis distance" in card.score.formula
        assert "generator encoder's 2x2 map" in card.score.formula
    dim = 32 * 16
    for name in ("scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx"):
        path = demo_onnx / name
        mm = _bank_matmuls(path, dim, dim)
        m = onnx.load(str(path))
        assert len(mm) == 1 and mm[0].name in head_nodes(m) and head_violations(m) == [], name
        assert read_card(path).score.head == DEFAULT_HEAD, name


def test_the_gaussian_is_the_mahalanobis_distance_its_formula_says() -> None:
    """W·Wᵀ = (Σ + ε·I)⁻¹ with ε the ridge times Σ's mean eigenvalue, against torch's inverse in float64; with fewer
    images than dimensions every distance is finite; features all alike give the distance to the mean; one image is
    refused."""
    g = torch.Generator().manual_seed(0)
    for n, d in ((200, 16), (10, 32)):  # more images than dimensions, then fewer
        x = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)
        bank = fit_gaussian(x)
        assert tuple(bank.shape) == (d + 1, d) and torch.allclose(bank[0], x.mean(0), atol=1e-5)
        xd = x.double()
        cov = torch.cov(xd.t())
        inv = torch.linalg.inv(cov + GAUSS_SHRINK * torch.trace(cov) / d * torch.eye(d, dtype=torch.float64))
        w = bank[1:].double()
        assert torch.allclose(w @ w.t(), inv, rtol=1e-3, atol=1e-4 * float(inv.abs().max()))
        q = torch.randn(5, d, generator=g) * 3
        want = ((q.double() - xd.mean(0)) @ inv * (q.double() - xd.mean(0))).sum(1).sqrt()
        got = gaussian_distance(q, bank[0], bank[1:])
        assert torch.allclose(got.double(), want, rtol=1e-4), (n, d)
    same = fit_gaussian(torch.ones(4, 3))
    assert torch.allclose(gaussian_distance(torch.tensor([[1.0, 1.0, 4.0]]), same[0], same[1:]), torch.tensor([3.0]))
    with pytest.raises(ValueError, match="at least 2 training images"):
        fit_gaussian(torch.ones(1, 3))


def test_subsample_keeps_every_feature_when_there_are_no_more_than_the_bank() -> None:
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    for method in ("coreset", "random"):
        for size in (300, 1024):
            got = subsample(feats, size, method)
            assert torch.equal(got, feats) and got.data_ptr() != feats.data_ptr(), (method, size)


def test_a_training_set_smaller_than_the_bank_gives_a_bank_of_all_its_features(tmp_path: Path) -> None:
    """A nearest bank: 24 training images × 16 patches = 384 features < 4,096: the bank is every one of them, the card
    says so, and the
    export carries a (C, 384) constant that ONNX Runtime scores with as torch does, within export's parity tolerance
    (1e-4 of the normal score spread): after one epoch D's features are nearly alike, and only the centred bank
    (model/bank.py) keeps float32 rounding below it (8e-4 of a spread of 2.4 uncentred, 8e-6 centred)."""
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic
    from skipgan_edge.export.onnx import export_onnx
    from skipgan_edge.model.folder import build_scorer, load_model_and_bank
    from skipgan_edge.runtime.backends.onnxrt import OnnxRuntimeBackend
    from skipgan_edge.train.trainer import train

    data = tmp_path / "d"
    write_synthetic(data, SyntheticSpec(n_train=24, n_val_good=8, n_val_defect=4, n_test_good=8, n_test_defect=4))
    ds = load_folder(data, 32, 3, seed=0)
    assert len(ds.train) == 24
    cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=8, ndf=8), train=TrainConfig(epochs=1, batch=8, threads=1),
                    score=ScoreConfig(bank_kind="nearest"))
    card = train(ds, cfg, tmp_path / "m", progress=False)
    bank = card.score.bank
    assert bank is not None and bank["size"] == bank["from_features"] == 24 * 16 and card.config.score.bank_size == 4096
    _, net, tensor = load_model_and_bank(tmp_path / "m")
    assert tensor is not None and tuple(tensor.shape) == (384, 32)
    feats = patch_features(net, ds.train.images, torch.device("cpu"), "encoder")
    assert torch.allclose(tensor, feats, atol=1e-5)  # all of them, in order
    export_onnx(tmp_path / "m", tmp_path / "scorer.onnx")
    assert len(_bank_matmuls(tmp_path / "scorer.onnx", 32, 384)) == 1
    imgs = ds.val.images
    _, scorer = build_scorer(tmp_path / "m")
    spread = card.score.val_stats.max - card.score.val_stats.min
    with OnnxRuntimeBackend(tmp_path / "scorer.onnx") as be:
        np.testing.assert_allclose(be.infer(imgs).score, scorer.score_numpy(imgs).score, rtol=0, atol=1e-4 * spread + 1e-6)


def test_a_gaussian_of_fewer_images_than_dimensions_exports_and_scores_as_torch(tmp_path: Path) -> None:
    """The default on 24 training images at ngf 8: a 256-value map, so the covariance has rank 23 and only the ridge
    makes it invertible. The card says 24 images (all of them), the stored bank is the fit of the training images' maps,
    and ONNX Runtime scores as torch does within export's parity tolerance (1e-4 of the normal score spread)."""
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic
    from skipgan_edge.export.onnx import export_onnx
    from skipgan_edge.model.bank import gaussian_image_features
    from skipgan_edge.model.folder import build_scorer, load_model_and_bank
    from skipgan_edge.runtime.backends.onnxrt import OnnxRuntimeBackend
    from skipgan_edge.train.trainer import train

    data = tmp_path / "d"
    write_synthetic(data, SyntheticSpec(n_train=24, n_val_good=8, n_val_defect=4, n_test_good=8, n_test_defect=4))
    ds = load_folder(data, 32, 3, seed=0)
    cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=8, ndf=8), train=TrainConfig(epochs=1, batch=8, threads=1))
    card = train(ds, cfg, tmp_path / "m", progress=False)
    bank = card.score.bank
    assert bank is not None and bank["kind"] == "gaussian" and bank["size"] == 24 and bank["subsample"] == "all" and bank["dim"] == 256
    _, net, tensor = load_model_and_bank(tmp_path / "m")
    assert tensor is not None and tuple(tensor.shape) == (257, 256) and bool(torch.isfinite(tensor).all())
    assert torch.allclose(tensor, fit_gaussian(gaussian_image_features(net, ds.train.images, torch.device("cpu"))), atol=1e-5)
    export_onnx(tmp_path / "m", tmp_path / "scorer.onnx")
    assert len(_bank_matmuls(tmp_path / "scorer.onnx", 256, 256)) == 1
    imgs = np.concatenate([ds.val.images, np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)])
    _, scorer = build_scorer(tmp_path / "m")
    spread = card.score.val_stats.max - card.score.val_stats.min
    with OnnxRuntimeBackend(tmp_path / "scorer.onnx") as be:
        np.testing.assert_allclose(be.infer(imgs).score, scorer.score_numpy(imgs).score, rtol=0, atol=1e-4 * spread + 1e-6)


def test_the_lean_install_scores_the_bank_head_as_torch_does(demo_model: Path, demo_onnx: Path, synth_dir: Path,
                                                           tmp_path: Path) -> None:
    """``run`` in .venv-lean (ONNX Runtime, no torch) on 32×32 frames written here: per-file scores and alarms equal
    the torch scorer's (the bank loaded from the model folder) on the same pixels."""
    import cv2

    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.model.folder import build_scorer

    test = load_folder(synth_dir, 32, 3).test
    assert test is not None
    folder = tmp_path / "frames"
    folder.mkdir()
    imgs = test.images[::2]
    for i, img in enumerate(imgs):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    lean = ROOT / ".venv-lean" / "bin" / "skipgan-edge"
    p = subprocess.run([str(lean), "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--source", str(folder), "--jsonl", "s.jsonl",
                        "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    recs = {Path(r["file"]).name: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    assert len(recs) == len(imgs)
    card, scorer = build_scorer(demo_model)
    ref = scorer.score_numpy(imgs)
    got = np.array([recs[f"{i:03d}.png"]["score"] for i in range(len(imgs))])
    np.testing.assert_allclose(got, ref.score, rtol=1e-4, atol=1e-4)
    norm = np.array([recs[f"{i:03d}.png"]["normalized_score"] for i in range(len(imgs))])
    np.testing.assert_allclose(norm, ref.normalized_score, rtol=1e-4, atol=1e-4)
    assert [recs[f"{i:03d}.png"]["anomalous"] for i in range(len(imgs))] == list(ref.normalized_score > card.score.threshold.normalized)
    assert 0 < sum(r["anomalous"] for r in recs.values()) < len(imgs)  # the head separates: some frames alarm, not all


def test_a_card_written_before_the_head_field_still_loads_and_scores(tiny_model: Path, tmp_path: Path, synth_dir: Path) -> None:
    """Cards without ``score.head`` (and configs without ``score.bank_size``) load: the head reads None, nothing scores
    with it, and ``eval --model`` gives the same AUROC as the current card's."""
    def old(card: dict) -> None:  # type: ignore[type-arg]
        card["score"].pop("head")
        card["config"]["score"].pop("bank_size")

    folder, _ = model_with_card(tiny_model, tmp_path / "old", old)
    card = load_card(folder)
    assert card.score.head is None and card.config.score.bank_size is None and card.score.bank is not None
    aucs = [json.loads(run_cli("eval", "--model", str(f), "--data", str(synth_dir), "--json", "--out", str(tmp_path / f"e{i}")).stdout)["auroc"]
            for i, f in enumerate((tiny_model, folder))]
    assert aucs[0] == aucs[1]
