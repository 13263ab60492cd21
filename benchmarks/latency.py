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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command_line, export_dir_or_demo, stamp, write_json

from skipgan_edge.bench.latency import BenchConfig, discover, format_table, run_bench


def plots(result: dict, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for r in result["records"]:
        series.setdefault(f"{r['backend']} {r['precision']}", []).append(r)

    def figure(key: str, ylabel: str, title: str, y: Any, logy: bool = False) -> Any:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rs in series.items():
            ax.plot([r["batch"] for r in rs], [y(r) for r in rs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        return fig, ax, RESULTS / f"{prefix}_{key}.png"

    def save(fig: Any, ax: Any, path: Path) -> None:
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)

    out: list[Path] = []
    fig, ax, path = figure("latency", "latency per batch (ms); band: min-p99", "latency vs batch", lambda r: r["latency_ms"]["median"], True)
    for line, rs in zip(ax.get_lines(), series.values()):
        b = [r["batch"] for r in rs]
        ax.fill_between(b, [r["latency_ms"]["min"] for r in rs], [r["latency_ms"]["p99"] for r in rs], color=line.get_color(), alpha=0.15)
    save(fig, ax, path)
    save(*figure("throughput", "images/s", "throughput vs batch", lambda r: r["throughput"]))
    peak = result.get("peak_gflops", {}).get("fp32")
    if peak:
        fig, ax, path = figure("roofline", "achieved GFLOP/s", "roofline: achieved vs measured peak", lambda r: r.get("achieved_gflops", 0))
        ax.axhline(peak, color="k", ls="--", label=f"fp32 matmul peak {peak:.0f} GFLOP/s")
        if "bf16" in result["peak_gflops"]:
            ax.axhline(result["peak_gflops"]["bf16"], color="gray", ls=":", label=f"bf16 peak {result['peak_gflops']['bf16']:.0f}")
        save(fig, ax, path)
    return out


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
    pngs = plots(result, f"latency_{args.name}")
    table = format_table(result)
    md = [f"# Latency sweep ({args.name})", "", f"Command: `{result['command']}`  ",
          f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores), {stamp()}", "", "```", table, "```", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    (RESULTS / f"latency_{args.name}.md").write_text("\n".join(md) + "\n")
    print(table)


if __name__ == "__main__":
    main()
