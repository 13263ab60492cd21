"""Trainer throughput against a bare loop of the same model and batch, in the same run.

The bare loop is the minimum work of one Skip-GANomaly step (G forward, D on fake and real, G
backward and Adam step, D forward twice, D backward and Adam step) on one pre-made float batch:
no data loading, no shuffling, no loss bookkeeping, no progress bar. The trainer runs its real
loop (uint8 batches indexed from the training set, converted on the fly, losses logged, per-epoch
validation excluded from the timing). Target: trainer ≥ 0.9 × bare loop (images/s).

Measured for fp32 and, where the CPU has AMX/AVX512-BF16, bf16 autocast (``--precision bf16``);
on CUDA, AMP (``--precision amp``). Medians of ``--repeats`` alternating runs.

Usage: python benchmarks/train_throughput.py [--ngf 32] [--isize 32] [--batch 64] [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from common import RESULTS, command_line, machine, stamp, write_json

from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig
from skipgan_edge.data.datasets import Dataset, Split
from skipgan_edge.model.losses import discriminator_loss, generator_loss
from skipgan_edge.model.networks import build_model
from skipgan_edge.train.trainer import Trainer, _autocast


def bare_loop(cfg: RunConfig, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    net = build_model(cfg.model).to(device).train()
    g, d = net.generator, net.discriminator
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    b, s, c = cfg.train.batch, cfg.model.isize, cfg.model.channels
    x = torch.rand(b, c, s, s, device=device) * 2 - 1
    tc = cfg.train

    def step() -> None:
        with _autocast(device, tc.precision):
            fake = g(x)
            pred_fake, f_fake = d(fake)
            _, f_real = d(x)
            loss_g, _ = generator_loss(pred_fake, x, fake, f_real.detach(), f_fake, 1.0, 50.0, 1.0)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with _autocast(device, tc.precision):
            pred_real, _ = d(x)
            pred_fake, _ = d(fake.detach())
            loss_d, _ = discriminator_loss(pred_real, pred_fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return b * steps / (time.perf_counter() - t0)


def trainer_run(cfg: RunConfig, steps: int) -> float:
    b, s, c = cfg.train.batch, cfg.model.isize, cfg.model.channels
    rng = np.random.default_rng(0)
    n = b * steps
    train = Split(rng.integers(0, 256, (n, s, s, c), dtype=np.uint8), np.zeros(n, np.int64), None, [str(i) for i in range(n)])
    val = Split(rng.integers(0, 256, (b, s, s, c), dtype=np.uint8), np.zeros(b, np.int64), None, [str(i) for i in range(b)])
    ds = Dataset("random", train, val, None)
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = RunConfig(model=cfg.model, train=TrainConfig(**{**cfg.train.__dict__, "epochs": 2}))
        Trainer(ds, run_cfg, Path(tmp) / "r", progress=True).fit()
        rows = [json.loads(line) for line in (Path(tmp) / "r" / "metrics.jsonl").read_text().splitlines()]
    return float(rows[-1]["images_per_s"])  # the second epoch: warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--isize", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = ["fp32"]
    if device.type == "cuda":
        precisions.append("amp")
    elif "amx_bf16" in Path("/proc/cpuinfo").read_text() or "avx512_bf16" in Path("/proc/cpuinfo").read_text():
        precisions.append("bf16")
    rows = []
    for prec in precisions:
        cfg = RunConfig(model=ModelConfig(isize=args.isize, channels=args.channels, ngf=args.ngf, ndf=args.ngf),
                        train=TrainConfig(batch=args.batch, precision=prec, device=device.type))
        bare, trainer = [], []
        for _ in range(args.repeats):  # alternate so that machine noise hits both alike
            bare.append(bare_loop(cfg, args.steps, device))
            trainer.append(trainer_run(cfg, args.steps))
        row = {"precision": prec, "bare_images_per_s": float(np.median(bare)), "trainer_images_per_s": float(np.median(trainer)),
               "bare_runs": bare, "trainer_runs": trainer}
        row["ratio"] = row["trainer_images_per_s"] / row["bare_images_per_s"]
        rows.append(row)
        print(f"{prec}: bare {row['bare_images_per_s']:.0f} img/s, trainer {row['trainer_images_per_s']:.0f} img/s, ratio {row['ratio']:.3f}")
    res = {"benchmark": "train_throughput", "args": vars(args), "device": str(device), "command": command_line(), "date": stamp(),
           "machine": machine(), "rows": rows}
    write_json("train_throughput.json", res)
    lines = ["# Training throughput: trainer vs. bare loop (same model, batch, run)", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']['cpu']} ({res['machine']['cores']} cores), {stamp()}", "",
             "| precision | bare loop img/s | trainer img/s | ratio |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['bare_images_per_s']:.0f} | {r['trainer_images_per_s']:.0f} | {r['ratio']:.3f} |")
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
