"""``skipgan-edge doctor``: what this machine can run, one line each."""

from __future__ import annotations

import importlib
import platform
import re
import sys
from pathlib import Path


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    return str(getattr(m, "__version__", "installed"))


TENSORRT_HINT = ("TensorRT (Jetson: JetPack's python3-libnvinfer, seen from a venv made with --system-site-packages, "
                 "see make jetson; x86-64: pip install 'skipgan-edge[tensorrt]')")


def gpu_stack_missing(tensorrt: bool = True) -> list[str]:
    """What ``make test-gpu`` and the TensorRT backend need and this machine lacks; empty when all is there."""
    missing: list[str] = []
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        missing.append("cuda-python (Jetson: make jetson installs the one the driver runs; x86-64: pip install 'skipgan-edge[tensorrt]')")
        cudart = None
    if cudart is not None:
        from skipgan_edge.runtime.cudaenv import cuda_python_mismatch, driver_cuda_version

        mismatch = cuda_python_mismatch()
        if mismatch is not None:  # every CUDA call would answer error 35: say why, not "no GPU"
            missing.append(f"a cuda-python that this GPU's driver runs ({mismatch})")
        elif driver_cuda_version() is None:  # no libcuda: the runtime's error 35 ("driver version is insufficient") would
            missing.append("an NVIDIA GPU and its driver (no libcuda loaded)")  # point at an upgrade on a machine without one
        else:
            err, count = cudart.cudaGetDeviceCount()
            if int(err) != 0 or int(count) == 0:
                _, msg = cudart.cudaGetErrorString(err)
                text = msg.decode() if isinstance(msg, bytes) else str(msg)
                missing.append(f"an NVIDIA GPU with a working driver (cudaGetDeviceCount: CUDA error {int(err)}, {text})")
    if tensorrt:
        try:
            import tensorrt as trt_mod

            if not hasattr(trt_mod, "Builder"):
                missing.append(TENSORRT_HINT + "; found only a stub-only 'tensorrt' package")
        except ImportError:
            missing.append(TENSORRT_HINT)
    return missing


def cuda_line() -> str:
    """One line: the CUDA the driver supports, the cuda-python installed, and whether they go together (what to install
    when not: cuda-python 13 on JetPack 6's CUDA 12 driver is the usual case)."""
    from skipgan_edge.runtime.cudaenv import cuda_python_version, driver_cuda_version, mismatch_line

    version, driver = cuda_python_version(), driver_cuda_version()
    problem = mismatch_line(version, driver)
    if problem is not None:
        return "CUDA: " + problem
    drv = f"driver supports CUDA {driver[0]}.{driver[1]}" if driver is not None else "no NVIDIA driver (libcuda) loaded"
    cp = f"cuda-python {version}" if version is not None else "no cuda-python"
    return f"CUDA: {drv}; {cp}" + (", a match" if version is not None and driver is not None else "")


def report() -> list[str]:
    lines = [f"python {platform.python_version()} on {platform.machine()} ({platform.platform()})"]
    rows = []
    for mod, what in (
        ("torch", "training and the torch backend"),
        ("onnxruntime", "the ONNX Runtime backend"),
        ("onnx", "export; build --dry-run; build on TensorRT 8.6; threshold --onnx"),
        ("modelopt", "FP16 / INT8 precision variants"),
        ("openvino", "the OpenVINO backend"),
        ("tensorrt", "engine build and the TensorRT backend"),
        ("cuda.bindings", "CUDA buffers (cuda-python)"),
        ("pycuda", "CUDA buffers (PyCUDA)"),
        ("tritonclient.grpc", "--backend triton:// (a Triton client)"),
        ("pytriton", "triton-serve (PyTriton's bundled tritonserver)"),
    ):
        v = _version(mod) or "missing"
        rows.append((mod, re.sub(r"^(\d+(?:\.\d+)+)-\d+-.*", r"\1", v), what))  # OpenVINO's 2026.4.1-22982-<build>: the release
    wide = max(len(r[1]) for r in rows)  # the columns fit the longest version (OpenVINO's carries its build)
    lines += [f"{mod:17s} {v:{wide}s} {what}" for mod, v, what in rows]
    lines.append(cuda_line())
    missing = gpu_stack_missing()
    lines.append("TensorRT engines: " + ("ready (GPU, cuda-python, TensorRT)" if not missing else "not here: missing " + "; ".join(missing)))
    if _version("pycuda") and not _version("cuda.bindings"):
        lines.append("CUDA graphs: off (PyCUDA has no stream capture; install cuda-python for graphs)")
    ort = importlib.import_module("onnxruntime")
    lines.append("onnxruntime providers: " + ", ".join(ort.get_available_providers()))
    try:
        import torch

        lines.append(f"torch CUDA: {'yes, ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    except ImportError:
        pass
    import cv2
    import numpy

    info = cv2.getBuildInformation()
    gst = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "GStreamer" in ln), "unknown")
    lines.append(f"OpenCV {cv2.__version__} ({_origin(cv2.__file__)}), GStreamer: {gst}"
                 + ("" if gst.upper().startswith("YES") else " (csi:// and gst: need it: make jetson keeps a system OpenCV that has it)"))
    lines.append(aravis_line())
    lines.append(f"numpy {numpy.__version__} ({_origin(numpy.__file__)})")
    return lines


def aravis_line() -> str:
    """Whether genicam:// can open cameras here: Aravis's GObject bindings (PyGObject), not OpenCV."""
    from skipgan_edge.errors import SkipganError
    from skipgan_edge.runtime.genicam import import_aravis

    try:
        arv = import_aravis()
    except SkipganError as exc:
        return f"Aravis (genicam://): missing: {exc}"
    return f"Aravis (genicam://): API {arv._version}, through PyGObject"


def _origin(file: str | None) -> str:
    """Where a module was imported from: this venv's own packages, or the system's (a --system-site-packages venv
    on a Jetson should take OpenCV and numpy from JetPack)."""
    in_venv = sys.prefix != sys.base_prefix and str(file or "").startswith(sys.prefix)
    return f"from {'this venv' if in_venv else 'the system'}: {Path(file).parent if file else '?'}"
