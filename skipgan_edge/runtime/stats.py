"""Latency statistics as trtexec reports them, and a bounded reservoir for long runs."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

PERCENTILES = (90, 95, 99)


def summarize(values_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """min, mean, median, p90, p95, p99, max (numpy's linear interpolation between order statistics)."""
    a = np.asarray(values_ms, np.float64)
    if a.size == 0:
        return {}
    out = {"min": float(a.min()), "mean": float(a.mean()), "median": float(np.percentile(a, 50))}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p))
    out["max"] = float(a.max())
    out["n"] = int(a.size)
    return out


class Reservoir:
    """Keeps at most ``size`` samples, uniformly chosen (Algorithm R), in a preallocated array, so a
    run of any length uses constant memory; percentiles are exact while fewer than ``size``
    samples were added. With ``width`` each sample is a row of that many values (the pipeline
    keeps one row of stage timings per frame, so that one frame costs one reservoir update)."""

    def __init__(self, size: int = 50_000, seed: int = 0, width: int | None = None) -> None:
        self.size = size
        self.buf = np.empty(size if width is None else (size, width), np.float64)  # allocated once: memory does not grow
        self.count = 0
        self.rng = random.Random(seed)

    def add(self, value: float | Sequence[float] | np.ndarray) -> None:
        if self.count < self.size:
            self.buf[self.count] = value
        else:
            j = self.rng.randrange(self.count + 1)
            if j < self.size:
                self.buf[j] = value
        self.count += 1

    def extend(self, values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> None:
        """``add`` each value (row); one slice assignment while the reservoir is not yet full."""
        n = len(values)
        if self.count + n <= self.size:
            self.buf[self.count : self.count + n] = values
            self.count += n
        else:
            for v in values:
                self.add(v)

    def summary(self, column: int | None = None) -> dict[str, float]:
        kept = self.buf[: min(self.count, self.size)]
        s = summarize(kept if column is None else kept[:, column])
        if s:
            s["n"] = self.count
        return s
