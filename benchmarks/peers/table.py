"""Merge both sides of the peers harness into one table (benchmarks/results/peers.{md,json})."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import BATCH, EPOCHS, ISIZE, MAX_TEST, MAX_TRAIN, OUT, RESULTS, SEEDS, split_names


def main() -> None:
    rows = []
    for f in sorted(OUT.glob("ours*.json")) + sorted(OUT.glob("anomalib*.json")):  # several processes may share the seeds
        rows += json.loads(f.read_text())
    seen: set[tuple[str, int, str]] = set()
    unique = []
    for r in rows:
        key = (r["data"], r["seed"], r["model"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    rows = unique
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        for score, a in r["auroc"].items():
            label = r["model"] if score == "anomalib" else f"{r['model']} · {score}"
            cells.setdefault((label, r["data"]), {}).setdefault("v", []).append(a)
    datasets = [d for d in split_names() if any(k[1] == d for k in cells)]
    labels = sorted({k[0] for k in cells}, key=lambda x: (not x.startswith("anomalib"), x))
    summary = []
    for lab in labels:
        per = {d: cells[(lab, d)]["v"] for d in datasets if (lab, d) in cells}
        means = [float(np.mean(v)) for v in per.values()]
        summary.append({"variant": lab, "per_data": {d: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for d, v in per.items()},
                        "mean_auroc": float(np.mean(means)) if means else float("nan"), "complete": len(per) == len(datasets)})
    summary.sort(key=lambda s: -s["mean_auroc"])
    res = {"benchmark": "peers", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "datasets": datasets,
           "settings": {"isize": ISIZE, "batch": BATCH, "epochs": EPOCHS, "max_train": MAX_TRAIN, "max_test_fmnist": MAX_TEST, "seeds": list(SEEDS)},
           "variants": summary}
    (RESULTS / "peers.json").write_text(json.dumps(res, indent=1) + "\n")
    head = "| variant (model · score) | mean | " + " | ".join(datasets) + " |"
    lines = ["# Peers and score variants: test AUROC, mean ± std over seeds", "",
             f"Settings: {res['settings']}; final-epoch models on both sides, no selection on test data. "
             "Commands: `make bench-peers` (benchmarks/peers/README.md).", "", head, "|---" * (len(datasets) + 2) + "|"]
    for s in summary:
        cellstr = [f"{s['per_data'][d]['mean']:.3f} ± {s['per_data'][d]['std']:.3f}" if d in s["per_data"] else "-" for d in datasets]
        lines.append(f"| {s['variant']} | **{s['mean_auroc']:.3f}** | " + " | ".join(cellstr) + " |")
    (RESULTS / "peers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
