"""Score variants: each against a hand computation; standardisation uses validation statistics
only; --paper is exactly the paper's formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import run_cli

from skipgan_edge.card import load_card
from skipgan_edge.data.datasets import load_folder
from skipgan_edge.model.folder import build_scorer
from skipgan_edge.model.scorer import combine, score_terms


def test_standardized_combination_by_hand() -> None:
    rec, lat = np.array([0.01, 0.03]), np.array([0.2, 0.1])
    stats = {"rec_mean": 0.02, "rec_std": 0.005, "lat_mean": 0.15, "lat_std": 0.05}
    got = combine(rec, lat, "standardized", 0.7, stats)
    want = 0.7 * (rec - 0.02) / 0.005 + 0.3 * (lat - 0.15) / 0.05
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(combine(rec, lat, "paper", 0.9, None), 0.9 * rec + 0.1 * lat)


def test_max_pooled_map_by_hand() -> None:
    x = torch.zeros(1, 1, 6, 6)
    fake = torch.zeros(1, 1, 6, 6)
    fake[0, 0, 1, 1] = 0.9  # one bad pixel
    fake[0, 0, 3:5, 3:5] = 0.6  # a 2x2 defect
    f = torch.zeros(1, 4)
    rec_mean, _, amap = score_terms(x, fake, f, f, pool=0)
    rec_pool, _, _ = score_terms(x, fake, f, f, pool=3)
    sq = amap[0, 0].numpy()
    assert abs(float(rec_mean) - sq.mean()) < 1e-7
    box = max(sq[i : i + 3, j : j + 3].mean() for i in range(4) for j in range(4))
    assert abs(float(rec_pool) - box) < 1e-7
    assert box == sq[3:6, 3:6].mean()  # the 2x2 defect beats the single bright pixel after smoothing


def test_standardization_uses_validation_statistics_only(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "std"
    run_cli("train", "--data", str(synth_dir), "--out", str(run), "--epochs", "2", "--ngf", "8", "--ndf", "8", "--batch", "32",
            "--score-mode", "standardized", "--pool", "3", "--select-lam")
    card = load_card(run)
    sc = card.score
    assert sc.mode == "standardized" and sc.pool == 3 and sc.lam_method.startswith("best validation AUROC")
    # the statistics are those of the normal validation images, recomputed here by hand
    _, scorer = build_scorer(run)
    ds = load_folder(synth_dir, 32, 3)
    x = torch.from_numpy(ds.val.images[ds.val.labels == 0])
    with torch.no_grad():
        xx = x.float().permute(0, 3, 1, 2) / 127.5 - 1
        fake, a, b = scorer.model.terms(xx)
        rec, lat, _ = score_terms(xx, fake, a, b, 3)
    assert abs(float(rec.mean()) - sc.term_stats["rec_mean"]) < 1e-6
    assert abs(float(lat.std(unbiased=False)) - sc.term_stats["lat_std"]) < 1e-6
    # scoring test data changes nothing: same card, same scores for the same frames
    probe = ds.val.images[:5]
    before = scorer.score_numpy(probe).score
    run_cli("eval", "--model", str(run), "--data", str(synth_dir), "--json")
    assert load_card(run).score == sc
    _, scorer2 = build_scorer(run)
    np.testing.assert_array_equal(scorer2.score_numpy(probe).score, before)


def test_paper_flag_is_the_paper_formula(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "paper"
    run_cli("train", "--paper", "--data", str(synth_dir), "--out", str(run), "--epochs", "1", "--ngf", "8", "--ndf", "8", "--batch", "32")
    sc = load_card(run).score
    assert (sc.mode, sc.lam, sc.pool) == ("paper", 0.9, 0)
    assert sc.bank is None and sc.head is not None and sc.head["name"] == "paper" and not sc.head["default"]  # no feature bank
    assert load_card(run).config.train.input_noise == 0.0 and load_card(run).config.model.skip_dropout == 0.0
    _, scorer = build_scorer(run)
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        xx = torch.from_numpy(imgs).float().permute(0, 3, 1, 2) / 127.5 - 1
        fake, a, b = scorer.model.terms(xx)
    rec = ((xx - fake) ** 2).mean(dim=(1, 2, 3)).numpy()
    lat = ((a - b) ** 2).mean(dim=1).numpy()
    np.testing.assert_allclose(scorer.score_numpy(imgs).score, 0.9 * rec + 0.1 * lat, rtol=1e-5)
    p = run_cli("train", "--paper", "--lam", "0.5", "--data", str(synth_dir), "--out", str(tmp_path / "x"), check=False)
    assert p.returncode == 2 and "--paper fixes score.lam = 0.9" in p.stderr
    assert sc.formula.startswith("lam*rec + (1-lam)*lat")
