"""AUROC of the exported FP32, FP16 and INT8 scorers (ONNX Runtime) against the torch model, with the
INT8 calibration methods compared (max, entropy, percentile).

Data: the built-in synthetic textures (demo settings) and Fashion-MNIST leave-one-class-out splits
(reduced CPU budget: 3,000 normal training images, isize 32, ngf 32, 6 epochs; test on 4,000 images
of the full test protocol, anomaly share kept). Calibration: 512 frames from the normal training images.

Usage: python benchmarks/export_accuracy.py [--fmnist-classes 1,7] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command_line, machine, stamp, write_json

from skipgan_edge import calibration
from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig
from skipgan_edge.data import fmnist
from skipgan_edge.data.datasets import Dataset, load_fmnist, load_folder
from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic
from skipgan_edge.evaluate import torch_score_fn
from skipgan_edge.export.api import choose_calibration, gate_variants
from skipgan_edge.export.onnx import export_onnx
from skipgan_edge.export.precision import CALIBRATION_METHODS, to_fp16, to_int8
from skipgan_edge.metrics import auroc
from skipgan_edge.train.trainer import train


def evaluate(name: str, ds: Dataset, cfg: RunConfig, work: Path) -> dict:
    t0 = time.perf_counter()
    run = work / name
    train(ds, cfg, run, progress=False)
    assert ds.test is not None
    _, score_fn = torch_score_fn(run)
    torch_auroc = auroc(ds.test.labels, score_fn(ds.test.images).score)
    exp = work / f"{name}_export"
    files = {"fp32": exp / "scorer.onnx"}
    export_onnx(run, files["fp32"], ds.test.images[:64])
    cs = calibration.from_images(ds.train.images, f"{name} train", 512)
    files["fp16"] = to_fp16(files["fp32"], exp / "scorer.fp16.onnx", cs.images)
    for m in CALIBRATION_METHODS:
        files[f"int8-{m}"] = to_int8(files["fp32"], exp / f"scorer.int8.{m}.onnx", cs.images, m)
    chosen, _ = choose_calibration(files["fp32"], exp / "scorer.int8.auto.onnx", cs.images, ds.val)
    files["int8-auto"] = exp / "scorer.int8.auto.onnx"
    gate = gate_variants(files, ds.test, 0.01)
    row = {"data": name, "torch_auroc": torch_auroc, "auto_chose": chosen, "seconds": round(time.perf_counter() - t0, 1),
           "variants": {k: {kk: v[kk] for kk in ("auroc", "auroc_drop", "spearman_vs_fp32", "gate")} for k, v in gate.items()}}
    print(name, f"torch {torch_auroc:.4f}", " ".join(f"{k} {v['auroc']:.4f}" for k, v in gate.items()), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fmnist-classes", default="1,7")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_synthetic(work / "synth", SyntheticSpec())
        cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=32, ndf=32), train=TrainConfig(epochs=12, threads=args.threads))
        rows.append(evaluate("synthetic-brick", load_folder(work / "synth", 32, 3), cfg, work))
        for k in [int(c) for c in args.fmnist_classes.split(",")]:
            ds = load_fmnist(k, 32, 1, max_train=3000, max_test=4000)
            cfg = RunConfig(model=ModelConfig(isize=32, channels=1, ngf=32, ndf=32), train=TrainConfig(epochs=6, threads=args.threads))
            rows.append(evaluate(f"fmnist-{k}-{fmnist.CLASSES[k]}", ds, cfg, work))
    res = {"benchmark": "export_accuracy", "command": command_line(), "date": stamp(), "machine": machine(), "rows": rows}
    write_json("export_accuracy.json", res)
    variants = list(rows[0]["variants"])
    lines = ["# Exported scorer accuracy per precision (ONNX Runtime CPU) vs. torch", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']['cpu']} ({res['machine']['cores']} cores), {res['date']}", "",
             "AUROC on the test split; in brackets the drop against FP32 (gate: ≤ 0.01).", "",
             "`int8-auto` is what `export` does by default: the method whose scores agree best with FP32 on the validation split "
             "(Spearman), chosen without looking at the test split.", "",
             "| data | torch | " + " | ".join(variants) + " | auto chose |", "|---" * (len(variants) + 3) + "|"]
    for r in rows:
        cells = [f"{r['variants'][v]['auroc']:.4f} ({r['variants'][v]['auroc_drop']:+.4f})" for v in variants]
        lines.append(f"| {r['data']} | {r['torch_auroc']:.4f} | " + " | ".join(cells) + f" | {r['auto_chose']} |")
    mean = {v: sum(r["variants"][v]["auroc_drop"] for r in rows) / len(rows) for v in variants}
    lines += ["", "Mean drop against FP32: " + ", ".join(f"{v} {d:+.4f}" for v, d in mean.items())]
    (RESULTS / "export_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
