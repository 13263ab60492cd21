"""TensorRT backend: the engine from ``skipgan-edge build``, pinned buffers, one stream, CUDA graphs.

``activate`` first opens the CUDA API, then, with its context current on the calling thread, checks the engine
was built for this GPU and TensorRT version (one-line error with the rebuild command otherwise), deserializes it,
creates the execution context, allocates pinned host and device buffers for the profile's max batch
(:class:`~skipgan_edge.runtime.cuda.IOBuffers`), binds them with ``set_tensor_address`` once and captures the
CUDA graphs. ``infer`` copies the uint8 batch into the pinned input buffer, then on one stream: H2D,
``execute_async_v3`` (or the batch size's graph), D2H, synchronise. Every TensorRT call's return value is checked.

Threads: ``activate``, every batch and ``deactivate`` each run inside one ``with api.current():`` block (push on
entry, pop on exit, same thread; :mod:`skipgan_edge.runtime.cuda`), so the thread that activates (``serve``'s
start-up or reload thread), the thread that infers (its ``model-*`` worker) and the thread that deactivates (the
worker after a swap, the main thread at the end) each have the context current for their own calls, TensorRT's
included, and none is left with it. A lock keeps it to one batch at a time: ``deactivate`` from another thread
waits for the batch in flight.

Batch sizes follow the engine's optimisation profile: a batch above its max is refused; a batch
below its min (the pipeline's max-wait flush can produce one) is padded up to the min with zero
frames and the padding is dropped from the results, or refused with one line when
``pad_to_profile=False``. ``set_input_shape`` is called when the batch size changes and its return
is checked.

CUDA graphs (on by default with cuda-python; PyCUDA has no stream capture, so they are off with it) are captured
in ``activate`` for every batch size of the profile (min..max), never mid-stream, the way trtexec
(``sampleInference.cpp``) and Triton's TensorRT backend do: for each size, ``set_input_shape``, one uncaptured
``execute_async_v3`` at that size and a synchronize first (TensorRT finishes lazy initialisation there, which must
not be captured); then begin capture, ``execute_async_v3`` with its return checked, end capture and instantiate.
If any of that fails, the capture is ended, its graph discarded, the sticky CUDA error cleared
(``cudaGetLastError``), every graph destroyed, and the backend continues without graphs (logged once). Only the
enqueue is in the graph; the copies stay outside, so a replay always reads the current input buffer.
``deactivate`` destroys graph execs and events and resets the per-size state.

With ``profile=True`` CUDA events split each call into host→device, compute and device→host
milliseconds (``last_timings``), as trtexec reports them.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.errors import EngineError
from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.cuda import CudaApi, CudaError, IOBuffers, make_cuda_api
from skipgan_edge.runtime.engine_file import EngineHeader

log = logging.getLogger(__name__)


def profile_batch(b: int, lo: int, hi: int, pad: bool) -> int:
    """The batch size to run for ``b`` frames under a profile [lo, hi] (raises EngineError if impossible)."""
    if b < 1:
        raise ValueError("an empty batch has nothing to score")
    if b > hi:
        raise EngineError(f"batch {b} exceeds the engine profile's max batch {hi}; rebuild with a larger --batch (min,opt,max)")
    if b < lo:
        if not pad:
            raise EngineError(f"batch {b} is below the engine profile's min batch {lo}; rebuild with --batch 1,OPT,MAX "
                              "or allow padding")
        return lo
    return b


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path, cuda_api: str = "auto", cuda_graphs: bool = True, profile: bool = False,
                 pad_to_profile: bool = True) -> None:
        super().__init__(path)
        self.cuda_api_name = cuda_api
        self.use_graphs = cuda_graphs
        self.profile = profile
        self.pad_to_profile = pad_to_profile
        self.last_timings: dict[str, float] = {}
        self._graphs: dict[int, Any] = {}
        self._events: list[Any] = []
        self._shape_batch: int | None = None
        self.graph_failure: str | None = None
        self._lock = threading.RLock()  # one batch at a time; deactivate waits for the one in flight

    # seams: the real engine and CUDA API; a protocol test replaces them with recording fakes
    def _open_api(self) -> CudaApi:
        return make_cuda_api(self.cuda_api_name)

    def _open_engine(self) -> tuple[EngineHeader, Any]:
        from skipgan_edge.runtime.engine_file import load_engine

        return load_engine(self.path)

    def _preflight(self) -> None:
        """What needs no GPU: the engine file exists with a valid header, and TensorRT imports."""
        from skipgan_edge.runtime.engine_file import import_tensorrt, read_engine_file

        read_engine_file(self.path)
        import_tensorrt()

    def activate(self) -> None:
        """Open the CUDA API, then everything else with its context current on this thread (one push, one pop here);
        on any failure what was made so far is released before the error goes on."""
        with self._lock:
            self._preflight()  # a missing or foreign file, or no TensorRT, is one line before any CUDA call
            self.api: CudaApi = self._open_api()
            try:
                with self.api.current():  # PyCUDA and cuda-python alike: current before TensorRT deserializes
                    self._activate()
            except BaseException:
                try:
                    self.deactivate()
                except Exception as exc:  # noqa: BLE001 - the activation's own error is the one to report
                    log.warning("releasing a half-activated TensorRT backend: %s", exc)
                raise

    def _activate(self) -> None:
        self.meta, self.engine = self._open_engine()
        if self.use_graphs and not self.api.supports_graphs:
            log.info("CUDA graphs are off: %s has no stream capture", self.api.name)
            self.use_graphs = False
        if self.meta.precision is None or self.meta.profile is None:
            raise EngineError(f"{self.path} has no precision or batch profile in its header; rebuild it with skipgan-edge build")
        self.card = self.meta.need_card(self.path)
        self.precision = self.meta.precision
        self.min_batch = self.meta.profile.min
        self.max_batch = self.meta.profile.max
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self.stream = self.api.stream_create()
        h, w, c = self.input_shape
        specs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {INPUT_NAME: ((self.max_batch, h, w, c), np.dtype(np.uint8))}
        specs["score"] = ((self.max_batch,), np.dtype(np.float32))
        specs["normalized_score"] = ((self.max_batch,), np.dtype(np.float32))
        specs["anomaly_map"] = ((self.max_batch, 1, h, w), np.dtype(np.float32))
        self.buffers = IOBuffers(self.api, specs)
        self.buffers.allocate()
        for name, buf in self.buffers.tensors.items():
            if not self.context.set_tensor_address(name, buf.device):
                raise EngineError(f"TensorRT refused the buffer for tensor '{name}' of {self.path}; is it an engine of skipgan-edge's scorer?")
        if self.profile:
            self._events = [self.api.event_create() for _ in range(4)]
        if self.use_graphs:
            self._capture_profile()

    def _capture_profile(self) -> None:
        """One CUDA graph per batch size of the profile (min..max: the batcher's max-wait flush can make any of
        them), captured here, before the first frame, so that no frame ever waits for a capture."""
        t0 = time.perf_counter()
        for b in range(self.min_batch, self.max_batch + 1):
            self._set_batch(b)
            self._capture(b)
            if not self.use_graphs:  # a capture failed: _give_up_graphs destroyed the others, the stream is clean
                return
        log.info("captured %d CUDA graphs (batch %d..%d) in %.0f ms", len(self._graphs), self.min_batch, self.max_batch,
                 (time.perf_counter() - t0) * 1e3)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.api.stream_handle(self.stream)):
            raise EngineError("TensorRT execute_async_v3 failed; rerun with -v for TensorRT's log")

    def _set_batch(self, b: int) -> None:
        if b == self._shape_batch:
            return
        if not self.context.set_input_shape(INPUT_NAME, (b, *self.input_shape)):
            raise EngineError(f"TensorRT refused input shape {(b, *self.input_shape)} (profile {self.min_batch}..{self.max_batch})")
        self._shape_batch = b

    def _capture(self, b: int) -> None:
        """Capture the enqueue at batch ``b`` into a CUDA graph, as trtexec and Triton do."""
        api, s = self.api, self.stream
        self._execute()  # warm-up at this size, uncaptured: TensorRT's lazy work must not land in the graph
        api.stream_sync(s)
        try:
            api.graph_begin(s)
        except CudaError as exc:
            api.clear_error()
            self._give_up_graphs(f"begin capture: {exc}")
            return
        try:
            ok = bool(self.context.execute_async_v3(api.stream_handle(s)))
        except Exception as exc:  # noqa: BLE001 - the capture must be ended whatever went wrong
            api.graph_abort(s)
            api.clear_error()
            self._give_up_graphs(f"enqueue during capture raised {exc.__class__.__name__}: {exc}")
            return
        if not ok:
            api.graph_abort(s)
            api.clear_error()  # the invalidated capture leaves a sticky error: read it so the stream is usable
            self._give_up_graphs("execute_async_v3 returned false during capture")
            return
        try:
            self._graphs[b] = api.graph_end(s)
        except CudaError as exc:
            api.clear_error()
            self._give_up_graphs(f"end capture / instantiate: {exc}")

    def _give_up_graphs(self, why: str) -> None:
        log.warning("CUDA graph capture failed (%s); continuing without CUDA graphs", why)
        self.graph_failure = why
        self.use_graphs = False
        self._destroy_graphs()

    def _destroy_graphs(self) -> None:
        graphs, self._graphs = self._graphs, {}
        for g in graphs.values():
            try:
                self.api.graph_exec_destroy(g)
            except CudaError as exc:
                log.debug("destroying a CUDA graph: %s", exc)

    def _run(self, images: np.ndarray) -> ScoreBatch:
        """One batch with the context current on the calling thread (the worker's, whichever thread activated)."""
        with self._lock, self.api.current():
            return self._run_current(images)

    def _run_current(self, images: np.ndarray) -> ScoreBatch:
        b = len(images)
        run_b = profile_batch(b, self.min_batch, self.max_batch, self.pad_to_profile)
        host = self.buffers.tensors[INPUT_NAME].array(run_b)
        host[:b] = images
        if run_b > b:
            host[b:] = 0  # padding up to the profile's min; its results are dropped below
        self._set_batch(run_b)
        if self.profile:
            self._timed(run_b)
        else:
            self._enqueue(run_b)
            self.api.stream_sync(self.stream)
        t = self.buffers.tensors
        return ScoreBatch(t["score"].array(run_b)[:b].copy(), t["anomaly_map"].array(run_b)[:b].copy(),
                          t["normalized_score"].array(run_b)[:b].copy())

    def _launch(self, b: int) -> None:
        if b in self._graphs:
            self.api.graph_launch(self._graphs[b], self.stream)
        else:
            self._execute()

    def _enqueue(self, b: int) -> None:
        self.buffers.htod(INPUT_NAME, b, self.stream)
        self._launch(b)
        for name in OUTPUT_NAMES:
            self.buffers.dtoh(name, b, self.stream)

    def _timed(self, b: int) -> None:
        e0, e1, e2, e3 = self._events
        api, s = self.api, self.stream
        api.event_record(e0, s)
        self.buffers.htod(INPUT_NAME, b, s)
        api.event_record(e1, s)
        self._launch(b)
        api.event_record(e2, s)
        for name in OUTPUT_NAMES:
            self.buffers.dtoh(name, b, s)
        api.event_record(e3, s)
        api.stream_sync(s)
        self.last_timings = {
            "h2d_ms": api.event_elapsed_ms(e0, e1), "compute_ms": api.event_elapsed_ms(e1, e2), "d2h_ms": api.event_elapsed_ms(e2, e3)
        }

    def deactivate(self) -> None:
        """Release everything with the context current on the calling thread (pushed and popped here), then the API.
        Waits for a batch in flight on another thread (the lock); safe to call twice and after a failed activate."""
        with self._lock:
            api = getattr(self, "api", None)
            try:
                if api is not None and self._holds_device_state():
                    with api.current():
                        self._release(api)
            finally:
                self._shape_batch = None
                for attr in ("context", "engine"):  # outside a block only when the block could not be entered
                    if hasattr(self, attr):
                        delattr(self, attr)
                if api is not None:
                    del self.api
                    api.close()
                super().deactivate()

    def _holds_device_state(self) -> bool:
        return bool(self._graphs or self._events or getattr(self, "stream", None) is not None
                    or getattr(self, "buffers", None) is not None or hasattr(self, "context") or hasattr(self, "engine"))

    def _release(self, api: CudaApi) -> None:
        if getattr(self, "stream", None) is not None:
            api.stream_sync(self.stream)
        self._destroy_graphs()
        for e in self._events:
            api.event_destroy(e)
        self._events = []
        if getattr(self, "buffers", None) is not None:
            self.buffers.free()
            self.buffers = None  # type: ignore[assignment]
        if getattr(self, "stream", None) is not None:
            api.stream_destroy(self.stream)
            self.stream = None
        for attr in ("context", "engine"):  # TensorRT frees its device memory here: the context must go before the engine
            if hasattr(self, attr):
                delattr(self, attr)
