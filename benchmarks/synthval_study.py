"""The synthetic-validation study (issue: alarms that catch anomalies), on the peers harness's splits.

For every split (Fashion-MNIST leave-one-class-out: semantic anomalies; brick and gravel
textures: local defects), seed and model variant (which UNet levels keep their skip, and our
GANomaly), train the final-epoch model as the peers harness does, then from the same weights:

* build synthetic defects from the *normal* validation images (``skipgan_edge.data.synthval``;
  labelled validation anomalies, where a split has them, are ignored: the study is about data
  that has none);
* for each score variant: AUROC on synthetic validation, AUROC and recall at 1 % FPR on test;
* for the default score: each threshold policy (max-normal, fpr:0.01, fpr:0.05, f1 on synthetic
  validation) set on validation and applied to test: F1, recall, the FPR achieved on test normals.

Rows go to ``benchmarks/peers/out/<--out>`` as they finish (a rerun skips finished rows); processes
started with different ``PEERS_SEEDS`` and ``--out`` run in parallel.
``benchmarks/synthval_table.py`` turns them into ``benchmarks/results/synthval_study.md``.

Usage: python benchmarks/peers/splits.py && python benchmarks/synthval_study.py [--threads 1]
       [--variants all,none,...] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import numpy as np
import torch
from common import BATCH, EPOCHS, ISIZE, OUT, SEEDS, split_names  # peers/common.py

from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig
from skipgan_edge.data.datasets import Dataset, Split
from skipgan_edge.data.synthval import make_defects
from skipgan_edge.errors import ConfigError
from skipgan_edge.metrics import auroc, recall_at_fpr
from skipgan_edge.model.networks import default_score
from skipgan_edge.model.scorer import combine
from skipgan_edge.thresholds import apply_policy
from skipgan_edge.train.trainer import Trainer, score_split

#: model variants: (ModelConfig overrides); skip levels at isize 32 are 1 (16×16) .. 4 (2×2)
VARIANTS: dict[str, dict[str, str]] = {
    "skip all (paper)": {"skip_levels": "all"},
    "skip none (autoencoder)": {"skip_levels": "none"},
    "skip 2,3,4": {"skip_levels": "2,3,4"},
    "skip 3,4": {"skip_levels": "3,4"},
    "skip 4": {"skip_levels": "4"},
    "skip 1": {"skip_levels": "1"},
    "ganomaly": {"arch": "ganomaly"},
}
POLICIES = ("max-normal", "fpr:0.01", "fpr:0.05", "f1")
POOL = 3


def load(name: str, seed: int) -> Dataset:
    z = np.load(Path(__file__).resolve().parent / "peers" / "splits" / f"{name}_s{seed}.npz")
    val_normal = z["val"][z["val_labels"] == 0]
    n = len(z["train"])
    return Dataset(name, Split(z["train"], np.zeros(n, np.int64), None, [str(i) for i in range(n)]),
                   Split(val_normal, np.zeros(len(val_normal), np.int64), None, [str(i) for i in range(len(val_normal))]),
                   Split(z["test"], z["test_labels"], None, [str(i) for i in range(len(z["test"]))]))


def scores(net: torch.nn.Module, ds: Dataset, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Per score variant: normal-val, synthetic-val and test scores."""
    dev = torch.device("cpu")
    assert ds.test is not None
    syn = make_defects(ds.val.images, seed).images
    parts = {}
    for pool in (0, POOL):
        parts[pool] = {k: score_split(net, x, dev, pool) for k, x in (("val", ds.val.images), ("syn", syn), ("test", ds.test.images))}
    out: dict[str, dict[str, np.ndarray]] = {}

    def stats(pool: int) -> dict[str, float]:
        v = parts[pool]["val"]
        return {"rec_mean": float(v["rec"].mean()), "rec_std": float(v["rec"].std()),
                "lat_mean": float(v["lat"].mean()), "lat_std": float(v["lat"].std())}

    def variant(pool: int, mode: str, lam: float) -> dict[str, np.ndarray]:
        st = stats(pool)
        return {k: np.asarray(combine(parts[pool][k]["rec"], parts[pool][k]["lat"], mode, lam, st)) for k in ("val", "syn", "test")}

    out["default (standardized λ0.5, max-pooled 3x3)"] = variant(POOL, "standardized", 0.5)
    out["paper (λ0.9 raw)"] = variant(0, "paper", 0.9)
    out["rec only"] = variant(0, "paper", 1.0)
    out["lat only"] = variant(0, "paper", 0.0)
    out["max-pooled map 3x3"] = variant(POOL, "paper", 1.0)
    out["standardized λ0.5"] = variant(0, "standardized", 0.5)
    # λ chosen on synthetic validation (the item-4 candidate)
    grid = [i / 10 for i in range(11)]
    y_syn = np.r_[np.zeros(len(ds.val)), np.ones(len(syn))]

    def syn_auc(v: dict[str, np.ndarray]) -> float:
        return auroc(y_syn, np.r_[v["val"], v["syn"]])

    best = max(grid, key=lambda g: syn_auc(variant(POOL, "standardized", g)))
    out[f"standardized λ on synthetic ({best:.1f}), max-pooled"] = variant(POOL, "standardized", best)
    return out


def evaluate(sc: dict[str, dict[str, np.ndarray]], ds: Dataset) -> dict[str, object]:
    assert ds.test is not None
    y = ds.test.labels
    rows: dict[str, object] = {}
    for name, v in sc.items():
        y_syn = np.r_[np.zeros(len(v["val"])), np.ones(len(v["syn"]))]
        rows[name] = {"syn_auroc": auroc(y_syn, np.r_[v["val"], v["syn"]]), "test_auroc": auroc(y, v["test"]),
                      "test_recall_at_1pct_fpr": recall_at_fpr(y, v["test"], 0.01)}
    default = sc["default (standardized λ0.5, max-pooled 3x3)"]
    pol = {}
    for p in POLICIES:
        try:
            t = apply_policy(p, default["val"], default["syn"], None)
            fallback = False
        except ConfigError:  # too few normal validation images to promise the rate: the trainer falls back the same way
            t, fallback = apply_policy("max-normal", default["val"], default["syn"], None), True
        flagged = default["test"] > t.raw
        tp, fp = int((flagged & (y == 1)).sum()), int((flagged & (y == 0)).sum())
        fn = int((~flagged & (y == 1)).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        pol[p] = {"test_f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "test_recall": rec,
                  "test_fpr": fp / max(1, int((y == 0).sum())), "promised_fpr": t.expected_fpr, "val_recall": t.expected_recall,
                  "fell_back_to_max_normal": fallback}
    return {"scores": rows, "policies": pol}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=";".join(VARIANTS), help="model variants, separated by semicolons")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--out", default="synthval.json", help="file name under benchmarks/peers/out (one per parallel process)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / args.out
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["data"], r["seed"], r["model"]) for r in rows}
    for seed in SEEDS:
        for variant in args.variants.split(";"):
            for name in split_names():
                if (name, seed, variant) in done:
                    continue
                ds = load(name, seed)
                t0 = time.perf_counter()
                # no feature bank: this script scores the final-epoch weights itself; the bank would only add its build per epoch
                mcfg = ModelConfig(isize=ISIZE, channels=3, ngf=32, ndf=32, **VARIANTS[variant])  # type: ignore[arg-type]
                cfg = RunConfig(model=mcfg, train=TrainConfig(epochs=args.epochs, batch=BATCH, seed=seed, threads=args.threads),
                                score=ScoreConfig(bank_size=0)).validate(default_score(mcfg.arch))
                with tempfile.TemporaryDirectory() as tmp:
                    tr = Trainer(ds, cfg, Path(tmp) / "r", progress=False)
                    tr.fit()
                    res = evaluate(scores(tr.net.eval(), ds, seed), ds)
                row = {"data": name, "seed": seed, "model": variant, **res, "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps({"data": name, "seed": seed, "model": variant, "seconds": row["seconds"],
                                  "default": res["scores"]["default (standardized λ0.5, max-pooled 3x3)"]}), flush=True)  # type: ignore[index]
                path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
