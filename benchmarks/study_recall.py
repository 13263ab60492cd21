"""The recall study (issue 22, item 1): what raises recall at 1 % and 5 % false alarms for the Skip-GANomaly default.

On the peers harness's splits (5 Fashion-MNIST leave-one-class-out, brick and gravel textures; isize 32, ngf = ndf
32, 1,500 training images, batch 64, 3 seeds), per split and seed, two training runs of the default model:

* ``plain``: 2 × the usual budget (12 epochs); from the same run, the epoch-6 snapshot is the usual 6-epoch run (epoch
  e shuffles with rng([seed, e]): the first 6 epochs of a 12-epoch run are the 6-epoch run), so one run gives
  - ``default, final epoch 6``: the previous study's protocol (benchmarks/results/synthval_study.md: final-epoch weights);
  - ``default, selected (6 ep)``: the model ``train`` selects (the lowest validation loss among epochs 1-6);
  - ``longer, selected (12 ep)``: twice the epochs, the same selection rule;
* ``ema``: the usual 6 epochs with ``train.ema_decay`` 0.999: ``EMA, selected (6 ep)``.

Each selected model is then scored with each head, from the same weights: ``default`` (standardised rec + lat, the
two-term score), and the feature-bank heads (skipgan_edge/model/bank.py; the bank is built exactly as ``train`` builds it with
``score.bank_size``, from the selected weights and the training images): ``+bank`` (bank_weight 0.5), ``rec+bank``
(λ 1, bank_weight 0.5), ``bank only`` (bank_weight 1), with a 1,024-feature coreset bank, and ``+bank (random 1024)``.

Per model and head: test AUROC; thresholds set on the *normal validation* scores at 1 % and 5 % false alarms
(``fpr:0.01`` / ``fpr:0.05``; 64 normal validation images cannot promise 1 %: max-normal, as ``train`` does), then the
recall and false-alarm rate they give on test.

Rows go to ``benchmarks/peers/out/<--out>`` as they finish (a rerun skips finished rows). ``--cost`` measures the edge
cost of each head on real exports instead (FLOPs, ONNX Runtime and OpenVINO latency at batch 1 and 64 on one thread,
file size). ``benchmarks/study_recall_table.py`` writes ``benchmarks/results/study_recall.md`` and ``.json``.

Usage: python benchmarks/peers/splits.py && OMP_NUM_THREADS=1 python benchmarks/study_recall.py
       && OMP_NUM_THREADS=1 python benchmarks/study_recall.py --cost && python benchmarks/study_recall_table.py
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
sys.path.append(str(Path(__file__).resolve().parent))  # synthval_study

import numpy as np
import torch
from common import BATCH, ISIZE, OUT, SEEDS, split_names  # peers/common.py
from synthval_study import load  # the same splits, normal validation images only

from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig
from skipgan_edge.data.datasets import Dataset
from skipgan_edge.errors import ConfigError
from skipgan_edge.metrics import auroc, recall_at_fpr
from skipgan_edge.model.bank import patch_features, subsample
from skipgan_edge.model.folder import load_model
from skipgan_edge.model.networks import build_model, default_score
from skipgan_edge.model.scorer import combine
from skipgan_edge.thresholds import apply_policy
from skipgan_edge.train.trainer import Trainer, score_split

EPOCHS = 6  # the usual budget (peers/common.py)
LONG = 12  # "longer": twice that
EMA_DECAY = 0.999
BANK = 1024
POOL = 3
FPRS = (0.01, 0.05)
#: head: (λ, bank weight, which bank)
HEADS: dict[str, tuple[float, float, str | None]] = {
    "default": (0.5, 0.0, None),
    "+bank": (0.5, 0.5, "coreset"),
    "rec+bank": (1.0, 0.5, "coreset"),
    "bank only": (0.5, 1.0, "coreset"),
    "+bank (random 1024)": (0.5, 0.5, "random"),
}
RESULTS = Path(__file__).resolve().parent / "results"


def config(seed: int, epochs: int, ema: float, bank: int = 0) -> RunConfig:
    """This study's runs; its banks are D's at weight 0.5 (the heads it measured), whatever the default is now."""
    return RunConfig(model=ModelConfig(isize=ISIZE, channels=3, ngf=32, ndf=32),
                     train=TrainConfig(epochs=epochs, batch=BATCH, seed=seed, threads=1, ema_decay=ema),
                     score=ScoreConfig(bank_size=bank, bank_source="discriminator", bank_weight=0.5)).validate(default_score("skipganomaly"))


def thresholded(val: np.ndarray, test: np.ndarray, y: np.ndarray, q: float) -> dict[str, Any]:
    """Threshold at false-alarm rate ``q`` on the normal validation scores; recall and FPR on test."""
    try:
        t, fell_back = apply_policy(f"fpr:{q}", val, None, None), False
    except ConfigError:  # too few normal validation images to promise q: the trainer falls back the same way
        t, fell_back = apply_policy("max-normal", val, None, None), True
    flagged = test > t.raw
    return {"recall": float(flagged[y == 1].mean()), "fpr": float(flagged[y == 0].mean()), "fell_back": fell_back}


def evaluate(net: torch.nn.Module, ds: Dataset, seed: int, heads: dict[str, tuple[float, float, str | None]]) -> dict[str, Any]:
    """Every head's test AUROC and recall at the validation thresholds, from one network."""
    assert ds.test is not None
    dev = torch.device("cpu")
    y = ds.test.labels
    banks: dict[str, torch.Tensor] = {}
    if any(h[2] for h in heads.values()):
        feats = patch_features(net, ds.train.images, dev)  # as Trainer's build_bank
        for kind in {h[2] for h in heads.values() if h[2]}:
            banks[str(kind)] = subsample(feats, BANK, str(kind), seed)
    parts: dict[str | None, dict[str, dict[str, np.ndarray]]] = {}
    for kind in [None, *banks]:
        b = banks.get(kind) if kind else None
        parts[kind] = {k: score_split(net, x, dev, POOL, bank=b) for k, x in (("val", ds.val.images), ("test", ds.test.images))}
    out: dict[str, Any] = {}
    for name, (lam, w, kind) in heads.items():
        p = parts[kind]
        v = p["val"]
        st = {"rec_mean": float(v["rec"].mean()), "rec_std": float(v["rec"].std()),
              "lat_mean": float(v["lat"].mean()), "lat_std": float(v["lat"].std())}
        if kind:
            st.update({"bank_mean": float(v["bank"].mean()), "bank_std": float(v["bank"].std())})
        s = {k: np.asarray(combine(p[k]["rec"], p[k]["lat"], "standardized", lam, st, p[k].get("bank"), w)) for k in ("val", "test")}
        row: dict[str, Any] = {"test_auroc": auroc(y, s["test"])}
        for q in FPRS:
            th = thresholded(s["val"], s["test"], y, q)
            row[f"recall_at_{q:g}"] = th["recall"]
            row[f"test_fpr_at_{q:g}"] = th["fpr"]
            row[f"fell_back_at_{q:g}"] = th["fell_back"]
            row[f"oracle_recall_at_{q:g}"] = recall_at_fpr(y, s["test"], q)[0]  # threshold set on test: the ceiling
        out[name] = row
    return out


def net_from_state(cfg: RunConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    net = build_model(cfg.model)
    net.load_state_dict(state)
    return net.eval()


def run_one(name: str, seed: int, run: str) -> list[dict[str, Any]]:
    """Train one run (``plain``: 12 epochs; ``ema``: 6 epochs with EMA) and evaluate its models; one row per model."""
    ds = load(name, seed)
    cfg = config(seed, LONG if run == "plain" else EPOCHS, 0.0 if run == "plain" else EMA_DECAY)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "r"
        snap: dict[str, Any] = {}
        tr: Trainer

        def on_epoch(rec: dict[str, Any]) -> None:
            if rec["epoch"] == EPOCHS:  # the 6-epoch run's final weights and its selected model (a folder copy)
                with tr.shipped() as net:
                    snap["final6"] = copy.deepcopy(net.state_dict())
                shutil.copytree(folder, Path(tmp) / "sel6", ignore=shutil.ignore_patterns("checkpoint"))

        tr = Trainer(ds, cfg, folder, progress=False, on_epoch=on_epoch)
        card = tr.fit()
        train_s = time.perf_counter() - t0
        models: dict[str, tuple[torch.nn.Module, dict[str, tuple[float, float, str | None]], int]] = {}
        c6 = load_model(Path(tmp) / "sel6")
        if run == "plain":
            models["default, final epoch 6"] = (net_from_state(cfg, snap["final6"]), {"default": HEADS["default"]}, EPOCHS)
            models["default, selected (6 ep)"] = (c6[1], HEADS, c6[0].training.best_epoch)
            models["longer, selected (12 ep)"] = (load_model(folder)[1], HEADS, card.training.best_epoch)
        else:
            models["EMA 0.999, selected (6 ep)"] = (c6[1], HEADS, c6[0].training.best_epoch)
        for model, (net, heads, epoch) in models.items():
            t1 = time.perf_counter()
            rows.append({"data": name, "seed": seed, "run": run, "model": model, "epoch": epoch, "heads": evaluate(net, ds, seed, heads),
                         "train_seconds": round(train_s, 1), "eval_seconds": round(time.perf_counter() - t1, 1)})
    return rows


def cost(out: Path) -> None:
    """Edge cost per head on real exports of one trained model (fmnist5, seed 0, 1 epoch: cost depends on shapes only)."""
    from skipgan_edge.export.onnx import export_onnx

    ds = load("fmnist5", 0)
    res: dict[str, Any] = {}
    x1 = ds.test.images[:1] if ds.test is not None else ds.val.images[:1]
    x64 = np.ascontiguousarray(np.resize(ds.val.images, (64, *ds.val.images.shape[1:])))
    with tempfile.TemporaryDirectory() as tmp:
        for head, bank in (("default", 0), ("+bank 1024", 1024), ("+bank 4096", 4096)):
            folder = Path(tmp) / head.replace(" ", "_").replace("+", "")
            Trainer(ds, config(0, 1, 0.0, bank), folder, progress=False).fit()
            onnx_path = folder / "scorer.onnx"
            parity = export_onnx(folder, onnx_path, ds.val.images[:64])["parity"]
            row = cost_row(folder, onnx_path, parity, x1, x64)
            res[head] = row
            print(json.dumps({head: {k: v for k, v in row.items() if k != "trt_dry_run"}}, default=str), flush=True)
    out.write_text(json.dumps(res, indent=1, default=str))


def cost_row(folder: Path, onnx_path: Path, parity: Any, x1: np.ndarray, x64: np.ndarray) -> dict[str, Any]:
    """One exported head's edge cost: FLOPs of the whole graph (count_flops covers the head and the bank's MatMul:
    ``graph_has_head``, so a table does not add the bank's FLOPs a second time), the bank's FLOPs and bytes from the
    card, the file's size, export's parity, the static TensorRT check, ONNX Runtime and OpenVINO latency (one thread)."""
    import onnx

    from skipgan_edge.bench.flops import count_flops
    from skipgan_edge.card import load_card
    from skipgan_edge.export.trtcheck import verdict

    bank_rec = load_card(folder).score.bank
    row: dict[str, Any] = {"flops": count_flops(onnx.load(str(onnx_path))), "bank_flops": bank_rec["flops_per_image"] if bank_rec else 0,
                           "graph_has_head": True, "bank_bytes": bank_rec["bytes"] if bank_rec else 0,
                           "onnx_bytes": onnx_path.stat().st_size, "parity": parity, "trt_dry_run": verdict(onnx_path),
                           "ort": _latency_ort(onnx_path, x1, x64)}
    try:
        row["openvino"] = _latency_ov(onnx_path, x1, x64)
    except Exception as exc:  # noqa: BLE001 - OpenVINO optional: record why
        row["openvino"] = {"error": str(exc)[:200]}
    return row


def each_default_model(path: Path, cfg: Any, make_row: Any, show: tuple[str, ...] | None = None) -> None:
    """For every (split, seed) not yet in ``path``: train ``cfg(seed)`` on the split, then ``make_row(name, seed, ds,
    card, net, train_seconds)`` gives its row (with ``heads``), printed (the heads in ``show``; None: all) and written
    at once, so that an interrupted study resumes."""
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["data"], r["seed"]) for r in rows}
    for seed in SEEDS:
        for name in split_names():
            if (name, seed) in done:
                continue
            ds = load(name, seed)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                card = Trainer(ds, cfg(seed), Path(tmp) / "r", progress=False).fit()
                net = load_model(Path(tmp) / "r")[1]
            r = make_row(name, seed, ds, card, net, round(time.perf_counter() - t0, 1))
            rows.append(r)
            print(json.dumps({"data": name, "seed": seed, "epoch": r["epoch"]}
                             | {h: [round(v["test_auroc"], 3), round(v["recall_at_0.05"], 3)] for h, v in r["heads"].items()
                                if show is None or h in show}), flush=True)
            path.write_text(json.dumps(rows, indent=1))


def _time(fn: Any, n: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def _latency_ort(path: Path, x1: np.ndarray, x64: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return {"batch1_ms": _time(lambda: s.run(None, {"images": x1}), 200), "batch64_ms": _time(lambda: s.run(None, {"images": x64}), 20)}


def _latency_ov(path: Path, x1: np.ndarray, x64: np.ndarray) -> dict[str, float]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    c = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    r = c.create_infer_request()
    return {"batch1_ms": _time(lambda: r.infer({0: x1}), 200), "batch64_ms": _time(lambda: r.infer({0: x64}), 20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="study_recall.json", help="file name under benchmarks/peers/out")
    ap.add_argument("--runs", default="plain,ema")
    ap.add_argument("--cost", action="store_true", help="measure each head's edge cost instead (benchmarks/peers/out/study_recall_cost.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.cost:
        cost(OUT / "study_recall_cost.json")
        return
    run_all(OUT / args.out, args.runs.split(","), run_one)


def run_all(path: Path, runs: list[str], run_one: Any) -> None:
    """Every (split, seed, run) not yet in ``path``: ``run_one(split, seed, run)`` gives its rows, written as they finish."""
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["data"], r["seed"], r["run"]) for r in rows}
    for seed in SEEDS:  # seed outermost: an interrupted study has whole seeds
        for name in split_names():
            for run in runs:
                if (name, seed, run) in done:
                    continue
                new = run_one(name, seed, run)
                rows.extend(new)
                for r in new:
                    print(json.dumps({k: r[k] for k in ("data", "seed", "model", "epoch", "train_seconds")}
                                     | {h: [round(v["test_auroc"], 3), round(v["recall_at_0.05"], 3)] for h, v in r["heads"].items()}), flush=True)
                path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
