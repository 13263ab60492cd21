"""The feature-bank head and the generator's EMA (issue 22): options of config, train and export, on real tiny models.

The bank (model/bank.py) is built from D's patch features of the training images, stored next to the weights, recorded
in the card and exported as FP32 constants of the score head: ONNX Runtime equals torch, the FP16 and INT8 variants keep
the head (the bank's MatMul included) in FP32, and ``build --dry-run`` passes for every TensorRT target. The EMA
(train.ema_decay) is what is validated, selected and written; the live generator keeps training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli

from skipgan_edge.config import PAPER, ModelConfig, RunConfig, ScoreConfig, TrainConfig, paper_overrides
from skipgan_edge.errors import ConfigError, ModelFolderError
from skipgan_edge.model.bank import BANK_KEY, as_patches, bank_constants, bank_distance, subsample
from skipgan_edge.model.folder import build_scorer, load_model_and_bank
from skipgan_edge.model.networks import default_score


def _cfg(epochs: int = 2, ema: float = 0.0, bank: int = 0, weight: float = 0.5) -> RunConfig:
    return RunConfig(model=ModelConfig(isize=32, channels=3, ngf=8, ndf=8), train=TrainConfig(epochs=epochs, batch=32, threads=1,
                     ema_decay=ema), score=ScoreConfig(bank_size=bank, bank_weight=weight, bank_kind="nearest" if bank else None))


@pytest.fixture(scope="module")
def bank_model(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained with both options on: EMA 0.99 and a 64-feature coreset bank."""
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import train

    out = tmp_path_factory.mktemp("bank") / "m"
    train(load_folder(synth_dir, 32, 3, seed=0), _cfg(epochs=2, ema=0.99, bank=64), out, progress=False)
    return out


def test_bank_distance_is_the_nearest_neighbour_distance_of_the_worst_patch() -> None:
    g = torch.Generator().manual_seed(0)
    bank, patches = torch.randn(50, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    got = bank_distance(patches, *bank_constants(bank))
    want = torch.cdist(patches, bank[None].expand(3, -1, -1)).amin(2).amax(1)
    assert torch.allclose(got, want, atol=1e-4)
    # a patch that is a bank feature is at distance 0 (up to the square root of float32 rounding of d² near 0,
    # ~sqrt(1e-6) against distances of ~2 here); flattened channel-major maps come back as (B, P, C)
    assert max(float(bank_distance(bank[i : i + 1, None], *bank_constants(bank))[0]) for i in range(50)) < 1e-2
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(as_patches(fmap.flatten(1), 3, 4)[1, 2], fmap[1, :, 1, 0])


def test_subsample_coreset_covers_rare_points_random_does_not_have_to() -> None:
    g = torch.Generator().manual_seed(0)
    common = torch.randn(1000, 4, generator=g) * 0.01
    rare = torch.full((3, 4), 10.0) + torch.arange(3.0)[:, None]
    feats = torch.cat([common, rare])
    core = subsample(feats, 8, "coreset", seed=0)
    assert core.shape == (8, 4)
    for r in rare:  # greedy k-center reaches every far point before it fills in the dense cluster
        assert float(torch.cdist(r[None], core).min()) < 1e-6
    assert torch.equal(subsample(feats, 8, "random", seed=1), subsample(feats, 8, "random", seed=1))
    assert subsample(feats, 5000, "coreset").shape == feats.shape  # never more than there are
    with pytest.raises(ValueError, match="unknown"):
        subsample(feats, 8, "kmeans")


def test_options_are_checked_and_paper_switches_them_off() -> None:
    for cfg, msg in ((_cfg(bank=-1), "bank_size"), (_cfg(bank=10**6), "bank_size"), (_cfg(weight=1.5), "bank_weight"),
                     (_cfg(ema=1.0), "ema_decay"), (_cfg(ema=-0.1), "ema_decay")):
        with pytest.raises(ConfigError, match=msg):
            cfg.validate(default_score("skipganomaly"))
    with pytest.raises(ConfigError, match="bank_subsample"):
        RunConfig(score=ScoreConfig(bank_subsample="kmeans")).validate(default_score("skipganomaly"))
    assert PAPER["train"]["ema_decay"] == 0.0 and PAPER["score"]["bank_size"] == 0
    with pytest.raises(ConfigError, match="--paper fixes score.bank_size"):
        paper_overrides({"score": {"bank_size": 256}})
    defaults = RunConfig().validate(default_score("skipganomaly"))
    paper = RunConfig.from_dict(paper_overrides({})).validate(default_score("skipganomaly"))
    assert paper.train.ema_decay == 0.0 and paper.score.bank_size == 0
    assert defaults.train.ema_decay >= 0.0


def test_card_records_the_bank_and_the_ema_and_the_weights_hold_the_ema(bank_model: Path) -> None:
    from skipgan_edge.card import load_card

    card = load_card(bank_model)
    bank = card.score.bank
    assert bank is not None and bank["size"] == 64 and bank["dim"] == 4 * 8 and bank["patches"] == 16
    assert bank["subsample"] == "coreset" and bank["weight"] == 0.5 and bank["bytes"] == 4 * 64 * 32 + 4 * 64 + 4 * 32
    assert {"bank_mean", "bank_std"} <= set(card.score.term_stats or {})
    assert "bank" in card.score.formula
    ema = card.training.ema
    assert ema is not None and ema["decay"] == 0.99 and ema["updates"] > 0 and "EMA" in card.training.selection
    _, _net, tensor = load_model_and_bank(bank_model)
    assert tensor is not None and tuple(tensor.shape) == (64, 32)
    state = json.loads((bank_model / "model.json").read_text())
    assert state["config"]["train"]["ema_decay"] == 0.99 and state["config"]["score"]["bank_size"] == 64


def test_the_written_generator_is_the_ema_not_the_live_one(synth_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import STATE_NAME, Trainer

    ds = load_folder(synth_dir, 32, 3, seed=0)
    tr = Trainer(ds, _cfg(epochs=1, ema=0.9), tmp_path / "r", progress=False)
    tr.fit()  # one epoch: the best model is the end of it
    saved = load_file(str(tmp_path / "r" / "model.safetensors"))
    ema, live = tr.ema.state_dict(), tr.net.generator.state_dict()
    key = next(k for k in ema if k.endswith("weight"))
    assert torch.equal(saved[f"generator.{key}"], ema[key])
    assert not torch.equal(saved[f"generator.{key}"], live[key])
    # BatchNorm statistics are averaged too (floating buffers), and the resumable checkpoint carries the average
    bn = next(k for k in ema if k.endswith("running_mean"))
    assert torch.equal(saved[f"generator.{bn}"], ema[bn]) and not torch.equal(ema[bn], live[bn])
    ck = load_file(str(tmp_path / "r" / STATE_NAME))
    assert torch.equal(ck[f"ema.{key}"], ema[key])


def test_ema_run_resumes_to_the_same_weights(synth_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import Trainer

    ds = load_folder(synth_dir, 32, 3, seed=0)
    Trainer(ds, _cfg(epochs=2, ema=0.9), tmp_path / "a", progress=False).fit()
    Trainer(ds, _cfg(epochs=1, ema=0.9), tmp_path / "b", progress=False).fit()
    cfg2 = _cfg(epochs=2, ema=0.9)
    Trainer(ds, cfg2, tmp_path / "b", progress=False).fit(resume=True)
    a, b = (load_file(str(tmp_path / p / "checkpoint" / "state.safetensors")) for p in ("a", "b"))
    for k in a:
        if k.startswith(("ema.", "net.")):
            assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_bank_and_weights_must_agree(bank_model: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(bank_model, folder)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
    state = load_file(str(folder / "model.safetensors"))
    state.pop(BANK_KEY)
    save_file(state, str(folder / "model.safetensors"), metadata=meta)
    with pytest.raises(ModelFolderError, match="feature bank"):
        load_model_and_bank(folder)


def test_bank_head_exports_runs_in_onnxruntime_equal_to_torch_and_stays_fp32(bank_model: Path, synth_dir: Path,
                                                                           tmp_path: Path) -> None:
    from skipgan_edge import calibration
    from skipgan_edge.export.api import export_all
    from skipgan_edge.export.onnx import is_head_node
    from skipgan_edge.export.precision import head_nodes, head_violations
    from skipgan_edge.runtime.backends import CPU_ONLY, open_backend
    from skipgan_edge.runtime.backends.onnxrt import read_card

    calibration.save(calibration.build(str(synth_dir), 64, 32, 3), tmp_path / "calib.npz")
    rep = export_all(bank_model, tmp_path, fp16=True, int8=True, calib=tmp_path / "calib.npz", enforce_gate=False)
    assert rep["export"]["parity"]["max_abs_diff_score"] <= rep["export"]["parity"]["tolerance"]
    # the torch scorer (with the bank) against ONNX Runtime on test images, beyond export's own parity check
    _, scorer = build_scorer(bank_model)
    from skipgan_edge.data.datasets import load_folder

    imgs = load_folder(synth_dir, 32, 3, seed=0).test.images[:20]  # type: ignore[union-attr]
    ref = scorer.score_numpy(imgs)
    with open_backend("onnx", tmp_path / "scorer.onnx", "onnxruntime", CPU_ONLY) as be:
        got = be.infer_all(imgs)
    np.testing.assert_allclose(got.score, ref.score, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.normalized_score, ref.normalized_score, rtol=1e-4, atol=1e-4)
    # the bank term moves the score: zero weight gives another score
    scorer.bank_weight = 0.0
    assert not np.allclose(scorer.score_numpy(imgs).score, ref.score)
    for name in ("scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx"):
        m = onnx.load(str(tmp_path / name))
        consts = {i.name: i for i in m.graph.initializer}
        matmuls = [n for n in m.graph.node if n.op_type == "MatMul" and any(
            i in consts and list(consts[i].dims) == [32, 64] for i in n.input)]
        assert len(matmuls) == 1 and is_head_node(matmuls[0].name), name  # the bank: one constant MatMul, in the head
        assert matmuls[0].name in head_nodes(m), name
        assert head_violations(m) == [], (name, head_violations(m))
        assert consts[next(i for i in matmuls[0].input if i in consts)].data_type == onnx.TensorProto.FLOAT, name
        p = run_cli("build", "--onnx", str(tmp_path / name), "--dry-run", check=False)
        assert p.returncode == 0, (name, p.stdout, p.stderr)
        assert p.stdout.count(": ok:") == 3, p.stdout  # 8.6, 10.3 and 11
    # the FLOPs counter sees the head past the split of the 2B feature pass: the bank's MatMul is what the card says
    from skipgan_edge.bench.flops import count_flops

    bank = read_card(tmp_path / "scorer.onnx").score.bank
    assert bank is not None
    assert count_flops(tmp_path / "scorer.onnx")["matmul"] == 2 * bank["patches"] * bank["dim"] * bank["size"]


def test_train_config_file_keys_turn_both_on(synth_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nngf = 8\nndf = 8\n[train]\nepochs = 1\nbatch = 32\nema_decay = 0.99\nthreads = 1\n"
                   "[score]\nbank_size = 32\nbank_kind = \"nearest\"\nbank_subsample = \"random\"\nbank_weight = 0.3\n")
    run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "m"), "--config", str(cfg))
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["score"]["bank"]["size"] == 32 and card["score"]["bank"]["subsample"] == "random"
    assert card["score"]["bank"]["weight"] == 0.3 and card["training"]["ema"]["decay"] == 0.99


def test_train_flags_turn_both_on_and_paper_refuses_them(synth_dir: Path, tmp_path: Path) -> None:
    run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "m"), "--ngf", "8", "--ndf", "8", "--epochs", "1",
            "--threads", "1", "--ema-decay", "0.99", "--bank-size", "16", "--bank-weight", "0.4")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["score"]["bank"]["size"] == 16 and card["score"]["bank"]["weight"] == 0.4
    assert card["training"]["ema"]["decay"] == 0.99
    for flags, key in ((["--bank-size", "16"], "bank_size"), (["--ema-decay", "0.99"], "ema_decay")):
        p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "p"), "--paper", *flags, check=False)
        assert p.returncode == 2 and key in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / "p").exists()
    p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "q"), "--bank-weight", "1.5", check=False)
    assert p.returncode == 2 and "bank_weight" in p.stderr.replace("-", "_") and "Traceback" not in p.stderr


def test_bank_model_through_eval_and_the_lean_runtime(bank_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    """``eval --model`` (torch, the bank loaded from the folder) and ``run --onnx`` (ONNX Runtime, the bank in the graph)."""
    from skipgan_edge.export.onnx import export_onnx

    p = run_cli("eval", "--model", str(bank_model), "--data", str(synth_dir))
    assert "auroc" in (p.stdout + p.stderr).lower()
    export_onnx(bank_model, tmp_path / "scorer.onnx")
    p = run_cli("run", "--onnx", str(tmp_path / "scorer.onnx"), "--source", str(synth_dir / "test" / "good"), "--backend", "onnxruntime")
    assert p.returncode == 0, p.stderr


def test_forced_divergence_with_ema_and_bank_recovers_to_a_finite_model(synth_dir: Path, tmp_path: Path) -> None:
    """lr 2e8 overflows within the first epoch; the recovery restores the start (the EMA with it) at 1e-12 × the rate;
    the written generator (the EMA), the bank and the card's statistics are finite."""
    import dataclasses

    from safetensors.torch import load_file

    from skipgan_edge.card import load_card
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import Trainer

    cfg = _cfg(epochs=1, ema=0.99, bank=32)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=2e8, recover_lr_factor=1e-12))
    Trainer(load_folder(synth_dir, 32, 3, seed=0), cfg, tmp_path / "r", progress=False).fit()
    card = load_card(tmp_path / "r")
    assert len(card.training.recoveries) == 1 and card.training.recoveries[0].restored == "the start"
    assert card.training.ema is not None and card.score.bank is not None
    assert all(np.isfinite(v) for v in (card.score.term_stats or {}).values())
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(tmp_path / "r" / "model.safetensors")).values() if t.is_floating_point())
