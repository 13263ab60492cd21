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

from common import RESULTS, command_line, stamp, write_json

from skipgan_edge.bench.latency import BenchConfig, discover, format_table, run_bench


def plots(result: dict, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for r in result["records"]:
        series.setdefault(f"{r['backend']} {r['precision']}", []).append(r)
    out = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rs in series.items():
        b = [r["batch"] for r in rs]
        line = ax.plot(b, [r["latency_ms"]["median"] for r in rs], marker="o", label=f"{name} median")[0]
        ax.fill_between(b, [r["latency_ms"]["min"] for r in rs], [r["latency_ms"]["p99"] for r in rs], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("latency per batch (ms); band: min-p99")
    ax.legend(fontsize=7)
    ax.set_title("latency vs batch")
    fig.tight_layout()
    out.append(RESULTS / f"{prefix}_latency.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rs in series.items():
        ax.plot([r["batch"] for r in rs], [r["throughput"] for r in rs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images/s")
    ax.legend(fontsize=7)
    ax.set_title("throughput vs batch")
    fig.tight_layout()
    out.append(RESULTS / f"{prefix}_throughput.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    peak = result.get("peak_gflops", {}).get("fp32")
    if peak:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, rs in series.items():
            ax.plot([r["batch"] for r in rs], [r.get("achieved_gflops", 0) for r in rs], marker="o", label=name)
        ax.axhline(peak, color="k", ls="--", label=f"fp32 matmul peak {peak:.0f} GFLOP/s")
        if "bf16" in result["peak_gflops"]:
            ax.axhline(result["peak_gflops"]["bf16"], color="gray", ls=":", label=f"bf16 peak {result['peak_gflops']['bf16']:.0f}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel("achieved GFLOP/s")
        ax.legend(fontsize=7)
        ax.set_title("roofline: achieved vs measured peak")
        fig.tight_layout()
        out.append(RESULTS / f"{prefix}_roofline.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
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
        export_dir = args.export_dir
        if export_dir is None:
            from skipgan_edge.demo import run_demo

            run_demo(Path(tmp) / "demo")
            export_dir = Path(tmp) / "demo" / "export"
        arts = discover(export_dir)
        names = args.backends.split(",")
        records = []
        result = None
        for kind, path in arts:
            backends = names if kind == "onnx" else ["tensorrt"]
            r = run_bench([(kind, path)], BenchConfig(batches=tuple(int(b) for b in args.batches.split(",")), duration=args.duration),
                          backends, probe_peak=result is None)
            if result is None:
                result = r
            else:
                records += r["records"]
                result["flops"].update(r["flops"])
        assert result is not None
        peak = result["peak_gflops"]["fp32"]
        for r in records:
            if "flops_per_image" in r:
                r["achieved_gflops"] = r["throughput"] * r["flops_per_image"] / 1e9
                r["fraction_of_fp32_peak"] = r["achieved_gflops"] / peak
        result["records"] += records
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
