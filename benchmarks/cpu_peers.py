"""The same scorer through torch eager, ONNX Runtime and OpenVINO on this CPU, side by side in one run.

Random-weight models (speed does not depend on the weights) at isize 32 and 64, ngf = ndf = 64
(the paper's width), batch 1 and 64. torch eager runs the model folder's Scorer (the graph the
ONNX was exported from); ONNX Runtime and OpenVINO run the exported ``scorer.onnx`` with the
settings our backends use (ORT: all graph optimisations, default threads; OpenVINO: LATENCY hint,
inference precision pinned to f32). Each configuration: warm-up, then timed calls; the runtimes
are interleaved round-robin for ``--rounds`` rounds so that machine noise hits all alike; the
median over all calls is reported. The roofline column is FLOPs/image × images/s over the fp32
matmul peak measured by ``skipgan_edge.bench.peak`` in the same run.

Usage: python benchmarks/cpu_peers.py [--rounds 5] [--calls 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import RESULTS, command_line, machine, stamp, write_json

from skipgan_edge.bench.flops import count_flops
from skipgan_edge.bench.peak import matmul_peak
from skipgan_edge.bench.random_model import random_model_folder
from skipgan_edge.config import ModelConfig
from skipgan_edge.export.onnx import export_onnx
from skipgan_edge.runtime.backends import default_onnx_backend, open_backend

RUNTIMES = (("torch eager", "model", "torch"), ("ONNX Runtime", "onnx", "onnxruntime"), ("OpenVINO", "onnx", "openvino"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=8, help="timed calls per runtime per round (x8 at batch 1)")
    ap.add_argument("--isizes", default="32,64")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--ngf", type=int, default=64)
    args = ap.parse_args()
    peak = matmul_peak("cpu")
    print("fp32 matmul peak GFLOP/s:", {k: round(v) for k, v in peak.items()}, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for isize in [int(s) for s in args.isizes.split(",")]:
            # feature_layer "last": the paper's full feature extractor, as the recorded results were measured
            cfg = ModelConfig(isize=isize, channels=3, ngf=args.ngf, ndf=args.ngf, feature_layer="last")
            folder = random_model_folder(Path(tmp) / f"m{isize}", cfg)
            onnx_path = Path(tmp) / f"s{isize}.onnx"
            export_onnx(folder, onnx_path)
            flops = count_flops(onnx_path)["total"]
            bes = {name: open_backend(kind, folder if kind == "model" else onnx_path, be) for name, kind, be in RUNTIMES}
            for be in bes.values():
                be.__enter__()
            try:
                for batch in [int(b) for b in args.batches.split(",")]:
                    x = np.random.default_rng(0).integers(0, 256, (batch, isize, isize, 3), dtype=np.uint8)
                    times: dict[str, list[float]] = {n: [] for n in bes}
                    calls = args.calls * (8 if batch == 1 else 1)
                    for be in bes.values():
                        be.expect_batch(batch)  # OpenVINO: a model compiled for this batch size, as every verb gets
                        for _ in range(3):
                            be.infer(x)
                    for _ in range(args.rounds):
                        for name, be in bes.items():
                            for _ in range(calls):
                                t0 = time.perf_counter()
                                be.infer(x)
                                times[name].append((time.perf_counter() - t0) * 1e3)
                    for name in bes:
                        med = float(np.median(times[name]))
                        ips = batch / (med / 1e3)
                        row = {"isize": isize, "batch": batch, "runtime": name, "median_ms": med, "p90_ms": float(np.percentile(times[name], 90)),
                               "images_per_s": ips, "gflop_per_image": flops / 1e9, "fraction_of_fp32_peak": ips * flops / 1e9 / peak["fp32"],
                               "calls": len(times[name])}
                        rows.append(row)
                        print(f"isize {isize} batch {batch:3d} {name:13s} median {med:8.2f} ms  {ips:7.0f} img/s  "
                              f"{100 * row['fraction_of_fp32_peak']:5.1f}% of fp32 peak", flush=True)
            finally:
                for be in bes.values():
                    be.__exit__(None, None, None)
    res = {"benchmark": "cpu_peers", "args": vars(args), "peak_gflops": peak, "command": command_line(), "date": stamp(),
           "machine": machine(), "rows": rows}
    write_json("cpu_peers.json", res)
    lines = ["# CPU peers: the same scorer through torch eager, ONNX Runtime and OpenVINO", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']['cpu']} ({res['machine']['cores']} cores), {res['date']}  ",
             f"fp32 matmul peak measured in the same run: {peak['fp32']:.0f} GFLOP/s (best of numpy and torch; see "
             "skipgan_edge/bench/peak.py for why a convolution runtime can exceed it). The CPU default of `skipgan-edge run/bench "
             f"--onnx` here is **{default_onnx_backend()}** (`skipgan_edge.runtime.backends.default_onnx_backend`).", "",
             "| isize | batch | runtime | median ms/batch | images/s | % of fp32 peak |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['isize']} | {r['batch']} | {r['runtime']} | {r['median_ms']:.2f} | {r['images_per_s']:.0f} | "
                     f"{100 * r['fraction_of_fp32_peak']:.1f} |")
    (RESULTS / "cpu_peers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
