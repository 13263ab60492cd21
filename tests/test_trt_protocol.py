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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skipgan_edge.card import ScoreSpec, Threshold, ValStats, build_card
from skipgan_edge.config import ModelConfig, RunConfig
from skipgan_edge.errors import EngineError
from skipgan_edge.runtime.backends.tensorrt import TensorRTBackend, profile_batch

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
        self.fake_meta = {"card": card.to_dict(), "precision": "fp16", "profile": {"min": lo, "opt": lo, "max": hi}}

    def _open_api(self) -> Any:
        return self.fake

    def _open_engine(self) -> tuple[dict[str, Any], Any]:
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
