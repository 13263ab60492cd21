"""TensorRT: build, load, run, refuse (marked ``tensorrt``: run with ``make test-gpu`` on a Jetson or GPU box)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def engines(demo_onnx: Path) -> dict[str, Path]:
    try:
        from skipgan_edge.export.engine import BuildConfig, build_engine, import_tensorrt

        import_tensorrt()
    except Exception as exc:  # noqa: BLE001 - no TensorRT or no GPU here
        pytest.skip(f"TensorRT unavailable: {exc}")
    out = {}
    for prec, name in (("fp32", "scorer.onnx"), ("fp16", "scorer.fp16.onnx"), ("int8", "scorer.int8.onnx")):
        eng = demo_onnx / name.replace(".onnx", ".engine")
        build_engine(demo_onnx / name, eng, BuildConfig(batch=(1, 4, 8), timing_cache=demo_onnx / "timing.cache"))
        out[prec] = eng
    return out


def test_engine_matches_onnxruntime(engines: dict[str, Path], demo_onnx: Path, synth_dir: Path) -> None:
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.runtime.backends import open_backend

    test = load_folder(synth_dir, 32, 3).test
    assert test is not None
    frames = test.images[:8]
    with open_backend("onnx", demo_onnx / "scorer.onnx") as ref_be:
        ref = ref_be.infer(frames)
    tol = {"fp32": 1e-3, "fp16": 0.05, "int8": 0.5}  # |Δ normalized_score|, as in test_backend_parity_contract
    for prec, eng in engines.items():
        with open_backend("engine", eng, cuda_api="auto") as be:
            for b in (1, 3, 8):  # dynamic batch within the profile, graphs captured per size
                got = be.infer(frames[:b])
                got = be.infer(frames[:b])
                assert float(np.abs(got.normalized_score - ref.normalized_score[:b]).max()) <= tol[prec]
            assert be.buffers.allocations == 8  # 4 tensors x (pinned host + device), never more


def test_engine_metadata_and_timing_cache(engines: dict[str, Path], demo_onnx: Path) -> None:
    from skipgan_edge.export.engine import read_engine_file

    meta, blob = read_engine_file(engines["int8"])
    assert meta["precision"] == "int8" and meta["profile"] == {"min": 1, "opt": 4, "max": 8} and len(blob) > 1000
    assert (demo_onnx / "timing.cache").stat().st_size > 0
