"""The scorer as TensorRT 8.6 (JetPack 6.0) parses it: reduce axes as attributes, opset 17.

Why: our exporter writes opset 19 (the INT8 file) where ReduceMean/ReduceMax take ``axes`` as an
input (opset 18). onnx-tensorrt's 8.6 importer reads ``axes`` from the attribute only:
``reduceTensor`` (release/8.6-GA, onnx2trt_utils.cpp) takes ``attrs.get("axes")``, and every reduce
importer but ReduceSum calls it without the axes input (release/8.6-GA, builtin_op_importers.cpp,
``DEFINE_BUILTIN_OP_IMPORTER(ReduceMean)`` and its siblings), so the input is ignored and every
axis is reduced: the anomaly map collapses to one number per image, with no parser error. And the
8.6 table says "TensorRT 8.6 supports operators up to Opset 17" (release/8.6-GA docs/operators.md).

:func:`rewrite_for_trt86` turns every constant ``axes`` input of a reduction into the attribute
(ReduceSum keeps its input: it has taken one since opset 13 and 8.6 reads it), drops the opset-18/19
attributes that are at their defaults, sets the default-domain opset to 17, and then proves the
result is a valid opset-17 model (``onnx.checker`` with ``full_check``: every node's schema at 17,
strict shape inference). A graph that needs more than that (an axes input computed at run time, a
Resize with an aspect-ratio policy, an FP8 tensor, an op whose opset-18/19 change it relies on) is
refused with one line that says to use TensorRT 10.3 (JetPack 6.1+) instead.

The builder applies it before parsing on TensorRT < 10 (:mod:`skipgan_edge.export.engine`), and
``build --dry-run --trt 8.6`` checks the rewritten graph, which is what 8.6 parses. A test runs
both graphs in ONNX Runtime and requires identical outputs.
"""

from __future__ import annotations

from typing import Any

from skipgan_edge.errors import EngineError, require

TRT86_OPSET = 17
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare")
UPGRADE = "build it with TensorRT 10.3 (JetPack 6.1 or later) instead"
#: Attributes added after opset 17, with the value that means "as opset 17 did": dropped when at it.
LATER_DEFAULTS: dict[str, dict[str, Any]] = {
    "Cast": {"saturate": 1},
    "QuantizeLinear": {"saturate": 1},
    "Resize": {"antialias": 0, "keep_aspect_ratio_policy": "stretch"},
    "AveragePool": {"dilations": None},
}


def graph_constants(model: Any) -> dict[str, Any]:
    """Name → numpy array for initializers and Constant node outputs."""
    from onnx import numpy_helper

    out: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _opset(model: Any) -> int:
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 0)


def needs_rewrite(model: Any) -> bool:
    return _opset(model) > TRT86_OPSET


def rewrite_for_trt86(model: Any) -> Any:
    """A copy of ``model`` that TensorRT 8.6 parses as ONNX Runtime runs ``model`` (see the module docstring)."""
    onnx = require("onnx", "onnx", "the TensorRT 8.6 graph rewrite")
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    if not needs_rewrite(m):
        return m
    consts = graph_constants(m)
    detached: set[str] = set()
    for n in m.graph.node:
        name = n.name or n.op_type
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in REDUCE_OPS and n.op_type != "ReduceSum" and len(n.input) > 1 and n.input[1]:
            axes_name = n.input[1]
            if axes_name not in consts:
                raise EngineError(f"{name} ({n.op_type}) reduces over axes computed at run time, which TensorRT 8.6 ignores "
                                  f"(it would reduce every axis); {UPGRADE}")
            axes = [int(v) for v in consts[axes_name].reshape(-1)]
            noop = next((a.i for a in n.attribute if a.name == "noop_with_empty_axes"), 0)
            del n.input[1:]
            detached.add(axes_name)
            keep = [a for a in n.attribute if a.name != "noop_with_empty_axes"]
            del n.attribute[:]
            n.attribute.extend(keep)
            if axes:
                n.attribute.append(helper.make_attribute("axes", axes))
            elif noop:
                raise EngineError(f"{name} ({n.op_type}) reduces over no axis (noop_with_empty_axes); TensorRT 8.6 would "
                                  f"reduce every axis; {UPGRADE}")
        elif n.op_type in REDUCE_OPS and n.op_type != "ReduceSum":
            keep = [a for a in n.attribute if a.name != "noop_with_empty_axes" or a.i != 0]
            del n.attribute[:]
            n.attribute.extend(keep)
        for attr, default in LATER_DEFAULTS.get(n.op_type, {}).items():
            a = next((x for x in n.attribute if x.name == attr), None)
            if a is None:
                continue
            v = helper.get_attribute_value(a)
            v = v.decode() if isinstance(v, bytes) else v
            if default is None and attr == "dilations" and all(int(d) == 1 for d in v):
                default = v
            if v != default:
                raise EngineError(f"{name} ({n.op_type}) sets {attr}={v!r}, which opset {TRT86_OPSET} (TensorRT 8.6) "
                                  f"does not have; {UPGRADE}")
            n.attribute.remove(a)
    used = {t for n in m.graph.node for t in n.input} | {o.name for o in m.graph.output}
    unused = detached - used  # the axes constants now held as attributes
    keep_inits = [t for t in m.graph.initializer if t.name not in unused]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep_inits)
    keep_nodes = [n for n in m.graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in unused)]
    del m.graph.node[:]
    m.graph.node.extend(keep_nodes)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = TRT86_OPSET
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise EngineError(f"this graph is not valid at opset {TRT86_OPSET} after the TensorRT 8.6 rewrite ({first}); "
                          f"{UPGRADE}") from None
    return m
