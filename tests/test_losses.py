from __future__ import annotations

import math

import torch

from skipgan_edge.model.losses import bce, discriminator_loss, generator_loss


def test_bce_by_hand() -> None:
    p = torch.tensor([0.9, 0.2])
    assert math.isclose(float(bce(p, 1.0)), -(math.log(0.9) + math.log(0.2)) / 2, rel_tol=1e-6)
    assert math.isclose(float(bce(p, 0.0)), -(math.log(0.1) + math.log(0.8)) / 2, rel_tol=1e-6)
    # matches torch's BCELoss, including its clamp at -100
    q = torch.tensor([0.0, 1.0, 0.5])
    assert torch.allclose(bce(q, 1.0), torch.nn.functional.binary_cross_entropy(q, torch.ones(3)))


def test_generator_loss_terms_by_hand() -> None:
    x = torch.tensor([[[[1.0, -1.0]]]])
    fake = torch.tensor([[[[0.5, -0.5]]]])
    fr, ff = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    pred_fake = torch.tensor([0.5])
    total, parts = generator_loss(pred_fake, x, fake, fr, ff, w_adv=1.0, w_con=50.0, w_lat=1.0)
    assert math.isclose(parts["g_adv"], math.log(2), rel_tol=1e-6)
    assert math.isclose(parts["g_con"], 0.5, rel_tol=1e-6)  # mean |x - G(x)|
    assert math.isclose(parts["g_lat"], 2.5, rel_tol=1e-6)  # mean (f(x) - f(G(x)))^2 = (1 + 4) / 2
    assert math.isclose(float(total), math.log(2) + 25.0 + 2.5, rel_tol=1e-6)


def test_discriminator_loss_by_hand() -> None:
    total, parts = discriminator_loss(torch.tensor([0.8]), torch.tensor([0.3]))
    assert math.isclose(parts["d_real"], -math.log(0.8), rel_tol=1e-6)
    assert math.isclose(parts["d_fake"], -math.log(0.7), rel_tol=1e-6)
    assert math.isclose(float(total), -math.log(0.8) - math.log(0.7), rel_tol=1e-6)
