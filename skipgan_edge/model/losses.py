"""Skip-GANomaly losses (paper eq. 1-4), computed from the discriminator's logits.

Generator: w_adv·BCE(D(G(x)), 1) + w_con·‖x − G(x)‖₁ + w_lat·‖f(x) − f(G(x))‖₂², with the L1
and squared L2 terms as means over elements (as the authors' code computes them).
Discriminator: BCE(D(x), 1) + BCE(D(G(x)), 0).

The BCE terms take logits, not probabilities: BCE written on a probability p has a gradient of
``nan`` at p = 0 and p = 1 (``log(p)`` clamped or not), and a float32 sigmoid reaches exactly 1.0
once its logit passes about 17 (bf16 sooner), which is where a saturated discriminator lives. On
logits (``binary_cross_entropy_with_logits``, the log-sum-exp form) the loss is finite for every
finite logit and its gradient, sigmoid(z) − target, lies in [−1, 1]. The logits are cast to
float32 first, so the loss is the same under bf16/fp16 autocast.

The authors' code also adds the latent loss to the discriminator's objective, through a graph
that torch 2 rejects (an in-place modification); DESIGN.md lists it as a defect and the paper's
discriminator objective has no such term, so we leave it out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross entropy of sigmoid(``logits``) against a constant ``target``, in float32.

    Finite, with a gradient in [−1/N, 1/N] per element, for every finite logit (N the batch size)."""
    z = logits.float()
    return F.binary_cross_entropy_with_logits(z, torch.full_like(z, float(target)))


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().mean()


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).mean()


def generator_loss(
    logit_fake: torch.Tensor, x: torch.Tensor, fake: torch.Tensor, f_real: torch.Tensor, f_fake: torch.Tensor,
    w_adv: float, w_con: float, w_lat: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``logit_fake``: the discriminator's logits on G(x), shape (B,)."""
    adv = bce_logits(logit_fake, 1.0)
    con = l1(fake, x)
    lat = l2(f_fake, f_real)
    total = w_adv * adv + w_con * con + w_lat * lat
    return total, {"g_adv": adv.item(), "g_con": con.item(), "g_lat": lat.item(), "g": total.item()}


def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """``logit_real``, ``logit_fake``: the discriminator's logits on x and on G(x), shape (B,)."""
    real = bce_logits(logit_real, 1.0)
    fake = bce_logits(logit_fake, 0.0)
    total = real + fake
    return total, {"d_real": real.item(), "d_fake": fake.item(), "d": total.item()}
