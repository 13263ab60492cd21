"""Synthetic-defect validation: anomalies made from held-out normal images, with masks.

Without labelled validation anomalies, a threshold can only be set from normal images, and a
model can only be chosen by a loss. This module turns each held-out normal validation image into
one anomalous copy, so that recall, F1 and AUROC on validation exist everywhere:

* ``perlin`` (half of them, as anomalib's synthetic validation split and DRAEM do): a mask from
  thresholded 2-D Perlin noise at a random scale, and inside it the image blended with a texture
  source, ``out = (1 - β)·x + β·t`` with β ∈ [0.3, 0.8]. The texture source is another validation
  image turned by 90°, mirrored and brightness-inverted (so it is never the image itself) or, when
  scikit-image is installed, one of its stock textures (the role DTD plays for anomalib).
* ``cutpaste`` (the other half, Li et al. 2021): a rectangle cut from another validation image,
  1-6 % of the area, aspect 0.3-3.3, colour-jittered, pasted at a random place.

Everything is drawn from ``numpy.random.default_rng([seed, 7919])``: the same images and seed give
the same defects and masks. Masks are kept (pixel metrics work on them) and every mask covers at
least 0.5 % of the image: a defect with no pixels would be a normal image labelled anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skipgan_edge.errors import DataError

KINDS = ("perlin", "cutpaste")
MIN_MASK_FRACTION = 0.005
_STOCK = ("brick", "grass", "gravel")  # scikit-image's stock textures, when it is installed


@dataclass
class SyntheticDefects:
    images: np.ndarray  # (N, H, W, C) uint8: the anomalous copies
    masks: np.ndarray  # (N, H, W) bool
    kinds: list[str]  # per image: perlin or cutpaste


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-0.7, 0.7] with ``res`` lattice cells along each axis."""
    h, w = shape
    ry, rx = res
    # sample the lattice at a size divisible by res, then crop
    hh, ww = -(-h // ry) * ry, -(-w // rx) * rx
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], -1)  # (ry+1, rx+1, 2)
    ys = np.linspace(0, ry, hh, endpoint=False)
    xs = np.linspace(0, rx, ww, endpoint=False)
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grad[yi[:, None] + dy, xi[None, :] + dx]  # (hh, ww, 2)
        return g[..., 0] * (xf - dx) + g[..., 1] * (yf - dy)

    u, v = _fade(xf), _fade(yf)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    out: np.ndarray = (top * (1 - v) + bottom * v)[:h, :w]
    return out


def _perlin_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    for _ in range(50):
        scale = 2 ** int(rng.integers(0, 4))  # 1, 2, 4 or 8 cells across
        noise = perlin_noise((h, w), (scale, scale), rng)
        noise = np.rot90(noise, int(rng.integers(0, 4)))
        mask = noise > rng.uniform(0.3, 0.5)
        frac = mask.mean()
        if MIN_MASK_FRACTION <= frac <= 0.5:
            return np.ascontiguousarray(mask)
    # a fallback that always works: an ellipse (never reached in tests at 32×32 and up)
    ellipse = np.zeros((h, w), np.uint8)
    cv2.ellipse(ellipse, (w // 2, h // 2), (max(1, w // 6), max(1, h // 8)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return ellipse.astype(bool)


def _stock_textures(h: int, w: int, channels: int) -> list[np.ndarray]:
    try:
        import skimage.data
    except ImportError:
        return []
    out = []
    for name in _STOCK:
        t = cv2.resize(getattr(skimage.data, name)(), (w * 4, h * 4), interpolation=cv2.INTER_AREA)
        t = t[..., None] if t.ndim == 2 else t
        out.append(np.repeat(t[..., :1], channels, axis=2) if channels != t.shape[2] else t)
    return out


def _texture(images: np.ndarray, i: int, rng: np.random.Generator, stock: list[np.ndarray]) -> np.ndarray:
    n, h, w, c = images.shape
    if stock and rng.random() < 0.5:
        t = stock[int(rng.integers(0, len(stock)))]
        y, x = int(rng.integers(0, t.shape[0] - h + 1)), int(rng.integers(0, t.shape[1] - w + 1))
        return t[y : y + h, x : x + w].astype(np.float32)
    j = (i + 1 + int(rng.integers(0, max(1, n - 1)))) % n if n > 1 else i
    src = np.rot90(images[j], int(rng.integers(1, 4)))[:, ::-1]
    if src.shape[:2] != (h, w):  # non-square images: rot90 by an odd turn swaps the sides
        src = cv2.resize(np.ascontiguousarray(src), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c)
    return 255.0 - src.astype(np.float32)


def _cutpaste(images: np.ndarray, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, h, w, _ = images.shape
    area = rng.uniform(0.02, 0.06) * h * w
    aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))
    ph = int(np.clip(round(np.sqrt(area * aspect)), 2, h - 1))
    pw = int(np.clip(round(np.sqrt(area / aspect)), 2, w - 1))
    j = (i + 1 + int(rng.integers(0, max(1, n - 1)))) % n if n > 1 else i
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = images[j, sy : sy + ph, sx : sx + pw].astype(np.float32)
    patch = np.clip(patch * rng.uniform(0.6, 1.4) + rng.uniform(-60, 60), 0, 255)  # contrast and brightness jitter
    out = images[i].astype(np.float32).copy()
    mask = np.zeros((h, w), bool)
    for _ in range(20):  # paste where the patch differs from what it covers, or it is no defect
        ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        if ty != sy or tx != sx or j != i:
            break
    out[ty : ty + ph, tx : tx + pw] = patch
    mask[ty : ty + ph, tx : tx + pw] = True
    return out, mask


def make_defects(normal: np.ndarray, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> SyntheticDefects:
    """One synthetic anomalous copy of each normal (N, H, W, C) uint8 image; kinds alternate."""
    if normal.ndim != 4 or normal.dtype != np.uint8:
        raise DataError(f"synthetic defects need uint8 (N, H, W, C) images, got {normal.dtype} {normal.shape}")
    if len(normal) < 2:
        raise DataError(f"synthetic defects need at least 2 normal validation images, got {len(normal)}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise DataError(f"unknown synthetic defect kind(s) {bad}; choose from {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, 7919])
    n, h, w, c = normal.shape
    stock = _stock_textures(h, w, c)
    images = np.empty_like(normal)
    masks = np.zeros((n, h, w), bool)
    names = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "perlin":
            mask = _perlin_mask(h, w, rng)
            beta = rng.uniform(0.3, 0.8)
            tex = _texture(normal, i, rng, stock)
            x = normal[i].astype(np.float32)
            m = mask[..., None].astype(np.float32)
            out = x * (1 - beta * m) + beta * m * tex
        else:
            out, mask = _cutpaste(normal, i, rng)
        changed = np.abs(np.rint(out) - normal[i]).max(axis=2) >= 1  # pixels the defect really altered
        mask = mask & changed
        if mask.mean() < MIN_MASK_FRACTION:  # a blend that changed almost nothing (e.g. a flat source): invert a Perlin region
            mask = _perlin_mask(h, w, rng)
            out = normal[i].astype(np.float32)
            out[mask] = 255.0 - out[mask]
            mask = mask & (np.abs(255.0 - 2 * normal[i].astype(np.float32)).max(axis=2) >= 1)
        images[i] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        masks[i] = mask
        names.append(kind)
    return SyntheticDefects(images, masks, names)
