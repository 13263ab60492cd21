"""Write the shared splits (see README.md)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import FMNIST_CLASSES, ISIZE, MAX_TEST, MAX_TRAIN, SEEDS, SPLITS, TEXTURES

from skipgan_edge.data.datasets import load_fmnist, load_folder
from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic


def save(name: str, seed: int, ds: object) -> None:
    d = ds  # Dataset
    SPLITS.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SPLITS / f"{name}_s{seed}.npz", train=d.train.images, val=d.val.images, val_labels=d.val.labels,  # type: ignore[attr-defined]
                        test=d.test.images, test_labels=d.test.labels)  # type: ignore[attr-defined]


def main() -> None:
    for seed in SEEDS:
        for k in FMNIST_CLASSES:
            save(f"fmnist{k}", seed, load_fmnist(k, ISIZE, 3, seed=seed, max_train=MAX_TRAIN, max_test=MAX_TEST))
        for t in TEXTURES:
            with tempfile.TemporaryDirectory() as tmp:
                spec = SyntheticSpec(texture=t, n_train=MAX_TRAIN, n_val_good=64, n_val_defect=8, n_test_good=200, n_test_defect=50, seed=seed)
                write_synthetic(Path(tmp), spec)
                save(f"texture-{t}", seed, load_folder(Path(tmp), ISIZE, 3, seed=seed))
        print("splits written for seed", seed, flush=True)


if __name__ == "__main__":
    main()
