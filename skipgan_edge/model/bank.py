"""The feature-bank head (PatchCore-style): a memory of normal patch features of the image.

Two sources of patch features (``score.bank_source``), each a map of P = 16 spatial positions ("patches") per image:

* ``encoder`` (Skip-GANomaly's default): the generator encoder's 4×4 map, the output of its down-convolution that
  takes the 8×8 map (C = 4·ngf channels at isize 32, 8·ngf above; ``UnetGenerator.tap``). The encoder is trained to
  describe the image well enough to rebuild it, so its features keep what an image *is*; they raised Fashion-MNIST
  AUROC from 0.733 (the discriminator's) to about 0.80 (benchmarks/results/study_bank_source.md).
* ``discriminator``: f(x), the discriminator feature the latent term reads: the 4×4 map of D's penultimate layer
  (C = 4·ndf at isize 32; P = 1 for GANomaly's plain vector).

The bank keeps ``bank_size`` of the training images' patch features, chosen by greedy k-center (coreset:
each next feature is the one farthest from those already kept, so rare normal patterns are covered) or at
random. The bank term of an image is the distance of its least normal patch to its nearest normal feature::

    bank(x) = max_p sqrt(max(0, min_m ||a_p - μ||² - 2·(a_p - μ)·(b_m - μ) + ||b_m - μ||²))

computed with one MatMul against the constant centred bank (C × M) and the constant ||b_m - μ||² (M), μ the
bank's mean feature, all inside the exported graph, at the top level (the FP32 score head, which no precision
pass converts). Cost per image: 2·P·C·M FLOPs (16·128·4096·2 = 16.8 MFLOP for the default bank at ngf 32) and
4·C·M bytes of constants (2 MiB). Centring on μ changes no distance; it keeps the expansion's terms near the
distances themselves, so that float32 rounding (which differs between torch and each backend) does not swamp
them where features share a large common part, as an undertrained discriminator's do (ONNX Runtime against
torch on a 1-epoch model: 8e-4 of a score spread of 2.4 uncentred, beyond export's parity tolerance; 8e-6
centred). The term is standardised with the normal validation statistics and added to the two-term score
with weight ``bank_weight`` (``skipgan_edge.model.scorer.combine``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from skipgan_edge.config import BANK_SOURCES

#: tensor names of the bank inside ``model.safetensors`` (next to the network's weights, covered by the model id)
BANK_KEY = "score_bank.features"


def source_patches(model: Any, f_real: torch.Tensor, source: str, dim: int | None = None) -> torch.Tensor:
    """The (B, P, C) patch features the bank reads, right after ``model.terms(x)`` in eval mode: the generator
    encoder's 4×4 map (``encoder``, P = 16) or D's f(x) = ``f_real`` (``discriminator``). ``dim``: C as a Python int,
    so that an exported graph reshapes by a constant (the scorer passes its bank's)."""
    if source == "encoder":
        m = model.generator.encoder_map()  # (B, C, 4, 4)
        c = int(m.shape[1]) if dim is None else dim
        return m.reshape(-1, c, 16).transpose(1, 2)  # (B, 16, C)
    if source != "discriminator":
        raise ValueError(f"unknown bank source {source!r}; known: {', '.join(BANK_SOURCES)}")
    p = feature_patches(model)
    return as_patches(f_real, f_real.shape[1] // p if dim is None else dim, p)


def feature_patches(model: Any) -> int:
    """P, the number of spatial positions in the architecture's f(x) (1 for a plain vector)."""
    return int(getattr(model, "feature_patches", 1))


def as_patches(f: torch.Tensor, dim: int, patches: int) -> torch.Tensor:
    """(B, C·P) flattened channel-major, as ``flatten(1)`` of a (B, C, h, w) map gives it → (B, P, C)."""
    return f.reshape(-1, dim, patches).transpose(1, 2)


@torch.no_grad()
def patch_features(net: torch.nn.Module, images: np.ndarray, device: torch.device, source: str = "discriminator",
                   batch: int = 256) -> torch.Tensor:
    """The patch features (``source``: :data:`BANK_SOURCES`) of uint8 NHWC ``images`` in eval mode: (N·P, C) float32
    on the CPU."""
    from skipgan_edge.model.scorer import to_model_input

    was = net.training
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).to(device))
        f = source_patches(net, net.terms(x)[1], source).float()  # type: ignore[operator]  # (B, P, C)
        out.append(f.reshape(-1, f.shape[2]).cpu())
    net.train(was)
    return torch.cat(out)


def subsample(feats: torch.Tensor, size: int, method: str = "coreset", seed: int = 0) -> torch.Tensor:
    """``size`` rows of ``feats`` (N, C): greedy k-center (``coreset``) or uniformly at random (``random``); all of
    them when there are no more than ``size``. Deterministic for a given ``seed``."""
    n = len(feats)
    if n <= size:
        return feats.clone()
    gen = torch.Generator().manual_seed(int(seed))
    if method == "random":
        return feats[torch.randperm(n, generator=gen)[:size]].clone()
    if method != "coreset":
        raise ValueError(f"unknown bank subsampling {method!r}")
    x = feats.float()
    sq = (x * x).sum(1)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=gen))
    min_d = torch.full((n,), float("inf"))
    for k in range(1, size):
        c = x[chosen[k - 1]]
        d = sq - 2.0 * (x @ c) + c.dot(c)  # (N,) squared distance to the last kept feature
        min_d = torch.minimum(min_d, d)
        chosen[k] = int(torch.argmax(min_d))
    return x[chosen].clone()


def bank_distance(patches: torch.Tensor, bank_t: torch.Tensor, bank_sq: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """(B, P, C) patch features, the centred bank transposed (C, M), its squared norms (M,) and the centre (C,)
    (:func:`bank_constants`) → (B,): the distance of the least normal patch to its nearest bank feature. Plain FP32
    ops (Sub, MatMul, ReduceMin, Sqrt, ReduceMax) for export."""
    if center is not None:
        patches = patches - center
    d2 = (patches * patches).sum(dim=2, keepdim=True) - 2.0 * torch.matmul(patches, bank_t) + bank_sq  # (B, P, M)
    return d2.amin(dim=2).clamp_min(0.0).sqrt().amax(dim=1)  # (B,)


def bank_constants(bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bank (M, C) → the graph's constants: centred on its mean and transposed (C, M), the centred squared
    norms (M,), and the mean (C,)."""
    b = bank.float()
    center = b.mean(0)
    c = b - center
    return c.t().contiguous(), (c * c).sum(1).contiguous(), center.contiguous()


def bank_info(bank: torch.Tensor, patches: int, method: str, n_features: int, source: str = "discriminator") -> dict[str, Any]:
    """What the card records about a bank: its source, shape, how it was chosen, its size in bytes (the graph's FP32
    constants: the centred bank, its squared norms, the centre) and FLOPs per image."""
    m, c = bank.shape
    return {"source": source, "size": int(m), "dim": int(c), "patches": int(patches), "subsample": method, "from_features": int(n_features),
            "bytes": int(4 * m * c + 4 * m + 4 * c), "flops_per_image": int(2 * patches * c * m + 4 * patches * m),
            "term": "max over patches of the distance to the nearest bank feature"}
