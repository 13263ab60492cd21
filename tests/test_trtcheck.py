"""The static TensorRT check (``build --dry-run``): real exports pass, each broken rule is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from skipgan_edge.export.trtcheck import check_model, support_table, verdict

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
    assert set(t) == {"10.3", "11"}
    assert t["10.3"]["opset"] == [9, 20] and "release/10.1-GA" in t["10.3"]["taken_from"]
    assert "UINT8" in t["11"]["ops"]["Cast"] and t["10.3"]["ops"]["Unique"] is None


@pytest.mark.parametrize("name", ["scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx"])
def test_every_exported_variant_passes(demo_onnx: Path, name: str) -> None:
    m = onnx.load(str(demo_onnx / name))
    assert [n.op_type for n in m.graph.node if "images" in n.input] == ["Cast"]  # uint8 feeds Cast only
    rep = verdict(demo_onnx / name)
    assert rep["10.3"]["ok"] and rep["11"]["ok"], rep
    p = run_cli("build", "--onnx", str(demo_onnx / name), "--dry-run", "--trt", "10.3")
    assert "TensorRT 10.3: ok" in p.stdout


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
