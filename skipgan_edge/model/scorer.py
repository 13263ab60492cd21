"""The scorer: the one graph every backend runs (torch here, ONNX Runtime and TensorRT after export).

Input ``images``: uint8, NHWC, [B, H, W, C] in the channel order of the model card (BGR for
OpenCV frames; one channel for grayscale models). Casting, scaling to [-1, 1] and the transpose
to NCHW happen inside, so a runtime copies uint8 to the device, 4× fewer bytes than float32.

Outputs (a :class:`ScoreBatch`, whose field names are the ONNX output names):

* ``score`` [B]: s(x) = λ·mean((x − G(x))²) + (1 − λ)·mean((f(x) − f(G(x)))²), λ = 0.9 (paper).
* ``anomaly_map`` [B, 1, H, W]: per-pixel mean over channels of (x − G(x))².
* ``normalized_score`` [B]: (s − min) / (max − min) with min and max the scores of the normal
  validation images, so a threshold is a fixed number (1.0 = the most anomalous-looking normal
  validation image).

The head (subtractions, squares, reductions, normalisation) is plain float32 arithmetic; the
export keeps it in FP32 in every precision variant.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn


class ScoreBatch(NamedTuple):
    """What every backend returns, as numpy arrays."""

    score: np.ndarray  # (B,) float32
    anomaly_map: np.ndarray  # (B, 1, H, W) float32
    normalized_score: np.ndarray  # (B,) float32


OUTPUT_NAMES = list(ScoreBatch._fields)
INPUT_NAME = "images"


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) → float (B, C, H, W) in [-1, 1]."""
    x = images.to(torch.float32) * (2.0 / 255.0) - 1.0  # (B, H, W, C)
    return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def score_terms(
    x: torch.Tensor, fake: torch.Tensor, f_real: torch.Tensor, f_fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image reconstruction term, latent term, and the anomaly map."""
    sq = (x - fake) ** 2  # (B, C, H, W)
    amap = sq.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    rec = amap.mean(dim=(1, 2, 3))  # (B,) equals mean over C, H, W
    lat = ((f_real - f_fake) ** 2).mean(dim=1)  # (B,)
    return rec, lat, amap


class Scorer(nn.Module):
    """uint8 NHWC images → (score, anomaly_map, normalized_score)."""

    def __init__(self, model: nn.Module, lam: float = 0.9, score_min: float = 0.0, score_max: float = 1.0) -> None:
        """``lam`` is the model card's resolved λ (0.9 for Skip-GANomaly, 0 for GANomaly)."""
        super().__init__()
        self.model = model
        self.lam = float(lam)
        span = float(score_max) - float(score_min)
        self.score_min = float(score_min)
        self.inv_span = 1.0 / span if span > 0 else 1.0

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = to_model_input(images)  # (B, C, H, W): the head's copy of the input, never quantized
        # the networks get their own copy: an INT8 export puts Q/DQ on the first conv's input,
        # and a quantizer rewires every consumer of that tensor; the head must compare against
        # the exact input, so it must not share the tensor (test_export.py checks the graph)
        # (the exporter merges identical subexpressions, so this copy transposes first, then scales)
        x_net = images.permute(0, 3, 1, 2).to(torch.float32) * (2.0 / 255.0) - 1.0  # (B, C, H, W)
        fake, f_real, f_fake = self.model.terms(x_net)  # type: ignore[operator]
        rec, lat, amap = score_terms(x, fake, f_real, f_fake)
        score = self.lam * rec + (1.0 - self.lam) * lat  # (B,)
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
