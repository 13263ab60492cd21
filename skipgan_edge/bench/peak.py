"""The device's measured matmul peak, probed in the same run as the benchmark.

CPU: square fp32 matmuls of 2048 and 4096 through numpy (OpenBLAS) and torch (oneDNN/MKL), on
every core, best of several timed repetitions after warm-up: the best any installed BLAS reaches
(on this project's 2-core AMD EPYC: numpy ~259, torch ~215 GFLOP/s); bf16 too where the CPU has
AVX512-BF16/AMX. GPU: on the GPU itself, torch.cuda fp32, fp16, bf16 (and int8 via
torch._int_mm where available), or CuPy fp32/fp16; never a CPU matmul in its place.

A runtime can exceed this "peak" on convolutions: OpenVINO uses Winograd and other algorithms
that need fewer multiply-adds than the direct count the FLOP counter uses, so a fraction above
100 % means "faster than a direct convolution at the BLAS peak", not a measurement error.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from skipgan_edge.runtime.backends.openvino import cpu_has_bf16


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


class PeakUnavailable(RuntimeError):
    """The requested device's peak cannot be measured here (never replaced by another device's)."""


def matmul_peak(device: str = "cpu", n: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s by precision, best of ``reps``, measured on ``device`` itself.

    ``cuda``: torch with CUDA, else CuPy; if neither can reach a GPU, :class:`PeakUnavailable` is
    raised. A GPU's peak is never a CPU matmul by fallback: a roofline against the wrong device's
    peak is a wrong number, so none is better.
    """
    if device.startswith("cuda"):
        return _gpu_peak(device, n, reps)
    import numpy as np

    out: dict[str, float] = {}
    best_np = 0.0
    # grow the matrix while one product stays short: a numpy on the reference BLAS (Debian's python3-numpy without
    # OpenBLAS, as on a bare Jetson) does about 1 GFLOP/s, and its 4096x4096 product alone would take minutes
    size = 256
    while size <= 2 * n:
        m = np.random.rand(size, size).astype(np.float32)
        t0 = time.perf_counter()
        m @ m
        once = time.perf_counter() - t0
        best_np = max(best_np, _best(lambda m=m: m @ m, 2.0 * size**3, reps if once < 0.2 else 1) / 1e9)
        if once > 0.5:
            break
        size *= 2
    out["fp32"] = best_np
    flops = 2.0 * n**3
    try:
        import torch
    except ImportError:
        return out
    t = torch.randn(n, n)
    with torch.no_grad():
        out["fp32"] = max(best_np, _best(lambda: t @ t, flops, reps) / 1e9)
        if torch.backends.mkldnn.is_available() and cpu_has_bf16():
            b = t.to(torch.bfloat16)
            out["bf16"] = _best(lambda: b @ b, flops, reps) / 1e9
    return out


def _gpu_peak(device: str, n: int, reps: int) -> dict[str, float]:
    size = 2 * n
    flops = 2.0 * size**3
    tried: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            sync = torch.cuda.synchronize
            out: dict[str, float] = {}
            for name, dt in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
                a = torch.randn(size, size, device=device, dtype=dt)
                out[name] = _best(lambda a=a: a @ a, flops, reps, sync) / 1e9
            if hasattr(torch, "_int_mm"):
                a8 = torch.randint(-128, 127, (size, size), device=device, dtype=torch.int8)
                with contextlib.suppress(RuntimeError):  # not every GPU / build has int8 matmul
                    out["int8"] = _best(lambda: torch._int_mm(a8, a8), flops, reps, sync) / 1e9
            return out
        tried.append("torch has no CUDA device")
    except ImportError:
        tried.append("no torch")
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() > 0:
            out = {}
            sync = cp.cuda.Device().synchronize
            for name, dt in (("fp32", cp.float32), ("fp16", cp.float16)):
                a = cp.random.standard_normal((size, size), dtype=cp.float32).astype(dt)
                out[name] = _best(lambda a=a: a @ a, flops, reps, sync) / 1e9
            return out
        tried.append("CuPy sees no GPU")
    except ImportError:
        tried.append("no CuPy")
    except Exception as exc:  # noqa: BLE001 - cupy raises its own CUDA errors without a driver
        tried.append(f"CuPy: {exc.__class__.__name__}")
    raise PeakUnavailable(f"cannot measure the GPU's matmul peak here ({'; '.join(tried)}); install torch with CUDA or CuPy")
