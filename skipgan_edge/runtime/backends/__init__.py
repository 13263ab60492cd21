"""Backends, imported lazily: the package runs with neither TensorRT nor CUDA installed.

``open_backend(kind, path, backend)``: ``kind`` is what the user gave (``model`` folder,
``onnx`` file or ``engine`` file); ``backend`` is ``auto`` or an explicit name. ``auto`` picks
TensorRT for an engine and torch for a model folder. For an ONNX file: ONNX Runtime when it has a
GPU provider (CUDA or TensorRT EP); on the CPU, OpenVINO when it is installed (measured fastest on
our scorer: benchmarks/results/cpu_peers.md and latency_cpu.md, e.g. 1.4x ONNX Runtime at batch 64
in FP32 and 6x in INT8 on this project's 2-core machines), else ONNX Runtime.

``skipgan-edge run`` goes one step further for an ONNX file on the CPU when both runtimes are
installed: :func:`race_cpu_runtimes` times each on the model and batch size of the run (about a
second at start-up) and streams with the faster one. Which one wins depends on the model and the
batch: on the small demo model ONNX Runtime is faster at batch 1 and OpenVINO from batch 2 on
(benchmarks/results/latency_cpu.md); on the paper-sized model OpenVINO won everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.errors import ConfigError
from skipgan_edge.runtime.backends.base import Backend

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")
log = logging.getLogger(__name__)


def default_onnx_backend() -> str:
    """The fastest installed runtime for an ONNX file on this machine (see the module docstring)."""
    import importlib.util

    import onnxruntime as ort

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        return "onnxruntime"
    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnxruntime"


def resolve_backend(kind: str, backend: str = "auto") -> str:
    """The backend name ``auto`` stands for, given the artifact kind (model, onnx, engine)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return {"model": "torch", "onnx": default_onnx_backend(), "engine": "tensorrt"}[kind]


#: backends whose constructor takes ``threads`` (CPU runtimes)
THREADED = ("onnxruntime", "openvino")


#: which backend runs which artifact kind
RUNS = {("model", "torch"), ("onnx", "onnxruntime"), ("onnx", "openvino"), ("engine", "tensorrt")}


def open_backend(kind: str, path: Path, backend: str = "auto", device: str = "cpu", **kw: object) -> Backend:
    """Create (not yet activate) the backend for an artifact; use it as a context manager."""
    backend = resolve_backend(kind, backend)
    if (kind, backend) not in RUNS:
        hint = {"torch": "--model RUN_DIR", "onnxruntime": "--onnx FILE", "openvino": "--onnx FILE", "tensorrt": "--engine FILE"}[backend]
        raise ConfigError(f"--backend {backend} runs {hint}, not --{kind}")
    if backend == "torch":
        from skipgan_edge.runtime.backends.torch import TorchBackend

        return TorchBackend(path, device)
    if backend == "onnxruntime":
        from skipgan_edge.runtime.backends.onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **kw)  # type: ignore[arg-type]
    if backend == "openvino":
        from skipgan_edge.runtime.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, **kw)  # type: ignore[arg-type]
    from skipgan_edge.runtime.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(path, **kw)  # type: ignore[arg-type]


def race_cpu_runtimes(path: Path, batch: int, threads: int = 0, seconds: float = 0.25) -> tuple[str, dict[str, float]]:
    """Time ONNX Runtime and OpenVINO on this ONNX file at this batch size; return the faster one's
    name and each one's median milliseconds per call (warm-up first, then about ``seconds`` or at
    least 5 calls each, on random frames)."""
    from skipgan_edge.runtime.timing import BenchConfig, time_backend

    per_call: dict[str, float] = {}
    kw: dict[str, Any] = {"threads": threads} if threads else {}
    cfg = BenchConfig(warmup=3, duration=seconds, min_iterations=5)
    for name in ("onnxruntime", "openvino"):
        with open_backend("onnx", path, name, **kw) as be:
            x = np.random.default_rng(0).integers(0, 256, (batch, *be.input_shape), dtype=np.uint8)
            per_call[name] = time_backend(be, x, batch, cfg)["latency_ms"]["median"]
    best = min(per_call, key=per_call.__getitem__)
    log.info("--backend auto: %s per batch of %d → %s (choose with --backend)",
             ", ".join(f"{k} {v:.3f} ms" for k, v in per_call.items()), batch, best)
    return best, per_call
