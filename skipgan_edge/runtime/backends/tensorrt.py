"""TensorRT backend: the engine from ``skipgan-edge build``, pinned buffers, one stream, CUDA graphs.

``activate`` first opens the CUDA API (PyCUDA pushes its context here, before any TensorRT call),
then checks the engine was built for this GPU and TensorRT version (one-line error with the
rebuild command otherwise), creates the execution context, allocates pinned host and device
buffers for the profile's max batch (:class:`~skipgan_edge.runtime.cuda.IOBuffers`) and binds them
with ``set_tensor_address`` once. ``infer`` copies the uint8 batch into the pinned input buffer,
then on one stream: H2D, ``execute_async_v3``, D2H, synchronise. Every TensorRT call's return
value is checked.

Batch sizes follow the engine's optimisation profile: a batch above its max is refused; a batch
below its min (the pipeline's max-wait flush can produce one) is padded up to the min with zero
frames and the padding is dropped from the results, or refused with one line when
``pad_to_profile=False``. ``set_input_shape`` is called when the batch size changes and its return
is checked.

CUDA graphs (on by default with cuda-python; PyCUDA has no stream capture, so they are off with
it), captured the way trtexec (``sampleInference.cpp``) and Triton's TensorRT backend do: for each
batch size, one uncaptured ``execute_async_v3`` at that size and a synchronize first (TensorRT
finishes lazy initialisation there, which must not be captured); then begin capture,
``execute_async_v3`` with its return checked, end capture and instantiate. If any of that fails,
the capture is ended, its graph discarded, the sticky CUDA error cleared (``cudaGetLastError``),
every graph destroyed, and the backend continues without graphs (logged once). Only the enqueue
is in the graph; the copies stay outside, so a replay always reads the current input buffer.
``deactivate`` destroys graph execs and events and resets the per-size state.

With ``profile=True`` CUDA events split each call into host→device, compute and device→host
milliseconds (``last_timings``), as trtexec reports them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard
from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.errors import EngineError
from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.cuda import CudaApi, CudaError, IOBuffers, make_cuda_api

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

    # seams: the real engine and CUDA API; a protocol test replaces them with recording fakes
    def _open_api(self) -> CudaApi:
        return make_cuda_api(self.cuda_api_name)

    def _open_engine(self) -> tuple[dict[str, Any], Any]:
        from skipgan_edge.runtime.engine_file import load_engine

        return load_engine(self.path)

    def activate(self) -> None:
        self.api: CudaApi = self._open_api()  # PyCUDA: context created and pushed before TensorRT deserializes
        try:
            self.meta, self.engine = self._open_engine()
        except BaseException:
            self.api.close()
            raise
        if self.use_graphs and not self.api.supports_graphs:
            log.info("CUDA graphs are off: %s has no stream capture", self.api.name)
            self.use_graphs = False
        self.card = ModelCard.from_dict(self.meta.get("card"), str(self.path))
        self.precision = str(self.meta["precision"])
        self.min_batch = int(self.meta["profile"]["min"])
        self.max_batch = int(self.meta["profile"]["max"])
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
        b = len(images)
        run_b = profile_batch(b, self.min_batch, self.max_batch, self.pad_to_profile)
        host = self.buffers.tensors[INPUT_NAME].array(run_b)
        host[:b] = images
        if run_b > b:
            host[b:] = 0  # padding up to the profile's min; its results are dropped below
        self._set_batch(run_b)
        if self.use_graphs and run_b not in self._graphs:
            self._capture(run_b)
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
        api = getattr(self, "api", None)
        if api is not None:
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
        self._shape_batch = None
        for attr in ("context", "engine"):  # the context must go before the engine
            if hasattr(self, attr):
                delattr(self, attr)
        if api is not None:
            api.close()
            del self.api
        super().deactivate()
