from __future__ import annotations

import numpy as np
import pytest
import torch

from skipgan_edge.config import ModelConfig
from skipgan_edge.errors import ConfigError
from skipgan_edge.model.networks import SkipGANomaly, count_parameters
from skipgan_edge.model.scorer import Scorer


def test_parameter_counts_match_authors_code() -> None:
    m = SkipGANomaly(ModelConfig(isize=32, channels=3, ngf=64, ndf=64, nz=100, skip_levels="all"))  # the paper's generator
    assert count_parameters(m.generator) == 16_659_075
    assert count_parameters(m.discriminator) == 1_069_700


@pytest.mark.parametrize("isize", [32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(isize: int, channels: int) -> None:
    m = SkipGANomaly(ModelConfig(isize=isize, channels=channels, ngf=4, ndf=4, nz=10, feature_layer="last")).eval().requires_grad_(False)
    x = torch.rand(2, channels, isize, isize) * 2 - 1
    fake, f_real, f_fake = m.terms(x)
    assert fake.shape == x.shape
    assert f_real.shape == f_fake.shape == (2, 10)
    assert float(fake.abs().max()) <= 1.0  # tanh output
    logit, _ = m.discriminator(x)  # the losses take logits; probability() is D(x)
    pred = m.discriminator.probability(x)
    assert logit.shape == pred.shape == (2,) and bool(((pred > 0) & (pred < 1)).all())
    assert torch.allclose(pred, torch.sigmoid(logit))


def test_unet_depth_is_log2_isize() -> None:
    m = SkipGANomaly(ModelConfig(isize=128, channels=1, ngf=4, ndf=4))
    downs = [mod for mod in m.generator.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(downs) == 7
    widths = [c.out_channels for c in downs]
    assert widths == [4, 8, 16, 32, 32, 32, 32]


@pytest.mark.parametrize("bad", [dict(isize=48), dict(channels=2), dict(ngf=0)])
def test_invalid_config(bad: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        SkipGANomaly(ModelConfig(**bad))


def test_scorer_formula_by_hand() -> None:
    torch.manual_seed(0)
    m = SkipGANomaly(ModelConfig(isize=32, channels=3, ngf=4, ndf=4, nz=7)).eval()
    sc = Scorer(m, lam=0.9, score_min=0.01, score_max=0.05).eval()
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        score, amap, norm = sc(torch.from_numpy(imgs))
        x = torch.from_numpy(imgs).float().permute(0, 3, 1, 2) / 127.5 - 1
        fake = m.generator(x)
        _, fr = m.discriminator(x)
        _, ff = m.discriminator(fake)
    xs, fs = x.numpy(), fake.numpy()
    rec = ((xs - fs) ** 2).reshape(3, -1).mean(1)
    lat = ((fr.numpy() - ff.numpy()) ** 2).mean(1)
    want = 0.9 * rec + 0.1 * lat
    np.testing.assert_allclose(score.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(amap.numpy()[:, 0], ((xs - fs) ** 2).mean(1), rtol=1e-5)
    np.testing.assert_allclose(norm.numpy(), (want - 0.01) / 0.04, rtol=1e-4)
    assert amap.shape == (3, 1, 32, 32)


def test_scores_do_not_depend_on_batch_or_order(tiny_model: object) -> None:
    from skipgan_edge.model.folder import build_scorer

    _, sc = build_scorer(tiny_model)  # type: ignore[arg-type]
    imgs = np.random.default_rng(1).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    a = sc.score_numpy(imgs, batch=20)
    b = sc.score_numpy(imgs, batch=3)
    perm = np.random.default_rng(2).permutation(20)
    c = sc.score_numpy(imgs[perm], batch=7)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.score[perm], c.score, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.anomaly_map[perm], c.anomaly_map, rtol=1e-5, atol=1e-7)


def test_feature_layer_variant() -> None:
    """f(x) from the layer before D's last conv: same parameters, a (B, C·4·4) feature, scorer unchanged."""
    last = SkipGANomaly(ModelConfig(isize=32, channels=3, ngf=4, ndf=4, nz=10, feature_layer="last")).eval()
    pen = SkipGANomaly(ModelConfig(isize=32, channels=3, ngf=4, ndf=4, nz=10, feature_layer="penultimate")).eval()
    assert count_parameters(pen) == count_parameters(last)
    pen.load_state_dict(last.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        _, a, _ = pen.terms(x)
        body = last.discriminator.features[:-1](x)
    assert a.shape == (2, 16 * 4 * 4)
    assert torch.allclose(a, body.flatten(1))
    with pytest.raises(ConfigError):
        SkipGANomaly(ModelConfig(feature_layer="middle"))
