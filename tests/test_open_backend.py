"""One way to open a scorer: options in one place, the base infer checks and times, ``auto`` means the same in every verb,
and the FP16 variant runs in bf16 on a bf16 CPU only where its export gated it that way."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli, write_defect_video

from skipgan_edge.export.onnx import card_from_onnx
from skipgan_edge.runtime.backends import BackendOptions, choose_backend, open_backend
from skipgan_edge.runtime.backends.openvino import cpu_has_bf16, inference_precision

HAS_OV = importlib.util.find_spec("openvino") is not None


def test_options_reach_each_backend_and_only_their_fields() -> None:
    o = BackendOptions(device="cpu", threads=2, precision_hint="f32", cuda_api="pycuda", cuda_graphs=False, pad_to_profile=False)
    assert o.kwargs_for("torch") == {"device": "cpu"}
    assert o.kwargs_for("onnxruntime") == {"threads": 2, "providers": "auto"}
    assert o.kwargs_for("openvino") == {"threads": 2, "precision_hint": "f32"}
    assert o.kwargs_for("tensorrt") == {"cuda_api": "pycuda", "cuda_graphs": False, "pad_to_profile": False, "profile": False}


def test_base_infer_checks_the_batch_against_the_card_and_times_it(demo_onnx: Path) -> None:
    with open_backend("onnx", demo_onnx / "scorer.onnx", "onnxruntime") as be:
        good = np.zeros((2, 32, 32, 3), np.uint8)
        assert be.infer(good).score.shape == (2,) and be.last_ms > 0
        for bad in (good.astype(np.float32), good[:, :16], good[..., :1], good[:0], good[0]):
            with pytest.raises(ValueError, match="expected uint8 images of shape"):
                be.infer(bad)
        assert be.chosen_by == {"rule": "named with --backend"}


def test_bf16_only_for_a_gated_fp16_variant_on_a_bf16_cpu() -> None:
    gated = {"cpu_bf16": {"gate": "passed"}}
    assert inference_precision(gated, "fp16", "auto", has_bf16=True) == "bf16"
    assert inference_precision(gated, "fp16", "auto", has_bf16=False) == "f32"
    assert inference_precision({"cpu_bf16": {"gate": "failed"}}, "fp16", "auto", has_bf16=True) == "f32"
    assert inference_precision({}, "fp16", "auto", has_bf16=True) == "f32"  # never gated: never bf16
    assert inference_precision(gated, "fp32", "auto", has_bf16=True) == "f32" and inference_precision(gated, "int8", "auto", True) == "f32"
    assert inference_precision({}, "fp32", "bf16", has_bf16=False) == "bf16"  # forced
    assert cpu_has_bf16("flags : fpu sse avx512f amx_bf16 amx_tile") and cpu_has_bf16("flags : avx512_bf16")
    assert not cpu_has_bf16("flags : fpu sse avx2 avx512f")


def test_export_gates_fp16_as_this_cpu_runs_it(demo_onnx: Path) -> None:
    card = card_from_onnx(onnx.load(str(demo_onnx / "scorer.fp16.onnx")))
    rec = card.export["cpu_bf16"]
    if HAS_OV and cpu_has_bf16():
        assert rec["gate"] in ("passed", "failed") and "auroc_drop" in rec
        with open_backend("onnx", demo_onnx / "scorer.fp16.onnx", "openvino") as be:
            assert be.inference_precision == ("bf16" if rec["gate"] == "passed" else "f32")
    else:
        assert rec["gate"] == "not run" and rec["why"]
    with open_backend("onnx", demo_onnx / "scorer.onnx", "openvino" if HAS_OV else "onnxruntime") as be:
        assert getattr(be, "inference_precision", "f32") == "f32"  # FP32 stays pinned to f32


def test_auto_means_the_same_in_every_verb(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    onnx_file = str(demo_onnx / "scorer.onnx")
    name, why = choose_backend("onnx", Path(onnx_file), "auto", batch=8)
    if HAS_OV:
        assert name in ("onnxruntime", "openvino") and "faster CPU runtime" in why["rule"] and set(why["race_ms"]) == {"onnxruntime", "openvino"}
    else:
        assert name == "onnxruntime" and "only CPU runtime" in why["rule"]
    rule = why["rule"].split(" at batch")[0]
    ev = json.loads(run_cli("eval", "--onnx", onnx_file, "--data", str(synth_dir), "--json", cwd=tmp_path).stdout)
    video = write_defect_video(tmp_path / "v.avi", 12, {4}, "MJPG")
    rn = json.loads(run_cli("run", "--onnx", onnx_file, "--source", str(video), "--json").stdout)
    run_cli("bench", "--onnx", onnx_file, "--batch", "1,8", "--iterations", "3", "--warmup", "1", "--json", str(tmp_path / "b.json"))
    bn = json.loads((tmp_path / "b.json").read_text())["records"]
    for chosen in (ev["backend_chosen_by"], rn["backend_chosen_by"], *(r["backend_chosen_by"] for r in bn)):
        assert chosen.split(" at batch")[0] == rule, chosen
    ev2 = json.loads(run_cli("eval", "--onnx", onnx_file, "--data", str(synth_dir), "--backend", "onnxruntime", "--json", cwd=tmp_path).stdout)
    assert ev2["backend"] == "onnxruntime" and ev2["backend_chosen_by"] == "named with --backend"
    assert abs(ev2["auroc"] - ev["auroc"]) < 1e-3


def test_openvino_compiles_for_the_callers_batch_and_runs_other_sizes_on_the_dynamic_shape(demo_onnx: Path, tmp_path: Path) -> None:
    """A model compiled for the batch the caller named (about 20 % faster on OpenVINO's CPU plugin than the dynamic
    shape), the dynamic-shape model for any other size, the same scores from both, and at most MAX_SPECIALISED kept."""
    from skipgan_edge.runtime.backends.openvino import MAX_SPECIALISED

    x = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    with open_backend("onnx", demo_onnx / "scorer.onnx", "onnxruntime") as ref:
        want8, want5 = ref.infer(x).score, ref.infer(x[:5]).score
    with open_backend("onnx", demo_onnx / "scorer.onnx", "openvino", batch=8) as be:
        assert be.compiled_for(8) == "batch 8" and be.compiled_for(5) == "dynamic"  # type: ignore[attr-defined]
        got8, got5 = be.infer(x).score, be.infer(x[:5]).score
        np.testing.assert_allclose(got8, want8, rtol=1e-4, atol=1e-5)  # f32 either way: the shape changes no score
        np.testing.assert_allclose(got5, want5, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got5, got8[:5], rtol=1e-4, atol=1e-5)
        for n in range(1, MAX_SPECIALISED + 1):
            be.expect_batch(n)
        assert be.compiled_for(8) == "dynamic" and be.compiled_for(1) == "batch 1"  # type: ignore[attr-defined]
        np.testing.assert_allclose(be.infer(x).score, want8, rtol=1e-4, atol=1e-5)  # the oldest dropped, still served
    run_cli("bench", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "openvino", "--batch", "1,4", "--iterations", "3",
            "--warmup", "1", "--json", str(tmp_path / "b.json"))
    recs = json.loads((tmp_path / "b.json").read_text())["records"]
    assert [(r["batch"], r["openvino_compiled_for"]) for r in recs] == [(1, "batch 1"), (4, "batch 4")]


def _deconv_onnx(path: Path, cin: int, cout: int, k: int, s: int, p: int, h: int, w: int, seed: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((cin, cout, k, k)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
    graph = helper.make_graph([node], "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_transposed_convs_split_into_phase_convs_are_the_same_arithmetic(tmp_path: Path) -> None:
    """The bf16 rewrite (four 2x2 convolutions + DepthToSpace for each 4x4, stride-2, pad-1 ConvTranspose) computes what
    the ConvTranspose computes, on odd and even sizes and with a bias; other transposed convolutions are left alone."""
    import openvino as ov

    from skipgan_edge.runtime.backends.openvino import split_transposed_convs

    core = ov.Core()
    for i, (cin, cout, h, w) in enumerate([(3, 5, 4, 4), (8, 3, 5, 7), (16, 16, 1, 2)]):
        path = _deconv_onnx(tmp_path / f"d{i}.onnx", cin, cout, 4, 2, 1, h, w, i)
        x = np.random.default_rng(10 + i).standard_normal((2, cin, h, w)).astype(np.float32)
        ref_model, split_model = core.read_model(str(path)), core.read_model(str(path))
        assert split_transposed_convs(split_model) == 1
        types = {o.get_type_name() for o in split_model.get_ordered_ops()}
        assert "ConvolutionBackpropData" not in types and {"Convolution", "DepthToSpace"} <= types
        want = core.compile_model(ref_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": x})[0]
        got = core.compile_model(split_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": x})[0]
        assert got.shape == want.shape == (2, cout, 2 * h, 2 * w)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for k, s, p in ((2, 2, 0), (4, 1, 0), (3, 2, 1)):
        assert split_transposed_convs(core.read_model(str(_deconv_onnx(tmp_path / "o.onnx", 4, 4, k, s, p, 4, 4, 0)))) == 0


def test_bf16_runs_the_decoder_as_convolutions(demo_onnx: Path) -> None:
    """In bf16 the demo model's five transposed convolutions become convolutions OpenVINO runs in bf16 (it keeps
    ConvTranspose in f32); scores stay within bf16 rounding of f32, and f32 is not rewritten."""
    x = np.random.default_rng(4).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    with open_backend("onnx", demo_onnx / "scorer.fp16.onnx", "openvino", BackendOptions(precision_hint="f32"), batch=16) as be:
        ref = be.infer(x)
        assert be.split_deconvs == 0  # type: ignore[attr-defined]
    with open_backend("onnx", demo_onnx / "scorer.fp16.onnx", "openvino", BackendOptions(precision_hint="bf16"), batch=16) as be:
        got = be.infer(x)
        assert be.split_deconvs == 5  # type: ignore[attr-defined]
        layers = {op.get_rt_info()["layerType"].astype(str) for op in be._specialised[16].compiled.get_runtime_model().get_ordered_ops()}  # type: ignore[attr-defined]
        assert "Deconvolution" not in layers and "DepthToSpace" in layers, layers
    np.testing.assert_allclose(got.anomaly_map, ref.anomaly_map, atol=2e-3)
    np.testing.assert_allclose(got.normalized_score, ref.normalized_score, atol=0.05)
