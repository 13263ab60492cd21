"""The recall study's bank source arm (issue 22): a feature bank of the generator encoder's features against D's.

The head of benchmarks/results/study_recall.md banks D's penultimate-layer patch features. D is trained to tell real
from rebuilt images, not to describe them; the generator's encoder is trained to describe an image well enough to
rebuild it. This arm banks the encoder's 4×4 map (the output of its down-convolution that takes the 8×8 map:
``UnetGenerator.tap``, 4·ngf = 128 channels at isize 32, 16 patches per image) with the product's own code
(``model/bank.py``: ``patch_features(..., "encoder")``, coreset ``subsample``, ``trainer.score_split`` with
``bank_source="encoder"``), at 1,024, 4,096 and 8,192 features, beside rec at several weights; the discriminator's
bank (1,024: the previous default; 4,096) and the two-term score (rec+lat, the baseline) are scored on the same
weights. Protocol as benchmarks/study_recall.py: the peers harness's splits and budget (1,500 normal training images,
6 epochs, batch 64, isize 32, ngf = ndf 32, one CPU thread), the model selected among its 6 epochs (the same seeds, so
the same weights as that study's ``default, selected (6 ep)``: its rec+lat and rec+bank rows are reproduced here),
thresholds on the normal validation scores, every term standardised with the normal validation statistics.

How the default was chosen: the encoder bank, its size and rec's weight on seed 0's splits (test data: rec's weight
among 0, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5), then confirmed on seeds 1 and 2 (the tables give all three seeds and seeds
1-2 alone). The default, 0.25·rec + 0.75·bank of 4,096 encoder features, is the cheapest head here with Fashion-MNIST
AUROC at or above 0.80 and no split worse than rec+lat beyond its seed spread, in AUROC or in recall at 5 % false
alarms (8,192 features at rec 0.3 score 0.805 but lose recall on the gravel texture, at 1.38× latency against 1.20×).

Rows go to ``benchmarks/peers/out/study_bank_source_s<SEEDS>.json`` (a rerun skips finished rows; two processes
with disjoint PEERS_ONLY split lists may run at once, one per core: the file name carries the list). ``--cost``
measures each head's edge cost on real exports; ``--table`` writes ``benchmarks/results/study_bank_source.md`` and
``.json``.

Usage: python benchmarks/peers/splits.py && OMP_NUM_THREADS=1 python benchmarks/study_bank_source.py &&
       OMP_NUM_THREADS=1 python benchmarks/study_bank_source.py --cost && python benchmarks/study_bank_source.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
sys.path.append(str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import OUT, RESULTS, SEEDS, split_names  # peers/common.py
from study_ensemble import head_row
from study_recall import EPOCHS, POOL, cost_row, each_default_model
from synthval_study import load

from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig
from skipgan_edge.model.bank import patch_features, subsample
from skipgan_edge.model.networks import default_score
from skipgan_edge.train.trainer import Trainer, score_split

MODEL = "default, selected (6 ep)"
#: head → {term: weight}; each term standardised with the normal validation statistics. ``default`` is rec+lat.
HEADS: dict[str, dict[str, float]] = {
    "rec+lat": {"rec": 0.5, "lat": 0.5},
    "rec+D bank 1024 (previous default)": {"rec": 0.5, "D1024": 0.5},
    "rec+D bank 4096": {"rec": 0.5, "D4096": 0.5},
    "0.5 rec + 0.5 E bank 1024": {"rec": 0.5, "E1024": 0.5},
    "0.5 rec + 0.5 E bank 4096": {"rec": 0.5, "E4096": 0.5},
    "0.25 rec + 0.75 E bank 4096 (default)": {"rec": 0.25, "E4096": 0.75},
    "0.2 rec + 0.8 E bank 4096": {"rec": 0.2, "E4096": 0.8},
    "0.5 rec + 0.5 E bank 8192": {"rec": 0.5, "E8192": 0.5},
    "0.3 rec + 0.7 E bank 8192": {"rec": 0.3, "E8192": 0.7},
    "0.2 rec + 0.8 E bank 8192": {"rec": 0.2, "E8192": 0.8},
    "E bank 8192 only": {"E8192": 1.0},
}
DEFAULT = "0.25 rec + 0.75 E bank 4096 (default)"
BASE = "rec+lat"
BANKS = {"D1024": ("discriminator", 1024), "D4096": ("discriminator", 4096), "E1024": ("encoder", 1024),
         "E4096": ("encoder", 4096), "E8192": ("encoder", 8192)}
GROUPS = {"semantic (Fashion-MNIST)": "fmnist", "local defects (textures)": "texture-"}
METRICS = {"test_auroc": "AUROC", "recall_at_0.01": "recall @1 % FPR", "recall_at_0.05": "recall @5 % FPR", "test_fpr_at_0.05": "test FPR @5 %"}
COMMAND = ("python benchmarks/peers/splits.py && OMP_NUM_THREADS=1 python benchmarks/study_bank_source.py && "
           "OMP_NUM_THREADS=1 python benchmarks/study_bank_source.py --cost && python benchmarks/study_bank_source.py --table")


def config(seed: int, epochs: int = EPOCHS, bank: int = 0, source: str | None = None, weight: float = 0.75) -> RunConfig:
    return RunConfig(model=ModelConfig(isize=32, channels=3, ngf=32, ndf=32),
                     train=TrainConfig(epochs=epochs, batch=64, seed=seed, threads=1),
                     score=ScoreConfig(bank_size=bank, bank_source=source, bank_weight=weight)).validate(default_score("skipganomaly"))


def evaluate(net: torch.nn.Module, ds: Any, seed: int) -> dict[str, Any]:
    """Every head of :data:`HEADS` on one trained model, the banks built and scored by the product's code."""
    cpu = torch.device("cpu")
    feats = {src: patch_features(net, ds.train.images, cpu, src) for src in ("discriminator", "encoder")}
    terms: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    for k, x in (("val", ds.val.images), ("test", ds.test.images)):
        t = score_split(net, x, cpu, POOL)
        terms[k].update(rec=t["rec"], lat=t["lat"])
    for name, (src, size) in BANKS.items():
        bank = subsample(feats[src], size, "coreset", seed)
        for k, x in (("val", ds.val.images), ("test", ds.test.images)):
            terms[k][name] = score_split(net, x, cpu, POOL, bank=bank, bank_source=src)["bank"]

    def std(k: str, name: str) -> np.ndarray:
        v = terms["val"][name]
        return (terms[k][name] - v.mean()) / max(float(v.std()), 1e-12)

    out = {}
    for head, w in HEADS.items():
        s = {k: sum(wt * std(k, t) for t, wt in w.items()) for k in ("val", "test")}
        out[head] = head_row(s["val"], s["test"], ds.test.labels)
    return out


def run() -> None:
    run_rows("study_bank_source", config, evaluate, (BASE, DEFAULT, "rec+D bank 1024 (previous default)"))


def run_rows(study: str, cfg: Any, evaluate_fn: Any, show: tuple[str, ...]) -> None:
    """Train ``cfg(seed)`` on every split and seed not yet in ``benchmarks/peers/out/<study>_s<SEEDS>[_<PEERS_ONLY>].json``
    and add its row: ``evaluate_fn(net, ds, seed)``'s heads (two processes with disjoint PEERS_ONLY lists may run)."""
    only = os.environ.get("PEERS_ONLY")  # two processes, one per core, take disjoint splits
    path = OUT / f"{study}_s{'-'.join(map(str, SEEDS))}{'_' + only.replace(',', '+') if only else ''}.json"

    def row(name: str, seed: int, ds: Any, card: Any, net: torch.nn.Module, train_s: float) -> dict[str, Any]:
        t1 = time.perf_counter()
        return {"data": name, "seed": seed, "model": MODEL, "epoch": card.training.best_epoch, "heads": evaluate_fn(net, ds, seed),
                "train_seconds": train_s, "eval_seconds": round(time.perf_counter() - t1, 1)}

    each_default_model(path, cfg, row, show=show)


def cost() -> None:
    cost_rows("study_bank_source", config, {"rec+lat": (0, None, 0.5), "rec+D bank 1024 (previous default)": (1024, "discriminator", 0.5),
                                            DEFAULT: (4096, "encoder", 0.75), "0.3 rec + 0.7 E bank 8192": (8192, "encoder", 0.7)})


def cost_rows(study: str, cfg: Any, variants: dict[str, tuple[Any, ...]]) -> None:
    """Edge cost per head (``variants``: head → the arguments after seed and epochs of ``cfg``) on real exports of a
    model trained by ``train`` (fmnist5, seed 0, 1 epoch: the cost depends on shapes only), one thread: FLOPs of the
    whole graph, ONNX Runtime and OpenVINO latency at batch 1 and 64 (medians), the ONNX file's size, export's parity
    and the static TensorRT check, to ``benchmarks/peers/out/<study>_cost.json``."""
    from skipgan_edge.export.onnx import export_onnx

    ds = load("fmnist5", 0)
    x1 = ds.test.images[:1]
    x64 = np.ascontiguousarray(np.resize(ds.val.images, (64, *ds.val.images.shape[1:])))
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for head, args in variants.items():
            folder = Path(tmp) / f"m{len(res)}"
            Trainer(ds, cfg(0, 1, *args), folder, progress=False).fit()
            onnx_path = folder / "scorer.onnx"
            parity = export_onnx(folder, onnx_path, ds.val.images[:64])["parity"]
            row = cost_row(folder, onnx_path, parity, x1, x64)
            res[head] = row
            print(json.dumps({head: {k: v for k, v in row.items() if k != "trt_dry_run"}}, default=str), flush=True)
    (OUT / f"{study}_cost.json").write_text(json.dumps(res, indent=1, default=str))


def _ms(v: list[float]) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "n/a"


def table() -> None:
    write_table("study_bank_source", "Recall study, bank source: the generator encoder's features against the discriminator's",
                _intro, HEADS, DEFAULT, BASE, COMMAND)


def _intro(splits: list[str], seeds: list[int], missing: list[str]) -> str:
    return (f"{len(splits)} splits × {len(seeds)} seeds ({', '.join(map(str, seeds))}); missing: {', '.join(missing) or 'none'}. "
            "Protocol, heads and how the default was chosen: the docstring of benchmarks/study_bank_source.py. "
            "Every head scores the same weights: the default model (isize 32, ngf = ndf 32, 1,500 normal training images, "
            "batch 64, selected among 6 epochs). **E bank M**: M coreset-selected patch features of the generator encoder's "
            "4×4 map; **D bank M**: of D's penultimate 4×4 map (the previous default: 1,024, rec 0.5); **w rec + (1 − w) E bank**: "
            "the two terms standardised with the normal validation statistics, weighted. Recall @q: threshold at false-alarm "
            "rate q on the 64 normal validation images' scores, recall on test. Mean ± std over the seeds of each seed's group "
            "mean (the seed spread); \"beyond the spread\" as in study_recall.md, against rec+lat.")


def write_table(study: str, title: str, intro: Any, heads: dict[str, dict[str, float]], default: str, base_head: str, command: str,
                paired: str | None = None) -> None:
    """``benchmarks/results/<study>.md`` and ``.json`` from the rows in ``benchmarks/peers/out/<study>_s*.json`` and the
    cost file ``<study>_cost.json``: the heads by group, per split, the default against issue 22's targets, the cost.
    ``intro(splits, seeds, missing)`` gives the paragraph under the title; ``paired``: a head whose recall at 5 % each
    head's is compared with, seed by seed (a column)."""
    rows = [r for p in sorted(OUT.glob(f"{study}_s*.json")) for r in json.loads(p.read_text())]
    seeds = sorted({r["seed"] for r in rows})
    splits = [n for n in split_names() if any(r["data"] == n for r in rows)]
    by = {(r["data"], r["seed"]): r["heads"] for r in rows}
    missing = [f"{n} s{s}" for n in split_names() for s in SEEDS if (n, s) not in by]

    def group(prefix: str, head: str, metric: str, only: list[int] | None = None) -> list[float]:
        """Per seed: the mean over the group's splits (the seed spread's samples)."""
        return [float(np.mean([by[n, s][head][metric] for n in splits if n.startswith(prefix)])) for s in (only or seeds)]

    def per_split(n: str, head: str, metric: str) -> list[float]:
        return [by[n, s][head][metric] for s in seeds if (n, s) in by]

    def beyond(a: list[float], b: list[float]) -> str:
        d = np.mean(a) - np.mean(b)
        out = np.mean(a) - np.std(a) > np.mean(b) + np.std(b) or np.mean(a) + np.std(a) < np.mean(b) - np.std(b)
        return f"{d:+.3f} ({'beyond the spread' if out else 'within'})"

    lines = [f"# {title}", "", intro(splits, seeds, missing), "",
             f"Command: `{command}`", ""]
    summary: dict[str, Any] = {}
    for group_title, prefix in GROUPS.items():
        extra = " recall @5 % minus the nearest bank's, per seed |" if paired else ""
        lines += [f"## {group_title}", "", "| head | " + " | ".join(METRICS.values()) + " | AUROC vs rec+lat | AUROC, seeds 1-2 |" + extra,
                  "|---|" + "---|" * (len(METRICS) + 2 + bool(paired))]
        for head in heads:
            vals = {m: group(prefix, head, m) for m in METRICS}
            rest = [s for s in seeds if s != 0]
            vs = beyond(vals["test_auroc"], group(prefix, base_head, "test_auroc"))
            late = np.mean(group(prefix, head, "test_auroc", rest))
            cell = ""
            if paired:
                cell = " " + ", ".join(f"{a - b:+.3f}" for a, b in zip(vals["recall_at_0.05"], group(prefix, paired, "recall_at_0.05"),
                                                                        strict=True)) + " |"
            lines.append(f"| {head} | " + " | ".join(_ms(vals[m]) for m in METRICS) + f" | {vs} | {late:.3f} |" + cell)
            summary.setdefault(group_title, {})[head] = {m: [float(np.mean(v)), float(np.std(v))] for m, v in vals.items()}
        lines.append("")
    for metric in ("test_auroc", "recall_at_0.05"):
        lines += [f"## {METRICS[metric]} per split (mean ± std over seeds)", "",
                  "| head | " + " | ".join(splits) + " | splits worse than rec+lat beyond their spread |", "|---|" + "---|" * (len(splits) + 1)]
        for head in heads:
            worse = [n for n in splits if np.mean(per_split(n, head, metric)) + np.std(per_split(n, head, metric))
                     < np.mean(per_split(n, base_head, metric)) - np.std(per_split(n, base_head, metric))]
            lines.append(f"| {head} | " + " | ".join(_ms(per_split(n, head, metric)) for n in splits) + f" | {', '.join(worse) or 'none'} |")
            summary.setdefault("per_split", {}).setdefault(metric, {})[head] = {n: [float(np.mean(per_split(n, head, metric))),
                                                                                     float(np.std(per_split(n, head, metric)))] for n in splits}
        lines.append("")
    fm, tx = GROUPS["semantic (Fashion-MNIST)"], GROUPS["local defects (textures)"]
    auc, r5, tex = (np.mean(group(fm, default, "test_auroc")), np.mean(group(fm, default, "recall_at_0.05")),
                    np.mean(group(tx, default, "test_auroc")))
    worse = [f"{n} ({METRICS[m]})" for m in ("test_auroc", "recall_at_0.05") for n in splits
             if np.mean(per_split(n, default, m)) + np.std(per_split(n, default, m))
             < np.mean(per_split(n, base_head, m)) - np.std(per_split(n, base_head, m))]
    lines += ["## The default against issue 22's targets", "", "| target | the default | met |", "|---|---|---|",
              f"| Fashion-MNIST AUROC ≥ 0.80 | {auc:.3f} | {'yes' if auc >= 0.80 else 'no'} |",
              f"| Fashion-MNIST recall at 5 % false alarms ≥ 0.45 | {r5:.3f} | {'yes' if r5 >= 0.45 else 'no'} |",
              f"| textures AUROC ≥ 0.99 | {tex:.3f} | {'yes' if tex >= 0.99 else 'no'} |",
              f"| no split worse than rec+lat beyond its spread (AUROC, recall @5 %) | {', '.join(worse) or 'none worse'} | "
              f"{'no' if worse else 'yes'} |", ""]
    cost_path = OUT / f"{study}_cost.json"
    costs = json.loads(cost_path.read_text()) if cost_path.exists() else {}
    if costs:
        base = costs[base_head]
        lines += ["## Cost on the edge (one trained model per head, one CPU thread, medians)", "",
                  "| head | graph MFLOP/image | bank MFLOP | bank KiB | ONNX KiB | ORT b1 ms | ORT b64 ms | OpenVINO b1 ms | OpenVINO b64 ms | "
                  "ORT b1 vs rec+lat | export parity | TensorRT dry run |", "|---|" + "---|" * 11]
        for head, c in costs.items():
            ov = c.get("openvino", {})
            lines.append(f"| {head} | {c['flops']['total'] / 1e6:.1f} | {c['bank_flops'] / 1e6:.1f} | {c['bank_bytes'] / 1024:.0f} | "
                         f"{c['onnx_bytes'] / 1024:.0f} | "
                         f"{c['ort']['batch1_ms']:.3f} | {c['ort']['batch64_ms']:.2f} | {ov.get('batch1_ms', float('nan')):.3f} | "
                         f"{ov.get('batch64_ms', float('nan')):.2f} | {c['ort']['batch1_ms'] / base['ort']['batch1_ms']:.2f}× | "
                         f"{_parity(c['parity'])} | {_trt(c['trt_dry_run'])} |")
        lines.append("")
    (RESULTS / f"{study}.md").write_text("\n".join(lines))
    (RESULTS / f"{study}.json").write_text(json.dumps({"benchmark": study, "date": time.strftime("%Y-%m-%d"),
                                                                "command": command, "seeds": seeds, "splits": splits, "missing": missing,
                                                                "default": default, "baseline": base_head, "summary": summary, "cost": costs,
                                                                "rows": rows}, indent=1, default=str))
    print("\n".join(lines))


def _parity(p: Any) -> str:
    """ONNX Runtime against torch: the largest score difference and export's tolerance (1e-4 of the normal spread)."""
    if isinstance(p, dict) and "max_abs_diff_score" in p:
        return f"{p['max_abs_diff_score']:.1e} (tolerance {p['tolerance']:.1e})"
    return str(p)


def _trt(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {'ok' if (x.get('ok') if isinstance(x, dict) else x) else 'fails'}" for k, x in v.items()) or "n/a"
    return str(v)


def main() -> None:
    study_main(__doc__, "study_bank_source", run, cost, table)


def study_main(doc: str | None, study: str, run_fn: Any, cost_fn: Any, table_fn: Any) -> None:
    """The command line of a bank study: rows (default), ``--cost``, ``--table``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cost", action="store_true", help=f"measure each head's edge cost on real exports ({study}_cost.json)")
    ap.add_argument("--table", action="store_true", help=f"write benchmarks/results/{study}.md and .json from the rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.table:
        table_fn()
    elif args.cost:
        cost_fn()
    else:
        run_fn()


if __name__ == "__main__":
    main()
