"""Threshold policies, the FPR interval, synthetic validation defects and the UNet skip levels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig, paper_overrides
from skipgan_edge.data.synthval import MIN_MASK_FRACTION, make_defects, perlin_noise
from skipgan_edge.errors import ConfigError, DataError
from skipgan_edge.thresholds import (
    AUTO_UNLABELLED,
    apply_policy,
    beta_quantile,
    fpr_threshold,
    min_normal_images,
    order_statistic_fpr,
    parse_policy,
    rate_interval,
    resolve,
)


@pytest.mark.parametrize(("a", "b"), [(1, 1), (1, 149), (7, 144), (3, 997), (50, 50), (12, 4000)])
def test_beta_quantiles_match_scipy(a: int, b: int) -> None:
    for q in (0.025, 0.5, 0.975):
        assert beta_quantile(a, b, q) == pytest.approx(stats.beta.ppf(q, a, b), rel=1e-6, abs=1e-9)


def test_fpr_policy_keeps_its_promise_on_new_normal_images() -> None:
    # whatever the score distribution, the (k+1)-th largest of n normals is exceeded by a new normal with
    # probability (k+1)/(n+1) on average: check it by simulation on a skewed distribution
    rng = np.random.default_rng(0)
    q, n = 0.05, 199
    achieved = []
    for _ in range(400):
        val = rng.lognormal(size=n)
        thr, k = fpr_threshold(val, q)
        assert (val > thr).sum() == k and (k + 1) / (n + 1) <= q
        achieved.append((rng.lognormal(size=2000) > thr).mean())
    expected, (lo, hi) = order_statistic_fpr(k, n)
    assert expected == pytest.approx(0.05)
    assert abs(np.mean(achieved) - expected) < 0.004
    inside = np.mean([(lo <= a <= hi) for a in achieved])  # the interval covers ~95 % of runs (2000 test images add a little noise)
    assert 0.9 <= inside <= 0.99


def test_rate_interval_is_clopper_pearson() -> None:
    for x, n in ((0, 50), (8, 143), (50, 50), (3, 1000)):
        lo, hi = rate_interval(x, n)
        ref_lo = 0.0 if x == 0 else stats.beta.ppf(0.025, x, n - x + 1)
        ref_hi = 1.0 if x == n else stats.beta.ppf(0.975, x + 1, n - x)
        assert (lo, hi) == (pytest.approx(ref_lo, abs=1e-9), pytest.approx(ref_hi, abs=1e-9))


def test_too_few_normals_are_refused_in_one_line() -> None:
    assert min_normal_images(0.01) == 99 and min_normal_images(0.05) == 19
    fpr_threshold(np.arange(99.0), 0.01)  # just enough: the maximum, expected FPR 1/100
    with pytest.raises(ConfigError, match=r"98 normal image\(s\) cannot set a false-alarm rate of 0.01: need at least 99"):
        fpr_threshold(np.arange(98.0), 0.01)


def test_policies_on_hand_made_scores() -> None:
    normal = np.arange(100.0)  # 0 .. 99
    anomalous = np.array([50.5, 97.5, 98.5, 200.0, 300.0])
    t = apply_policy("max-normal", normal, anomalous, "labelled")
    assert (t.raw, t.flagged_normal, t.expected_recall) == (99.0, 0, 0.4)
    t = apply_policy("fpr:0.05", normal, anomalous, "labelled")  # k = floor(0.05*101) - 1 = 4: the 5th largest, 95
    assert (t.raw, t.flagged_normal, t.expected_fpr) == (95.0, 4, pytest.approx(5 / 101))
    assert t.expected_recall == pytest.approx(0.8) and t.recall_source == "labelled"
    t = apply_policy("f1", normal, anomalous, "synthetic")
    # flagging > 97 catches 4 of 5 with 2 false alarms: F1 = 8/11, the best any cut reaches here
    assert t.raw == 97.0 and t.flagged_normal == 2 and t.expected_recall == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="needs validation anomalies"):
        apply_policy("f1", normal, None)


def test_policy_names() -> None:
    assert parse_policy("fpr:0.01") == ("fpr", 0.01) and parse_policy(" F1 ") == ("f1", None)
    assert resolve("auto", True) == "f1" and resolve("auto", False) == AUTO_UNLABELLED and resolve("fpr:0.2", True) == "fpr:0.2"
    for bad in ("fpr:0", "fpr:0.7", "fpr:x", "youden"):
        with pytest.raises(ConfigError, match="--threshold"):
            parse_policy(bad)
    with pytest.raises(ConfigError, match="^score.threshold 'best': choose auto") as exc:  # a config's key: train names it
        ScoreConfig(threshold="best").validate()
    assert exc.value.key == "score.threshold"


# ------------------------------------------------------------------------------------- synthetic validation
def test_synthetic_defects_are_deterministic_local_and_visible() -> None:
    rng = np.random.default_rng(3)
    normal = rng.integers(60, 200, (40, 32, 32, 3), dtype=np.uint8)
    a, b = make_defects(normal, seed=5), make_defects(normal, seed=5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks) and a.kinds == b.kinds
    assert not np.array_equal(a.images, make_defects(normal, seed=6).images)
    assert set(a.kinds) == {"perlin", "cutpaste"}
    for i in range(len(normal)):
        m = a.masks[i]
        assert m.mean() >= MIN_MASK_FRACTION, f"image {i}: an empty defect"
        diff = np.abs(a.images[i].astype(int) - normal[i]).max(axis=2)
        assert (diff[~m] == 0).all(), f"image {i}: pixels outside the mask changed"
        assert (diff[m] >= 1).all(), f"image {i}: the mask claims pixels the defect did not change"


def test_synthetic_defects_refuse_bad_input() -> None:
    with pytest.raises(DataError, match="at least 2"):
        make_defects(np.zeros((1, 8, 8, 1), np.uint8))
    with pytest.raises(DataError, match="uint8"):
        make_defects(np.zeros((4, 8, 8, 1), np.float32))


def test_perlin_noise_is_smooth_and_bounded() -> None:
    n = perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    assert n.shape == (64, 64) and np.abs(n).max() <= 1.0 and n.std() > 0.05
    assert np.abs(np.diff(n, axis=1)).max() < 0.2  # gradient noise: neighbouring pixels are close


# -------------------------------------------------------------------------------------------- skip levels
def test_skip_levels_change_the_generator_as_declared() -> None:
    import torch

    from skipgan_edge.model.networks import UnetBlock, build_model

    def blocks(levels: str) -> list[UnetBlock]:
        net = build_model(ModelConfig(isize=32, channels=3, ngf=8, ndf=8, skip_levels=levels))
        found = [m for m in net.generator.modules() if isinstance(m, UnetBlock) and not m.outermost]
        return found  # outermost first: level 1, 2, 3, 4

    assert [b.skip for b in blocks("all")] == [True] * 4
    assert [b.skip for b in blocks("none")] == [False] * 4
    assert [b.skip for b in blocks("1,3")] == [True, False, True, False]
    assert [b.skip for b in blocks("innermost")] == [False, False, False, True]
    for levels in ("all", "none", "2,3,4", "4"):
        net = build_model(ModelConfig(isize=32, channels=3, ngf=8, ndf=8, skip_levels=levels)).eval()
        fake, _, _ = net.terms(torch.zeros(2, 3, 32, 32))
        assert fake.shape == (2, 3, 32, 32)
    # no skip: the output cannot depend on the input except through the 1×1 bottleneck; with every skip the
    # full-resolution features reach the last layer: perturbing one pixel changes more of the output
    torch.manual_seed(0)
    for levels, expect_local in (("none", False), ("all", True)):
        net = build_model(ModelConfig(isize=32, channels=3, ngf=8, ndf=8, skip_levels=levels)).eval()
        x = torch.zeros(1, 3, 32, 32)
        y = x.clone()
        y[0, :, 0, 0] = 1.0
        d = (net.generator(x) - net.generator(y)).abs()[0].amax(0)
        assert bool(d[0, 0] > 10 * d[16:, 16:].mean()) == expect_local, levels


def test_skip_levels_are_validated_and_the_paper_keeps_all() -> None:
    with pytest.raises(ConfigError, match=r"skip_levels \[5\] out of range: isize 32 has levels 1..4"):
        ModelConfig(isize=32, skip_levels="1,5").validate()
    with pytest.raises(ConfigError, match="comma-separated"):
        ModelConfig(skip_levels="outer").validate()
    assert ModelConfig(isize=64, skip_levels="5").skip_level_set == {5}
    assert ModelConfig(isize=64).skip_level_set == {5} and ModelConfig(isize=32).skip_level_set == {4}  # the default: innermost
    assert paper_overrides({})["model"]["skip_levels"] == "all"
    with pytest.raises(ConfigError, match="--paper fixes model.skip_levels"):
        paper_overrides({"model": {"skip_levels": "none"}})
    RunConfig.from_dict({"model": {"skip_levels": "2,3"}}).model.validate()


# ------------------------------------------------------------------------------ training without labelled anomalies
def test_training_without_labelled_anomalies_uses_synthetic_ones_and_arch_auto(synth_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A folder with no val/: the trainer holds out normal images, makes synthetic anomalies from them, sets the threshold
    by the auto policy (fpr:Q without labels) and reports recall on the synthetic ones; --arch auto keeps the better."""
    import json
    import shutil

    from conftest import run_cli

    from skipgan_edge.card import load_card

    data = tmp_path / "data"
    shutil.copytree(synth_dir / "train", data / "train")
    shutil.copytree(synth_dir / "test", data / "test")
    run_cli("train", "--data", str(data), "--out", str(tmp_path / "r"), "--arch", "auto", "--ngf", "8", "--ndf", "8",
            "--epochs", "1", "--batch", "32", "--val-fraction", "0.45")
    card = load_card(tmp_path / "r")
    auto = card.training["arch_auto"]
    assert set(auto["candidates"]) == {"skipganomaly", "ganomaly"} and auto["by"] == "val_synth_auroc (max)"
    values = {a: c["value"] for a, c in auto["candidates"].items()}
    assert auto["chosen"] == max(values, key=lambda a: values[a]) == card.arch
    assert card.metrics["val_synth_auroc"] == values[card.arch]
    assert 0 < card.metrics["val_synth_pixel_auroc"] <= 1  # the synthetic masks make pixel metrics possible
    thr = card.score.threshold
    assert thr.policy == AUTO_UNLABELLED and thr.recall_source == "synthetic" and thr.n_normal == card.data["n_val"]
    assert thr.expected_recall is not None and 0 <= thr.expected_recall <= 1
    lines = [json.loads(x) for x in (tmp_path / "r" / "candidates" / "ganomaly" / "metrics.jsonl").read_text().splitlines()]
    assert "val_synth_auroc" in lines[0]
    p = run_cli("train", "--data", str(data), "--out", str(tmp_path / "r"), "--arch", "auto", "--epochs", "1", check=False)
    assert p.returncode == 2 and "already holds a run" in p.stderr


@pytest.mark.parametrize(("policy", "labelled"), [("max-normal", False), ("fpr:0.05", False), ("f1", False), ("fpr:0.05", True)])
def test_each_policy_through_the_trainer(synth_dir, tmp_path, policy: str, labelled: bool) -> None:  # type: ignore[no-untyped-def]
    """The card records the policy, what it promises and the recall on validation anomalies (labelled or synthetic)."""
    from skipgan_edge.config import TrainConfig
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import train

    ds = load_folder(synth_dir, 32, 3, val_fraction=0.4, seed=0)
    if not labelled:  # drop the labelled validation anomalies: the trainer makes synthetic ones
        keep = ds.val.labels == 0
        ds.val = type(ds.val)(ds.val.images[keep], ds.val.labels[keep], None, [n for n, k in zip(ds.val.names, keep) if k])
    cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=8, ndf=8), train=TrainConfig(epochs=1, batch=32),
                    score=ScoreConfig(threshold=policy))
    card = train(ds, cfg, tmp_path / "r", progress=False)
    thr, n = card.score.threshold, int((ds.val.labels == 0).sum())
    assert thr.policy == policy and thr.n_normal == n
    assert thr.recall_source == ("labelled" if labelled else "synthetic") and thr.expected_recall is not None
    if policy == "max-normal":
        assert thr.normalized == pytest.approx(1.0) and thr.expected_fpr == pytest.approx(1 / (n + 1))
    if policy.startswith("fpr:"):
        assert thr.expected_fpr <= 0.05 and thr.fpr_interval[0] < thr.expected_fpr < thr.fpr_interval[1]
    # the threshold in raw units and normalized agree through the card's normalization
    vs = card.score.val_stats
    assert thr.raw == pytest.approx(vs.min + thr.normalized * (vs.max - vs.min))


def test_false_alarms_per_hour_and_back() -> None:
    from skipgan_edge.thresholds import alarms_per_hour, format_per_hour, rate_for_alarms_per_hour

    # issue 23: 2 % at 25 fps is 30 a minute, 1800 an hour
    assert alarms_per_hour(0.02, 25) == pytest.approx(1800)
    assert rate_for_alarms_per_hour(2, 25) == pytest.approx(2 / 90000)
    for per_hour, fps in ((1, 30), (60, 12.5), (0.5, 5)):
        assert alarms_per_hour(rate_for_alarms_per_hour(per_hour, fps), fps) == pytest.approx(per_hour)
    # 2 an hour at 25 fps needs (k+1)/(n+1) <= 2/90000 with k = 0: n >= 44999
    assert min_normal_images(rate_for_alarms_per_hour(2, 25)) == 44999
    for bad in ((0, 25), (-1, 25), (float("nan"), 25), (1, 0), (1, float("inf"))):
        with pytest.raises(ConfigError):
            rate_for_alarms_per_hour(*bad)
    assert [format_per_hour(x) for x in (0, 2.44, 1500, 3750.4)] == ["0", "2.44", "1500", "3750"]
