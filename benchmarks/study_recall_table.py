"""Table of the recall study (benchmarks/study_recall.py): benchmarks/results/study_recall.md and .json.

Mean ± std over seeds: for a group (Fashion-MNIST, textures), each seed's mean over the group's splits, then the mean
and std of those over seeds (the seed spread); per split, mean ± std over its seeds. A configuration "beats the
seed spread" when its mean minus its std is above the baseline's mean plus its std (as in synthval_study.md); a split
"worse beyond its spread" is the reverse. The baseline is the default model selected among 6 epochs, scored with the
two-term head (``rec+lat``, ``--bank-size 0``); rec+bank (D's bank; the default head banks the generator encoder's
features: study_bank_source.py) is one of the configurations measured against it. Rows store the two-term head under
the key ``default``; the tables call it ``rec+lat``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from common import OUT, RESULTS  # peers/common.py

BASE = ("default, selected (6 ep)", "default")
PREV = ("default, final epoch 6", "default")
GROUPS = {"semantic (Fashion-MNIST)": "fmnist", "local defects (textures)": "texture-"}
METRICS = {"test_auroc": "AUROC", "recall_at_0.01": "recall @1 % FPR", "recall_at_0.05": "recall @5 % FPR", "test_fpr_at_0.05": "test FPR @5 %"}
COMMAND = ("python benchmarks/peers/splits.py && OMP_NUM_THREADS=1 python benchmarks/study_recall.py && "
           "OMP_NUM_THREADS=1 python benchmarks/study_recall.py --cost && OMP_NUM_THREADS=1 python benchmarks/study_ensemble.py && "
           "OMP_NUM_THREADS=1 python benchmarks/study_ensemble.py --cost && OMP_NUM_THREADS=1 python benchmarks/study_bank_kind.py && "
           "OMP_NUM_THREADS=1 python benchmarks/study_bank_kind.py --arm size && python benchmarks/study_recall_table.py")


def show(head: str) -> str:
    """The head's name in the tables: rows store the two-term head as ``default``."""
    return "rec+lat" if head == "default" else head


def ms(v: list[float]) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "n/a"


def collect(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[int, dict[str, float]]]]:
    """(model, head) → split → seed → metrics."""
    out: dict[tuple[str, str], dict[str, dict[int, dict[str, float]]]] = {}
    for r in rows:
        for head, m in r["heads"].items():
            out.setdefault((r["model"], head), {}).setdefault(r["data"], {})[r["seed"]] = m
    return out


def group_per_seed(cfg: dict[str, dict[int, dict[str, float]]], prefix: str, metric: str, seeds: list[int]) -> list[float]:
    splits = sorted(s for s in cfg if s.startswith(prefix))
    out = []
    for seed in seeds:
        vals = [cfg[s][seed][metric] for s in splits if seed in cfg[s]]
        if len(vals) == len(splits) and vals:
            out.append(float(np.mean(vals)))
    return out


def main() -> None:
    rows = json.loads((OUT / "study_recall.json").read_text())
    ens_path, ens_cost_path = OUT / "study_ensemble.json", OUT / "study_ensemble_cost.json"
    rows += json.loads(ens_path.read_text()) if ens_path.exists() else []  # benchmarks/study_ensemble.py
    kind_path = OUT / "study_bank_kind.json"
    rows += json.loads(kind_path.read_text()) if kind_path.exists() else []  # benchmarks/study_bank_kind.py
    size_path = OUT / "study_bank_size.json"
    rows += json.loads(size_path.read_text()) if size_path.exists() else []  # benchmarks/study_bank_kind.py --arm size
    cost_path = OUT / "study_recall_cost.json"
    cost = json.loads(cost_path.read_text()) if cost_path.exists() else {}
    ens_cost = json.loads(ens_cost_path.read_text()) if ens_cost_path.exists() else {}
    data = collect(rows)
    splits = sorted({r["data"] for r in rows}, key=lambda s: (not s.startswith("fmnist"), s))
    seeds = sorted({r["seed"] for r in rows})
    complete = {(r["data"], r["seed"], r["run"]) for r in rows}
    missing = [(d, s, run) for run in sorted({r["run"] for r in rows}) for d in splits for s in seeds if (d, s, run) not in complete]
    base = data[BASE]
    summary: dict[str, Any] = {}
    lines = ["# Recall at a false-alarm rate: EMA, feature-bank heads, longer training, ensembles", ""]
    n_runs = {run: len({(r["data"], r["seed"]) for r in rows if r["run"] == run}) for run in sorted({r["run"] for r in rows})}
    lines += [f"{len(splits)} splits × {len(seeds)} seeds ({', '.join(map(str, seeds))}); per split and seed (split-seed pairs per "
              f"arm: {n_runs}): a 12-epoch run (plain; its epoch-6 snapshot is the usual 6-epoch run), a 6-epoch run with EMA "
              "0.999 (benchmarks/study_recall.py), and two ensembles at the FLOPs of one width-32 pair: 4 pairs of width 16 "
              "and 2 of width 23, members trained with seeds 1000·k + s, 6 epochs each (benchmarks/study_ensemble.py); the "
              "default 6-epoch run again for the bank arm (benchmarks/study_bank_kind.py: the same weights, its rec+bank "
              "row reproduces the first's). "
              "isize 32, ngf = ndf 32 unless named, 1,500 normal training images (the peers harness's splits), batch 64, "
              "one CPU thread. "
              + (f"**Missing (split, seed): {missing}.**" if missing else "Every split has every seed."), "",
              f"Command: `{COMMAND}`", "",
              "Heads (the same weights, scored several ways): **rec+lat** = standardised rec (max of the 3×3 box-smoothed map) + "
              "lat, λ 0.5 (the two-term score, `--bank-size 0`: the baseline); **+bank** = 0.5·(rec+lat) + 0.5·bank "
              "(bank_weight 0.5); **rec+bank** = 0.5·rec + 0.5·bank (D's bank; the default head banks the generator "
              "encoder's features: study_bank_source.md); "
              "**bank only**; bank = distance of the least normal of D's 16 penultimate-layer patches to the nearest of 1,024 "
              "coreset-selected training patch features (random 1,024 as a control), every term standardised with the normal "
              "validation statistics. Recall @q: the threshold set on the *normal validation* scores at false-alarm rate q "
              "(fpr:q; 64 normal validation images cannot promise 1 %: max-normal, as `train` does), recall on test. "
              "Mean ± std over the seeds of each seed's group mean (the seed spread). An ensemble's score is the mean of its "
              "members' standardised scores; `single ngf N` is its member 0 alone. **gbank**: a bank of *image* features, "
              "the mean of an image's 16 patch features, 1,024 of the training images' chosen by coreset, the distance "
              "to the nearest; rec+gbank and rec+bank+gbank weigh their standardised terms equally. **rec+bank (4096)**: a "
              "4,096-feature bank; **rec+bank (1024 k=3)**: the mean distance to the 3 nearest (the bank size arm, "
              "`--arm size`, again the same weights).", ""]
    lines += ["## 1. Every configuration, by group", ""]
    for group, prefix in GROUPS.items():
        lines += [f"**{group}**", "", "| model | head | " + " | ".join(METRICS.values()) + " | AUROC vs the baseline (rec+lat) |",
                  "|---|---|" + "---|" * (len(METRICS) + 1)]
        b = group_per_seed(base, prefix, "test_auroc", seeds)
        for (model, head), cfg in data.items():
            vals = {m: group_per_seed(cfg, prefix, m, seeds) for m in METRICS}
            a = vals["test_auroc"]
            verdict = ""
            if a and b and (model, head) != BASE:
                d = np.mean(a) - np.mean(b)
                beyond = (np.mean(a) - np.std(a) > np.mean(b) + np.std(b)) or (np.mean(a) + np.std(a) < np.mean(b) - np.std(b))
                verdict = f"{d:+.3f}" + (" (beyond the spread)" if beyond else " (within)")
            lines.append(f"| {model} | {show(head)} | " + " | ".join(ms(v) for v in vals.values()) + f" | {verdict} |")
            summary.setdefault(f"{model} / {head}", {})[group] = {m: {"mean": float(np.mean(v)) if v else None,
                                                                      "std": float(np.std(v)) if v else None, "per_seed": v}
                                                                  for m, v in vals.items()}
        lines.append("")
    per_split: dict[str, Any] = {}
    for metric in ("test_auroc", "recall_at_0.05"):
        lines += [f"## {'2' if metric == 'test_auroc' else '3'}. {METRICS[metric]} per split (mean ± std over seeds)", "",
                  "| model | head | " + " | ".join(splits) + " | splits worse beyond their spread |",
                  "|---|---|" + "---|" * (len(splits) + 1)]
        for (model, head), cfg in data.items():
            cells, worse = [], []
            for s in splits:
                v = [cfg[s][k][metric] for k in sorted(cfg.get(s, {}))]
                bv = [base[s][k][metric] for k in sorted(base.get(s, {}))]
                cells.append(ms(v))
                if v and bv and np.mean(v) + np.std(v) < np.mean(bv) - np.std(bv):
                    worse.append(s)
                per_split.setdefault(f"{model} / {head}", {}).setdefault(s, {})[metric] = v
            lines.append(f"| {model} | {show(head)} | " + " | ".join(cells) + f" | {', '.join(worse) or 'none'} |")
        lines.append("")
    lines += ["## 4. Targets, per configuration", "",
              "Fashion-MNIST mean AUROC ≥ 0.80 and recall @5 % ≥ 0.45; textures AUROC ≥ 0.99; no split worse beyond its "
              "spread (AUROC or recall @5 %) than the baseline.", "",
              "| model | head | FMNIST AUROC ≥ 0.80 | FMNIST recall@5% ≥ 0.45 | textures ≥ 0.99 | no split worse | all |",
              "|---|---|---|---|---|---|---|"]
    targets: dict[str, Any] = {}
    for model, head in data:
        f = summary[f"{model} / {head}"]["semantic (Fashion-MNIST)"]
        t = summary[f"{model} / {head}"]["local defects (textures)"]
        worse = []
        for s in splits:
            for metric in ("test_auroc", "recall_at_0.05"):
                v, bv = per_split[f"{model} / {head}"][s][metric], per_split[f"{BASE[0]} / {BASE[1]}"][s][metric]
                if v and bv and np.mean(v) + np.std(v) < np.mean(bv) - np.std(bv):
                    worse.append(f"{s} {metric}")
        checks = [f["test_auroc"]["mean"] is not None and f["test_auroc"]["mean"] >= 0.80,
                  f["recall_at_0.05"]["mean"] is not None and f["recall_at_0.05"]["mean"] >= 0.45,
                  t["test_auroc"]["mean"] is not None and t["test_auroc"]["mean"] >= 0.99, not worse]
        targets[f"{model} / {head}"] = {"checks": checks, "worse": worse}
        lines.append(f"| {model} | {show(head)} | " + " | ".join("yes" if c else "no" for c in checks) + f" | {'yes' if all(checks) else 'no'} |")
    passing = [k for k, v in targets.items() if all(v["checks"])]
    lines += ["", f"Configurations meeting every target: {', '.join(passing) if passing else 'none'}. {len(data)} configurations "
              "were compared on the test splits, so the best of them is an optimistic estimate of one chosen in advance.", ""]
    if cost:
        lines += ["## 5. Edge cost of each head (real exports; one CPU thread)", "",
                  "The networks are the same for every head (EMA and longer training change weights, not the graph: zero cost). "
                  "Median latency of `scorer.onnx` at batch 1 (200 runs) and 64 (20 runs), ONNX Runtime and OpenVINO "
                  "(FP32 inference hint), one thread; FLOPs per image: the whole graph counted by skipgan_edge/bench/flops.py for "
                  "records marked graph_has_head; for the others, the graph up to the split of the 2B feature pass plus the bank's "
                  "FLOPs counted from its shape (2·P·C·M + 4·P·M), the head's few elementwise operations left out.", "",
                  "| head | FLOPs / image | of which the bank (MatMul + reductions) | ONNX file | ORT batch 1 | ORT batch 64 | OpenVINO batch 1 | "
                  "OpenVINO batch 64 | ORT batch 1 vs rec+lat | build --dry-run (8.6, 10.3, 11) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        ref = cost.get("default", {}).get("ort", {}).get("batch1_ms")
        for head, c in cost.items():
            ov = c.get("openvino", {})
            trt = c.get("trt_dry_run") or {}
            total = c["flops"]["total"] + (0 if c.get("graph_has_head") else c["bank_flops"])
            lines.append(f"| {show(head)} | {total / 1e6:.1f} M | {c['bank_flops'] / 1e6:.1f} M | "
                         f"{c['onnx_bytes'] / 1024:.0f} KiB | {c['ort']['batch1_ms']:.2f} ms | {c['ort']['batch64_ms']:.1f} ms | "
                         + (f"{ov['batch1_ms']:.2f} ms | {ov['batch64_ms']:.1f} ms | " if "batch1_ms" in ov else "n/a | n/a | ")
                         + (f"{c['ort']['batch1_ms'] / ref:.2f}× | " if ref else "| ")
                         + ", ".join("ok" if v.get("ok") else "FAIL" for v in trt.values()) + " |")
        lines.append("")
    if ens_cost:
        ref1 = ens_cost.get("single ngf 32", {}).get("ort", {}).get("batch1_ms")
        lines += ["## 6. Edge cost of K small generators in one graph against one wider generator", "",
                  "One exported graph per configuration (the K scorers side by side and the mean of their scores; BatchNorm "
                  "folded, opset 17, the project's exporter settings), FLOPs per image counted over the whole graph by "
                  "skipgan_edge/bench/flops.py, median latency at batch 1 (200 runs) and 64 (20 runs) on one thread, and the "
                  "largest score difference between ONNX Runtime and torch at batch 64.", "",
                  "| graph | FLOPs / image | ONNX file | ORT batch 1 | ORT batch 64 | OpenVINO batch 1 | OpenVINO batch 64 | "
                  "ORT batch 1 vs one width-32 pair | ORT vs torch (max abs) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, c in ens_cost.items():
            ov = c.get("openvino", {})
            lines.append(f"| {name} | {c['flops']['total'] / 1e6:.1f} M | {c['onnx_bytes'] / 1024:.0f} KiB | "
                         f"{c['ort']['batch1_ms']:.2f} ms | {c['ort']['batch64_ms']:.1f} ms | "
                         + (f"{ov['batch1_ms']:.2f} ms | {ov['batch64_ms']:.1f} ms | " if "batch1_ms" in ov else "n/a | n/a | ")
                         + (f"{c['ort']['batch1_ms'] / ref1:.2f}× | " if ref1 else "| ") + f"{c['parity_max_abs']:.1e} |")
        lines.append("")
        lines += ["**K small generators against one wider one, head for head** (Fashion-MNIST, mean ± std over seeds; the "
                  "wider one is `default, selected (6 ep)`):", ""]
        wide = "default, selected (6 ep)"
        for model in sorted({m for m, _ in data if m.startswith("ensemble")}):
            for head in ("default", "rec+bank"):
                if (model, head) not in data or (wide, head) not in data:
                    continue
                cells = []
                for metric in ("test_auroc", "recall_at_0.05"):
                    a = group_per_seed(data[(model, head)], "fmnist", metric, seeds)
                    b = group_per_seed(data[(wide, head)], "fmnist", metric, seeds)
                    worse = np.mean(a) + np.std(a) < np.mean(b) - np.std(b)
                    better = np.mean(a) - np.std(a) > np.mean(b) + np.std(b)
                    cells.append(f"{METRICS[metric]} {ms(a)} against {ms(b)} "
                                 f"({'worse beyond' if worse else 'better beyond' if better else 'within'} the spread)")
                lines.append(f"- {model}, {show(head)} head: " + "; ".join(cells) + ".")
        lines.append("")
    (RESULTS / "study_recall.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "study_recall.json").write_text(json.dumps({
        "benchmark": "study_recall", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": COMMAND,
        "splits": splits, "seeds": seeds, "missing": missing, "baseline": " / ".join(BASE), "previous_protocol": " / ".join(PREV),
        "groups": summary, "per_split": per_split, "targets": targets, "cost": cost, "ensemble_cost": ens_cost, "rows": rows}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
