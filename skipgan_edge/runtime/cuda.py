"""Device memory for the TensorRT backend: pinned host buffers, device buffers, one stream, graphs.

One small interface (:class:`CudaApi`) with two implementations:

* :class:`CudaPythonApi` over ``cuda.bindings.runtime`` (cuda-python): the default; wheels for
  x86-64 and aarch64, and what NVIDIA's own TensorRT samples use since TensorRT 10.
* :class:`PyCudaApi` over PyCUDA: used with ``--cuda-api pycuda`` or when it is the only one
  installed.

:class:`IOBuffers` owns, for every engine I/O tensor, a pinned host buffer and a device buffer
sized for the optimisation profile's max batch. They are allocated once in ``activate`` and
reused for every batch (``allocations`` counts them; tests check it does not grow per frame).
Copies are asynchronous on one stream; ``execute_async_v3`` runs on the same stream.

Threads. A CUDA context is current per host thread, and ``serve`` activates a backend on one thread (start-up, or
the reload watcher), infers on another (the ``model-*`` worker) and deactivates on a third (the worker after a
swap, or the main thread at the end). So nothing here leaves a context current across calls: ``with
api.current():`` pushes the device's primary context on the calling thread and pops it on the same thread when
the block ends, and the TensorRT backend wraps ``activate``, each batch and ``deactivate`` (TensorRT's own calls
included) in one such block. Both implementations use the primary context, the one the CUDA runtime and
TensorRT use: cuda-python retains it through the driver API (``cuDevicePrimaryCtxRetain``, then
``cuCtxPushCurrent``/``cuCtxPopCurrent`` per block; the runtime API calls inside then run in it instead of
whatever cudart would bind implicitly on that thread), and ``close`` releases the retain; PyCUDA retains it once
per process (``Device.retain_primary_context``, as ``pycuda.autoprimaryctx`` does) and pushes/pops that same
context object per block, so PyCUDA's per-thread context stack is empty again after every block (PyCUDA aborts
the process when a thread ends with a context still on its stack, and refuses ``Context.pop`` on a thread that
did not push). A push/pop pair costs two driver calls per batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from skipgan_edge.errors import MissingDependencyError, SkipganError

log = logging.getLogger(__name__)


# cudaErrorInsufficientDriver, cudaErrorNoDevice: what a machine without a GPU or driver answers
NO_GPU_CODES = (35, 100)
NO_GPU_HINT = "; this machine has no usable NVIDIA GPU and driver (check nvidia-smi); use --onnx on the CPU instead"


def _driver_mismatch_hint() -> str | None:
    """Error 35 with a driver present means cuda-python is newer than the driver (cuda-python 13 on JetPack 6)."""
    from skipgan_edge.runtime.cudaenv import cuda_python_mismatch

    line = cuda_python_mismatch()
    return f"; {line}" if line is not None else None


class CudaError(SkipganError, RuntimeError):
    """A CUDA call returned an error code (one line at the CLI, as every SkipganError)."""


class CudaApi(Protocol):
    name: str
    #: whether ``graph_begin``/``graph_end`` (stream capture) exist: cuda-python yes, PyCUDA no
    supports_graphs: bool

    def malloc_host(self, nbytes: int) -> tuple[int, np.ndarray]: ...
    def free_host(self, ptr: int) -> None: ...
    def malloc_device(self, nbytes: int) -> int: ...
    def free_device(self, ptr: int) -> None: ...
    def stream_create(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def stream_destroy(self, stream: Any) -> None: ...
    def stream_sync(self, stream: Any) -> None: ...
    def htod_async(self, dst: int, src_ptr: int, nbytes: int, stream: Any) -> None: ...
    def dtoh_async(self, dst_ptr: int, src: int, nbytes: int, stream: Any) -> None: ...
    def event_create(self) -> Any: ...
    def event_record(self, event: Any, stream: Any) -> None: ...
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...
    def event_destroy(self, event: Any) -> None: ...
    def graph_begin(self, stream: Any) -> None: ...
    def graph_end(self, stream: Any) -> Any: ...
    def graph_abort(self, stream: Any) -> None: ...
    def graph_launch(self, graph_exec: Any, stream: Any) -> None: ...
    def graph_exec_destroy(self, graph_exec: Any) -> None: ...
    def clear_error(self) -> int: ...
    def current(self) -> contextlib.AbstractContextManager[None]: ...
    def close(self) -> None: ...


def _host_view(ptr: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))


class CudaPythonApi:
    """cuda-python (``cuda.bindings``); every call's error code is checked.

    Copies, streams, events and graphs go through the runtime API (``cuda.bindings.runtime``); the context through
    the driver API (``cuda.bindings.driver``): the device's primary context is retained on the first
    :meth:`current` block (so that building this object needs no GPU) and released by :meth:`close`.
    ``bindings`` = (driver, runtime) modules replaces the imported ones (the CPU tests' recording stand-in).
    """

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device: int = 0, bindings: tuple[Any, Any] | None = None) -> None:
        if bindings is None:
            try:
                from cuda.bindings import driver, runtime
            except ImportError:
                raise MissingDependencyError("CUDA buffers need cuda-python: pip install 'skipgan-edge[tensorrt]'") from None
            bindings = (driver, runtime)
        self.drv, self.rt = bindings
        self.device = device
        self._ctx: Any = None
        self._cu_device: Any = None
        self._lock = threading.Lock()

    def _check_drv(self, result: Any) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            _, msg = self.drv.cuGetErrorString(err)
            hint = NO_GPU_HINT if int(err) in (100, 803, 804) else ""  # no device; driver/library mismatch
            raise CudaError(f"CUDA driver error {int(err)}: {msg.decode() if isinstance(msg, bytes) else msg}{hint}")
        if isinstance(result, tuple):
            return result[1] if len(result) == 2 else result[1:]
        return None

    def _primary(self) -> Any:
        """The device's primary context, retained once by this object (cuInit, cuDeviceGet, cuDevicePrimaryCtxRetain)."""
        with self._lock:
            if self._ctx is None:
                try:
                    self._check_drv(self.drv.cuInit(0))
                    dev = self._check_drv(self.drv.cuDeviceGet(self.device))
                    self._ctx = self._check_drv(self.drv.cuDevicePrimaryCtxRetain(dev))
                    self._cu_device = dev
                except CudaError as exc:
                    raise CudaError(f"{exc}{_driver_mismatch_hint() or ''}") from None
                except RuntimeError as exc:  # cuda.pathfinder: no libcuda at all
                    hint = _driver_mismatch_hint() or NO_GPU_HINT
                    raise CudaError(f"cuda-python could not load the NVIDIA driver ({str(exc).splitlines()[0]}){hint}") from None
            return self._ctx

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The primary context current on the calling thread for the block: pushed here, popped here."""
        self._check_drv(self.drv.cuCtxPushCurrent(self._primary()))
        try:
            yield
        finally:
            self._check_drv(self.drv.cuCtxPopCurrent())

    def _check(self, result: Any) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            _, msg = self.rt.cudaGetErrorString(err)
            hint = NO_GPU_HINT if int(err) in NO_GPU_CODES else ""
            if int(err) == 35:
                hint = _driver_mismatch_hint() or hint
            raise CudaError(f"CUDA error {int(err)}: {msg.decode() if isinstance(msg, bytes) else msg}{hint}")
        if isinstance(result, tuple):
            return result[1] if len(result) == 2 else result[1:]
        return None

    def malloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes)))
        return ptr, _host_view(ptr, nbytes)

    def free_host(self, ptr: int) -> None:
        self._check(self.rt.cudaFreeHost(ptr))

    def malloc_device(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def free_device(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def stream_create(self) -> Any:
        return self._check(self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream))

    def stream_sync(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def htod_async(self, dst: int, src_ptr: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src_ptr, nbytes, kind, stream))

    def dtoh_async(self, dst_ptr: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst_ptr, src, nbytes, kind, stream))

    def event_create(self) -> Any:
        return self._check(self.rt.cudaEventCreate())

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream))

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self.rt.cudaEventSynchronize(end))
        return float(self._check(self.rt.cudaEventElapsedTime(start, end)))

    def event_destroy(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event))

    def graph_begin(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode))

    def graph_end(self, stream: Any) -> Any:
        """End a capture and instantiate it; the graph itself is destroyed (the exec keeps its copy)."""
        graph = self._check(self.rt.cudaStreamEndCapture(stream))
        try:
            return self._check(self.rt.cudaGraphInstantiate(graph, 0))
        finally:
            self.rt.cudaGraphDestroy(graph)

    def graph_abort(self, stream: Any) -> None:
        """After a failed enqueue inside a capture (trtexec's endCaptureOnError): end the capture and destroy
        whatever graph it returns; the caller then clears the sticky error with :meth:`clear_error`."""
        result = self.rt.cudaStreamEndCapture(stream)
        graph = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        if graph is not None and int(result[0]) == 0 and int(graph) != 0:
            self.rt.cudaGraphDestroy(graph)

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, stream))

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph_exec))

    def clear_error(self) -> int:
        """``cudaGetLastError``: returns and resets the last error code (0 if none)."""
        result = self.rt.cudaGetLastError()
        return int(result[0] if isinstance(result, tuple) else result)

    def close(self) -> None:
        """Release the primary context's retain (once; any thread: the driver keeps no per-thread state for it).
        Call it outside any :meth:`current` block, after everything allocated in it is freed."""
        with self._lock:
            dev, self._cu_device, self._ctx = self._cu_device, None, None
        if dev is not None:
            self._check_drv(self.drv.cuDevicePrimaryCtxRelease(dev))


_PYCUDA_PRIMARY: dict[tuple[int, int], tuple[Any, Any]] = {}
_PYCUDA_LOCK = threading.Lock()


def _pycuda_primary(drv: Any, device: int) -> Any:
    """The device's primary context as one PyCUDA ``Context`` per process, retained on first use and kept (as
    ``pycuda.autoprimaryctx`` keeps it): PyCUDA ties each allocation to that exact object, and a ``detach`` from a
    thread other than the one that retained it is silently skipped, so a per-backend retain would leak on reload."""
    key = (id(drv), device)
    with _PYCUDA_LOCK:
        if key not in _PYCUDA_PRIMARY:
            drv.init()
            _PYCUDA_PRIMARY[key] = (drv, drv.Device(device).retain_primary_context())
        return _PYCUDA_PRIMARY[key][1]


class PyCudaApi:
    """PyCUDA (``pycuda.driver``), for systems where it is what is installed.

    PyCUDA does not create a context on its own (without ``pycuda.autoinit``): this uses the device's primary
    context, the one TensorRT and the CUDA runtime use (:func:`_pycuda_primary`), and pushes it only for the
    length of a :meth:`current` block, popping it on the same thread. Everything PyCUDA allocates (pinned host
    memory, device memory, streams, events) belongs to that context and is freed inside a block, so PyCUDA never
    has to activate it "out of thread". PyCUDA has no stream capture, so CUDA graphs are off with it
    (``supports_graphs``; ``doctor`` says so). ``driver_module`` replaces ``pycuda.driver`` (the CPU tests' stand-in).
    """

    name = "pycuda"
    supports_graphs = False

    def __init__(self, device: int = 0, driver_module: Any = None) -> None:
        if driver_module is None:
            try:
                import pycuda.driver

                driver_module = pycuda.driver
            except ImportError:
                raise MissingDependencyError("--cuda-api pycuda needs PyCUDA: pip install 'skipgan-edge[pycuda]'") from None
        self.drv = drv = driver_module
        try:
            self.ctx = _pycuda_primary(drv, device)
        except drv.Error as exc:
            raise CudaError(f"PyCUDA could not open CUDA device {device} ({exc}){NO_GPU_HINT}") from None
        self._host: dict[int, Any] = {}
        self._dev: dict[int, Any] = {}

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The primary context current on the calling thread for the block (``Context.push`` here, ``Context.pop`` here)."""
        self.ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def malloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        arr = self.drv.pagelocked_empty(nbytes, np.uint8)
        ptr = int(arr.ctypes.data)
        self._host[ptr] = arr
        return ptr, arr

    def free_host(self, ptr: int) -> None:
        self._host.pop(ptr, None)

    def malloc_device(self, nbytes: int) -> int:
        mem = self.drv.mem_alloc(nbytes)
        self._dev[int(mem)] = mem
        return int(mem)

    def free_device(self, ptr: int) -> None:
        mem = self._dev.pop(ptr, None)
        if mem is not None:
            mem.free()

    def stream_create(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_destroy(self, stream: Any) -> None:
        del stream

    def stream_sync(self, stream: Any) -> None:
        stream.synchronize()

    def htod_async(self, dst: int, src_ptr: int, nbytes: int, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, _host_view(src_ptr, nbytes), stream)

    def dtoh_async(self, dst_ptr: int, src: int, nbytes: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(_host_view(dst_ptr, nbytes), src, stream)

    def event_create(self) -> Any:
        return self.drv.Event()

    def event_record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def event_destroy(self, event: Any) -> None:
        del event  # PyCUDA frees it with the Python object

    def graph_begin(self, stream: Any) -> None:
        raise CudaError("PyCUDA has no CUDA stream capture; CUDA graphs need --cuda-api cuda-python")

    def graph_end(self, stream: Any) -> Any:
        raise CudaError("PyCUDA has no CUDA stream capture")

    def graph_abort(self, stream: Any) -> None:
        return None

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        raise CudaError("PyCUDA has no CUDA graphs")

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        return None

    def clear_error(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing to pop (every block popped what it pushed) and nothing to release (the process keeps the retain)."""
        self._host.clear()
        self._dev.clear()


def make_cuda_api(which: str = "auto") -> CudaApi:
    """``auto``: cuda-python if installed, else PyCUDA; or ``cuda-python`` / ``pycuda`` explicitly."""
    if which in ("auto", "cuda-python"):
        try:
            return CudaPythonApi()
        except MissingDependencyError:
            if which == "cuda-python":
                raise
    if which in ("auto", "pycuda"):
        return PyCudaApi()
    raise MissingDependencyError(f"unknown --cuda-api {which!r}; choose cuda-python or pycuda")


@dataclass
class TensorBuffer:
    name: str
    shape: tuple[int, ...]  # at max batch
    dtype: np.dtype[Any]
    host_ptr: int
    host: np.ndarray  # pinned bytes, viewed as dtype with `array()`
    device: int
    nbytes: int

    def array(self, batch: int) -> np.ndarray:
        """The first ``batch`` items of the pinned buffer as a typed array (no copy)."""
        per_item = self.nbytes // self.shape[0]
        return self.host[: batch * per_item].view(self.dtype).reshape((batch, *self.shape[1:]))


@dataclass
class IOBuffers:
    """Pinned host + device buffers for every I/O tensor, allocated once for the max batch."""

    api: CudaApi
    specs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]
    tensors: dict[str, TensorBuffer] = field(default_factory=dict)
    allocations: int = 0

    def allocate(self) -> None:
        for name, (shape, dtype) in self.specs.items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            host_ptr, host = self.api.malloc_host(nbytes)
            dev = self.api.malloc_device(nbytes)
            self.allocations += 2
            self.tensors[name] = TensorBuffer(name, tuple(shape), np.dtype(dtype), host_ptr, host, dev, nbytes)

    def htod(self, name: str, batch: int, stream: Any) -> None:
        t = self.tensors[name]
        self.api.htod_async(t.device, t.host_ptr, t.nbytes // t.shape[0] * batch, stream)

    def dtoh(self, name: str, batch: int, stream: Any) -> None:
        t = self.tensors[name]
        self.api.dtoh_async(t.host_ptr, t.device, t.nbytes // t.shape[0] * batch, stream)

    def free(self) -> None:
        for t in self.tensors.values():
            self.api.free_device(t.device)
            self.api.free_host(t.host_ptr)
        self.tensors.clear()
