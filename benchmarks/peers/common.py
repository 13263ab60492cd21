"""Split and budget definitions shared by both sides of the peers harness (no project imports)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = HERE / "splits"
OUT = HERE / "out"
RESULTS = HERE.parent / "results"

FMNIST_CLASSES = (0, 1, 5, 7, 9)  # t-shirt, trouser, sandal, sneaker, ankle-boot
TEXTURES = ("brick", "gravel")
SEEDS = tuple(int(x) for x in os.environ.get("PEERS_SEEDS", "0,1,2").split(","))
ISIZE = 32
BATCH = 64
EPOCHS = int(os.environ.get("PEERS_EPOCHS", "6"))
MAX_TRAIN = 1500  # normal training images per split (CPU budget)
MAX_TEST = 1500  # test images per Fashion-MNIST split (anomaly share of the full protocol kept)


def split_names() -> list[str]:
    names = [f"fmnist{k}" for k in FMNIST_CLASSES] + [f"texture-{t}" for t in TEXTURES]
    only = os.environ.get("PEERS_ONLY")  # e.g. PEERS_ONLY=fmnist5 for a quick check
    return [n for n in names if not only or n in only.split(",")]
