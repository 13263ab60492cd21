"""Backends, imported lazily: the package runs with neither TensorRT nor CUDA installed.

``open_backend(kind, path, backend)``: ``kind`` is what the user gave (``model`` folder,
``onnx`` file or ``engine`` file); ``backend`` is ``auto`` or an explicit name. ``auto`` picks
TensorRT for an engine, ONNX Runtime (best provider available) for an ONNX file, and torch for a
model folder.
"""

from __future__ import annotations

from pathlib import Path

from skipgan_edge.errors import ConfigError
from skipgan_edge.runtime.backends.base import Backend

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")


def open_backend(kind: str, path: Path, backend: str = "auto", device: str = "cpu", **kw: object) -> Backend:
    """Create (not yet activate) the backend for an artifact; use it as a context manager."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = {"model": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}[kind]
    pairs = {("model", "torch"), ("onnx", "onnxruntime"), ("onnx", "openvino"), ("engine", "tensorrt")}
    if (kind, backend) not in pairs:
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
