"""The device's measured matmul peak, probed in the same run as the benchmark.

CPU: square fp32 matmuls of 2048 and 4096 through numpy (OpenBLAS) and torch (oneDNN/MKL), on
every core, best of several timed repetitions after warm-up: the best any installed BLAS reaches
(on this project's 2-core AMD EPYC: numpy ~259, torch ~215 GFLOP/s); bf16 too where the CPU has
AVX512-BF16/AMX. GPU: torch.cuda fp32, fp16 (and int8 via torch._int_mm where available).

A runtime can exceed this "peak" on convolutions: OpenVINO uses Winograd and other algorithms
that need fewer multiply-adds than the direct count the FLOP counter uses, so a fraction above
100 % means "faster than a direct convolution at the BLAS peak", not a measurement error.
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
    import numpy as np

    out: dict[str, float] = {}
    best_np = 0.0
    if not device.startswith("cuda"):
        for size in (n, 2 * n):
            m = np.random.rand(size, size).astype(np.float32)
            best_np = max(best_np, _best(lambda m=m: m @ m, 2.0 * size**3, reps) / 1e9)
        out["fp32"] = best_np
    flops = 2.0 * n**3
    try:
        import torch
    except ImportError:
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
        out["fp32"] = max(best_np, _best(lambda: t @ t, flops, reps) / 1e9)
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
