"""TensorRT: build, load, run, refuse (marked ``tensorrt``: run with ``make test-gpu`` on a Jetson or GPU box).

Under ``make test-gpu`` (SKIPGAN_REQUIRE_GPU=1) a missing TensorRT or GPU fails these tests instead of
skipping them (conftest.need_gpu_stack).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import need_gpu_stack

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def engines(demo_onnx: Path) -> dict[str, Path]:
    need_gpu_stack(tensorrt=True)
    from skipgan_edge.export.engine import BuildConfig, build_engine

    out = {}
    for prec, name in (("fp32", "scorer.onnx"), ("fp16", "scorer.fp16.onnx"), ("int8", "scorer.int8.onnx")):
        eng = demo_onnx / name.replace(".onnx", ".engine")
        build_engine(demo_onnx / name, eng, BuildConfig(batch=(2, 4, 8), timing_cache=demo_onnx / "timing.cache", plan=True))
        out[prec] = eng
    return out


def test_engine_matches_onnxruntime_on_different_frames_at_every_size(engines: dict[str, Path], demo_onnx: Path, synth_dir: Path) -> None:
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.runtime.backends import BackendOptions, open_backend

    test = load_folder(synth_dir, 32, 3).test
    assert test is not None and len(test.images) >= 24
    with open_backend("onnx", demo_onnx / "scorer.onnx") as ref_be:
        ref = ref_be.infer_all(test.images[:24])
    tol = {"fp32": 1e-3, "fp16": 0.05, "int8": 0.5}  # |Δ normalized_score|, as in test_backend_parity_contract
    for prec, eng in engines.items():
        with open_backend("engine", eng, options=BackendOptions(cuda_api="cuda-python")) as be:
            start = 0
            for b in (1, 3, 8, 3, 8, 1):  # 1 is below the profile's min (2): padded; graphs captured per size
                for _ in range(2):  # different frames on consecutive calls: a stale graph output would fail here
                    got = be.infer(test.images[start : start + b])
                    want = ref.normalized_score[start : start + b]
                    assert got.normalized_score.shape == (b,)
                    assert float(np.abs(got.normalized_score - want).max()) <= tol[prec], (prec, b)
                    start = (start + b) % 16
            assert be.use_graphs, be.graph_failure  # capture worked on this GPU (or say why not)
            assert be.buffers.allocations == 8  # 4 tensors x (pinned host + device), never more


def test_engine_metadata_plan_and_timing_cache(engines: dict[str, Path], demo_onnx: Path) -> None:
    from skipgan_edge.export.engine import plan_path, read_engine_file

    meta, blob = read_engine_file(engines["int8"])
    assert meta["precision"] == "int8" and meta["profile"] == {"min": 2, "opt": 4, "max": 8} and len(blob) > 1000
    assert meta["placement"]["device"] == "gpu"
    assert plan_path(engines["int8"]).read_bytes() == blob
    side = json.loads(Path(str(plan_path(engines["int8"])) + ".json").read_text())
    assert side["tensorrt"] == meta["tensorrt"] and side["card"]["model_id"] == meta["card"]["model_id"]
    assert (demo_onnx / "timing.cache").stat().st_size > 0


def test_foreign_timing_cache_is_discarded_with_a_warning(demo_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    need_gpu_stack(tensorrt=True)
    from skipgan_edge.export.engine import BuildConfig, build_engine

    cache = tmp_path / "foreign.cache"
    cache.write_bytes(b"\x00" * 64 + b"a cache from another GPU")
    with caplog.at_level(logging.WARNING):
        build_engine(demo_onnx / "scorer.onnx", tmp_path / "e.engine", BuildConfig(batch=(1, 1, 2), timing_cache=cache))
    assert (tmp_path / "e.engine").stat().st_size > 1000
    assert "discarded" in caplog.text and cache.read_bytes()[:64] != b"\x00" * 64  # replaced by this build's cache
