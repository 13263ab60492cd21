"""Helpers shared by the benchmark scripts: machine description and result writing."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU, driver, library versions: recorded with every result."""
    from skipgan_edge.bench.latency import machine_info

    return machine_info()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_json(name: str, obj: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def command_line() -> str:
    return " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def export_dir_or_demo(export_dir: Path | None, work: Path) -> Path:
    """The export folder given on the command line, or a fresh demo's (trained under ``work``)."""
    if export_dir is not None:
        return export_dir
    from skipgan_edge.demo import run_demo

    run_demo(work / "demo")
    return work / "demo" / "export"
