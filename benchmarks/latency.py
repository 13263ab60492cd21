"""The latency/throughput sweep on the demo model's exported variants, with plots.

Trains the demo model (or uses ``--export-dir``), then runs ``skipgan_edge.bench.latency.run_bench``
for every variant and CPU backend over batch sizes 1-64 and writes
``results/latency_<machine>.json``, ``.md`` and three PNGs: latency percentiles vs batch,
throughput vs batch, and the roofline (achieved GFLOP/s against the measured matmul peak).

Usage: python benchmarks/latency.py [--export-dir DIR] [--batches 1,2,4,8,16,32,64] [--duration 2] [--backends onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command_line, export_dir_or_demo, stamp, write_json

from skipgan_edge.bench.latency import BenchConfig, discover, format_table, run_bench
from skipgan_edge.bench.plots import latency_plots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", type=Path)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--name", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = export_dir_or_demo(args.export_dir, Path(tmp))
        cfg = BenchConfig(batches=tuple(int(b) for b in args.batches.split(",")), duration=args.duration)
        result = run_bench(discover(export_dir), cfg, args.backends.split(","))  # engines, if any, run on TensorRT
    result["command"] = command_line()
    write_json(f"latency_{args.name}.json", result)
    pngs = latency_plots(result, RESULTS, f"latency_{args.name}")
    table = format_table(result)
    md = [f"# Latency sweep ({args.name})", "", f"Command: `{result['command']}`  ",
          f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores), {stamp()}", "", "```", table, "```", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    (RESULTS / f"latency_{args.name}.md").write_text("\n".join(md) + "\n")
    print(table)


if __name__ == "__main__":
    main()
