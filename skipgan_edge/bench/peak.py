"""The device's measured matmul peak, probed in the same run as the benchmark.

CPU: a square fp32 matmul (torch if installed, which uses oneDNN/MKL on every core; else numpy),
best of several timed repetitions after warm-up; bf16 too where torch reports AMX/AVX512-BF16
support. GPU: torch.cuda fp32, fp16 (and int8 via torch._int_mm where available), CUDA events.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any


def _best(fn: Any, flops: float, reps: int, sync: Any = None) -> float:
    fn()
    if sync:
        sync()
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        dt = time.perf_counter() - t0
        best = max(best, flops / dt)
    return best


def matmul_peak(device: str = "cpu", n: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s by precision, best of ``reps``."""
    flops = 2.0 * n**3
    out: dict[str, float] = {}
    try:
        import torch
    except ImportError:
        import numpy as np

        m = np.random.rand(n, n).astype(np.float32)
        out["fp32"] = _best(lambda: m @ m, flops, reps) / 1e9
        return out
    if device.startswith("cuda") and torch.cuda.is_available():
        sync = torch.cuda.synchronize
        for name, dt in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            a = torch.randn(n * 2, n * 2, device=device, dtype=dt)
            out[name] = _best(lambda a=a: a @ a, 2.0 * (2 * n) ** 3, reps, sync) / 1e9
        if hasattr(torch, "_int_mm"):
            a8 = torch.randint(-128, 127, (n * 2, n * 2), device=device, dtype=torch.int8)
            with contextlib.suppress(RuntimeError):  # not every GPU / build has int8 matmul
                out["int8"] = _best(lambda: torch._int_mm(a8, a8), 2.0 * (2 * n) ** 3, reps, sync) / 1e9
        return out
    t = torch.randn(n, n)
    with torch.no_grad():
        out["fp32"] = _best(lambda: t @ t, flops, reps) / 1e9
        if torch.backends.mkldnn.is_available() and _cpu_has_bf16():
            b = t.to(torch.bfloat16)
            out["bf16"] = _best(lambda: b @ b, flops, reps) / 1e9
    return out


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
