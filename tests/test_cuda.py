"""The CUDA-memory layer on a real GPU (marked ``cuda``: run with ``make test-gpu``).

Needs an NVIDIA GPU and cuda-python; no TensorRT. On a machine without a GPU these tests are
deselected by default and skip if selected.
"""

from __future__ import annotations

import numpy as np
import pytest

from skipgan_edge.runtime.cuda import IOBuffers, make_cuda_api

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def api():  # type: ignore[no-untyped-def]
    try:
        a = make_cuda_api("cuda-python")
        a.stream_sync(a.stream_create())
    except Exception as exc:  # noqa: BLE001 - any failure here means there is no usable GPU
        pytest.skip(f"no usable CUDA device: {exc}")
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
