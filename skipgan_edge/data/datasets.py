"""Datasets as the trainer and evaluator see them: uint8 NHWC arrays with labels and masks.

Layouts accepted by ``--data``:

* a plain folder of normal images (image files directly in it, no ``train/``): every image is
  normal; a seeded ``val_fraction`` (default 10 %, seed ``train.seed``) is held out for
  validation, stated on the console and recorded in the card (``data.val_split``). There is no
  test split: ``eval`` and the export gate need labelled data (``--data``/``--eval-data``).
* an MVTec-style folder: ``train/good/`` (required), ``test/good/`` and ``test/<defect>/``,
  optional ``ground_truth/<defect>/<name>_mask.png``, and optionally ``val/good/`` plus
  ``val/<defect>/`` (labelled validation images: then the threshold is F1-optimal on them and
  model selection uses validation AUROC). Without ``val/``, a seeded ``val_fraction`` of
  ``train/good`` is held out (normal only).
* ``fmnist:<class>``: Fashion-MNIST leave-one-class-out (see :mod:`skipgan_edge.data.fmnist`),
  with a seeded 10 % of the normal training images held out for validation. The test split is
  never used for training, validation or model selection.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from skipgan_edge.data import fmnist
from skipgan_edge.data.images import MASK_ISSUES, convert_channels, image_size, list_images, load_images, load_masks
from skipgan_edge.errors import DataError


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64, 1 = anomalous
    masks: np.ndarray | None  # (N, H, W) bool, or None when the data has no masks
    names: list[str]
    mask_valid: np.ndarray | None = None  # (N,) bool: the mask can be trusted (None: all of them)
    mask_issues: dict[str, int] | None = None  # anomalous images whose mask is missing / undecodable / misshapen

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_anomalies(self) -> bool:
        return bool((self.labels == 1).any())


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split | None
    skipped: int = 0  # unreadable files skipped while loading
    layout: str = "mvtec"  # mvtec, plain (a folder of normal images) or fmnist
    val_split: dict[str, Any] | None = None  # how validation was taken (recorded in the card's data section)
    source_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" of the training files as read -> count

    def notes(self, isize: int) -> list[str]:
        """One-line statements for the console: how validation was taken, and a resize the model's input size makes."""
        out = []
        v = self.val_split or {}
        if "fraction" in v:
            out.append(f"validation: a seeded {v['fraction']:.0%} (at least 2 images) of {v['from']} held out (seed {v['seed']}): "
                       f"{v['n_val']} images; training on the other {v['n_train']}" + ("; no test/ to evaluate on" if self.test is None else ""))
        elif v:
            out.append(f"validation: {v['from']} ({v['n_val']} images); training on {v['n_train']}")
        other = {s: n for s, n in self.source_sizes.items() if s != f"{isize}x{isize}"}
        if other:
            sizes = ", ".join(f"{s} ({n} image{'s' if n != 1 else ''})" for s, n in sorted(other.items(), key=lambda kv: -kv[1])[:3])
            out.append(f"images resized to the model's input {isize}x{isize} (--isize {isize}); their own size: {sizes}")
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 of the training images as the model saw them (order included)."""
        h = hashlib.sha256()
        h.update(str(self.train.images.shape).encode())
        h.update(self.train.images.tobytes())
        return h.hexdigest()


def _holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(2, round(n * fraction))
    if n - n_val < 2:
        raise DataError(f"only {n} normal training images: need at least 4 to hold some out for validation")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _labelled_split(root: Path, split: str, isize: int, channels: int) -> tuple[Split | None, int]:
    base = root / split
    if not base.is_dir():
        return None, 0
    images, labels, masks, names, valid = [], [], [], [], []
    issues = dict.fromkeys(MASK_ISSUES, 0)
    any_mask = False
    skipped = 0
    for sub in sorted(d for d in base.iterdir() if d.is_dir()):
        label = 0 if sub.name == "good" else 1
        arr, ok, bad = load_images(list_images(sub), isize, channels, what=f"{split}/{sub.name}")
        skipped += len(bad)
        mask_paths: list[Path | None] = []
        for p in ok:
            m = root / "ground_truth" / sub.name / f"{p.stem}_mask.png"
            if label and m.exists():
                any_mask = True
                mask_paths.append(m)
            else:
                mask_paths.append(None)
        images.append(arr)
        labels.append(np.full(len(arr), label, np.int64))
        shapes = [image_size(p) if m is not None else None for p, m in zip(ok, mask_paths)]
        mk, ok_mask, found = load_masks(mask_paths, isize, shapes, [bool(label)] * len(ok))
        masks.append(mk)
        valid.append(ok_mask)
        for k, v in found.items():
            issues[k] += v
        names += [f"{split}/{sub.name}/{p.name}" for p in ok]
    if not names:
        return None, skipped
    return (
        Split(np.concatenate(images), np.concatenate(labels), np.concatenate(masks) if any_mask else None, names,
              np.concatenate(valid) if any_mask else None, issues if any_mask else None),
        skipped,
    )


def _layout(root: Path) -> str:
    """``mvtec`` (train/good/), ``plain`` (image files directly in the folder, no train/), or a one-line DataError."""
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if (root / "train" / "good").is_dir():
        return "mvtec"
    if not (root / "train").exists() and list_images(root):
        return "plain"
    raise DataError(
        f"{root} has neither train/good/ nor image files of its own: pass a folder of normal images (a seeded share is "
        "held out for validation), or an MVTec-style layout (train/good, test/good, test/<defect>)"
    )


def load_folder(root: Path, isize: int, channels: int, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Load an MVTec-style folder or a plain folder of normal images (see the module docstring)."""
    layout = _layout(root)
    good = root / "train" / "good" if layout == "mvtec" else root
    where = "train/good" if layout == "mvtec" else "the folder"
    files = list_images(good)
    sizes: Counter[str] = Counter()
    arr, ok, bad = load_images(files, isize, channels, what="train/good" if layout == "mvtec" else "images", sizes=sizes)
    if len(arr) == 0:
        raise DataError(f"no readable image in {good} ({len(files)} file(s) tried); add PNG/JPEG/TIFF images there")
    skipped = len(bad)
    names = [f"train/good/{p.name}" if layout == "mvtec" else p.name for p in ok]
    val, s_val = _labelled_split(root, "val", isize, channels) if layout == "mvtec" else (None, 0)
    skipped += s_val
    if val is None:
        tr_idx, va_idx = _holdout(len(arr), val_fraction, seed)
        train = Split(arr[tr_idx], np.zeros(len(tr_idx), np.int64), None, [names[i] for i in tr_idx])
        val = Split(arr[va_idx], np.zeros(len(va_idx), np.int64), None, [names[i] for i in va_idx])
        val_split = {"from": where, "fraction": val_fraction, "seed": seed, "n_val": len(va_idx), "n_train": len(tr_idx)}
    else:
        train = Split(arr, np.zeros(len(arr), np.int64), None, names)
        val_split = {"from": "val/", "n_val": len(val), "n_train": len(arr)}
    test, s_test = _labelled_split(root, "test", isize, channels) if layout == "mvtec" else (None, 0)
    skipped += s_test
    return Dataset(str(root), train, val, test, skipped, layout=layout, val_split=val_split, source_sizes=dict(sizes))


def load_test(spec: str, isize: int, channels: int) -> Split:
    """Only the labelled test split of ``--data`` (``test/good`` and ``test/<defect>``; ``fmnist:<class>``'s test set):
    what ``eval`` needs, so that a folder holding only ``test/`` (as on a device) is enough."""
    if spec.startswith("fmnist:"):
        ds = load_fmnist(fmnist.class_index(spec.split(":", 1)[1]), isize, channels)
        assert ds.test is not None
        return ds.test
    root = Path(spec)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    test, _ = _labelled_split(root, "test", isize, channels)
    if test is None:
        raise DataError(f"{root} has no test/ folder to evaluate on (test/good and test/<defect>)")
    return test


def _fit(images: np.ndarray, isize: int, channels: int) -> np.ndarray:
    out = np.empty((len(images), isize, isize, channels), np.uint8)
    for i, img in enumerate(images):
        r = cv2.resize(img, (isize, isize), interpolation=cv2.INTER_LINEAR)
        out[i] = convert_channels(r, channels)
    return out


def load_fmnist(
    anomaly: int, isize: int, channels: int, val_fraction: float = 0.1, seed: int = 0,
    max_train: int | None = None, max_test: int | None = None,
) -> Dataset:
    """Fashion-MNIST leave-one-class-out; ``max_*`` take a seeded subset (for CPU budgets)."""
    d = fmnist.leave_one_out_subset(anomaly, max_train, max_test, seed)
    train, test, labels = d["train"], d["test"], d["test_labels"]
    train = _fit(train, isize, channels)
    tr_idx, va_idx = _holdout(len(train), val_fraction, seed)
    name = f"fmnist:{anomaly}"
    return Dataset(
        name,
        Split(train[tr_idx], np.zeros(len(tr_idx), np.int64), None, [f"train/{i}" for i in tr_idx]),
        Split(train[va_idx], np.zeros(len(va_idx), np.int64), None, [f"val/{i}" for i in va_idx]),
        Split(_fit(test, isize, channels), labels, None, [f"test/{i}" for i in range(len(test))]),
        layout="fmnist",
        val_split={"from": "the training images", "fraction": val_fraction, "seed": seed, "n_val": len(va_idx), "n_train": len(tr_idx)},
    )


def load_data(spec: str, isize: int, channels: int, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Dispatch on ``--data``: a folder path, or ``fmnist:<class>``."""
    if spec.startswith("fmnist:"):
        return load_fmnist(fmnist.class_index(spec.split(":", 1)[1]), isize, channels, val_fraction, seed)
    return load_folder(Path(spec), isize, channels, val_fraction, seed)
