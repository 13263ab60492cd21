"""The feature-bank head: what the features of normal training images look like, kept as constants of the graph.

The ``nearest`` bank (PatchCore-style) keeps normal patch features. Two sources of patch features
(``score.bank_source``), each a map of P = 16 spatial positions ("patches") per image:

* ``encoder``: the generator encoder's 4×4 map, the output of its down-convolution that
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
pass converts). Cost per image: 2·P·C·M FLOPs (16·128·4096·2 = 16.8 MFLOP for 4,096 features at ngf 32) and
4·C·M bytes of constants (2 MiB). Centring on μ changes no distance; it keeps the expansion's terms near the
distances themselves, so that float32 rounding (which differs between torch and each backend) does not swamp
them where features share a large common part, as an undertrained discriminator's do (ONNX Runtime against
torch on a 1-epoch model: 8e-4 of a score spread of 2.4 uncentred, beyond export's parity tolerance; 8e-6
centred). The term is standardised with the normal validation statistics and added to the two-term score
with weight ``bank_weight`` (``skipgan_edge.model.scorer.combine``).

Two kinds of bank (``score.bank_kind``):

* ``gaussian`` (Skip-GANomaly's default): one Gaussian of the generator encoder's 2×2 map, flattened (D = 4·8·ngf =
  1,024 values at ngf 32; the output of the down-convolution that takes the 4×4 map, ``UnetGenerator.tap2``), fitted
  on the training images: its mean μ and a whitening matrix W (D × D) with W·Wᵀ = (Σ + ε·I)⁻¹, ε = ``GAUSS_SHRINK``
  times the mean eigenvalue of the covariance Σ (a ridge that keeps the inverse finite where there are fewer images
  than dimensions). The term is the Mahalanobis distance ``||(f(x) − μ)·W||``: one MatMul against a constant, 2·D²
  FLOPs per image (2.1 MFLOP at ngf 32) and 4·D² bytes (4 MiB). The 2×2 map describes the whole image, and the
  covariance weighs each direction by how much normal images vary along it: on Fashion-MNIST it raised recall at 5 %
  false alarms from 0.30 (the nearest bank below) to 0.36 and AUROC from 0.80 to 0.82, textures unchanged
  (benchmarks/results/study_bank_gauss.md). Stored as one (D + 1, D) tensor: μ, then W's rows.
* ``nearest``: the patch features described above, the distance of the least normal patch to its nearest normal
  feature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from skipgan_edge.config import BANK_SOURCES

#: tensor names of the bank inside ``model.safetensors`` (next to the network's weights, covered by the model id)
BANK_KEY = "score_bank.features"
#: the gaussian bank's ridge, in units of the covariance's mean eigenvalue: 0.01, 0.03 and 0.1 measured (benchmarks/
#: results/study_bank_gauss.md; 0.3 lost recall on seed 0 before it); 0.03 had the highest recall at rec weight 0.25
GAUSS_SHRINK = 0.03


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


def patch_features(net: torch.nn.Module, images: np.ndarray, device: torch.device, source: str = "discriminator",
                   batch: int = 256) -> torch.Tensor:
    """The patch features (``source``: :data:`BANK_SOURCES`) of uint8 NHWC ``images`` in eval mode: (N·P, C) float32
    on the CPU."""
    def patches(f_real: torch.Tensor) -> torch.Tensor:
        f = source_patches(net, f_real, source).float()  # (B, P, C)
        return f.reshape(-1, f.shape[2])

    return _eval_features(net, images, device, batch, patches)


@torch.no_grad()
def _eval_features(net: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int, read: Any) -> torch.Tensor:
    """``read(f_real)`` after each eval-mode ``net.terms`` pass over ``batch`` images at a time, concatenated on the CPU;
    the network's training mode is restored."""
    from skipgan_edge.model.scorer import to_model_input

    was = net.training
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).to(device))
        out.append(read(net.terms(x)[1]).float().cpu())  # type: ignore[operator]
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
    return {"kind": "nearest", "source": source, "size": int(m), "dim": int(c), "patches": int(patches), "subsample": method,
            "from_features": int(n_features),
            "bytes": int(4 * m * c + 4 * m + 4 * c), "flops_per_image": int(2 * patches * c * m + 4 * patches * m),
            "term": "max over patches of the distance to the nearest bank feature"}


def gaussian_features(model: Any, dim: int | None = None) -> torch.Tensor:
    """The gaussian bank's (B, D) feature, right after ``model.terms(x)`` in eval mode: the generator encoder's 2×2
    map flattened channel-major. ``dim``: D as a Python int, so that an exported graph reshapes by a constant."""
    m = model.generator.encoder_map(2)  # (B, C, 2, 2)
    return m.reshape(-1, int(m.shape[1]) * 4 if dim is None else dim)


def gaussian_image_features(net: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 256) -> torch.Tensor:
    """:func:`gaussian_features` of uint8 NHWC ``images`` in eval mode: (N, D) float32 on the CPU."""
    return _eval_features(net, images, device, batch, lambda _f: gaussian_features(net))


def fit_gaussian(feats: torch.Tensor, shrink: float = GAUSS_SHRINK) -> torch.Tensor:
    """(N, D) features of normal images → the (D + 1, D) gaussian bank: the mean, then W with W·Wᵀ = (Σ + ε·I)⁻¹,
    ε = ``shrink`` × the mean eigenvalue of Σ (float64 while fitting). Needs two images; features all equal give
    ε = 1 (the term is then the Euclidean distance to the mean)."""
    if len(feats) < 2:
        raise ValueError(f"the gaussian bank needs at least 2 training images, got {len(feats)}")
    x = feats.double()
    mean = x.mean(0)
    xc = x - mean
    cov = xc.t() @ xc / (len(x) - 1)
    avg = float(torch.trace(cov)) / cov.shape[0]
    ridge = shrink * avg if avg > 0 else 1.0
    cov += ridge * torch.eye(cov.shape[0], dtype=torch.float64)
    eig, vec = torch.linalg.eigh(cov)
    whiten = vec / eig.clamp_min(ridge).sqrt()  # (D, D): column j scales the j-th principal direction
    return torch.cat([mean[None], whiten]).float().contiguous()


def gaussian_distance(f: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """(B, D) features, the bank's mean (D,) and whitening matrix (D, D) → (B,) Mahalanobis distances. Plain FP32 ops
    (Sub, MatMul, Mul, ReduceSum, Sqrt) for export."""
    z = torch.matmul(f - mean, whiten)  # (B, D)
    return (z * z).sum(dim=1).clamp_min(0.0).sqrt()


def gaussian_info(bank: torch.Tensor, subsample: str, n_features: int, available: int | None = None,
                  shrink: float = GAUSS_SHRINK) -> dict[str, Any]:
    """What the card records about a gaussian bank (its (D + 1, D) tensor): kind, source, dimension, the images it was
    fitted on (``size``) out of those there were (``from_features``), the ridge, bytes and FLOPs per image."""
    d = int(bank.shape[1])
    return {"kind": "gaussian", "source": "encoder", "size": int(n_features), "dim": d, "patches": 1, "subsample": subsample,
            "from_features": int(n_features if available is None else available), "shrink": float(shrink), "bytes": int(4 * (d + 1) * d),
            "flops_per_image": int(2 * d * d + 3 * d),
            "term": "Mahalanobis distance of the generator encoder's 2x2 map to the normal training images' Gaussian"}


def head_constants(bank: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
    """The graph's constants of a bank tensor: ``nearest``: :func:`bank_constants`; ``gaussian``: (W, μ)."""
    if kind == "gaussian":
        b = bank.float()
        return b[1:].contiguous(), b[0].contiguous()
    if kind != "nearest":
        raise ValueError(f"unknown bank kind {kind!r}")
    return bank_constants(bank)


def bank_term(model: Any, f_real: torch.Tensor, kind: str, source: str, consts: tuple[torch.Tensor, ...],
              dim: int | None = None) -> torch.Tensor:
    """(B,) bank term right after ``model.terms(x)`` in eval mode, from :func:`head_constants`' ``consts``."""
    if kind == "gaussian":
        whiten, mean = consts
        return gaussian_distance(gaussian_features(model, dim), mean, whiten)
    return bank_distance(source_patches(model, f_real, source, dim), *consts)
