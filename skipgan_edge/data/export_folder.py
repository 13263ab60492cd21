"""Write Fashion-MNIST leave-one-class-out as an MVTec-style folder of PNG files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from skipgan_edge.data import fmnist
from skipgan_edge.errors import DataError


def write_fmnist(
    out: Path, anomaly_class: str | int, *, max_train: int | None = None, max_test: int | None = None, seed: int = 0
) -> dict[str, int]:
    """train/good = the other classes' training images; test/good and test/<class name>."""
    k = fmnist.class_index(anomaly_class)
    d = fmnist.leave_one_out_subset(k, max_train, max_test, seed)
    train, test, labels = d["train"], d["test"], d["test_labels"]
    name = fmnist.CLASSES[k]
    counts = {"train/good": 0, "test/good": 0, f"test/{name}": 0}

    def put(folder: Path, i: int, img: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(folder / f"{i:05d}.png"), img):
            raise DataError(f"cannot write into {folder}: check it is writable and the disk has space")

    for i, img in enumerate(train):
        put(out / "train" / "good", i, img)
    counts["train/good"] = len(train)
    for i, (img, lab) in enumerate(zip(test, labels)):
        sub = name if lab else "good"
        put(out / "test" / sub, i, img)
        counts[f"test/{sub}"] += 1
    return counts
