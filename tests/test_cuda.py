"""The CUDA-memory layer on a real GPU (marked ``cuda``: run with ``make test-gpu``).

Needs an NVIDIA GPU and cuda-python; no TensorRT. On a machine without a GPU these tests are
deselected by default; selected, they skip, except under ``make test-gpu`` (SKIPGAN_REQUIRE_GPU=1),
where a missing GPU or cuda-python fails them (conftest.need_gpu_stack).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_gpu_stack

from skipgan_edge.runtime.cuda import IOBuffers, make_cuda_api

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def api():  # type: ignore[no-untyped-def]
    need_gpu_stack(tensorrt=False)
    a = make_cuda_api("cuda-python")
    a.stream_sync(a.stream_create())
    return a


def test_round_trip_host_device_host(api) -> None:  # type: ignore[no-untyped-def]
    bufs = IOBuffers(api, {"a": ((8, 32, 32, 3), np.dtype(np.uint8)), "b": ((8, 32, 32, 3), np.dtype(np.uint8))})
    bufs.allocate()
    stream = api.stream_create()
    src = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    bufs.tensors["a"].array(5)[...] = src
    bufs.htod("a", 5, stream)
    # device-to-device through the host buffer of b: copy a's device memory back into b's host buffer
    api.dtoh_async(bufs.tensors["b"].host_ptr, bufs.tensors["a"].device, src.nbytes, stream)
    api.stream_sync(stream)
    assert np.array_equal(bufs.tensors["b"].array(5), src)
    bufs.free()


def test_stream_ordering(api) -> None:  # type: ignore[no-untyped-def]
    """Copies queued on one stream complete in order: the last write wins."""
    bufs = IOBuffers(api, {"x": ((1, 1 << 20), np.dtype(np.uint8)), "y": ((1, 1 << 20), np.dtype(np.uint8))})
    bufs.allocate()
    s = api.stream_create()
    x, y = bufs.tensors["x"], bufs.tensors["y"]
    for value in range(1, 6):
        x.array(1)[...] = value
        bufs.htod("x", 1, s)
        api.stream_sync(s)  # host buffer is reused: wait before overwriting it
    api.dtoh_async(y.host_ptr, x.device, x.nbytes, s)
    api.stream_sync(s)
    assert int(y.array(1).min()) == 5 and int(y.array(1).max()) == 5
    bufs.free()


def test_pinned_buffers_are_reused_without_reallocation(api) -> None:  # type: ignore[no-untyped-def]
    bufs = IOBuffers(api, {"images": ((16, 32, 32, 3), np.dtype(np.uint8))})
    bufs.allocate()
    n0 = bufs.allocations
    ptrs = (bufs.tensors["images"].host_ptr, bufs.tensors["images"].device)
    s = api.stream_create()
    for b in (1, 4, 16, 3, 16):
        bufs.tensors["images"].array(b)[...] = b
        bufs.htod("images", b, s)
        api.stream_sync(s)
    assert bufs.allocations == n0
    assert (bufs.tensors["images"].host_ptr, bufs.tensors["images"].device) == ptrs
    bufs.free()


def test_events_time_a_copy(api) -> None:  # type: ignore[no-untyped-def]
    bufs = IOBuffers(api, {"x": ((1, 64 << 20), np.dtype(np.uint8))})
    bufs.allocate()
    s = api.stream_create()
    e0, e1 = api.event_create(), api.event_create()
    api.event_record(e0, s)
    bufs.htod("x", 1, s)
    api.event_record(e1, s)
    ms = api.event_elapsed_ms(e0, e1)
    assert 0 < ms < 1000
    bufs.free()


def test_captured_graph_replays_the_current_host_buffer(api) -> None:  # type: ignore[no-untyped-def]
    """A captured H2D + D2H pair replays with whatever the pinned buffer holds at launch, not at capture."""
    bufs = IOBuffers(api, {"x": ((4, 1024), np.dtype(np.uint8)), "y": ((4, 1024), np.dtype(np.uint8))})
    bufs.allocate()
    s = api.stream_create()
    x, y = bufs.tensors["x"], bufs.tensors["y"]
    x.array(4)[...] = 1
    api.graph_begin(s)
    bufs.htod("x", 4, s)
    api.dtoh_async(y.host_ptr, x.device, x.nbytes, s)
    g = api.graph_end(s)
    for value in (7, 9):
        x.array(4)[...] = value
        api.graph_launch(g, s)
        api.stream_sync(s)
        assert int(y.array(4).min()) == value == int(y.array(4).max())
    api.graph_exec_destroy(g)
    bufs.free()


def test_failed_capture_is_aborted_and_the_stream_recovers(api) -> None:  # type: ignore[no-untyped-def]
    """Synchronizing a capturing stream invalidates the capture (as a failing enqueue would): abort, clear, go on."""
    from skipgan_edge.runtime.cuda import CudaError

    bufs = IOBuffers(api, {"x": ((1, 256), np.dtype(np.uint8))})
    bufs.allocate()
    s = api.stream_create()
    api.graph_begin(s)
    with pytest.raises(CudaError):
        api.stream_sync(s)
    api.graph_abort(s)
    api.clear_error()
    assert api.clear_error() == 0  # nothing sticky left
    bufs.tensors["x"].array(1)[...] = 3
    bufs.htod("x", 1, s)
    api.stream_sync(s)
    e = api.event_create()
    api.event_record(e, s)
    api.event_destroy(e)
    bufs.free()


@pytest.mark.parametrize("which", ["cuda-python", "pycuda"])
def test_blocks_on_three_threads_share_one_context(which: str) -> None:
    """serve's arrangement on the real driver: allocate on one thread, copy on another, free on a third, each inside
    its own ``current()`` block; afterwards no thread has a context left current."""
    import threading

    need_gpu_stack(tensorrt=False)
    if which == "pycuda":
        pytest.importorskip("pycuda.driver", reason="PyCUDA is optional (make test-gpu covers cuda-python)")
    a = make_cuda_api(which)
    state: dict[str, object] = {}
    errors: list[BaseException] = []

    def on(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                with a.current():
                    fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
                errors.append(exc)

        t = threading.Thread(target=run, name=name)
        t.start()
        t.join()
        if errors:
            raise errors[0]

    def setup() -> None:
        bufs = IOBuffers(a, {"x": ((2, 4096), np.dtype(np.uint8)), "y": ((2, 4096), np.dtype(np.uint8))})
        bufs.allocate()
        state["bufs"], state["stream"] = bufs, a.stream_create()

    def work() -> None:
        bufs, s = state["bufs"], state["stream"]
        assert isinstance(bufs, IOBuffers)
        bufs.tensors["x"].array(2)[...] = 42
        bufs.htod("x", 2, s)
        a.dtoh_async(bufs.tensors["y"].host_ptr, bufs.tensors["x"].device, bufs.tensors["x"].nbytes, s)
        a.stream_sync(s)
        assert int(bufs.tensors["y"].array(2).min()) == 42 == int(bufs.tensors["y"].array(2).max())

    def teardown() -> None:
        bufs = state.pop("bufs")
        assert isinstance(bufs, IOBuffers)
        bufs.free()
        a.stream_destroy(state.pop("stream"))

    on("setup", setup)
    on("model-worker", work)
    on("main-at-exit", teardown)
    a.close()
