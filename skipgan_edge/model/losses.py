"""Skip-GANomaly losses (paper eq. 1-4).

Generator: w_adv·BCE(D(G(x)), 1) + w_con·‖x − G(x)‖₁ + w_lat·‖f(x) − f(G(x))‖₂², with the L1
and squared L2 terms as means over elements (as the authors' code computes them).
Discriminator: BCE(D(x), 1) + BCE(D(G(x)), 0).

The authors' code also adds the latent loss to the discriminator's objective, through a graph
that torch 2 rejects (an in-place modification); DESIGN.md lists it as a defect and the paper's
discriminator objective has no such term, so we leave it out.
"""

from __future__ import annotations

import torch


def bce(pred: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross entropy of probabilities, in float32, logs clamped at -100 like torch's BCELoss.

    Written out so that it is safe under autocast (torch refuses BCELoss there on CUDA).
    """
    p = pred.float()
    log_p = torch.clamp(torch.log(p), min=-100.0)
    log_q = torch.clamp(torch.log1p(-p), min=-100.0)
    return -(target * log_p + (1.0 - target) * log_q).mean()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().mean()


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).mean()


def generator_loss(
    pred_fake: torch.Tensor, x: torch.Tensor, fake: torch.Tensor, f_real: torch.Tensor, f_fake: torch.Tensor,
    w_adv: float, w_con: float, w_lat: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    adv = bce(pred_fake, 1.0)
    con = l1(fake, x)
    lat = l2(f_fake, f_real)
    total = w_adv * adv + w_con * con + w_lat * lat
    return total, {"g_adv": adv.item(), "g_con": con.item(), "g_lat": lat.item(), "g": total.item()}


def discriminator_loss(pred_real: torch.Tensor, pred_fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    real = bce(pred_real, 1.0)
    fake = bce(pred_fake, 0.0)
    total = real + fake
    return total, {"d_real": real.item(), "d_fake": fake.item(), "d": total.item()}
