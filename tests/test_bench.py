"""Benchmark machinery: statistics against numpy, the FLOP counter against a hand count, the JSON
schema of results, and a short real `bench` subprocess on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper

from skipgan_edge.bench.flops import count_flops
from skipgan_edge.runtime.stats import Reservoir, summarize


def test_summary_percentiles_match_numpy() -> None:
    x = np.random.default_rng(0).exponential(2.0, 1001)
    s = summarize(x)
    assert s["min"] == x.min() and s["max"] == x.max() and abs(s["mean"] - x.mean()) < 1e-12
    for p in (50, 90, 95, 99):
        key = "median" if p == 50 else f"p{p}"
        assert abs(s[key] - np.percentile(x, p)) < 1e-12
    small = summarize([1.0, 2.0, 3.0, 4.0])
    assert small["median"] == 2.5 and abs(small["p90"] - 3.7) < 1e-12


def test_reservoir_is_exact_then_bounded() -> None:
    r = Reservoir(size=100)
    for v in range(50):
        r.add(float(v))
    assert r.summary()["median"] == 24.5 and r.summary()["n"] == 50
    for v in range(50, 10_000):
        r.add(float(v))
    s = r.summary()
    assert s["n"] == 10_000 and r.buf.shape == (100,)
    assert 2_000 < s["median"] < 8_000  # a uniform sample of 0..9999


def test_reservoir_extend_matches_add() -> None:
    a, b = Reservoir(size=100, seed=3), Reservoir(size=100, seed=3)
    values = [float(v) for v in range(250)]
    for v in values:
        a.add(v)
    for i in range(0, 250, 7):  # chunks crossing the point where the reservoir fills
        b.extend(values[i : i + 7])
    assert a.count == b.count == 250
    np.testing.assert_array_equal(a.buf, b.buf)
    rows = Reservoir(size=100, seed=3, width=2)  # rows of two columns: the same sample, row by row
    rows.extend(np.column_stack([values, np.negative(values)]))
    np.testing.assert_array_equal(rows.buf[:, 0], a.buf)
    assert rows.summary(1)["median"] == -a.summary()["median"] and rows.summary(1)["n"] == 250


def test_flop_counter_against_hand_count(tmp_path: Path) -> None:
    # x (1,3,8,8) -> Conv 4x4 s2 p1 -> (1,5,4,4) with bias -> Relu -> ConvTranspose 4x4 s2 p1 -> (1,2,8,8), no bias -> ReduceMean
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [5, 3, 4, 4], np.zeros(240, np.float32))
    b1 = helper.make_tensor("b1", TensorProto.FLOAT, [5], np.zeros(5, np.float32))
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [5, 2, 4, 4], np.zeros(160, np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="/n/Conv", kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="/n/Relu"),
        helper.make_node("ConvTranspose", ["r", "w2"], ["t"], name="/n/ConvT", kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["t"], ["y"], name="/Mean", keepdims=0),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [w1, b1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    f = count_flops(m)
    conv = 2 * (5 * 4 * 4) * (3 * 4 * 4) + 5 * 4 * 4  # 2·Cout·Hout·Wout·Cin·k² + bias
    convt = 2 * (5 * 4 * 4) * (2 * 4 * 4)  # 2·Cin·Hin·Win·Cout·k²
    rest = 5 * 4 * 4 + 2 * 8 * 8  # relu outputs + reduce inputs
    assert f["conv"] == conv and f["convtranspose"] == convt and f["rest"] == rest
    assert f["total"] == conv + convt + rest
    onnx.checker.check_model(m)


def test_bench_subprocess_and_json_schema(demo_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    p = run_cli("bench", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--batch", "1,4", "--iterations", "15",
                "--warmup", "2", "--json", str(out))
    assert "median" in p.stdout and "p99" in p.stdout and "measured matmul peak" in p.stdout
    res = json.loads(out.read_text())
    assert {"machine", "records", "peak_gflops", "model_ids", "config", "flops"} <= set(res)
    assert {"cpu", "cores", "gpu", "driver", "jetson_power_mode", "onnxruntime", "skipgan_edge"} <= set(res["machine"])
    assert [r["batch"] for r in res["records"]] == [1, 4]
    for r in res["records"]:
        assert r["backend"] == "onnxruntime" and r["precision"] == "fp32" and r["iterations"] == 15
        assert set(r["latency_ms"]) >= {"min", "mean", "median", "p90", "p95", "p99"}
        assert r["latency_ms"]["min"] <= r["latency_ms"]["median"] <= r["latency_ms"]["p99"]
        assert r["throughput"] > 0 and r["fraction_of_fp32_peak"] > 0 and r["model_id"] == res["model_ids"][0]
        assert r["flops_per_image"] > 1e6
    p = run_cli("bench", "--onnx", str(demo_onnx / "scorer.onnx"), "--pipeline", "--source", str(demo_onnx), check=False)
    assert p.returncode == 2 and "no image files" in p.stderr
    # a backend asked for that cannot run the file is said: refused when none can, a warning for the one left out
    p = run_cli("bench", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "tensorrt", check=False)
    assert p.returncode == 2 and p.stderr.strip() == (f"error: --backend tensorrt cannot run {demo_onnx / 'scorer.onnx'} (onnx): "
                                                      "onnx runs on onnxruntime, openvino; give one of those, or auto"), p.stderr
    p = run_cli("bench", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime,torch", "--batch", "1", "--iterations", "3",
                "--warmup", "1")
    assert "WARNING scorer.onnx (onnx): torch cannot run it; timed with onnxruntime" in p.stderr.splitlines(), p.stderr
    assert [ln.split()[0] for ln in p.stdout.splitlines() if ln.split() and ln.split()[0] in ("onnxruntime", "torch")] == ["onnxruntime"]


def test_gpu_peak_is_never_a_cpu_matmul() -> None:
    """Without a reachable GPU, asking for the GPU's peak refuses; it does not time the CPU instead."""
    from skipgan_edge.bench.peak import PeakUnavailable, matmul_peak
    from skipgan_edge.doctor import gpu_stack_missing

    if not any("GPU" in m for m in gpu_stack_missing(tensorrt=False)):
        assert matmul_peak("cuda", n=256, reps=1)["fp32"] > 0  # a GPU machine: measured there
        return
    with pytest.raises(PeakUnavailable, match="GPU's matmul peak"):
        matmul_peak("cuda", n=256, reps=1)
    assert matmul_peak("cpu", n=128, reps=1)["fp32"] > 0


def test_jetson_projection_is_a_roofline(demo_onnx: Path) -> None:
    from skipgan_edge.bench.projection import BOARDS, Board, bytes_moved, project

    moved = {p: bytes_moved(demo_onnx / f, 8) for p, f in (("fp32", "scorer.onnx"), ("fp16", "scorer.fp16.onnx"),
                                                           ("int8", "scorer.int8.onnx"))}
    assert moved["int8"]["weights"] < moved["fp16"]["weights"] < moved["fp32"]["weights"]
    # FP16 halves the networks' weights; the score head's constants (the default's feature bank) stay FP32
    from skipgan_edge.runtime.backends.onnxrt import read_card

    bank = read_card(demo_onnx / "scorer.onnx").score.bank
    head = float(bank["bytes"]) if bank is not None else 0.0
    assert head > 0.05 * moved["fp32"]["weights"]  # large enough that the test tells the two apart
    assert moved["fp16"]["weights"] == pytest.approx((moved["fp32"]["weights"] - head) / 2 + head, rel=0.01)
    assert bytes_moved(demo_onnx / "scorer.onnx", 16)["activations"] == pytest.approx(2 * moved["fp32"]["activations"])
    b = Board("test", "", fp32_tflops=1.0, fp16_tflops=10.0, int8_tops=20.0, dram_gbs=100.0, source="")
    flops = {"conv": 1e9, "convtranspose": 0.0, "matmul": 0.0, "rest": 0.0}
    r = project(flops, {"total": 1e6}, b, "fp16", 4)  # compute 4e9/1e13 = 0.4 ms; memory 1e6/1e11 = 0.01 ms
    assert r["bound"] == "compute" and r["ms_per_batch"] == pytest.approx(0.4) and r["images_per_s"] == pytest.approx(10000)
    r = project(flops, {"total": 1e9}, b, "int8", 4)  # memory 10 ms beats compute 0.2 ms
    assert r["bound"] == "memory" and r["ms_per_batch"] == pytest.approx(10.0)
    assert [x.name for x in BOARDS] == ["Orin Nano 8GB", "Orin NX 16GB", "AGX Orin 64GB"]
    assert all(x.int8_tops == 2 * x.fp16_tflops or x.int8_tops > x.fp16_tflops for x in BOARDS)


def test_jetson_md_labels_its_projection() -> None:
    from conftest import ROOT

    text = (ROOT / "benchmarks" / "JETSON.md").read_text()
    block = text.split("<!-- PROJECTION START -->")[1].split("<!-- PROJECTION END -->")[0]
    assert "roofline" in block and "projection, not a" in text
    for board in ("Orin Nano 8GB", "Orin NX 16GB", "AGX Orin 64GB"):
        assert sum(f"| {board} | {p} |" in block for p in ("fp32", "fp16", "int8")) == 3


def test_projection_prices_the_convolutions_a_variant_keeps_fp32_at_the_fp32_rate(demo_onnx: Path) -> None:
    import onnx

    from skipgan_edge.bench.flops import count_flops
    from skipgan_edge.bench.projection import BOARDS, bytes_moved, project
    from skipgan_edge.export.precision import image_facing_convs

    m = onnx.load(str(demo_onnx / "scorer.int8.onnx"))
    f = count_flops(m)
    conv = f["conv"] + f["convtranspose"] + f["matmul"]
    assert image_facing_convs(onnx.load(str(demo_onnx / "scorer.onnx"))) and 0 < f["fp32_dense"] < conv  # the kept-FP32 convs
    assert count_flops(onnx.load(str(demo_onnx / "scorer.onnx")))["fp32_dense"] == conv  # all FP32 in the FP32 file
    board, batch = BOARDS[0], 8
    row = project(f, bytes_moved(m, batch), board, "int8", batch)
    want = batch * ((conv - f["fp32_dense"]) / (board.int8_tops * 1e12) + (f["fp32_dense"] + f["rest"]) / (board.fp32_tflops * 1e12))
    assert abs(row["compute_ms"] - want * 1e3) <= 1e-9 * want * 1e3 and row["fp32_conv_share"] == f["fp32_dense"] / conv
    all_int8 = project({**f, "fp32_dense": 0.0}, bytes_moved(m, batch), board, "int8", batch)
    assert row["compute_ms"] > all_int8["compute_ms"]


def test_percent_of_peak_is_against_the_precision_the_record_computes_in() -> None:
    from skipgan_edge.bench.latency import peak_precision

    assert [peak_precision({"backend": "tensorrt", "precision": p}) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]
    assert peak_precision({"backend": "openvino", "precision": "fp16", "inference_precision": "bf16"}) == "bf16"
    assert peak_precision({"backend": "onnxruntime", "precision": "int8"}) == "fp32"
