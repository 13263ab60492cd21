"""``skipgan-edge doctor``: what this machine can run, one line each."""

from __future__ import annotations

import importlib
import platform


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    return str(getattr(m, "__version__", "installed"))


def report() -> list[str]:
    lines = [f"python {platform.python_version()} on {platform.machine()} ({platform.platform()})"]
    for mod, what in (
        ("torch", "training and the torch backend"),
        ("onnxruntime", "the ONNX Runtime backend"),
        ("onnx", "export"),
        ("modelopt", "FP16 / INT8 precision variants"),
        ("openvino", "the OpenVINO backend"),
        ("tensorrt", "engine build and the TensorRT backend"),
        ("cuda.bindings", "CUDA buffers (cuda-python)"),
        ("pycuda", "CUDA buffers (PyCUDA)"),
    ):
        v = _version(mod)
        lines.append(f"{mod:14s} {v or 'missing':12s} {what}")
    ort = importlib.import_module("onnxruntime")
    lines.append("onnxruntime providers: " + ", ".join(ort.get_available_providers()))
    try:
        import torch

        lines.append(f"torch CUDA: {'yes, ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    except ImportError:
        pass
    import cv2

    info = cv2.getBuildInformation()
    gst = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "GStreamer" in ln), "unknown")
    lines.append(f"OpenCV {cv2.__version__}, GStreamer: {gst}")
    return lines
