"""Regenerate ``skipgan_edge/export/trt_support.json`` from onnx-tensorrt's ``docs/operators.md``.

Usage (from a clone of onnx/onnx-tensorrt)::

    git show release/10.1-GA:docs/operators.md | python tools/trt_support_table.py > skipgan_edge/export/trt_support.json

The JSON holds, per TensorRT target, the opset range, every operator's support flag and type list,
and the restrictions the static check (``skipgan-edge build --dry-run``) enforces. Where a target's
own table was not readable offline, it is the parsed table plus the differences listed in
``DELTAS`` below, each taken from a newer published table or from onnx-tensorrt's changelog; the
``taken_from`` field of each target says which.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

BASE = {
    "table": "onnx/onnx-tensorrt docs/operators.md, branch release/10.1-GA (header: 'TensorRT 10.0', opset 9 to 20)",
}

# Restrictions from the table's last column that our check enforces, as data: inputs that must be
# build-time constants (initializers or Constant outputs), and attributes with allowed values.
RESTRICTIONS: dict[str, dict[str, Any]] = {
    **{op: {"const_inputs": [1]} for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze", "CumSum")},
    "Slice": {"const_inputs": [3]},
    "AveragePool": {"spatial_dims": [2, 3], "dilations_one": True},
    "MaxPool": {"spatial_dims": [2, 3], "dilations_one": True, "max_outputs": 1},
    "LpPool": {"dilations_one": True},
    "QuantizeLinear": {"zero_point_zero": True},
    "DequantizeLinear": {"zero_point_zero": True},
    "Resize": {"attr_values": {"mode": ["nearest", "linear"], "coordinate_transformation_mode": [
        "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"], "antialias": [0]}},
}

# TensorRT 10.3 (JetPack 6): the 10.1 table plus the changelog entries of 10.2 and 10.3.
# TensorRT 11: the 10.1 table plus every difference the newest table we could read offline lists
# (onnx-tensorrt docs/operators.md at the TensorRT 10.15 GA release: opset 9 to 24).
DELTAS: dict[str, dict[str, Any]] = {
    "10.3": {
        "taken_from": "the release/10.1-GA table plus onnx-tensorrt's Changelog entries for 10.2 and 10.3 "
                      "(10.3: Slice accepts tensor axes)",
        "opset": [9, 20],
        "ops": {},
        "drop_restrictions": {"Slice": ["const_inputs"]},
    },
    "11": {
        "taken_from": "the release/10.1-GA table plus the differences listed by onnx-tensorrt's operators.md at the "
                      "TensorRT 10.15 GA release (the newest table readable offline; TensorRT 11 removed the "
                      "FP16/INT8 builder flags but not ONNX operators): opset 9 to 24, new ops Attention, "
                      "RMSNormalization, RotaryEmbedding, TensorScatter, STFT, window ops; FP4 in Q/DQ",
        "opset": [9, 24],
        "ops": {
            "Attention": ["FP32", "FP16", "BF16", "INT8", "FP8"],
            "BlackmanWindow": ["FP32", "FP16"], "HammingWindow": ["FP32", "FP16"], "HannWindow": ["FP32", "FP16"],
            "Constant": ["FP32", "FP16", "BF16", "FP8", "FP4", "INT4", "INT32", "INT64", "BOOL"],
            "ConstantOfShape": ["FP32", "FP16", "BF16", "FP8", "FP4", "INT4", "INT32", "INT64", "BOOL"],
            "DequantizeLinear": ["INT8", "FP8", "FP4", "INT4"],
            "Pow": ["FP32", "FP16", "BF16", "INT32", "INT64"],
            "RMSNormalization": ["FP32", "FP16", "BF16"],
            "RotaryEmbedding": ["FP32", "FP16", "BF16"],
            "STFT": ["FP32"],
            "TensorScatter": ["FP32", "FP16", "BF16", "INT32"],
        },
        "drop_restrictions": {"Slice": ["const_inputs"]},
    },
}


def parse(markdown: str) -> dict[str, list[str] | None]:
    ops: dict[str, list[str] | None] = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", cells[0]) or cells[0] == "Operator":
            continue
        if not cells[1].startswith("Y"):
            ops[cells[0]] = None
            continue
        types = [t.strip() for t in (cells[2] if len(cells) > 2 else "").split(",") if t.strip()]
        ops[cells[0]] = sorted({"INT64" if t == "INF64" else t for t in types})  # the 10.x table spells INT64 "INF64" once
    return ops


def main() -> None:
    base = parse(sys.stdin.read())
    if len(base) < 150:
        raise SystemExit(f"parsed only {len(base)} operators; is this onnx-tensorrt's docs/operators.md?")
    out: dict[str, Any] = {"format": 1, "source": BASE, "targets": {}}
    for target, delta in DELTAS.items():
        ops = {**base, **{k: sorted(v) for k, v in delta["ops"].items()}}
        restr = {op: dict(r) for op, r in RESTRICTIONS.items()}
        for op, keys in delta.get("drop_restrictions", {}).items():
            for k in keys:
                restr.get(op, {}).pop(k, None)
        out["targets"][target] = {"taken_from": delta["taken_from"], "opset": delta["opset"],
                                  "ops": dict(sorted(ops.items())), "restrictions": {k: v for k, v in sorted(restr.items()) if v}}
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
