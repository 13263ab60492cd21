"""The ensemble arm of the recall study (issue 22, item 1): K small generators against one wider one at equal FLOPs.

A convolution's FLOPs grow with the square of its width, so K Skip-GANomaly pairs of width ngf = ndf = 32/√K cost what
one pair of width 32 (the default, measured in benchmarks/study_recall.py) costs:

* ``ensemble 4 × ngf 16``: four pairs of width 16 (4 · 16² = 32²);
* ``ensemble 2 × ngf 23``: two pairs of width 23 (2 · 23² ≈ 0.97 · 32²).

On the same splits, seeds, budget and protocol as benchmarks/study_recall.py (6 epochs, batch 64, 1,500 training images,
the epoch with the lowest validation loss selected per member, as ``train`` does), member k of an ensemble for seed s
trains with seed 1000·k + s (member 0 shares the single model's seed), so the members differ in initialisation and
batch order only. Each member's head standardises its own terms with its own normal validation statistics, so every
member's score is in units of its normal spread; the ensemble's score is the mean of its members' scores (one
exported graph: the K scorers side by side and a mean, see :class:`Ensemble`). Heads: ``default`` and ``rec+bank``
(a 1,024-feature coreset bank per member), as in study_recall.py. Rows: ``single ngf N`` (member 0 alone) and the
ensemble, in study_recall.py's row format, to ``benchmarks/peers/out/study_ensemble.json`` (a rerun skips finished
rows); ``--cost`` measures one exported graph per configuration (FLOPs, ONNX Runtime and OpenVINO latency at batch 1
and 64 on one thread, file size) into ``study_ensemble_cost.json``. ``benchmarks/study_recall_table.py`` reads both.

Usage: OMP_NUM_THREADS=1 python benchmarks/study_ensemble.py && OMP_NUM_THREADS=1 python benchmarks/study_ensemble.py
       --cost && python benchmarks/study_recall_table.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
sys.path.append(str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import BATCH, ISIZE, OUT  # peers/common.py
from study_recall import BANK, EPOCHS, FPRS, HEADS, POOL, _latency_ort, _latency_ov, run_all, thresholded
from synthval_study import load
from torch import nn

from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig
from skipgan_edge.data.datasets import Dataset
from skipgan_edge.metrics import auroc, recall_at_fpr
from skipgan_edge.model.bank import patch_features, subsample
from skipgan_edge.model.folder import load_model
from skipgan_edge.model.networks import default_score
from skipgan_edge.model.scorer import combine
from skipgan_edge.train.trainer import Trainer, score_split

#: name: (K members, width)
CONFIGS = {"ensemble 4 × ngf 16": (4, 16), "ensemble 2 × ngf 23": (2, 23)}
ENS_HEADS = {h: HEADS[h] for h in ("default", "rec+bank")}


def config(seed: int, width: int, bank: int = 0, epochs: int = EPOCHS) -> RunConfig:
    return RunConfig(model=ModelConfig(isize=ISIZE, channels=3, ngf=width, ndf=width),
                     train=TrainConfig(epochs=epochs, batch=BATCH, seed=seed, threads=1),
                     score=ScoreConfig(bank_size=bank)).validate(default_score("skipganomaly"))


def member_scores(net: nn.Module, ds: Dataset, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Each head's standardised score of one member on normal validation and test images."""
    assert ds.test is not None
    dev = torch.device("cpu")
    bank = subsample(patch_features(net, ds.train.images, dev), BANK, "coreset", seed)
    p = {k: score_split(net, x, dev, POOL, bank=bank) for k, x in (("val", ds.val.images), ("test", ds.test.images))}
    v = p["val"]
    st = {f"{t}_{m}": float(getattr(v[t], m)()) for t in ("rec", "lat", "bank") for m in ("mean", "std")}
    out: dict[str, dict[str, np.ndarray]] = {}
    for head, (lam, w, kind) in ENS_HEADS.items():
        out[head] = {k: np.asarray(combine(p[k]["rec"], p[k]["lat"], "standardized", lam, st,
                                           p[k]["bank"] if kind else None, w)) for k in ("val", "test")}
    return out


def head_row(val: np.ndarray, test: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    row: dict[str, Any] = {"test_auroc": auroc(y, test)}
    for q in FPRS:
        th = thresholded(val, test, y, q)
        row[f"recall_at_{q:g}"] = th["recall"]
        row[f"test_fpr_at_{q:g}"] = th["fpr"]
        row[f"fell_back_at_{q:g}"] = th["fell_back"]
        row[f"oracle_recall_at_{q:g}"] = recall_at_fpr(y, test, q)[0]
    return row


def run_one(name: str, seed: int, cfg_name: str) -> list[dict[str, Any]]:
    k_members, width = CONFIGS[cfg_name]
    ds = load(name, seed)
    assert ds.test is not None
    y = ds.test.labels
    t0 = time.perf_counter()
    members, epochs = [], []
    for k in range(k_members):
        with tempfile.TemporaryDirectory() as tmp:
            card = Trainer(ds, config(1000 * k + seed, width), Path(tmp) / "r", progress=False).fit()
            net = load_model(Path(tmp) / "r")[1]
            members.append(member_scores(net, ds, seed))
            epochs.append(card.training.best_epoch)
    train_s = round(time.perf_counter() - t0, 1)
    single = {h: head_row(members[0][h]["val"], members[0][h]["test"], y) for h in ENS_HEADS}
    ens = {h: head_row(np.mean([m[h]["val"] for m in members], 0), np.mean([m[h]["test"] for m in members], 0), y)
           for h in ENS_HEADS}
    base = {"data": name, "seed": seed, "run": cfg_name, "train_seconds": train_s}
    return [base | {"model": f"single ngf {width}, selected (6 ep)", "epoch": epochs[0], "heads": single},
            base | {"model": f"{cfg_name}, selected (6 ep)", "epoch": epochs, "heads": ens}]


class Ensemble(nn.Module):
    """K scorers side by side in one graph: the mean of their scores and anomaly maps; normalised with the ensemble's
    own normal validation range."""

    def __init__(self, scorers: list[nn.Module], score_min: float = 0.0, score_max: float = 1.0) -> None:
        super().__init__()
        self.scorers = nn.ModuleList(scorers)
        self.score_min, self.inv_span = float(score_min), 1.0 / max(float(score_max) - float(score_min), 1e-12)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outs = [s(images) for s in self.scorers]
        score = torch.stack([o[0] for o in outs]).mean(0)
        amap = torch.stack([o[1] for o in outs]).mean(0)
        return score, amap, (score - self.score_min) * self.inv_span


def cost(out: Path) -> None:
    """FLOPs, latency and file size of one exported graph per configuration (fmnist5, seed 0, 1 epoch per member:
    cost depends on shapes only); the single width-32 model is exported the same way, as the reference."""
    import onnx

    from skipgan_edge.bench.flops import count_flops
    from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES
    from skipgan_edge.export.onnx import OPSET, fold_batchnorm
    from skipgan_edge.model.folder import build_scorer

    ds = load("fmnist5", 0)
    x1 = ds.val.images[:1]
    x64 = np.ascontiguousarray(np.resize(ds.val.images, (64, *ds.val.images.shape[1:])))
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (k_members, width) in {"single ngf 32": (1, 32), **CONFIGS}.items():
            for bank in (0, BANK):
                scorers = []
                for k in range(k_members):
                    folder = Path(tmp) / f"{width}_{k}_{bank}"
                    Trainer(ds, config(1000 * k, width, bank, epochs=1), folder, progress=False).fit()
                    scorers.append(fold_batchnorm(build_scorer(folder, "cpu")[1]).eval())
                graph = scorers[0] if k_members == 1 else Ensemble(scorers)
                path = Path(tmp) / f"{width}_{k_members}_{bank}.onnx"
                with torch.no_grad():
                    torch.onnx.export(graph, (torch.zeros(2, ISIZE, ISIZE, 3, dtype=torch.uint8),), str(path),
                                      input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
                                      dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
                                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
                ref = graph(torch.from_numpy(x64)).__getitem__(0).detach().numpy()
                row: dict[str, Any] = {"k": k_members, "width": width, "bank": bank, "flops": count_flops(onnx.load(str(path))),
                                       "onnx_bytes": path.stat().st_size, "ort": _latency_ort(path, x1, x64)}
                import onnxruntime as ort

                got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x64})[0]
                row["parity_max_abs"] = float(np.abs(ref - got).max())
                try:
                    row["openvino"] = _latency_ov(path, x1, x64)
                except Exception as exc:  # noqa: BLE001 - OpenVINO optional: record why
                    row["openvino"] = {"error": str(exc)[:200]}
                key = f"{name}{' + bank' if bank else ''}"
                res[key] = row
                print(json.dumps({key: row}), flush=True)
    out.write_text(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configuration names")
    ap.add_argument("--cost", action="store_true", help="measure each configuration's edge cost instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.cost:
        cost(OUT / "study_ensemble_cost.json")
        return
    run_all(OUT / "study_ensemble.json", args.configs.split(","), run_one)

if __name__ == "__main__":
    main()
