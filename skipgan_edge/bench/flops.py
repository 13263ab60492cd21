"""FLOPs per image counted from the ONNX graph (multiply-adds count as 2 FLOPs).

* Conv: 2 · N·Cout·Hout·Wout · (Cin/groups)·kh·kw  (+ N·Cout·Hout·Wout for a bias)
* ConvTranspose: 2 · N·Cin·Hin·Win · (Cout/groups)·kh·kw  (+ bias as above, on the output)
* MatMul / Gemm: 2·M·N·K
* everything else ("rest"): one FLOP per output element for elementwise and activation ops,
  one per input element for reductions; data movement (Reshape, Concat, Transpose, Q/DQ, Cast,
  Shape, Slice, Gather) counts zero.

Shapes come from ONNX shape inference with the batch fixed at 1; where inference leaves a tensor's shape open (the
scorer's head after the split of its 2B feature pass: x and G(x) through D in one batch), from one ONNX Runtime run
of the graph at batch 1 that returns every intermediate tensor. An operator that still has no shape is an error,
never a zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ZERO_COST = {"Reshape", "Concat", "Transpose", "QuantizeLinear", "DequantizeLinear", "Cast", "Shape", "Slice", "Gather",
             "Constant", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Split", "ConstantOfShape"}
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"}


def inferred_at_batch_1(model: Any) -> Any:
    """A copy of ``model`` with a dynamic batch axis fixed at 1 and every tensor's shape and type inferred."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    return onnx.shape_inference.infer_shapes(m, data_prop=True)


def _shapes(model: Any) -> dict[str, list[int]]:
    m = inferred_at_batch_1(model)
    out: dict[str, list[int]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    for init in m.graph.initializer:
        out[init.name] = list(init.dims)
    wanted = [o for n in model.graph.node if n.op_type not in ZERO_COST for o in [*n.input, *n.output] if o and o not in out]
    if wanted:
        out.update(_run_shapes(model, sorted(set(wanted))))
    return out


def _run_shapes(model: Any, names: list[str]) -> dict[str, list[int]]:
    """Shapes of ``names`` from one ONNX Runtime run of ``model`` at batch 1 (zeros in, every asked tensor out)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        dtype = {"tensor(uint8)": np.uint8, "tensor(float16)": np.float16}.get(inp.type, np.float32)
        feeds[inp.name] = np.zeros(shape, dtype)
    outs = sess.run(names, feeds)
    return {n: list(np.shape(v)) for n, v in zip(names, outs)}


def count_flops(model_or_path: Any) -> dict[str, float]:
    """FLOPs per image by category: ``conv``, ``convtranspose``, ``matmul``, ``rest``, ``total``; and
    ``fp32_dense``, the part of conv + convtranspose + matmul that computes in FP32 (a float32 data input and a weight
    not behind DequantizeLinear: every one in an FP32 file; the convolutions an FP16 or INT8 file keeps FP32)."""
    import onnx

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    shapes = _shapes(model)
    inferred = inferred_at_batch_1(model)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    elem.update({t.name: t.data_type for t in model.graph.initializer})
    # weights may sit behind DequantizeLinear in Q/DQ models: follow to the initializer's shape
    producers = {o: n for n in model.graph.node for o in n.output}

    def wshape(name: str) -> list[int] | None:
        if name in shapes:
            return shapes[name]
        n = producers.get(name)
        while n is not None and n.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast", "Identity"):
            if n.input[0] in shapes:
                return shapes[n.input[0]]
            n = producers.get(n.input[0])
        return None

    def dequantized(name: str) -> bool:
        n = producers.get(name)
        while n is not None and n.op_type in ("Cast", "Identity", "Transpose", "Reshape"):
            n = producers.get(n.input[0])
        return n is not None and n.op_type == "DequantizeLinear"

    cats = {"conv": 0.0, "convtranspose": 0.0, "matmul": 0.0, "rest": 0.0}
    fp32_dense = 0.0
    unknown: list[str] = []
    for n in model.graph.node:
        op = n.op_type
        if op in ZERO_COST:
            continue
        before = cats["conv"] + cats["convtranspose"] + cats["matmul"]
        out_shape = shapes.get(n.output[0]) if n.output else None
        if op == "Conv":
            w, y = wshape(n.input[1]), out_shape
            if w is None or y is None:
                unknown.append(f"{op} {n.name or n.output[0]}")
                continue
            _, cin_g, kh, kw = w  # (Cout, Cin/groups, kh, kw)
            cats["conv"] += 2.0 * np.prod(y) * cin_g * kh * kw + (np.prod(y) if len(n.input) > 2 else 0)
        elif op == "ConvTranspose":
            w, x, y = wshape(n.input[1]), shapes.get(n.input[0]), out_shape
            if w is None or x is None or y is None:
                unknown.append(f"{op} {n.name or n.output[0]}")
                continue
            _, cout_g, kh, kw = w  # (Cin, Cout/groups, kh, kw)
            cats["convtranspose"] += 2.0 * np.prod(x) * cout_g * kh * kw + (np.prod(y) if len(n.input) > 2 else 0)
        elif op in ("MatMul", "Gemm"):
            a, b = shapes.get(n.input[0]), wshape(n.input[1])
            if a is None or b is None:
                unknown.append(f"{op} {n.name or n.output[0]}")
                continue
            cats["matmul"] += 2.0 * np.prod(a) * b[-1]
        elif op in REDUCTIONS:
            x = shapes.get(n.input[0])
            cats["rest"] += float(np.prod(x)) if x else 0.0
        elif out_shape is not None:
            cats["rest"] += float(np.prod(out_shape))
        else:
            unknown.append(f"{op} {n.name or n.output[0]}")
        if op in ("Conv", "ConvTranspose", "MatMul", "Gemm") and elem.get(n.input[0]) == 1 and not dequantized(n.input[1]):
            fp32_dense += cats["conv"] + cats["convtranspose"] + cats["matmul"] - before
    if unknown:
        raise ValueError(f"FLOPs: no shape for {len(unknown)} operator(s) ({', '.join(unknown[:3])}): the count would be short")
    cats = {k: float(v) for k, v in cats.items()}
    cats["total"] = sum(cats.values())
    cats["fp32_dense"] = float(fp32_dense)  # a subset of the above, not added to the total
    return cats
