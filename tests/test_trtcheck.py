"""The static TensorRT check (``build --dry-run``): real exports pass, each broken rule is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from skipgan_edge.errors import EngineError
from skipgan_edge.export.trt86 import REDUCE_OPS, rewrite_for_trt86
from skipgan_edge.export.trtcheck import check_for_build, check_model, support_table, verdict

U8, F32, F64, I8 = TensorProto.UINT8, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT8


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _rules(m: onnx.ModelProto, target: str = "10.3") -> set[str]:
    return {v.rule for v in check_model(m, target)}


def _good() -> onnx.ModelProto:
    """uint8 NHWC in, Cast, Transpose, Conv: what the scorer's preprocessing does, the right way round."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Cast", ["images"], ["f"], name="cast", to=F32),
             helper.make_node("Transpose", ["f"], ["t"], name="tr", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return _model(nodes, [helper.make_tensor_value_info("images", U8, ["batch", 8, 8, 3])],
                  [helper.make_tensor_value_info("y", F32, ["batch", 4, 8, 8])], [w])


def test_support_table_records_its_source() -> None:
    t = support_table()["targets"]
    assert set(t) == {"8.6", "10.3", "11"}
    assert t["10.3"]["opset"] == [9, 20] and "release/10.1-GA" in t["10.3"]["taken_from"]
    assert t["8.6"]["opset"] == [7, 17] and "release/8.6-GA" in t["8.6"]["taken_from"] and t["8.6"]["device"]["sm"] == 87
    assert "BF16" not in t["8.6"]["ops"]["Conv"] and t["8.6"]["ops"]["DequantizeLinear"] == ["INT8"]
    assert t["8.6"]["restrictions"]["ReduceMean"]["reduce_axes_attribute"] and "reduce_axes_attribute" not in t["10.3"]["restrictions"]["ReduceMean"]
    assert "UINT8" in t["11"]["ops"]["Cast"] and t["10.3"]["ops"]["Unique"] is None


@pytest.mark.parametrize("name", ["scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx"])
def test_every_exported_variant_passes(demo_onnx: Path, name: str) -> None:
    m = onnx.load(str(demo_onnx / name))
    assert [n.op_type for n in m.graph.node if "images" in n.input] == ["Cast"]  # uint8 feeds Cast only
    rep = verdict(demo_onnx / name, batch=(1, 8, 32))
    assert set(rep) == {"8.6", "10.3", "11"} and all(r["ok"] for r in rep.values()), rep
    for target in ("8.6", "10.3"):
        p = run_cli("build", "--onnx", str(demo_onnx / name), "--dry-run", "--trt", target)
        assert f"TensorRT {target}: ok" in p.stdout


def test_hand_built_good_graph_passes_and_each_broken_rule_is_named() -> None:
    assert check_model(_good()) == []
    # uint8 into Transpose (the defect our exporter had)
    m = _good()
    m.graph.node[0].input[0], m.graph.node[1].input[0] = "t8", "images"
    m.graph.node[1].output[0] = "t8"
    m.graph.node[0].output[0] = "t"
    del m.graph.node[1].attribute[:]
    m.graph.node[1].attribute.append(helper.make_attribute("perm", [0, 3, 1, 2]))
    m.graph.node.sort(key=lambda n: n.name != "tr")
    vs = check_model(m)
    assert {v.rule for v in vs} == {"uint8"} and any(v.node == "tr" for v in vs), [v.line() for v in vs]
    # an unsupported op
    m = _good()
    m.graph.node.append(helper.make_node("Unique", ["y"], ["u"], name="uniq"))
    m.graph.output.append(helper.make_tensor_value_info("u", F32, [None]))
    assert "unsupported-op" in _rules(m)
    # a float64 tensor
    m = _good()
    m.graph.node.append(helper.make_node("Cast", ["y"], ["y64"], name="to64", to=F64))
    m.graph.node.append(helper.make_node("Add", ["y64", "y64"], ["z"], name="add64"))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", F64, ["batch", 4, 8, 8]))
    vs = check_model(m)
    assert any(v.rule == "dtype" and v.node == "add64" and "FLOAT64" in v.message for v in vs), [v.line() for v in vs]
    # a dynamic spatial axis
    m = _good()
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("images", U8, ["batch", "h", 8, 3]))
    vs = check_model(m)
    assert any(v.rule == "dynamic-axis" and "axis 1" in v.message for v in vs)
    # an opset outside the range (11 accepts 24, 10.3 stops at 20)
    m = _good()
    m.opset_import[0].version = 22
    assert "opset" in _rules(m, "10.3") and "opset" not in _rules(m, "11")


def _qdq(scale: np.ndarray, zp: np.ndarray | None, on_weight: bool = False, axis: int = 1) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(scale, "s")]
    ins = ["w" if on_weight else "x", "s"]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "zp"))
        ins.append("zp")
    if on_weight:
        inits.append(numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"))
    nodes = [helper.make_node("QuantizeLinear", ins, ["q"], name="q", axis=axis),
             helper.make_node("DequantizeLinear", ["q", *ins[1:]], ["dq"], name="dq", axis=axis),
             helper.make_node("Add", ["x", "dq"] if not on_weight else ["x", "x"], ["y"], name="add")]
    if on_weight:
        nodes[2] = helper.make_node("Conv", ["x", "dq"], ["y"], name="conv")
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 4, 2, 2])],
                  [helper.make_tensor_value_info("y", F32, ["batch", 4, 2, 2])], inits, opset=19)


def test_qdq_placement_rules() -> None:
    assert check_model(_qdq(np.float32(0.1), np.int8(0))) == []
    assert check_model(_qdq(np.full(4, 0.1, np.float32), np.zeros(4, np.int8), on_weight=True, axis=0)) == []
    # uint8 (asymmetric) quantization, a non-zero zero point, a per-channel activation, a bad scale
    assert "uint8" in check_model(_qdq(np.float32(0.1), np.uint8(128)))[0].message.lower()
    assert any("not zero" in v.message for v in check_model(_qdq(np.float32(0.1), np.int8(3))))
    assert any("activation" in v.message for v in check_model(_qdq(np.full(4, 0.1, np.float32), np.zeros(4, np.int8))))
    assert any("non-finite" in v.message for v in check_model(_qdq(np.float32(-1.0), np.int8(0))))
    assert any("axis 0 has size 4" in v.message
               for v in check_model(_qdq(np.full(3, 0.1, np.float32), np.zeros(3, np.int8), on_weight=True, axis=0)))
    assert all(v.rule == "qdq" for v in check_model(_qdq(np.float32(0.1), np.int8(3))))


def test_dry_run_cli_fails_with_one_line_per_violation(tmp_path: Path) -> None:
    m = _good()
    m.graph.node.append(helper.make_node("Unique", ["y"], ["u"], name="uniq"))
    m.graph.output.append(helper.make_tensor_value_info("u", F32, [None]))
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("images", U8, ["batch", "h", 8, 3]))
    onnx.save(m, str(tmp_path / "bad.onnx"))
    p = run_cli("build", "--onnx", str(tmp_path / "bad.onnx"), "--dry-run", "--trt", "11", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "1 violation" not in p.stdout and "violation(s)" in p.stdout
    assert any("uniq (Unique): unsupported-op" in ln for ln in lines) and any("dynamic-axis" in ln for ln in lines)
    assert all(ln.startswith("TensorRT 11: ") for ln in lines)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    p = run_cli("build", "--onnx", str(tmp_path / "junk.onnx"), "--dry-run", check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "not a readable ONNX" in p.stderr


def test_trt86_sees_the_int8_reduce_axes_and_the_rewrite_fixes_them(demo_onnx: Path) -> None:
    """The INT8 scorer is opset 19 with reduce axes as inputs, which 8.6's importer ignores; the build's rewrite
    (attributes, opset 17) is what --dry-run --trt 8.6 checks, and it passes: the head's ReduceMean and ReduceMax are
    seen and rewritten (the gaussian bank's ReduceSum takes its axes as an input from opset 13 on, which 8.6 reads)."""
    m = onnx.load(str(demo_onnx / "scorer.int8.onnx"))
    raw = check_model(m, "8.6")
    reduces = {n.name for n in m.graph.node if n.op_type in REDUCE_OPS and n.op_type != "ReduceSum" and len(n.input) > 1}
    assert {"ReduceMean", "ReduceMax"} <= {n.op_type for n in m.graph.node if n.name in reduces}
    assert any(n.op_type == "ReduceSum" and len(n.input) == 2 for n in m.graph.node)  # the bank's sum of squares
    assert reduces and {v.node for v in raw if "reduces every axis" in v.message} == reduces, [v.line() for v in raw]
    assert any(v.rule == "opset" and "opset 19" in v.message for v in raw)
    assert check_model(m, "10.3") == []  # 10.x reads the axes input
    rewritten = rewrite_for_trt86(m)
    assert [i.version for i in rewritten.opset_import if i.domain in ("", "ai.onnx")] == [17]
    assert all(len(n.input) == 1 and any(a.name == "axes" for a in n.attribute) for n in rewritten.graph.node if n.name in reduces)
    assert check_model(rewritten, "8.6") == [] and check_for_build(m, "8.6") == []
    assert "rewrites it for 8.6" in verdict(demo_onnx / "scorer.int8.onnx", ["8.6"])["8.6"]["checked"]


@pytest.mark.parametrize("name", ["scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx"])
def test_trt86_rewrite_gives_onnxruntime_the_same_outputs(demo_onnx: Path, name: str, synth_dir: Path) -> None:
    import onnxruntime as ort

    from skipgan_edge.data.datasets import load_folder

    m = onnx.load(str(demo_onnx / name))
    r = rewrite_for_trt86(m)
    onnx.checker.check_model(r, full_check=True)
    test = load_folder(synth_dir, 32, 3).test
    assert test is not None
    x = np.concatenate([test.images[:24], np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"images": x})
    got = ort.InferenceSession(r.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"images": x})
    names = [o.name for o in m.graph.output]
    for n, a, b in zip(names, want, got):
        assert a.shape == b.shape and a.dtype == b.dtype, n
        # ORT's opset-17 and opset-18 ReduceMean kernels sum in different orders: equal to float32 rounding
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * float(np.abs(a).max()), err_msg=n)
    amap = got[names.index("anomaly_map")]
    assert amap.shape == (32, 1, 32, 32) and float(amap.std(axis=(2, 3)).min()) > 0  # a map, not one number per image


def _reduce_model(axes_const: bool) -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["images"], ["f"], name="/cast", to=F32)]
    inits = []
    if axes_const:
        inits.append(numpy_helper.from_array(np.array([3], np.int64), "axes"))
    else:
        nodes += [helper.make_node("Shape", ["f"], ["s"], name="/shape"),
                  helper.make_node("Slice", ["s", "st", "en"], ["axes"], name="/slice")]
        inits += [numpy_helper.from_array(np.array([3], np.int64), "st"), numpy_helper.from_array(np.array([4], np.int64), "en")]
    nodes.append(helper.make_node("ReduceMean", ["f", "axes"], ["y"], name="/mean", keepdims=1))
    return _model(nodes, [helper.make_tensor_value_info("images", U8, ["batch", 8, 8, 3])],
                  [helper.make_tensor_value_info("y", F32, ["batch", 8, 8, 1])], inits, opset=18)


def test_trt86_rewrite_refuses_run_time_axes_in_one_line() -> None:
    assert check_for_build(_reduce_model(axes_const=True), "8.6") == []
    with pytest.raises(EngineError, match="computed at run time.*JetPack 6.1"):
        rewrite_for_trt86(_reduce_model(axes_const=False))
    vs = check_for_build(_reduce_model(axes_const=False), "8.6")
    assert [v.rule for v in vs] == ["rewrite"] and "\n" not in vs[0].message


def _resize(**attrs: object) -> onnx.ModelProto:
    sizes = numpy_helper.from_array(np.array([16, 16], np.int64), "sizes")  # an aspect-ratio policy needs sizes
    nodes = [helper.make_node("Cast", ["images"], ["f"], name="cast", to=F32),
             helper.make_node("Transpose", ["f"], ["t"], name="tr", perm=[0, 3, 1, 2]),
             helper.make_node("Resize", ["t", "", "", "sizes"], ["y"], name="resize", axes=[2, 3], **attrs)]
    return _model(nodes, [helper.make_tensor_value_info("images", U8, ["batch", 8, 8, 3])],
                  [helper.make_tensor_value_info("y", F32, ["batch", 3, 16, 16])], [sizes], opset=19)


def test_resize_cubic_passes_and_an_aspect_ratio_policy_is_refused() -> None:
    for target in ("10.3", "11"):
        assert check_model(_resize(mode="cubic"), target) == []
        assert check_model(_resize(mode="linear", keep_aspect_ratio_policy="stretch"), target) == []
        vs = check_model(_resize(mode="linear", keep_aspect_ratio_policy="not_larger"), target)
        assert [v.rule for v in vs] == ["restriction"] and "keep_aspect_ratio_policy" in vs[0].message
    assert check_model(_resize(mode="cubic"), "11") == []


def test_uint8_identity_into_a_graph_output_passes() -> None:
    m = _good()
    m.graph.node.append(helper.make_node("Identity", ["images"], ["raw"], name="passthrough"))
    m.graph.output.append(helper.make_tensor_value_info("raw", U8, ["batch", 8, 8, 3]))
    assert check_model(m) == [] and check_model(m, "8.6") == []
    m.graph.node.append(helper.make_node("Identity", ["images"], ["raw2"], name="inner"))  # a uint8 intermediate: still refused
    m.graph.node.append(helper.make_node("Identity", ["raw2"], ["raw3"], name="inner2"))
    m.graph.output.append(helper.make_tensor_value_info("raw3", U8, ["batch", 8, 8, 3]))
    assert {v.rule for v in check_model(m)} == {"uint8"}


def _fp8() -> onnx.ModelProto:
    s = numpy_helper.from_array(np.float32(0.1), "s")
    zp = helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
             helper.make_node("Add", ["x", "dq"], ["y"], name="add")]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 4, 2, 2])],
                  [helper.make_tensor_value_info("y", F32, ["batch", 4, 2, 2])], [s, zp], opset=19)


def test_fp8_is_refused_on_orin_and_passes_where_the_gpu_has_it() -> None:
    vs = check_model(_fp8(), "10.3")  # the JetPack target: Orin, sm_87
    assert [v.rule for v in vs] == ["fp8"] and "sm_87" in vs[0].message
    assert check_model(_fp8(), "10.3", sm=90) == [] and check_model(_fp8(), "11") == []
    assert "fp8" in {v.rule for v in check_model(_fp8(), "11", sm=87)}


def test_static_batch_outside_the_profile_is_refused() -> None:
    m = _good()
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("images", U8, [1, 8, 8, 3]))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", F32, [1, 4, 8, 8]))
    assert check_model(m) == [] and check_model(m, batch=(1, 1, 1)) == []
    vs = check_model(m, batch=(1, 8, 32))
    assert [v.rule for v in vs] == ["profile"] and "--batch 1,1,1" in vs[0].message
    assert check_model(_good(), batch=(1, 8, 32)) == []  # a dynamic batch fits any profile


def test_failed_shape_inference_is_a_violation_not_a_silent_pass(tmp_path: Path) -> None:
    m = _good()
    m.graph.node.append(helper.make_node("Add", ["y", "w"], ["z"], name="clash"))  # [b,4,8,8] + [4,3,3,3]: no broadcast
    m.graph.output.append(helper.make_tensor_value_info("z", F64, None))
    vs = check_model(m)
    assert "shape-inference" in {v.rule for v in vs}, [v.line() for v in vs]
    onnx.save(m, str(tmp_path / "clash.onnx"))
    p = run_cli("build", "--onnx", str(tmp_path / "clash.onnx"), "--dry-run", "--trt", "10.3", check=False)
    assert p.returncode == 2 and "shape-inference" in p.stderr


def test_a_trt_target_as_users_write_it() -> None:
    from skipgan_edge.errors import EngineError
    from skipgan_edge.export.trtcheck import target_for

    assert [target_for(v) for v in ("8.6", "8.6.2", "10.3", "10.3.0.26", "11", "11.0", "11.1.0")] == ["8.6", "8.6", "10.3", "10.3", "11", "11", "11"]
    for bad, msg in (("8.5.2", "upgrade to JetPack 6.1"), ("7.1", "upgrade to JetPack 6.1"), ("10.8", "unknown TensorRT target"),
                     ("banana", "unknown TensorRT target")):
        with pytest.raises(EngineError, match=msg):
            target_for(bad)
