"""The scorer: the one graph every backend runs (torch here, ONNX Runtime and TensorRT after export).

Input ``images``: uint8, NHWC, [B, H, W, C] in the channel order of the model card (BGR for
OpenCV frames; one channel for grayscale models). Casting, scaling to [-1, 1] and the transpose
to NCHW happen inside, so a runtime copies uint8 to the device, 4× fewer bytes than float32.

Outputs (a :class:`ScoreBatch`, whose field names are the ONNX output names):

* ``score`` [B]: s(x) = λ·rec + (1 − λ)·lat with rec = mean((x − G(x))²) and lat =
  mean((f(x) − f(G(x)))²) in the paper (λ = 0.9, ``--paper``); the card may instead take rec as the
  max of the box-smoothed map (``pool``) and standardise both terms (``mode``): see :func:`combine`.
  Each architecture has a measured default (``default_score`` in model/networks.py).
* ``anomaly_map`` [B, 1, H, W]: per-pixel mean over channels of (x − G(x))².
* ``normalized_score`` [B]: (s − min) / (max − min) with min and max the scores of the normal
  validation images, so a threshold is a fixed number (1.0 = the most anomalous-looking normal
  validation image).

With a feature bank (``score.bank_size`` > 0, model/bank.py) the score gains a third term: the Mahalanobis distance
of the generator encoder's 2×2 map to the normal images' Gaussian (``gaussian``), or the distance of the image's
least normal patch (of the encoder's 4×4 map, or of D's f(x): ``score.bank_source``) to the nearest of the bank's
normal features (``nearest``); either is one MatMul against constants.

The head (subtractions, squares, reductions, normalisation, the bank's MatMul) is plain float32 arithmetic;
the export keeps it in FP32 in every precision variant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES, ScoreBatch  # the torch-free contract, re-exported
from skipgan_edge.model.bank import bank_term, head_constants

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "SCORE_MODES", "ScoreBatch", "Scorer", "combine", "score_terms", "to_model_input"]


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) → float (B, C, H, W) in [-1, 1]."""
    x = images.to(torch.float32) * (2.0 / 255.0) - 1.0  # (B, H, W, C)
    return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def score_terms(
    x: torch.Tensor, fake: torch.Tensor, f_real: torch.Tensor, f_fake: torch.Tensor, pool: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image reconstruction term, latent term, and the anomaly map.

    ``pool`` 0: the reconstruction term is the mean of the map (the paper). ``pool`` k > 0: the
    maximum of the map smoothed by a k×k box filter (a small defect is not diluted by the rest of
    the image; the smoothing keeps one noisy pixel from deciding).
    """
    sq = (x - fake) ** 2  # (B, C, H, W)
    amap = sq.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    if pool > 0:
        rec = torch.nn.functional.avg_pool2d(amap, pool, stride=1).amax(dim=(1, 2, 3))  # (B,)
    else:
        rec = amap.mean(dim=(1, 2, 3))  # (B,) equals mean over C, H, W
    lat = ((f_real - f_fake) ** 2).mean(dim=1)  # (B,)
    return rec, lat, amap


SCORE_MODES = ("paper", "standardized")


def combine(rec: Any, lat: Any, mode: str, lam: float, stats: dict[str, float] | None, bank: Any = None,
            bank_weight: float = 0.0) -> Any:
    """s = λ·rec + (1 − λ)·lat (``paper``), or the same on terms standardised with the normal
    validation statistics (``standardized``: the two terms live on unrelated scales, so λ only
    means what it says once both are in units of their normal spread). Works on tensors and arrays.

    With a feature-bank term (``bank``, model/bank.py): s = (1 − w)·(the above) + w·bank, w = ``bank_weight``, the
    bank term standardised like the others (``bank_mean``, ``bank_std``) in ``standardized`` mode."""
    if mode == "paper":
        two = lam * rec + (1.0 - lam) * lat
        return two if bank is None else (1.0 - bank_weight) * two + bank_weight * bank
    if stats is None:
        raise ValueError("standardized scores need the normal validation statistics of both terms")
    r = (rec - stats["rec_mean"]) * (1.0 / max(stats["rec_std"], 1e-12))
    la = (lat - stats["lat_mean"]) * (1.0 / max(stats["lat_std"], 1e-12))
    if bank is None:
        return lam * r + (1.0 - lam) * la
    b = (bank - stats["bank_mean"]) * (1.0 / max(stats["bank_std"], 1e-12))
    return (1.0 - bank_weight) * (lam * r + (1.0 - lam) * la) + bank_weight * b


class Scorer(nn.Module):
    """uint8 NHWC images → (score, anomaly_map, normalized_score)."""

    def __init__(
        self, model: nn.Module, lam: float = 0.9, score_min: float = 0.0, score_max: float = 1.0, *,
        mode: str = "paper", pool: int = 0, term_stats: dict[str, float] | None = None,
        bank: torch.Tensor | None = None, bank_weight: float = 0.0, bank_source: str = "discriminator", bank_kind: str = "nearest",
    ) -> None:
        """``lam``, ``mode``, ``pool`` and ``term_stats`` come from the model card (see :func:`combine`); ``bank``,
        ``bank_weight``, ``bank_source`` and ``bank_kind`` from the model folder's feature bank (model/bank.py: a
        ``nearest`` bank (M, C), a ``gaussian`` one (D + 1, D)), the bank kept as FP32 constants of the head."""
        super().__init__()
        if mode not in SCORE_MODES:
            raise ValueError(f"unknown score mode {mode!r}")
        self.model = model
        self.lam = float(lam)
        self.mode, self.pool, self.term_stats = mode, int(pool), term_stats
        span = float(score_max) - float(score_min)
        self.score_min = float(score_min)
        self.inv_span = 1.0 / span if span > 0 else 1.0
        self.bank_weight = float(bank_weight)
        self.bank_source = str(bank_source)
        self.bank_kind = str(bank_kind)
        self.bank_dim = int(bank.shape[1]) if bank is not None else 0  # C (D): a Python int, a constant of the graph's Reshape
        self.bank_names: tuple[str, ...] = ()
        if bank is not None:
            consts = head_constants(bank, self.bank_kind)
            # nearest: the centred bank (C, M), its squared norms (M,), its centre (C,); gaussian: W (D, D), μ (D,)
            names = ("gauss_whiten", "gauss_mean") if self.bank_kind == "gaussian" else ("bank_t", "bank_sq", "bank_center")
            for name, t in zip(names, consts, strict=True):
                self.register_buffer(name, t)  # one constant MatMul (and its vectors) in the graph
            self.bank_names = names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = to_model_input(images)  # (B, C, H, W): the head's copy of the input, never quantized
        # the networks get their own copy: an INT8 export puts Q/DQ on the first conv's input,
        # and a quantizer rewires every consumer of that tensor; the head must compare against
        # the exact input, so it must not share the tensor (test_export.py checks the graph)
        # (the exporter merges identical subexpressions, so this copy casts, transposes, then scales;
        # the cast comes first because TensorRT accepts a uint8 tensor only as a graph input that
        # feeds Cast nodes: "UINT8 is only supported as network input or output tensor types")
        x_net = images.to(torch.float32).permute(0, 3, 1, 2) * (2.0 / 255.0) - 1.0  # (B, C, H, W)
        fake, f_real, f_fake = self.model.terms(x_net)  # type: ignore[operator]
        rec, lat, amap = score_terms(x, fake, f_real, f_fake, self.pool)
        bank = None
        if self.bank_names:
            consts = tuple(getattr(self, n) for n in self.bank_names)
            bank = bank_term(self.model, f_real, self.bank_kind, self.bank_source, consts, self.bank_dim)  # (B,)
        score = combine(rec, lat, self.mode, self.lam, self.term_stats, bank, self.bank_weight)  # (B,)
        normalized = (score - self.score_min) * self.inv_span  # (B,)
        return score, amap, normalized

    @torch.no_grad()
    def score_numpy(self, images: np.ndarray, batch: int = 256) -> ScoreBatch:
        """Score a uint8 NHWC array in eval mode; results do not depend on ``batch``."""
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 (B, H, W, C) images, got {images.dtype} {images.shape}")
        self.eval()
        device = next(self.parameters()).device
        outs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for i in range(0, len(images), batch):
            t = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).to(device)
            s, a, n = self(t)
            outs.append((s.float().cpu().numpy(), a.float().cpu().numpy(), n.float().cpu().numpy()))
        if not outs:
            h, w = images.shape[1:3]
            return ScoreBatch(np.zeros(0, np.float32), np.zeros((0, 1, h, w), np.float32), np.zeros(0, np.float32))
        return ScoreBatch(*(np.concatenate([o[k] for o in outs]) for k in range(3)))
