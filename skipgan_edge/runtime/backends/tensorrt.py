"""TensorRT backend: the engine from ``skipgan-edge build``, pinned buffers, one stream, CUDA graphs.

``activate`` checks the engine was built for this GPU and TensorRT version (one-line error with
the rebuild command otherwise), creates the execution context, allocates pinned host and
device buffers for the profile's max batch (:class:`~skipgan_edge.runtime.cuda.IOBuffers`) and
binds them with ``set_tensor_address`` once. ``infer`` copies the uint8 batch into the pinned
input buffer, then on one stream: H2D, ``execute_async_v3``, D2H, synchronise.

CUDA graphs (on by default): the first call at a batch size runs normally (TensorRT finishes
lazy initialisation), the second captures ``execute_async_v3`` into a graph for that batch size
and later calls launch the graph: for a small scorer the launch overhead of many kernels is a
large share of the latency. If capture fails (some TensorRT/driver combinations refuse), the
backend logs it once and keeps running without graphs.

With ``profile=True`` CUDA events split each call into host→device, compute and device→host
milliseconds (``last_timings``), as trtexec reports them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.model.scorer import INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.cuda import CudaApi, IOBuffers, make_cuda_api

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path, cuda_api: str = "auto", cuda_graphs: bool = True, profile: bool = False) -> None:
        super().__init__(path)
        self.cuda_api_name = cuda_api
        self.use_graphs = cuda_graphs
        self.profile = profile
        self.last_timings: dict[str, float] = {}
        self._graphs: dict[int, Any] = {}
        self._seen: set[int] = set()

    def activate(self) -> None:
        from skipgan_edge.export.engine import load_engine

        self.meta, self.engine = load_engine(self.path)
        self.card = dict(self.meta["card"])
        self.precision = str(self.meta["precision"])
        self.max_batch = int(self.meta["profile"]["max"])
        self.api: CudaApi = make_cuda_api(self.cuda_api_name)
        self.context = self.engine.create_execution_context()
        self.stream = self.api.stream_create()
        h, w, c = self.input_shape
        specs: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {INPUT_NAME: ((self.max_batch, h, w, c), np.dtype(np.uint8))}
        specs["score"] = ((self.max_batch,), np.dtype(np.float32))
        specs["normalized_score"] = ((self.max_batch,), np.dtype(np.float32))
        specs["anomaly_map"] = ((self.max_batch, 1, h, w), np.dtype(np.float32))
        self.buffers = IOBuffers(self.api, specs)
        self.buffers.allocate()
        for name, buf in self.buffers.tensors.items():
            self.context.set_tensor_address(name, buf.device)
        if self.profile:
            self._events = [self.api.event_create() for _ in range(4)]

    def _enqueue(self, batch: int) -> None:
        self.buffers.htod(INPUT_NAME, batch, self.stream)
        if batch in self._graphs:
            self.api.graph_launch(self._graphs[batch], self.stream)
        elif not self.context.execute_async_v3(self.api.stream_handle(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for name in OUTPUT_NAMES:
            self.buffers.dtoh(name, batch, self.stream)

    def _capture(self, batch: int) -> None:
        try:
            self.api.graph_begin(self.stream)
            self.context.execute_async_v3(self.api.stream_handle(self.stream))
            self._graphs[batch] = self.api.graph_end(self.stream)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run without graphs
            log.warning("CUDA graph capture failed (%s); continuing without graphs", exc)
            self.use_graphs = False
            self._graphs.clear()

    def infer(self, images: np.ndarray) -> ScoreBatch:
        self.check_input(images)
        b = len(images)
        if b > self.max_batch:
            raise ValueError(f"batch {b} exceeds the engine profile's max batch {self.max_batch}; rebuild with a larger --batch")
        self.buffers.tensors[INPUT_NAME].array(b)[...] = images
        self.context.set_input_shape(INPUT_NAME, (b, *self.input_shape))
        if self.use_graphs and b in self._seen and b not in self._graphs:
            self._capture(b)
        if self.profile:
            self._timed(b)
        else:
            self._enqueue(b)
            self.api.stream_sync(self.stream)
        self._seen.add(b)
        t = self.buffers.tensors
        return ScoreBatch(t["score"].array(b).copy(), t["anomaly_map"].array(b).copy(), t["normalized_score"].array(b).copy())

    def _timed(self, b: int) -> None:
        e0, e1, e2, e3 = self._events
        api, s = self.api, self.stream
        api.event_record(e0, s)
        self.buffers.htod(INPUT_NAME, b, s)
        api.event_record(e1, s)
        if b in self._graphs:
            api.graph_launch(self._graphs[b], s)
        else:
            self.context.execute_async_v3(api.stream_handle(s))
        api.event_record(e2, s)
        for name in OUTPUT_NAMES:
            self.buffers.dtoh(name, b, s)
        api.event_record(e3, s)
        api.stream_sync(s)
        self.last_timings = {
            "h2d_ms": api.event_elapsed_ms(e0, e1), "compute_ms": api.event_elapsed_ms(e1, e2), "d2h_ms": api.event_elapsed_ms(e2, e3)
        }

    def deactivate(self) -> None:
        if getattr(self, "buffers", None) is not None:
            self.api.stream_sync(self.stream)
            self.buffers.free()
            self.api.stream_destroy(self.stream)
        self._graphs.clear()
        for attr in ("context", "engine"):  # the context must go before the engine
            if hasattr(self, attr):
                delattr(self, attr)
        super().deactivate()
