"""The losses by hand, and their gradients at the discriminator's extremes (logits ±100 and beyond) on a real tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from skipgan_edge.config import ModelConfig
from skipgan_edge.model.losses import bce_logits, discriminator_loss, generator_loss
from skipgan_edge.model.networks import SkipGANomaly


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_bce_by_hand() -> None:
    z = torch.tensor([_logit(0.9), _logit(0.2)])
    assert math.isclose(float(bce_logits(z, 1.0)), -(math.log(0.9) + math.log(0.2)) / 2, rel_tol=1e-6)
    assert math.isclose(float(bce_logits(z, 0.0)), -(math.log(0.1) + math.log(0.8)) / 2, rel_tol=1e-6)
    # far past where a float32 sigmoid is exactly 0 or 1: the loss is the logit's magnitude, not a clamp at 100
    big = torch.tensor([100.0, -100.0])
    assert torch.sigmoid(big).tolist() == [1.0, 0.0]
    assert math.isclose(float(bce_logits(big, 1.0)), 50.0, rel_tol=1e-6)  # (0 + 100) / 2
    assert math.isclose(float(bce_logits(big, 0.0)), 50.0, rel_tol=1e-6)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_bce_gradient_is_finite_over_the_whole_range(target: float) -> None:
    """The old loss on probabilities gave nan at p = 0 and p = 1; on logits the gradient is sigmoid(z) - target everywhere."""
    z = torch.tensor([-3e38, -1e4, -100.0, -17.0, 0.0, 17.0, 100.0, 1e4, 3e38], requires_grad=True)
    loss = bce_logits(z, target)
    loss.backward()
    assert z.grad is not None
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(z.grad).all()), (loss, z.grad)
    expected = (torch.sigmoid(z.detach()) - target) / len(z)
    assert torch.allclose(z.grad, expected, atol=1e-7)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_saturated_discriminator_gives_finite_gradients(precision: str) -> None:
    """A real tiny model (ngf 8, isize 32) whose discriminator is saturated, D(x) exactly 0 or 1 (|logit| beyond 100),
    in fp32 and under the trainer's bf16 autocast: both losses and every parameter's gradient stay finite."""
    torch.manual_seed(0)
    m = SkipGANomaly(ModelConfig(isize=32, channels=3, ngf=8, ndf=8)).train()
    with torch.no_grad():  # saturate D: its classifier's weights 10^5 times their initial scale
        m.discriminator.classifier[0].weight.mul_(1e5)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with ctx, torch.no_grad():
        logits = torch.cat([m.discriminator(x)[0], m.discriminator(m.generator(x))[0]]).float()
        p = torch.sigmoid(logits)
    assert float(logits.abs().min()) > 100.0, logits
    assert set(p.tolist()) <= {0.0, 1.0}, p  # saturated: the old BCE on probabilities had a nan gradient at both
    for step in ("generator", "discriminator"):
        m.zero_grad(set_to_none=True)
        with ctx:
            loss_g, _, fake = m.generator_step_loss(x, (1.0, 50.0, 1.0))
            loss = loss_g if step == "generator" else m.discriminator_step_loss(x, fake.detach())[0]
        loss.backward()
        assert bool(torch.isfinite(loss)), (step, loss)
        grads = [q.grad for q in m.parameters() if q.grad is not None]
        assert grads, step
        assert all(bool(torch.isfinite(g).all()) for g in grads), step


def test_generator_loss_terms_by_hand() -> None:
    x = torch.tensor([[[[1.0, -1.0]]]])
    fake = torch.tensor([[[[0.5, -0.5]]]])
    fr, ff = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    logit_fake = torch.tensor([0.0])  # D(G(x)) = 0.5
    total, parts = generator_loss(logit_fake, x, fake, fr, ff, w_adv=1.0, w_con=50.0, w_lat=1.0)
    assert math.isclose(parts["g_adv"], math.log(2), rel_tol=1e-6)
    assert math.isclose(parts["g_con"], 0.5, rel_tol=1e-6)  # mean |x - G(x)|
    assert math.isclose(parts["g_lat"], 2.5, rel_tol=1e-6)  # mean (f(x) - f(G(x)))^2 = (1 + 4) / 2
    assert math.isclose(float(total), math.log(2) + 25.0 + 2.5, rel_tol=1e-6)


def test_discriminator_loss_by_hand() -> None:
    total, parts = discriminator_loss(torch.tensor([_logit(0.8)]), torch.tensor([_logit(0.3)]))
    assert math.isclose(parts["d_real"], -math.log(0.8), rel_tol=1e-6)
    assert math.isclose(parts["d_fake"], -math.log(0.7), rel_tol=1e-6)
    assert math.isclose(float(total), -math.log(0.8) - math.log(0.7), rel_tol=1e-6)
