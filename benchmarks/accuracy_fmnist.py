"""Fashion-MNIST leave-one-class-out accuracy, Skip-GANomaly vs. a plain autoencoder (same generator).

Protocol (the authors' CIFAR-10 protocol on Fashion-MNIST): one class is anomalous; train on
the other nine classes' training images; test on every test image plus the anomalous class's
training images. Model selection on a held-out 10 % of the normal training images (the lowest
validation generator loss), never on test data. Reported: test AUROC per class.

The autoencoder baseline is the same UNet generator trained on the L1 reconstruction loss alone
(w_adv = w_lat = 0) and scored by reconstruction error alone (λ = 1), so the difference is
exactly what the adversarial training and the latent term buy.

Budgets:
  --budget reduced  (default; under an hour on 2 CPU cores): 6,000 of the normal training images,
                    isize 32, ngf = ndf = 32, batch 64, 8 epochs, the full test set.
  --budget full     (for a GPU): all 54,000 normal training images, isize 32, ngf = ndf = 64,
                    batch 64, 15 epochs.

Usage: python benchmarks/accuracy_fmnist.py [--budget reduced|full] [--classes 0,1,...] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import command_line, machine, stamp, write_json

from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig
from skipgan_edge.data import fmnist
from skipgan_edge.data.datasets import load_fmnist
from skipgan_edge.evaluate import torch_score_fn
from skipgan_edge.metrics import auroc
from skipgan_edge.train.trainer import train

BUDGETS = {
    "reduced": {"max_train": 6000, "ngf": 32, "epochs": 8, "batch": 64},
    "full": {"max_train": None, "ngf": 64, "epochs": 15, "batch": 64},
}


def run_one(anomaly: int, variant: str, budget: dict, seed: int, threads: int) -> dict:
    ds = load_fmnist(anomaly, 32, 1, seed=seed, max_train=budget["max_train"])
    adv = variant == "skipganomaly"
    cfg = RunConfig(
        # the paper's formulation, as recorded, without the default's feature bank (benchmarks/peers and
        # benchmarks/study_recall.py compare the variants)
        model=ModelConfig(isize=32, channels=1, ngf=budget["ngf"], ndf=budget["ngf"], feature_layer="last"),
        train=TrainConfig(epochs=budget["epochs"], batch=budget["batch"], seed=seed, threads=threads,
                          w_adv=1.0 if adv else 0.0, w_lat=1.0 if adv else 0.0),
        score=ScoreConfig(lam=0.9 if adv else 1.0, mode="paper", pool=0, bank_size=0),
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        card = train(ds, cfg, Path(tmp) / "run", progress=False)
        _, score_fn = torch_score_fn(Path(tmp) / "run")
        assert ds.test is not None
        res = score_fn(ds.test.images)
    return {
        "class": anomaly, "name": fmnist.CLASSES[anomaly], "variant": variant, "auroc": auroc(ds.test.labels, res.score),
        "best_epoch": card.training["best_epoch"], "seconds": round(time.perf_counter() - t0, 1),
        "n_train": len(ds.train), "n_test": len(ds.test), "n_test_anomalous": int(ds.test.labels.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="reduced")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    budget = BUDGETS[args.budget]
    rows = []
    for k in [int(c) for c in args.classes.split(",")]:
        for variant in ("skipganomaly", "autoencoder"):
            r = run_one(k, variant, budget, args.seed, args.threads)
            rows.append(r)
            print(f"class {k} {r['name']:10s} {variant:13s} AUROC {r['auroc']:.4f}  ({r['seconds']:.0f} s)", flush=True)
    result = {"benchmark": "accuracy_fmnist", "budget": args.budget, "settings": budget, "seed": args.seed,
              "command": command_line(), "date": stamp(), "machine": machine(), "rows": rows}
    for v in ("skipganomaly", "autoencoder"):
        result[f"mean_auroc_{v}"] = float(np.mean([r["auroc"] for r in rows if r["variant"] == v]))
    write_json(f"accuracy_fmnist_{args.budget}.json", result)
    lines = [f"# Fashion-MNIST leave-one-class-out ({args.budget} budget)", "",
             f"Settings: {budget}, isize 32, grayscale, seed {args.seed}. Machine: {result['machine']['cpu']} "
             f"({result['machine']['cores']} cores). Date: {result['date']}.", "", f"Command: `{result['command']}`", "",
             "| class | Skip-GANomaly AUROC | autoencoder (same G, L1 only) AUROC |", "|---|---|---|"]
    by = {(r["class"], r["variant"]): r for r in rows}
    for k in sorted({r["class"] for r in rows}):
        lines.append(f"| {k} {fmnist.CLASSES[k]} | {by[(k, 'skipganomaly')]['auroc']:.3f} | {by[(k, 'autoencoder')]['auroc']:.3f} |")
    lines.append(f"| **mean** | **{result['mean_auroc_skipganomaly']:.3f}** | **{result['mean_auroc_autoencoder']:.3f}** |")
    (Path(__file__).resolve().parent / "results" / f"accuracy_fmnist_{args.budget}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
