"""Plots of ``bench`` results (matplotlib: ``[plots]``, also part of ``[train]``): written by ``skipgan-edge bench --plots`` and the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def latency_plots(result: dict[str, Any], out_dir: Path, prefix: str) -> list[Path]:
    """Latency (median, min-p99 band), throughput and, with a measured peak, roofline PNGs of a run_bench result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = {}
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
        return fig, ax, out_dir / f"{prefix}_{key}.png"

    def save(fig: Any, ax: Any, path: Path) -> None:
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)

    out: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
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
