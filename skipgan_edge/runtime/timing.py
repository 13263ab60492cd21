"""The one timing loop: warm-up, then timed ``infer`` calls with ``time.perf_counter_ns``, as trtexec reports them.

``bench`` (with power sampling), ``run``'s backend race and the benchmarks all time a backend
through :func:`time_backend`; the statistics are :func:`skipgan_edge.runtime.stats.summarize`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.stats import summarize


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1, 8, 64)
    warmup: int = 10  # untimed calls first: allocation, lazy init, caches, CUDA graph capture
    iterations: int | None = None  # timed calls; None = run for `duration`
    duration: float = 3.0  # seconds of timed calls per configuration when `iterations` is None
    min_iterations: int = 10
    threads: int = 0  # CPU runtimes' intra-op threads (0 = the runtime's default: all cores)



def time_backend(be: Backend, frames: np.ndarray, batch: int, cfg: BenchConfig, sampler: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Warm up, then time ``infer`` at one batch size; ``sampler`` (e.g. bench's PowerSampler) runs around the timed calls."""
    x = np.ascontiguousarray(frames[:batch])
    be.expect_batch(batch)
    for _ in range(cfg.warmup):
        be.infer(x)
    times: list[float] = []
    stages: dict[str, list[float]] = {}
    with (sampler() if sampler is not None else contextlib.nullcontext()) as power:
        t_end = time.perf_counter() + cfg.duration
        while True:
            t0 = time.perf_counter_ns()
            be.infer(x)
            times.append((time.perf_counter_ns() - t0) / 1e6)
            for k, v in getattr(be, "last_timings", {}).items():
                stages.setdefault(k, []).append(v)
            n = len(times)
            if cfg.iterations is not None:
                if n >= cfg.iterations:
                    break
            elif n >= cfg.min_iterations and time.perf_counter() >= t_end:
                break
    total_s = sum(times) / 1e3
    rec: dict[str, Any] = {
        "backend": be.name, "precision": be.precision, "batch": batch, "iterations": len(times),
        "latency_ms": summarize(times), "throughput": batch * len(times) / total_s,
    }
    if stages:
        rec["stages_ms"] = {k: summarize(v) for k, v in stages.items()}
    if power is not None and power.mean_watts is not None:
        rec["power_w"] = power.mean_watts
        rec["joules_per_image"] = power.mean_watts * total_s / (batch * len(times))
        rec["power_source"] = power.source
        rec["power_scope"] = power.scope
    elif power is not None and power.why:
        rec["power_unavailable"] = power.why
    return rec

