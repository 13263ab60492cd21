"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, leave-one-class-out.

The protocol is the one the Skip-GANomaly authors use for CIFAR-10: one class is the anomaly;
training uses the training images of the other nine classes; the test set is every test image
(10,000, of which the anomalous class's 1,000 are positives) plus the anomalous class's 6,000
training images, as the authors' split does.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from skipgan_edge.errors import DataError

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")


def root() -> Path:
    """Where the idx files are: ``$SKIPGAN_FMNIST`` or Debian's location."""
    return Path(os.environ.get("SKIPGAN_FMNIST", str(DEFAULT_ROOT)))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str, where: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) for split ``train`` or ``t10k``."""
    base = where or root()
    for suffix in (".gz", ""):
        img_path = base / f"{split}-images-idx3-ubyte{suffix}"
        lbl_path = base / f"{split}-labels-idx1-ubyte{suffix}"
        if img_path.exists() and lbl_path.exists():
            return _read_idx(img_path), _read_idx(lbl_path)
    raise DataError(
        f"Fashion-MNIST not found under {base}; install it with: apt-get install dataset-fashion-mnist "
        "(or set SKIPGAN_FMNIST to a folder with the idx files)"
    )


def class_index(name_or_index: str | int) -> int:
    if isinstance(name_or_index, int) or str(name_or_index).isdigit():
        idx = int(name_or_index)
        if not 0 <= idx < 10:
            raise DataError(f"Fashion-MNIST class index must be 0-9, got {idx}")
        return idx
    try:
        return CLASSES.index(str(name_or_index))
    except ValueError:
        raise DataError(f"unknown Fashion-MNIST class {name_or_index!r}; use 0-9 or one of {', '.join(CLASSES)}") from None


def leave_one_out(anomaly: int, where: Path | None = None) -> dict[str, np.ndarray]:
    """The authors' split: ``train`` (normal), ``test`` images and ``test_labels`` (1 = anomalous)."""
    tr_x, tr_y = load("train", where)
    te_x, te_y = load("t10k", where)
    train = tr_x[tr_y != anomaly]
    test = np.concatenate([te_x, tr_x[tr_y == anomaly]])
    labels = np.concatenate([(te_y == anomaly).astype(np.int64), np.ones(int((tr_y == anomaly).sum()), np.int64)])
    return {"train": train, "test": test, "test_labels": labels}


def leave_one_out_subset(
    anomaly: int, max_train: int | None = None, max_test: int | None = None, seed: int = 0, where: Path | None = None
) -> dict[str, np.ndarray]:
    """:func:`leave_one_out` with seeded subsets for CPU budgets; the test subset keeps the
    anomaly share of the full protocol."""
    d = leave_one_out(anomaly, where)
    rng = np.random.default_rng(seed)
    train = d["train"]
    if max_train is not None and max_train < len(train):
        train = train[np.sort(rng.permutation(len(train))[:max_train])]
    test, labels = d["test"], d["test_labels"]
    if max_test is not None and max_test < len(test):
        pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        n_pos = round(max_test * len(pos) / len(labels))
        idx = np.sort(np.concatenate([rng.permutation(pos)[:n_pos], rng.permutation(neg)[: max_test - n_pos]]))
        test, labels = test[idx], labels[idx]
    return {"train": train, "test": test, "test_labels": labels}
