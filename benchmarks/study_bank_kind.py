"""The recall study's bank arm (issue 22, item 1): which discriminator features the feature bank should remember.

The default head's bank (skipgan_edge/model/bank.py) keeps 1,024 of D's penultimate-layer *patch* features and scores
an image by its least normal patch: built for local defects. A semantic anomaly (another garment) changes the whole
image; this arm measures a bank of *image* features instead, the mean of the 16 patch features (``gbank``: 1,024 of
the 1,500 training images' means, coreset-chosen, the image's distance to the nearest), alone and next to the patch
bank, with the same protocol as benchmarks/study_recall.py: the default model, selected among 6 epochs (the same
seeds, so the same weights as that study's ``default, selected (6 ep)``: its ``rec+bank`` row is reproduced here as
a check), thresholds on the normal validation scores, every term standardised with the normal validation statistics.

Rows go to ``benchmarks/peers/out/study_bank_kind.json`` (a rerun skips finished rows); ``benchmarks/study_recall_table.py``
reads them.

``--arm size`` instead measures the patch bank's size (1,024 against 4,096 features) and neighbours (the mean distance
to the 1 or 3 nearest), beside rec, into ``study_bank_size.json``.

Usage: OMP_NUM_THREADS=1 python benchmarks/study_bank_kind.py && OMP_NUM_THREADS=1 python benchmarks/study_bank_kind.py
       --arm size && python benchmarks/study_recall_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
sys.path.append(str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import OUT  # peers/common.py
from study_ensemble import head_row
from study_recall import BANK, EPOCHS, POOL, config, each_default_model
from torch import nn

from skipgan_edge.model.bank import as_patches, bank_constants, bank_distance, feature_patches, subsample
from skipgan_edge.model.scorer import to_model_input
from skipgan_edge.train.trainer import score_split

#: head: weights of (rec, patch bank, image bank); each term standardised
HEADS = {"rec+bank": (0.5, 0.5, 0.0), "rec+gbank": (0.5, 0.0, 0.5), "gbank only": (0.0, 0.0, 1.0),
         "rec+bank+gbank": (1 / 3, 1 / 3, 1 / 3)}
MODEL = "default, selected (6 ep), bank arm"


@torch.no_grad()
def patch_feats(net: nn.Module, images: np.ndarray) -> torch.Tensor:
    """(N, P, C) patch features of D's f(x) in eval mode."""
    net.eval()
    p = feature_patches(net)
    out = []
    for i in range(0, len(images), 256):
        f = net.terms(to_model_input(torch.from_numpy(np.ascontiguousarray(images[i : i + 256]))))[1].float()  # type: ignore[operator]
        out.append(as_patches(f, f.shape[1] // p, p))
    return torch.cat(out)


def evaluate(net: nn.Module, ds: Any, seed: int) -> dict[str, Any]:
    y = ds.test.labels
    tr, va, te = (patch_feats(net, x) for x in (ds.train.images, ds.val.images, ds.test.images))
    c = tr.shape[2]
    pbank = bank_constants(subsample(tr.reshape(-1, c), BANK, "coreset", seed))
    gbank = bank_constants(subsample(tr.mean(1), BANK, "coreset", seed))
    terms: dict[str, dict[str, np.ndarray]] = {}
    for k, x, f in (("val", ds.val.images, va), ("test", ds.test.images, te)):
        t = score_split(net, x, torch.device("cpu"), POOL)
        terms[k] = {"rec": t["rec"], "bank": bank_distance(f, *pbank).numpy(),
                    "gbank": bank_distance(f.mean(1, keepdim=True), *gbank).numpy()}

    def std(k: str, name: str) -> np.ndarray:
        v = terms["val"][name]
        return (terms[k][name] - v.mean()) / max(float(v.std()), 1e-12)

    out = {}
    for head, (wr, wb, wg) in HEADS.items():
        s = {k: wr * std(k, "rec") + wb * std(k, "bank") + wg * std(k, "gbank") for k in ("val", "test")}
        out[head] = head_row(s["val"], s["test"], y)
    return out


def knn_distance(patches: torch.Tensor, bank: torch.Tensor, k: int) -> np.ndarray:
    """(N, P, C) patches, a bank (M, C) → (N,): the least normal patch's mean distance to its k nearest bank features."""
    d = torch.cdist(patches.reshape(-1, patches.shape[2]), bank).reshape(patches.shape[0], patches.shape[1], -1)
    return d.topk(k, dim=2, largest=False).values.mean(2).amax(1).numpy()


def evaluate_size(net: nn.Module, ds: Any, seed: int) -> dict[str, Any]:
    """The patch bank's size (1,024 against 4,096 features) and its neighbours (1 against 3), beside rec."""
    y = ds.test.labels
    tr, va, te = (patch_feats(net, x) for x in (ds.train.images, ds.val.images, ds.test.images))
    c = tr.shape[2]
    banks = {m: subsample(tr.reshape(-1, c), m, "coreset", seed) for m in (BANK, 4 * BANK)}
    terms: dict[str, dict[str, np.ndarray]] = {}
    for k, x, f in (("val", ds.val.images, va), ("test", ds.test.images, te)):
        terms[k] = {"rec": score_split(net, x, torch.device("cpu"), POOL)["rec"],
                    "bank 1024": knn_distance(f, banks[BANK], 1), "bank 4096": knn_distance(f, banks[4 * BANK], 1),
                    "bank 1024 k=3": knn_distance(f, banks[BANK], 3)}

    def std(k: str, name: str) -> np.ndarray:
        v = terms["val"][name]
        return (terms[k][name] - v.mean()) / max(float(v.std()), 1e-12)

    out = {}
    for name in ("bank 1024", "bank 4096", "bank 1024 k=3"):
        head = "rec+bank" if name == "bank 1024" else f"rec+{name.replace(' ', ' (', 1)})"
        s = {k: 0.5 * std(k, "rec") + 0.5 * std(k, name) for k in ("val", "test")}
        out[head] = head_row(s["val"], s["test"], y)
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", choices=("kind", "size"), default="kind",
                    help="kind: image against patch features (study_bank_kind.json); size: 1,024 against 4,096 features "
                         "and 1 against 3 neighbours (study_bank_size.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = OUT / ("study_bank_kind.json" if args.arm == "kind" else "study_bank_size.json")
    kind = args.arm == "kind"

    def row(name: str, seed: int, ds: Any, card: Any, net: nn.Module, train_s: float) -> dict[str, Any]:
        return {"data": name, "seed": seed, "run": f"bank {args.arm}", "model": MODEL if kind else MODEL.replace("bank arm", "bank size arm"),
                "epoch": card.training.best_epoch, "heads": (evaluate if kind else evaluate_size)(net, ds, seed), "train_seconds": train_s}

    each_default_model(path, lambda seed: config(seed, EPOCHS, 0.0), row)


if __name__ == "__main__":
    main()
