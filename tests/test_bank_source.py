"""The feature bank's source (issue 22, benchmarks/results/study_bank_source.md): the generator encoder's 4×4 map (the
default) or D's f(x), on real tiny models through the real CLI.

The encoder tap is the 4×4 map at every image size and adds no weights (model folders written before load); a card
whose bank names no source (written before the choice existed) scores with D's features, as it was built; the options
that cannot hold are refused in one line before any data is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import model_with_card, run_cli

from skipgan_edge.card import load_card
from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig
from skipgan_edge.errors import ConfigError
from skipgan_edge.model.bank import patch_features, source_patches
from skipgan_edge.model.networks import SkipGANomaly, default_score

TINY = ["--ngf", "8", "--ndf", "16", "--epochs", "1", "--batch", "32", "--threads", "1"]


def _refused(p: object, *words: str) -> None:
    err = _refused_text(p)
    for w in words:
        assert w in err, (w, err)


def _refused_text(p: object) -> str:
    err = p.stderr.strip()  # type: ignore[attr-defined]
    assert p.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err  # type: ignore[attr-defined]
    return str(err)


@pytest.mark.parametrize(("isize", "channels"), [(32, 4 * 8), (64, 8 * 8), (128, 8 * 8)])
def test_the_encoder_tap_is_the_4x4_map_and_adds_no_weights(isize: int, channels: int) -> None:
    net = SkipGANomaly(ModelConfig(isize=isize, channels=3, ngf=8, ndf=8)).eval()
    x = torch.randn(2, 3, isize, isize)
    with torch.no_grad():
        _, f_real, _ = net.terms(x)
        enc = source_patches(net, f_real, "encoder")
    assert tuple(enc.shape) == (2, 16, channels)
    # the tap is a plain Conv2d's weight under its old name: no key for it twice, none added
    keys = list(net.state_dict())
    assert not any("tap" in k for k in keys) and len(keys) == len(set(keys))
    # what the tap keeps is that conv's own output in this pass (the BatchNorm after it not applied)
    conv = net.generator.tap
    assert conv.last is not None and enc.data_ptr() == conv.last.data_ptr()
    # a training-mode pass keeps nothing (no activation held between steps)
    net.train()
    net.generator(x)
    assert conv.last is None


def test_bank_sources_differ_in_dim_and_a_card_without_a_source_scores_with_ds(synth_dir: Path, tmp_path: Path) -> None:
    """ngf 8, ndf 16: the encoder's patches have 32 channels, D's 64. A card whose bank names no source (the format
    before the choice) is D's bank: it loads and ``eval`` gives the same AUROC as with the source named."""
    for src in ("encoder", "discriminator"):
        run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / src), *TINY, "--bank-size", "256", "--bank-source", src)
        bank = load_card(tmp_path / src).score.bank
        assert bank is not None and bank["source"] == src and bank["dim"] == (32 if src == "encoder" else 64), bank
        assert bank["size"] == 256 and bank["patches"] == 16
    card = load_card(tmp_path / "encoder")
    assert "generator encoder's 4x4 map" in card.score.formula and card.score.head is not None
    assert card.score.head["differs"] == ["bank_kind", "bank_size"]  # a source chooses a nearest bank; the encoder is the default's
    assert load_card(tmp_path / "discriminator").score.head["differs"] == ["bank_kind", "bank_size", "bank_source"]  # type: ignore[index]

    def no_source(c: dict) -> None:  # type: ignore[type-arg]
        c["score"]["bank"].pop("source")
        c["score"]["bank"].pop("kind")  # written before either choice: a nearest bank of D's features

    old, _ = model_with_card(tmp_path / "discriminator", tmp_path / "old", no_source)
    reports = [json.loads(run_cli("eval", "--model", str(f), "--data", str(synth_dir), "--json", "--out", str(tmp_path / f"e{i}")).stdout)
               for i, f in enumerate((tmp_path / "discriminator", old))]
    assert reports[0]["auroc"] == reports[1]["auroc"]
    assert reports[0]["score_bank"] == reports[1]["score_bank"] == "nearest"  # the old card's bank is named as it scores
    # and the encoder bank's features are what the trainer stored: the bank is a subset of them
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.model.folder import load_model_and_bank

    _, net, tensor = load_model_and_bank(tmp_path / "encoder")
    feats = patch_features(net, load_folder(synth_dir, 32, 3, seed=0).train.images, torch.device("cpu"), "encoder")
    assert tensor is not None and feats.shape[1] == 32
    d = torch.cdist(tensor, feats).amin(1)
    assert float(d.max()) < 1e-4  # every bank feature is a training patch feature of the encoder


def test_bank_source_refusals_are_one_line_before_the_data_is_read(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-source", "pixels", check=False),
             "--bank-source must be one of encoder, discriminator", "pixels")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-size", "0", "--bank-source", "encoder", check=False),
             "--bank-source encoder", "--bank-size 0")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--paper", "--bank-source", "encoder", check=False),
             "--paper", "--bank-source")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--arch", "ganomaly", "--bank-size", "64",
                     "--bank-source", "encoder", check=False), "--bank-source encoder is not available", "ganomaly", "discriminator")
    # the kind: one of two; the gaussian reads its own map (no source); GANomaly has only the nearest bank
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-kind", "knn", check=False),
             "--bank-kind must be one of gaussian, nearest", "knn")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-kind", "gaussian", "--bank-source", "discriminator",
                     check=False), "gaussian bank", "drop --bank-source", "--bank-kind nearest")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-size", "0", "--bank-kind", "gaussian", check=False),
             "--bank-kind gaussian", "--bank-size 0")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--paper", "--bank-kind", "nearest", check=False),
             "--paper", "--bank-kind")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--arch", "ganomaly", "--bank-size", "64",
                     "--bank-kind", "gaussian", check=False), "--bank-kind gaussian is not available", "ganomaly", "nearest")
    # GANomaly's default has no bank: an option for one names that default, not an option the user never gave
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--arch", "ganomaly", "--bank-kind", "nearest", check=False),
             "--bank-kind nearest", "ganomaly's default: no bank", "--bank-size above 0")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--arch", "auto", "--bank-kind", "gaussian", check=False),
             "--bank-kind gaussian", "ganomaly's default: no bank")
    # --arch auto trains both: a kind one of them cannot have is refused before the first trains
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--arch", "auto", "--bank-size", "64",
                     "--bank-kind", "gaussian", check=False), "--bank-kind gaussian is not available", "ganomaly")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-size", "1", check=False),
             "at least 2 training images", "--bank-size 2")
    # a gaussian bank too large for the graph is refused before data: lower the width or take the nearest bank
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--ngf", "129", check=False),
             "4128 x 4128 matrix", "65 MiB", "--ngf 128", "--bank-kind nearest")
    top = RunConfig(model=ModelConfig(ngf=128)).validate(default_score("skipganomaly")).score  # the bound itself is kept
    assert top.bank_kind == "gaussian" and top.bank_size == 4096
    wide = RunConfig(model=ModelConfig(ngf=129), score=ScoreConfig(bank_kind="nearest")).validate(default_score("skipganomaly"))
    assert wide.score.bank_kind == "nearest"
    # the refusal names what was set, whatever the config file's path says ("source" in a folder name)
    cfg = tmp_path / "source_configs" / "c.toml"
    cfg.parent.mkdir()
    cfg.write_text('[score]\nbank_kind = "nearest"\n')
    err = _refused_text(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--config", str(cfg), "--bank-size", "0",
                                check=False))
    assert "chooses the feature bank's kind" in err and "drop the bank kind" in err, err
    assert not out.exists()
    # GANomaly's bank is D's, its default when no source is given
    g = RunConfig(model=ModelConfig(arch="ganomaly"), score=ScoreConfig(bank_size=64)).validate(default_score("ganomaly"))
    assert g.score.bank_source == "discriminator" and g.score.bank_kind == "nearest"
    # Skip-GANomaly: the gaussian by default, a nearest bank once a source is named
    s = RunConfig(score=ScoreConfig(bank_source="discriminator")).validate(default_score("skipganomaly")).score
    assert (s.bank_kind, s.bank_source) == ("nearest", "discriminator")
    assert RunConfig().validate(default_score("skipganomaly")).score.bank_kind == "gaussian"
    with pytest.raises(ConfigError, match="not available for arch ganomaly"):
        RunConfig(model=ModelConfig(arch="ganomaly"), score=ScoreConfig(bank_size=64, bank_source="encoder")).validate(default_score("ganomaly"))


def test_the_encoder_bank_exports_and_onnx_runtime_scores_as_torch(tmp_path: Path, synth_dir: Path) -> None:
    """The default's head on a real export: ONNX Runtime equals the torch scorer on fresh images."""
    from skipgan_edge.export.onnx import export_onnx
    from skipgan_edge.model.folder import build_scorer
    from skipgan_edge.runtime.backends.onnxrt import OnnxRuntimeBackend

    run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "m"), *TINY, "--bank-size", "512", "--bank-kind", "nearest")
    export_onnx(tmp_path / "m", tmp_path / "s.onnx")
    imgs = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    card, scorer = build_scorer(tmp_path / "m")
    assert card.score.bank is not None and card.score.bank["source"] == "encoder" and card.score.bank["kind"] == "nearest"
    with OnnxRuntimeBackend(tmp_path / "s.onnx") as be:
        got = be.infer(imgs)
    spread = card.score.val_stats.max - card.score.val_stats.min
    np.testing.assert_allclose(got.score, scorer.score_numpy(imgs).score, rtol=0, atol=1e-4 * spread + 1e-6)


def test_two_threads_scoring_with_one_model_each_read_their_own_encoder_map() -> None:
    """The tap keeps its output per thread: two threads scoring different images with one scorer, side by side, get
    what each gets alone (a shared slot would hand one thread the other's encoder map between its two reads)."""
    import threading

    from skipgan_edge.model.scorer import Scorer

    torch.manual_seed(0)
    net = SkipGANomaly(ModelConfig(isize=32, channels=3, ngf=8, ndf=8)).eval()
    stats = {"rec_mean": 0.0, "rec_std": 1.0, "lat_mean": 0.0, "lat_std": 1.0, "bank_mean": 0.0, "bank_std": 1.0}
    scorer = Scorer(net, 1.0, mode="standardized", pool=3, term_stats=stats, bank=torch.randn(64, 32), bank_weight=0.75,
                    bank_source="encoder", bank_kind="nearest").eval()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)]
    alone = [scorer.score_numpy(b).score for b in batches]
    assert not np.allclose(alone[0], alone[1])
    got: list[list[np.ndarray]] = [[], []]
    start = threading.Barrier(2)

    def work(i: int) -> None:
        start.wait()
        for _ in range(40):
            got[i].append(scorer.score_numpy(batches[i]).score)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(got[i]) == 40 and all(np.array_equal(g, alone[i]) for g in got[i]), i


def test_int8_keeps_the_encoder_bank_path_fp32(demo_onnx: Path, tmp_path: Path, synth_dir: Path) -> None:
    """The tapped convolution and the generator convolutions before it take no Q/DQ in the INT8 file (quantized, the
    nearest bank's path moved the demo model's normalized scores by 1.4 of the normal range; test_runtime's parity
    contract holds INT8 to 0.5), the card lists them, and the rest of the networks is quantized. A model banking D's
    features has no such path."""
    import onnx

    from skipgan_edge.export.onnx import card_from_onnx, export_onnx
    from skipgan_edge.export.precision import bank_path_convs

    path = bank_path_convs(onnx.load(str(demo_onnx / "scorer.onnx")))  # the default's gaussian bank reads the 2×2 map's conv
    assert len(path) == 4 and all(n.startswith("/generator/") for n in path), path
    m = onnx.load(str(demo_onnx / "scorer.int8.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    convs = {n.name: n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    dq_fed = {name for name, n in convs.items() if any(producers.get(t) is not None and producers[t].op_type == "DequantizeLinear" for t in n.input)}
    assert set(path) <= set(convs) and not set(path) & dq_fed
    assert len(dq_fed) >= len(convs) - len(path) - 2  # everything else but the image-facing convs is quantized
    assert set(path) <= set(card_from_onnx(m).export.extra["fp32_convs"])
    run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "d"), *TINY, "--bank-size", "128", "--bank-source", "discriminator")
    export_onnx(tmp_path / "d", tmp_path / "d.onnx")
    assert bank_path_convs(onnx.load(str(tmp_path / "d.onnx"))) == []
