"""The TensorRT backend's call protocol, checked on the CPU with a recording stand-in for TensorRT and CUDA.

TensorRT and a GPU cannot run here (tests/test_tensorrt.py and tests/test_cuda.py run them on a GPU
machine). What can be checked without them is the order and the checks of our calls, the part
trtexec and Triton got right and we had wrong: a warm-up enqueue and a synchronize before each
capture, the enqueue's return checked inside the capture, the capture ended and the sticky error
cleared on failure, graphs that replay the *current* input (different frames per call), profile
bounds with padding, and every graph, event and buffer released on deactivate. The stand-in keeps
"device" memory in numpy arrays and replays captured enqueues the way a CUDA graph would.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from skipgan_edge.card import ScoreSpec, Threshold, ValStats, build_card
from skipgan_edge.config import ModelConfig, RunConfig
from skipgan_edge.errors import EngineError
from skipgan_edge.runtime.backends.tensorrt import TensorRTBackend, profile_batch
from skipgan_edge.runtime.engine_file import EngineHeader

H, W, C = 32, 32, 3


class RecordingCuda:
    name = "recording"

    def __init__(self, supports_graphs: bool = True) -> None:
        self.supports_graphs = supports_graphs
        self.calls: list[str] = []
        self.host: dict[int, np.ndarray] = {}
        self.dev: dict[int, np.ndarray] = {}
        self.capturing: list[Any] | None = None
        self.graphs: dict[int, list[Any]] = {}
        self.sticky = 0
        self.events: set[int] = set()
        self._n = 0

    def _id(self) -> int:
        self._n += 1
        return self._n

    def malloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        arr = np.zeros(nbytes, np.uint8)
        self.host[int(arr.ctypes.data)] = arr
        return int(arr.ctypes.data), arr

    def free_host(self, ptr: int) -> None:
        del self.host[ptr]

    def malloc_device(self, nbytes: int) -> int:
        h = self._id() << 20
        self.dev[h] = np.zeros(nbytes, np.uint8)
        return h

    def free_device(self, ptr: int) -> None:
        del self.dev[ptr]

    def stream_create(self) -> int:
        return self._id()

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self.calls.append("stream_destroy")

    def stream_sync(self, stream: Any) -> None:
        assert self.capturing is None, "synchronize inside a capture invalidates it"
        self.calls.append("sync")

    def htod_async(self, dst: int, src_ptr: int, nbytes: int, stream: Any) -> None:
        assert self.capturing is None, "copies stay outside the graph"
        self.dev[dst][:nbytes] = self.host[src_ptr][:nbytes]
        self.calls.append("htod")

    def dtoh_async(self, dst_ptr: int, src: int, nbytes: int, stream: Any) -> None:
        assert self.capturing is None
        self.host[dst_ptr][:nbytes] = self.dev[src][:nbytes]
        self.calls.append("dtoh")

    def event_create(self) -> int:
        e = self._id()
        self.events.add(e)
        return e

    def event_record(self, event: Any, stream: Any) -> None:
        self.calls.append("event_record")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return 0.01

    def event_destroy(self, event: Any) -> None:
        self.events.remove(event)

    def graph_begin(self, stream: Any) -> None:
        self.capturing = []
        self.calls.append("begin_capture")

    def graph_end(self, stream: Any) -> int:
        assert self.capturing is not None
        g = self._id()
        self.graphs[g], self.capturing = self.capturing, None
        self.calls.append("end_capture")
        return g

    def graph_abort(self, stream: Any) -> None:
        self.capturing = None
        self.calls.append("abort_capture")

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        for op in self.graphs[graph_exec]:
            op()
        self.calls.append("launch")

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        del self.graphs[graph_exec]

    def clear_error(self) -> int:
        e, self.sticky = self.sticky, 0
        self.calls.append("clear_error")
        return e

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self.calls.append("push")
        try:
            yield
        finally:
            self.calls.append("pop")

    def close(self) -> None:
        self.calls.append("close")


def reference(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = images.astype(np.float32)
    return x.mean(axis=(1, 2, 3)), x.mean(axis=3)[:, None] / 255.0


class RecordingContext:
    """Computes a stand-in score from the device input buffer; inside a capture it records instead of running."""

    def __init__(self, api: RecordingCuda, lo: int, hi: int, fail_in_capture: bool) -> None:
        self.api, self.lo, self.hi, self.fail_in_capture = api, lo, hi, fail_in_capture
        self.addr: dict[str, int] = {}
        self.batch: int | None = None
        self.refuse_address: str | None = None

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addr[name] = ptr
        return name != self.refuse_address

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.api.calls.append(f"shape{shape[0]}")
        if not self.lo <= shape[0] <= self.hi:
            return False
        self.batch = shape[0]
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert self.batch is not None, "enqueue before set_input_shape"
        b, api, addr = self.batch, self.api, dict(self.addr)

        def op() -> None:
            x = api.dev[addr["images"]][: b * H * W * C].reshape(b, H, W, C)
            score, amap = reference(x)
            api.dev[addr["score"]][: b * 4] = score.view(np.uint8)
            api.dev[addr["normalized_score"]][: b * 4] = (score / 255.0).astype(np.float32).view(np.uint8)
            api.dev[addr["anomaly_map"]][: amap.nbytes] = amap.astype(np.float32).reshape(-1).view(np.uint8)

        if api.capturing is not None:
            api.calls.append(f"enqueue{b}@capture")
            if self.fail_in_capture:
                api.sticky = 901  # cudaErrorStreamCaptureInvalidated: sticky until read
                return False
            api.capturing.append(op)
            return True
        api.calls.append(f"enqueue{b}")
        op()
        return True


class RecordingEngine:
    def __init__(self, ctx: RecordingContext) -> None:
        self.ctx = ctx

    def create_execution_context(self) -> RecordingContext:
        return self.ctx


class StandInBackend(TensorRTBackend):
    def __init__(self, lo: int = 1, hi: int = 8, fail_in_capture: bool = False, supports_graphs: bool = True, **kw: Any) -> None:
        super().__init__(Path("standin.engine"), **kw)
        self.fake = RecordingCuda(supports_graphs)
        self.fake_ctx = RecordingContext(self.fake, lo, hi, fail_in_capture)
        card = build_card(RunConfig(model=ModelConfig(isize=H, channels=C)).validate({"mode": "paper", "lam": 0.9, "pool": 0}),
                          score=ScoreSpec(lam=0.9, mode="paper", pool=0, val_stats=ValStats(min=0.0, max=255.0),
                                          threshold=Threshold(normalized=1.0, method="test")), data={}, training={})
        self.fake_meta = EngineHeader.from_dict({"card": card.to_dict(), "precision": "fp16", "profile": {"min": lo, "opt": lo, "max": hi}},
                                                "standin.engine")

    def _preflight(self) -> None:  # the stand-in engine has no file
        pass

    def _open_api(self) -> Any:
        return self.fake

    def _open_engine(self) -> tuple[EngineHeader, Any]:
        return self.fake_meta, RecordingEngine(self.fake_ctx)


def frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, C), dtype=np.uint8)


def test_graphs_for_every_profile_size_are_captured_at_activation_and_replay_the_current_frames() -> None:
    with StandInBackend(lo=2, hi=5) as be:
        at_activation = list(be.fake.calls)
        assert sorted(be._graphs) == [2, 3, 4, 5]  # every size of the profile, before the first frame
        for b in (2, 3, 4, 5):  # set_input_shape, a warm-up enqueue at b and a synchronize right before the capture at b
            i = at_activation.index(f"enqueue{b}@capture")
            assert at_activation[i - 4 : i] == [f"shape{b}", f"enqueue{b}", "sync", "begin_capture"], at_activation[i - 5 : i + 1]
            assert at_activation[i + 1] == "end_capture"
        assert at_activation[0] == "push" and at_activation[-1] == "pop" and at_activation.count("push") == 1
        for b in (2, 3, 5, 3, 1):
            for seed in (b, b + 100):  # different frames on consecutive calls at the same size
                x = frames(b, seed)
                got = be.infer(x)
                score, amap = reference(x)
                np.testing.assert_allclose(got.score, score, rtol=1e-6)
                np.testing.assert_allclose(got.anomaly_map, amap, rtol=1e-6)
        streaming = be.fake.calls[len(at_activation) :]
        assert "begin_capture" not in streaming and not any("@capture" in c for c in streaming)  # never mid-stream
        assert streaming.count("launch") == 10 and not any(c.startswith("enqueue") for c in streaming)  # every call replays
        assert streaming.count("push") == streaming.count("pop") == 10  # one push/pop pair per batch
        assert sum(c.startswith("shape") for c in streaming) == 5  # set_input_shape only when the size changes
    assert be.fake.graphs == {} and be.fake.dev == {} and be.fake.host == {} and be.fake.calls[-1] == "close"
    assert be.fake.calls[-2] == "pop"  # everything released inside the block, the API closed after it


def test_failed_capture_is_ended_cleared_and_graphs_stay_off() -> None:
    with StandInBackend(lo=1, hi=8, fail_in_capture=True) as be:
        calls = be.fake.calls
        i = calls.index("enqueue1@capture")  # the first size of the profile, at activation
        assert calls[i + 1 : i + 3] == ["abort_capture", "clear_error"] and be.fake.sticky == 0 and "clear_error" not in calls[:i]
        assert not be.use_graphs and be._graphs == {} and "execute_async_v3 returned false" in (be.graph_failure or "")
        for seed in (0, 1):
            x = frames(4, seed)
            np.testing.assert_allclose(be.infer(x).score, reference(x)[0], rtol=1e-6)
        assert be.fake.calls.count("begin_capture") == 1  # never tried again
        assert be.fake.calls.count("enqueue4") == 2  # plain enqueues


def test_a_failed_activation_releases_what_it_made() -> None:
    be = StandInBackend(lo=1, hi=4)
    be.fake_ctx.refuse_address = "anomaly_map"
    with pytest.raises(EngineError, match="refused the buffer for tensor 'anomaly_map'"):
        be.__enter__()
    assert be.fake.dev == {} and be.fake.host == {} and be.fake.calls[-3:] == ["stream_destroy", "pop", "close"]
    assert be.fake.calls.count("push") == be.fake.calls.count("pop") == 2  # activate's block, then deactivate's


def test_no_stream_capture_means_no_graphs() -> None:
    with StandInBackend(supports_graphs=False) as be:
        be.infer(frames(2, 0))
        assert not be.use_graphs and "begin_capture" not in be.fake.calls


def test_profile_bounds_padding_and_refusal() -> None:
    assert profile_batch(3, 2, 8, True) == 3 and profile_batch(1, 2, 8, True) == 2
    with pytest.raises(EngineError, match="below the engine profile's min batch 2"):
        profile_batch(1, 2, 8, False)
    with pytest.raises(EngineError, match="exceeds the engine profile's max batch 8"):
        profile_batch(9, 2, 8, True)
    with StandInBackend(lo=4, hi=8) as be:
        x = frames(1, 7)
        got = be.infer(x)  # padded to 4, padding dropped
        assert got.score.shape == (1,) and got.anomaly_map.shape == (1, 1, H, W)
        np.testing.assert_allclose(got.score, reference(x)[0], rtol=1e-6)
        assert "shape4" in be.fake.calls
        with pytest.raises(EngineError, match="max batch 8"):
            be.infer(frames(9, 0))
    with StandInBackend(lo=4, hi=8, pad_to_profile=False) as be, pytest.raises(EngineError, match="min batch 4"):
        be.infer(frames(2, 0))


def test_set_input_shape_refusal_is_an_error() -> None:
    be = StandInBackend(lo=1, hi=8)
    with be:
        be.fake_ctx.hi = 2  # the engine's real profile is narrower than its header says
        with pytest.raises(EngineError, match="refused input shape"):
            be.infer(frames(5, 0))


def test_profiling_events_are_destroyed() -> None:
    with StandInBackend(profile=True) as be:
        be.infer(frames(2, 0))
        assert len(be.fake.events) == 4 and set(be.last_timings) == {"h2d_ms", "compute_ms", "d2h_ms"}
    assert be.fake.events == set()


class RecordingBuilderConfig:
    """What ``load_timing_cache`` talks to: TensorRT refuses a cache from another GPU or version."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.set_calls: list[bytes] = []

    def create_timing_cache(self, blob: bytes) -> bytes:
        return blob

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False  # never build with a half-matching cache
        self.set_calls.append(cache)
        return self.accept or cache == b""


def test_timing_cache_from_another_gpu_is_discarded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from skipgan_edge.export.engine import load_timing_cache

    f = tmp_path / "t.cache"
    f.write_bytes(b"cache of another GPU")
    cfg = RecordingBuilderConfig(accept=False)
    assert load_timing_cache(cfg, f) == b"" and cfg.set_calls == [b"cache of another GPU", b""]  # type: ignore[arg-type]
    assert "discarded" in caplog.text
    cfg = RecordingBuilderConfig(accept=True)
    assert load_timing_cache(cfg, f) == b"cache of another GPU"  # type: ignore[arg-type]
    assert load_timing_cache(RecordingBuilderConfig(accept=True), tmp_path / "absent.cache") == b""  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------------
# Threads: serve activates on one thread, infers on another, reloads on a third and deactivates where it ends. The
# stand-ins below are the CUDA driver as the two real implementations (CudaPythonApi, PyCudaApi) see it through their
# modules: one primary context, a context stack per host thread, PyCUDA's rules (Context.pop on a thread that did not
# push fails; an object freed on a thread where its context is not current, other than the thread that made that
# context, is leaked), and memory in numpy arrays. Every call a CUDA or TensorRT function gets is logged with its
# thread and checked against the calling thread's current context.

PRIMARY = 0xC7


class FakeGpu:
    def __init__(self) -> None:
        self.tls = threading.local()
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []  # (backend label, call, thread)
        self.violations: list[str] = []
        self.depth: dict[str, int] = {}  # context stack depth per thread, at the end of the test
        self.retained = 0
        self.host: dict[int, np.ndarray] = {}
        self.dev: dict[int, np.ndarray] = {}
        self.capture: dict[int, list[Any]] = {}  # stream -> ops recorded while it captures
        self.graphs: dict[int, list[Any]] = {}
        self._n = 0

    def new_id(self) -> int:
        with self.lock:
            self._n += 1
            return self._n

    def stack(self) -> list[Any]:
        if not hasattr(self.tls, "stack"):
            self.tls.stack = []
        return self.tls.stack  # type: ignore[no-any-return]

    def call(self, label: str, name: str, needs_context: bool = True) -> None:
        t = threading.current_thread().name
        st = self.stack()
        with self.lock:
            self.log.append((label, name, t))
            if needs_context and not (st and getattr(st[-1], "handle", st[-1]) == PRIMARY):
                self.violations.append(f"{label} {name} on {t} without the context current")

    def push(self, label: str, ctx: Any) -> None:
        self.call(label, "push", needs_context=False)
        self.stack().append(ctx)
        with self.lock:
            self.depth[threading.current_thread().name] = len(self.stack())

    def pop(self, label: str) -> bool:
        self.call(label, "pop", needs_context=False)
        st = self.stack()
        if not st:
            with self.lock:
                self.violations.append(f"{label} pop on {threading.current_thread().name}, which pushed nothing")
            return False
        st.pop()
        with self.lock:
            self.depth[threading.current_thread().name] = len(st)
        return True


class FakeDriver:
    """``cuda.bindings.driver`` as CudaPythonApi calls it."""

    def __init__(self, gpu: FakeGpu, label: str) -> None:
        self.gpu, self.label = gpu, label

    def cuGetErrorString(self, err: int) -> tuple[int, bytes]:
        return 0, b"fake driver error"

    def cuInit(self, flags: int) -> tuple[int]:
        self.gpu.call(self.label, "cuInit", needs_context=False)
        return (0,)

    def cuDeviceGet(self, ordinal: int) -> tuple[int, int]:
        return 0, ordinal

    def cuDevicePrimaryCtxRetain(self, dev: int) -> tuple[int, int]:
        self.gpu.call(self.label, "retain", needs_context=False)
        self.gpu.retained += 1
        return 0, PRIMARY

    def cuDevicePrimaryCtxRelease(self, dev: int) -> tuple[int]:
        self.gpu.call(self.label, "release", needs_context=False)
        self.gpu.retained -= 1
        return (0,)

    def cuCtxPushCurrent(self, ctx: int) -> tuple[int]:
        self.gpu.push(self.label, ctx)
        return (0,)

    def cuCtxPopCurrent(self) -> tuple[int, int | None]:
        return (0, PRIMARY) if self.gpu.pop(self.label) else (201, None)  # CUDA_ERROR_INVALID_CONTEXT


class FakeRuntime:
    """``cuda.bindings.runtime`` as CudaPythonApi calls it; every call needs the context current on its thread."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self, gpu: FakeGpu, label: str) -> None:
        self.gpu, self.label = gpu, label

    def _c(self, name: str) -> None:
        self.gpu.call(self.label, name)

    def cudaGetErrorString(self, err: int) -> tuple[int, bytes]:
        return 0, b"fake runtime error"

    def cudaMallocHost(self, n: int) -> tuple[int, int]:
        self._c("malloc_host")
        arr = np.zeros(n, np.uint8)
        self.gpu.host[int(arr.ctypes.data)] = arr
        return 0, int(arr.ctypes.data)

    def cudaFreeHost(self, ptr: int) -> tuple[int]:
        self._c("free_host")
        del self.gpu.host[ptr]
        return (0,)

    def cudaMalloc(self, n: int) -> tuple[int, int]:
        self._c("malloc")
        h = self.gpu.new_id() << 20
        self.gpu.dev[h] = np.zeros(n, np.uint8)
        return 0, h

    def cudaFree(self, ptr: int) -> tuple[int]:
        self._c("free")
        del self.gpu.dev[ptr]
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:
        self._c("stream_create")
        return 0, self.gpu.new_id()

    def cudaStreamDestroy(self, s: int) -> tuple[int]:
        self._c("stream_destroy")
        return (0,)

    def cudaStreamSynchronize(self, s: int) -> tuple[int]:
        self._c("sync")
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, s: int) -> tuple[int]:
        self._c("memcpy")
        if kind == 1:
            self.gpu.dev[dst][:n] = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(src))
        else:
            np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(dst))[:] = self.gpu.dev[src][:n]
        return (0,)

    def cudaStreamBeginCapture(self, s: int, mode: int) -> tuple[int]:
        self._c("begin_capture")
        self.gpu.capture[int(s)] = []
        return (0,)

    def cudaStreamEndCapture(self, s: int) -> tuple[int, int]:
        self._c("end_capture")
        g = self.gpu.new_id()
        self.gpu.graphs[g] = self.gpu.capture.pop(int(s))
        return 0, g

    def cudaGraphInstantiate(self, g: int, flags: int) -> tuple[int, int]:
        self._c("instantiate")
        return 0, g

    def cudaGraphDestroy(self, g: int) -> tuple[int]:
        self._c("graph_destroy")
        return (0,)

    def cudaGraphLaunch(self, g: int, s: int) -> tuple[int]:
        self._c("launch")
        for op in self.gpu.graphs[g]:
            op()
        return (0,)

    def cudaGraphExecDestroy(self, g: int) -> tuple[int]:
        self._c("graph_exec_destroy")
        del self.gpu.graphs[g]
        return (0,)

    def cudaGetLastError(self) -> tuple[int]:
        self._c("get_last_error")
        return (0,)


class FakePyCudaError(Exception):
    pass


class FakePyCuda:
    """``pycuda.driver`` as PyCudaApi calls it, with PyCUDA's thread rules."""

    Error = FakePyCudaError

    def __init__(self, gpu: FakeGpu, label: str) -> None:
        self.gpu, self.label = gpu, label
        mod = self

        class Context:
            handle = PRIMARY

            def __init__(self) -> None:
                self.owner = threading.current_thread().name

            def push(self) -> None:
                mod.gpu.push(mod.label, self)

            @staticmethod
            def pop() -> None:
                if not mod.gpu.pop(mod.label):
                    raise FakePyCudaError("context::pop failed: cannot pop non-current context")

        self.Context = Context

    def _c(self, name: str) -> Any:
        self.gpu.call(self.label, name)
        st = self.gpu.stack()
        return st[-1] if st else None  # the object's context, as PyCUDA's acquire_context takes it

    def freed(self, name: str, ctx: Any) -> None:
        """PyCUDA's scoped_context_activation when an object goes: fine if its context is current here, else only on the
        thread that made that context (it pushes and pops itself); elsewhere it leaks with a warning."""
        st, t = self.gpu.stack(), threading.current_thread().name
        if not (st and st[-1] is ctx) and (ctx is None or t != ctx.owner):
            with self.gpu.lock:
                self.gpu.violations.append(f"{self.label} {name} on {t}: cannot activate out-of-thread context (leaked)")
        self.gpu.call(self.label, name)

    def init(self) -> None:
        self.gpu.call(self.label, "cuInit", needs_context=False)

    def Device(self, n: int) -> Any:
        mod = self

        class Device:
            def retain_primary_context(self) -> Any:
                mod.gpu.call(mod.label, "retain", needs_context=False)
                mod.gpu.retained += 1
                return mod.Context()

        return Device()

    def pagelocked_empty(self, n: int, dtype: Any) -> np.ndarray:
        ctx = self._c("malloc_host")
        arr = PinnedArray((n,), dtype)
        arr.owner_of = (self, ctx)
        return arr

    def mem_alloc(self, n: int) -> Any:
        ctx, mod = self._c("malloc"), self
        h = self.gpu.new_id() << 20
        self.gpu.dev[h] = np.zeros(n, np.uint8)

        class Allocation:
            def __int__(self) -> int:
                return h

            def free(self) -> None:
                mod.freed("free", ctx)
                del mod.gpu.dev[h]

        return Allocation()

    def Stream(self) -> Any:
        ctx, mod = self._c("stream_create"), self

        class Stream:
            handle = self.gpu.new_id()

            def synchronize(self) -> None:
                mod._c("sync")

            def __del__(self) -> None:
                mod.freed("stream_destroy", ctx)

        return Stream()

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._c("memcpy")
        self.gpu.dev[dst][: src.nbytes] = src.reshape(-1).view(np.uint8)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._c("memcpy")
        dst.reshape(-1).view(np.uint8)[:] = self.gpu.dev[src][: dst.nbytes]


class PinnedArray(np.ndarray):  # type: ignore[type-arg]
    owner_of: tuple[FakePyCuda, Any] | None = None

    def __del__(self) -> None:
        if self.base is None and self.owner_of is not None:
            mod, ctx = self.owner_of
            mod.freed("free_host", ctx)


class ThreadCheckedContext:
    """TensorRT's execution context: each call needs the context current on its thread; inside a capture it records."""

    def __init__(self, gpu: FakeGpu, label: str) -> None:
        self.gpu, self.label = gpu, label
        self.addr: dict[str, int] = {}
        self.batch = 0
        gpu.call(label, "create_execution_context")

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.gpu.call(self.label, "set_tensor_address")
        self.addr[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.gpu.call(self.label, "set_input_shape")
        self.batch = shape[0]
        return True

    def execute_async_v3(self, stream: int) -> bool:
        b, gpu, addr = self.batch, self.gpu, dict(self.addr)

        def op() -> None:
            x = gpu.dev[addr["images"]][: b * H * W * C].reshape(b, H, W, C)
            score, amap = reference(x)
            gpu.dev[addr["score"]][: b * 4] = score.view(np.uint8)
            gpu.dev[addr["normalized_score"]][: b * 4] = (score / 255.0).astype(np.float32).view(np.uint8)
            gpu.dev[addr["anomaly_map"]][: amap.nbytes] = amap.astype(np.float32).reshape(-1).view(np.uint8)

        if int(stream) in gpu.capture:
            gpu.call(self.label, "enqueue@capture")
            gpu.capture[int(stream)].append(op)
        else:
            gpu.call(self.label, "enqueue")
            op()
        return True

    def __del__(self) -> None:
        self.gpu.call(self.label, "destroy_execution_context")


class ThreadCheckedEngine:
    def __init__(self, gpu: FakeGpu, label: str) -> None:
        self.gpu, self.label = gpu, label
        gpu.call(label, "deserialize")

    def create_execution_context(self) -> ThreadCheckedContext:
        return ThreadCheckedContext(self.gpu, self.label)

    def __del__(self) -> None:
        self.gpu.call(self.label, "destroy_engine")


class ThreadCheckedBackend(StandInBackend):
    """The real TensorRTBackend over the real CudaPythonApi or PyCudaApi, whose modules are the stand-ins above."""

    def __init__(self, gpu: FakeGpu, label: str, impl: str) -> None:
        super().__init__(lo=1, hi=4)
        self.gpu, self.label, self.impl = gpu, label, impl

    def _preflight(self) -> None:  # the stand-in engine has no file
        pass

    def _open_api(self) -> Any:
        from skipgan_edge.runtime.cuda import CudaPythonApi, PyCudaApi

        if self.impl == "pycuda":
            return PyCudaApi(driver_module=FakePyCuda(self.gpu, self.label))
        return CudaPythonApi(bindings=(FakeDriver(self.gpu, self.label), FakeRuntime(self.gpu, self.label)))

    def _open_engine(self) -> tuple[EngineHeader, Any]:
        return self.fake_meta, ThreadCheckedEngine(self.gpu, self.label)


ACTIVATE = {"cuInit", "retain", "malloc_host", "malloc", "stream_create", "deserialize", "create_execution_context", "set_tensor_address",
            "set_input_shape", "enqueue", "sync", "begin_capture", "enqueue@capture", "end_capture", "instantiate", "graph_destroy",
            "push", "pop"}
INFER = {"memcpy", "launch", "enqueue", "set_input_shape", "sync", "push", "pop"}
RELEASE = {"sync", "graph_exec_destroy", "free", "free_host", "stream_destroy", "destroy_execution_context", "destroy_engine", "release",
           "push", "pop"}


@pytest.mark.parametrize("impl", ["cuda-python", "pycuda"])
def test_every_cuda_call_runs_where_its_thread_has_the_context(impl: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's arrangement, through the real Cell: the model is activated on a start-up thread, scored on its model-*
    worker, reloaded (activated and checked) on the reload watcher, the old one deactivated on the worker at the swap,
    the new one on the main thread at the end. Every CUDA and TensorRT call must find the context current on its own
    thread, every pop must be on a thread that pushed, and each call must be on the thread its phase belongs to."""
    from conftest import write_defect_video

    from skipgan_edge.service import serve

    gpu = FakeGpu()
    made: list[ThreadCheckedBackend] = []

    def open_backend(*args: Any, **kw: Any) -> ThreadCheckedBackend:
        made.append(ThreadCheckedBackend(gpu, f"b{len(made) + 1}", impl))
        return made[-1]

    monkeypatch.setattr(serve, "open_backend", open_backend)
    engine = tmp_path / "standin.engine"
    engine.write_bytes(b"stand-in")
    video = write_defect_video(tmp_path / "line.avi", 20, set(), "MJPG", size=48)
    cfg = serve.CellConfig(serve.ServeDefaults(batch=4, max_wait_ms=5, reload=False, reload_poll_s=0.05, summary_every_s=3600),
                           [serve.CameraConfig(id="cam", source=str(video), engine=str(engine), replay_fps=400, loop=True)])
    cell = serve.Cell(cfg)
    setup = threading.Thread(target=cell.start, name="setup")
    setup.start()
    setup.join(30)
    (g,) = cell.groups.values()
    worker = f"model-{engine.name}"

    def launches(label: str) -> int:
        return sum(1 for lab, c, t in list(gpu.log) if lab == label and c in ("launch", "memcpy") and t == worker)

    def wait_for(cond: Any) -> None:
        deadline = time.monotonic() + 30
        while not cond():
            assert time.monotonic() < deadline and g.error is None, (g.error, gpu.violations[:3])
            time.sleep(0.01)

    wait_for(lambda: launches("b1") >= 6)
    cell.reload_event.set()
    wait_for(lambda: g.reloads["ok"] == 1 and launches("b2") >= 6)
    cell.stop()
    cell.wait()  # joins the worker, then deactivates the running model here, on the main thread
    assert g.error is None and len(made) == 2 and g.pipeline is not None and g.pipeline.backend is made[1]
    assert gpu.violations == []
    # every thread's context stack is empty again; cuda-python released each retain, PyCUDA keeps one per driver module
    # for the process (each backend here has its own stand-in module; one module, one retain: the next test)
    assert all(d == 0 for d in gpu.depth.values()) and gpu.retained == (2 if impl == "pycuda" else 0), (gpu.depth, gpu.retained)
    assert gpu.dev == {} and gpu.host == {} and gpu.graphs == {}

    main = threading.current_thread().name
    expected = {"b1": [("setup", ACTIVATE), (worker, INFER), (worker, RELEASE)],
                "b2": [("reload-watch", ACTIVATE | INFER), (worker, INFER), (main, RELEASE)]}
    for label, phases in expected.items():
        calls = [(c, t) for lab, c, t in gpu.log if lab == label]
        threads = [t for _, t in calls]
        # the phases in order, each on its own thread: activation, streaming, release
        order = [t for i, t in enumerate(threads) if i == 0 or t != threads[i - 1]]
        want = [p[0] for i, p in enumerate(phases) if i == 0 or p[0] != phases[i - 1][0]]
        assert order == want, (label, order)
        for c, t in calls:
            assert any(t == thread and c in allowed for thread, allowed in phases), f"{label}: {c} on {t}"
        first_release = next(i for i, (c, _) in enumerate(calls) if c in ("free", "free_host", "destroy_engine"))
        assert {t for _, t in calls[first_release:]} == {phases[2][0]}, (label, calls[first_release:][:5])
        assert any(c == "launch" for c, t in calls if t == worker) == (impl == "cuda-python")  # PyCUDA: no graphs
    b1_threads = {t for lab, c, t in gpu.log if lab == "b1" and c in ("malloc", "malloc_host", "deserialize")}
    b2_threads = {t for lab, c, t in gpu.log if lab == "b2" and c in ("malloc", "malloc_host", "deserialize")}
    assert b1_threads == {"setup"} and b2_threads == {"reload-watch"}


def test_pycuda_retains_once_per_process_and_pops_where_it_pushed() -> None:
    """The bug this replaces: a context pushed on the activating thread and popped on another. PyCUDA refuses that pop
    (the stand-in as PyCUDA does); a block pushes and pops on its own thread, and a reload retains nothing more."""
    from skipgan_edge.runtime.cuda import PyCudaApi

    gpu = FakeGpu()
    mod = FakePyCuda(gpu, "p")
    a, b = PyCudaApi(driver_module=mod), PyCudaApi(driver_module=mod)
    assert gpu.retained == 1 and a.ctx is b.ctx
    errors: list[BaseException] = []

    def pop_elsewhere() -> None:
        try:
            mod.Context.pop()
        except FakePyCudaError as exc:
            errors.append(exc)

    a.ctx.push()  # the old way: pushed here ...
    t = threading.Thread(target=pop_elsewhere, name="worker")
    t.start()
    t.join()
    assert len(errors) == 1 and "cannot pop non-current context" in str(errors[0])  # ... and no pop possible there
    mod.Context.pop()
    gpu.violations.clear()

    def block() -> None:
        with b.current():
            b.stream_sync(b.stream_create())

    t = threading.Thread(target=block, name="worker")
    t.start()
    t.join()
    assert gpu.violations == [] and gpu.depth == {"MainThread": 0, "worker": 0}
    assert [(c, th) for _, c, th in gpu.log if c in ("push", "pop", "stream_create", "sync")][-4:] == [
        ("push", "worker"), ("stream_create", "worker"), ("sync", "worker"), ("pop", "worker")]
