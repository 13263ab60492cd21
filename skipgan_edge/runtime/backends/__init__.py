"""Backends, imported lazily: the package runs with neither TensorRT nor CUDA installed.

One way to open a scorer, whatever the verb (``run``, ``eval``, ``bench``, the export gate and
parity check): :func:`open_backend` with an artifact (``model`` folder, ``onnx`` file or
``engine`` file: :class:`skipgan_edge.runtime.artifact.Artifact`, whose ``open`` calls it), a backend name and
:class:`BackendOptions`. It creates the backend without
activating it; use it as a context manager.

``--backend auto`` means the same in every verb, decided here and nowhere else
(:func:`choose_backend`):

* an engine runs on TensorRT, a model folder on torch;
* an ONNX file runs on ONNX Runtime when it has a GPU provider (CUDA or TensorRT EP);
* on the CPU, with exactly one of ONNX Runtime and OpenVINO installed, on that one;
* with both, both are timed on this model at the verb's batch size (about a second: warm-up, then
  0.25 s or 5 calls each, :func:`race_cpu_runtimes`) and the faster one is used. Which wins depends
  on the model and the batch: on the small demo model ONNX Runtime is faster at batch 1 and
  OpenVINO from batch 2 on (benchmarks/results/latency_cpu.md); on the paper-sized model OpenVINO
  won everywhere. A fixed rule picked the slower runtime for the default ``run``.

A server is a backend too: ``--backend triton://host:port/model[/version]`` (artifact kind ``triton``; no local
model file is given, the server's model card is used). The runtime knows no server itself: the service wing
registers the ``triton`` scheme when it is imported (:func:`register_remote`; ``import skipgan_edge.service``, which
the CLI does; the client is :mod:`skipgan_edge.service.triton_client`).

The chosen backend's ``chosen_by`` records the rule (and the race's milliseconds), and every
report names the backend it used. An explicit ``--backend`` skips the race.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.errors import ConfigError
from skipgan_edge.runtime.artifact import Artifact
from skipgan_edge.runtime.backends.base import Backend

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino", "torch")
log = logging.getLogger(__name__)


def default_onnx_backend() -> str:
    """The fastest installed runtime for an ONNX file on this machine (see the module docstring)."""
    import importlib.util

    if _gpu_provider():
        return "onnxruntime"
    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnxruntime"


#: servers by URL scheme: (check the URL, open a backend on it); filled by :func:`register_remote`
REMOTE: dict[str, tuple[Callable[[str], Any], Callable[[str], Backend]]] = {}


def register_remote(scheme: str, check_url: Callable[[str], Any], factory: Callable[[str], Backend]) -> None:
    """Make ``--backend SCHEME://...`` a backend: ``check_url`` raises ConfigError on a bad URL, ``factory`` opens it."""
    REMOTE[scheme] = (check_url, factory)


def is_remote(backend: str) -> bool:
    """Whether ``backend`` names a server (``triton://...``) rather than a runtime on this machine."""
    return backend.startswith("triton://")


def _remote(backend: str) -> tuple[Callable[[str], Any], Callable[[str], Backend]]:
    scheme = backend.split("://", 1)[0]
    if scheme not in REMOTE:
        raise ConfigError(f"--backend {scheme}://... needs skipgan-edge's service wing: import skipgan_edge.service first "
                          "(the skipgan-edge command does)")
    return REMOTE[scheme]


def resolve_backend(kind: str, backend: str = "auto") -> str:
    """The backend ``auto`` stands for before any race (the provisional choice), or the named one, checked."""
    if is_remote(backend) or kind == "triton":
        if not is_remote(backend) or kind != "triton":
            raise ConfigError("--backend triton://HOST:PORT/MODEL streams to a Triton server: give it without --model, --onnx or --engine")
        _remote(backend)[0](backend)
        return backend
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or triton://HOST:PORT/MODEL")
    if backend != "auto":
        return backend
    return {"model": "torch", "onnx": default_onnx_backend(), "engine": "tensorrt"}[kind]


def race_needed(kind: str, backend: str) -> bool:
    """Whether ``auto`` must time the CPU runtimes for this artifact (an ONNX file, no GPU provider, both installed)."""
    return backend == "auto" and kind == "onnx" and default_onnx_backend() == "openvino"  # ONNX Runtime is always installed


#: backends whose constructor takes ``threads`` (CPU runtimes)
THREADED = ("onnxruntime", "openvino")


#: which backend runs which artifact kind
RUNS = {("model", "torch"), ("onnx", "onnxruntime"), ("onnx", "openvino"), ("engine", "tensorrt")}


@dataclass(frozen=True)
class BackendOptions:
    """Everything a backend can be told, in one place; each backend takes the fields that concern it."""

    device: str = "cpu"  # torch: the device of the reference scorer
    threads: int = 0  # ONNX Runtime / OpenVINO intra-op threads (0 = the runtime's default: all cores)
    providers: str | tuple[str, ...] = "auto"  # ONNX Runtime execution providers ("auto": TensorRT EP, CUDA EP, CPU)
    precision_hint: str = "auto"  # OpenVINO: auto (bf16 for a gated FP16 variant on a bf16 CPU, else f32), f32, bf16
    cuda_api: str = "auto"  # TensorRT: cuda-python or pycuda
    cuda_graphs: bool = True  # TensorRT: CUDA-graph capture of the enqueue
    pad_to_profile: bool = True  # TensorRT: pad a batch below the profile's min
    profile: bool = False  # TensorRT: CUDA-event split of each call (h2d, compute, d2h)

    def kwargs_for(self, backend: str) -> dict[str, Any]:
        if backend == "torch":
            return {"device": self.device}
        if backend == "onnxruntime":
            return {"threads": self.threads, "providers": self.providers if self.providers == "auto" else list(self.providers)}
        if backend == "openvino":
            return {"threads": self.threads, "precision_hint": self.precision_hint}
        return {"cuda_api": self.cuda_api, "cuda_graphs": self.cuda_graphs, "pad_to_profile": self.pad_to_profile,
                "profile": self.profile}


CPU_ONLY = BackendOptions(providers=("CPUExecutionProvider",))


def _create(kind: str, path: Path, backend: str, options: BackendOptions, batch: int = 1) -> Backend:
    if is_remote(backend):
        return _remote(backend)[1](backend)
    if (kind, backend) not in RUNS:
        hint = {"torch": "--model RUN_DIR", "onnxruntime": "--onnx FILE", "openvino": "--onnx FILE", "tensorrt": "--engine FILE"}[backend]
        raise ConfigError(f"--backend {backend} runs {hint}, not --{kind}")
    kw = options.kwargs_for(backend)
    if backend == "torch":
        from skipgan_edge.runtime.backends.torch import TorchBackend

        return TorchBackend(path, **kw)
    if backend == "onnxruntime":
        from skipgan_edge.runtime.backends.onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **kw)
    if backend == "openvino":
        from skipgan_edge.runtime.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, batch=batch, **kw)
    from skipgan_edge.runtime.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(path, **kw)


def choose_backend(kind: str, path: Path, backend: str = "auto", options: BackendOptions | None = None,
                   batch: int = 1) -> tuple[str, dict[str, Any]]:
    """The backend to use and why: the one rule for ``auto`` (module docstring), or the named backend."""
    options = options or BackendOptions()
    name = resolve_backend(kind, backend)
    if backend != "auto":
        return name, {"rule": "a Triton server, named with --backend" if is_remote(backend) else "named with --backend"}
    if race_needed(kind, backend):
        winner, ms = race_cpu_runtimes(Path(path), batch, options)
        return winner, {"rule": f"auto: faster CPU runtime on this model at batch {batch}", "race_ms": ms}
    rule = {"model": "auto: torch runs model folders", "engine": "auto: TensorRT runs engines",
            "onnx": "auto: ONNX Runtime with a GPU provider" if name == "onnxruntime" and _gpu_provider()
            else f"auto: the only CPU runtime installed ({name})"}[kind]
    return name, {"rule": rule}


def _gpu_provider() -> bool:
    import onnxruntime as ort

    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


def open_backend(kind: str, path: Path, backend: str = "auto", options: BackendOptions | None = None, *, batch: int = 1,
                 race: bool = True) -> Backend:
    """Create (not yet activate) the backend for an artifact; use it as a context manager.

    ``batch`` is the batch size the caller will mostly use (``auto``'s race times that size);
    ``race=False`` takes ``auto``'s provisional choice without timing (``run`` races later, once its
    source and sinks are open, and swaps if the other runtime wins).
    """
    options = options or BackendOptions()
    if kind == "triton" and not is_remote(backend):  # a reopen (serve's reload) names the backend "triton": the URL is the path
        backend = "triton://" + str(path)
    if race or not race_needed(kind, backend):
        name, why = choose_backend(kind, Path(path), backend, options, batch)
    else:
        name, why = resolve_backend(kind, backend), {"rule": "auto: provisional, before the race"}
    be = _create(kind, Path(path), name, options, batch)
    be.chosen_by = why
    return be


def race_cpu_runtimes(path: Path, batch: int, options: BackendOptions | None = None, seconds: float = 0.25) -> tuple[str, dict[str, float]]:
    """Time ONNX Runtime and OpenVINO on this ONNX file at this batch size; return the faster one's
    name and each one's median milliseconds per call (warm-up first, then about ``seconds`` or at
    least 5 calls each, on random frames)."""
    from skipgan_edge.runtime.timing import BenchConfig, time_backend

    options = options or BackendOptions()
    per_call: dict[str, float] = {}
    cfg = BenchConfig(warmup=3, duration=seconds, min_iterations=5)
    for name in ("onnxruntime", "openvino"):
        with _create("onnx", path, name, options, batch) as be:
            b = max(1, min(batch, be.max_batch))
            x = np.random.default_rng(0).integers(0, 256, (b, *be.input_shape), dtype=np.uint8)
            per_call[name] = time_backend(be, x, b, cfg)["latency_ms"]["median"]
    best = min(per_call, key=per_call.__getitem__)
    log.info("--backend auto: %s per batch of %d → %s (choose with --backend, or a cell's 'backend')",
             ", ".join(f"{k} {v:.3f} ms" for k, v in per_call.items()), batch, best)
    return best, per_call


__all__ = ["BACKENDS", "CPU_ONLY", "Artifact", "BackendOptions", "choose_backend", "is_remote", "open_backend", "race_cpu_runtimes",
           "register_remote", "resolve_backend"]
