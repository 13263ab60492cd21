"""Built-in synthetic defect textures: no download, deterministic from a seed.

Normal images are random crops (with flips and 90° turns) of one of scikit-image's 512×512
grayscale textures (brick, grass, gravel). Anomalous images are normal crops with one drawn
defect and its ground-truth mask:

* ``scratch``: a thin straight bright or dark line;
* ``spot``: a blurred blob much brighter or darker than the surface;
* ``crack``: a dark random-walk polyline;
* ``hole``: a dark ellipse with a lighter rim.

The defects are drawn at the output size so that they survive resizing to 32×32. Training
crops come from the left 60 % of the texture; validation and test crops from the right 40 %
(different random crops of the same region). So no test pixel was seen in training, and the
validation images, which set the score normalisation and the threshold, look like the test
images: the textures are not stationary (brick has a lighting gradient), and a validation
region different from the test region made thresholds that did not transfer (measured: 73 % of
normal test images over a threshold set on another region).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skipgan_edge.errors import DataError

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "spot", "crack", "hole")


def texture(name: str) -> np.ndarray:
    """The 512×512 uint8 texture shipped with scikit-image."""
    if name not in TEXTURES:
        raise DataError(f"unknown texture {name!r}; choose one of {', '.join(TEXTURES)}")
    try:
        import skimage.data
    except ImportError:
        raise DataError("synthetic textures need scikit-image: pip install scikit-image") from None
    img: np.ndarray = getattr(skimage.data, name)()
    return img


def _crop(tex: np.ndarray, rng: np.random.Generator, region: tuple[int, int, int, int], crop: int, size: int) -> np.ndarray:
    xa, xb, ya, yb = region
    x0 = int(rng.integers(xa, xb - crop + 1))
    y0 = int(rng.integers(ya, yb - crop + 1))
    patch = tex[y0 : y0 + crop, x0 : x0 + crop]
    patch = np.rot90(patch, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=cv2.INTER_AREA)


def draw_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` on a copy of a (S, S) uint8 image; return (image, mask)."""
    s = img.shape[0]
    out = img.astype(np.float32)
    mask = np.zeros((s, s), np.uint8)
    layer = np.zeros((s, s), np.float32)
    lo, hi = int(0.2 * s), int(0.8 * s)
    cx, cy = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
    if kind == "scratch":
        ang = rng.uniform(0, np.pi)
        half = rng.uniform(0.2, 0.35) * s
        p1 = (int(cx - half * np.cos(ang)), int(cy - half * np.sin(ang)))
        p2 = (int(cx + half * np.cos(ang)), int(cy + half * np.sin(ang)))
        th = max(1, s // 32)
        cv2.line(mask, p1, p2, 255, th + 1)
        value = 250.0 if rng.random() < 0.5 else 5.0
        out[mask > 0] = value
    elif kind == "spot":
        r = int(rng.uniform(0.07, 0.13) * s)
        cv2.circle(layer, (cx, cy), r, 1.0, -1)
        layer = cv2.GaussianBlur(layer, (0, 0), max(1.0, r / 3)).astype(np.float32)
        value = 255.0 if rng.random() < 0.5 else 0.0
        out = out * (1 - layer) + value * layer
        mask = (layer > 0.3).astype(np.uint8) * 255
    elif kind == "crack":
        pts = [(cx, cy)]
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(6, 10))):
            ang += rng.normal(0, 0.6)
            step = rng.uniform(0.04, 0.08) * s
            x, y = pts[-1]
            pts.append((int(np.clip(x + step * np.cos(ang), 1, s - 2)), int(np.clip(y + step * np.sin(ang), 1, s - 2))))
        th = max(1, s // 32)
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 255, th + 1)
        out[mask > 0] = rng.uniform(0, 25)
    elif kind == "hole":
        axes = (int(rng.uniform(0.08, 0.15) * s), int(rng.uniform(0.06, 0.12) * s))
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(mask, (cx, cy), axes, ang, 0, 360, 255, -1)
        rim = np.zeros_like(mask)
        cv2.ellipse(rim, (cx, cy), axes, ang, 0, 360, 255, max(1, s // 32))
        out[mask > 0] = rng.uniform(0, 15)
        out[rim > 0] = 200.0
        mask = np.maximum(mask, rim)
    else:
        raise DataError(f"unknown defect {kind!r}; choose one of {', '.join(DEFECTS)}")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


@dataclass(frozen=True)
class SyntheticSpec:
    """What ``skipgan-edge data synthetic`` writes; the defaults are what ``make demo`` uses."""

    texture: str = "brick"  # brick has the most regular structure, so defects are well posed
    size: int = 64  # written image side; the model resizes to its isize
    crop: int = 96  # texture pixels per image before resizing (a few bricks per image)
    n_train: int = 640  # normal training images (10 batches of 64)
    n_val_good: int = 64  # normal validation images
    n_val_defect: int = 8  # validation images per defect kind (threshold and model selection)
    n_test_good: int = 100  # normal test images
    n_test_defect: int = 25  # test images per defect kind
    seed: int = 0  # same seed, same files, byte for byte


def write_synthetic(out: Path, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """Write an MVTec-style folder (train/good, val/*, test/*, ground_truth/*). Returns counts."""
    tex = texture(spec.texture)
    h, w = tex.shape
    xs = int(0.6 * w)
    ranges = {"train": (0, xs, 0, h), "val": (xs, w, 0, h), "test": (xs, w, 0, h)}
    rng = np.random.default_rng(spec.seed)
    counts: dict[str, int] = {}

    def save(path: Path, img: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), img):
            raise DataError(f"cannot write {path}: check the folder is writable and the disk has space")

    def emit(split: str, n_good: int, n_defect: int) -> None:
        for i in range(n_good):
            save(out / split / "good" / f"{i:04d}.png", _crop(tex, rng, ranges[split], spec.crop, spec.size))
        counts[f"{split}/good"] = n_good
        for kind in DEFECTS:
            for i in range(n_defect):
                base = _crop(tex, rng, ranges[split], spec.crop, spec.size)
                img, mask = draw_defect(base, kind, rng)
                stem = f"v{i:04d}" if split == "val" else f"{i:04d}"  # val and test share ground_truth/
                save(out / split / kind / f"{stem}.png", img)
                save(out / "ground_truth" / kind / f"{stem}_mask.png", mask)
            counts[f"{split}/{kind}"] = n_defect

    emit("train", spec.n_train, 0)
    emit("val", spec.n_val_good, spec.n_val_defect)
    emit("test", spec.n_test_good, spec.n_test_defect)
    for kind in DEFECTS:
        counts.pop(f"train/{kind}", None)
    (out / "README.txt").write_text(
        f"skipgan-edge synthetic defects: texture={spec.texture} size={spec.size} seed={spec.seed}\n"
    )
    return counts
