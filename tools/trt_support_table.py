"""Regenerate ``skipgan_edge/export/trt_support.json`` from onnx-tensorrt's ``docs/operators.md``.

Usage (with a clone of onnx/onnx-tensorrt that has its release branches)::

    python tools/trt_support_table.py path/to/onnx-tensorrt > skipgan_edge/export/trt_support.json

Each target's table is read with ``git show BRANCH:docs/operators.md`` from the branch in ``BASES``.
The JSON holds, per TensorRT target, the opset range, every operator's support flag and type list,
the restrictions the static check (``skipgan-edge build --dry-run``) enforces, and the GPU the
target is built for. Where a target's own table was not readable offline, it is a parsed table plus
the differences listed in ``DELTAS``, each taken from a newer published table or from
onnx-tensorrt's changelog; the ``taken_from`` field of each target says which.

Where a table lags its own importer, the importer source wins and is cited here:

* Resize ``mode="cubic"``: the tables list nearest and linear only, but the importers map it to
  ``ResizeMode::kCUBIC`` / ``InterpolationMode::kCUBIC`` (release/8.6-GA builtin_op_importers.cpp,
  ``DEFINE_BUILTIN_OP_IMPORTER(Resize)``; release/10.1-GA onnxOpImporters.cpp, same importer).
* ReduceMean/ReduceMax/... on TensorRT 8.6: ``reduceTensor`` (release/8.6-GA onnx2trt_utils.cpp)
  reads ``axes`` from the attribute only; every importer but ReduceSum calls it without the axes
  input, so an opset-18 ``axes`` input is ignored and every axis is reduced
  (``reduce_axes_attribute``).
* UINT8: "UINT8 is only allowed as network inputs and outputs" (release/8.6-GA ModelImporter.cpp,
  ``parseGraph``): any node may produce a uint8 tensor that is a graph output.
* INT64 on TensorRT 8.6: "TensorRT will attempt to cast down INT64 to INT32" (the 8.6 table's
  header), so an operator listing INT32 takes INT64 there (``int64_as``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

BASES = {
    "8.6": "release/8.6-GA",
    "10.3": "release/10.1-GA",
    "11": "release/10.1-GA",
}

REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare")
RESIZE_COORDS = ["half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"]

# Restrictions from the table's last column that our check enforces, as data: inputs that must be
# build-time constants (initializers or Constant outputs), and attributes with allowed values.
RESTRICTIONS: dict[str, dict[str, Any]] = {
    **{op: {"const_inputs": [1]} for op in (*REDUCE_OPS, "Squeeze", "Unsqueeze", "CumSum")},
    "Slice": {"const_inputs": [3]},
    "AveragePool": {"spatial_dims": [2, 3], "dilations_one": True},
    "MaxPool": {"spatial_dims": [2, 3], "dilations_one": True, "max_outputs": 1},
    "LpPool": {"dilations_one": True},
    "QuantizeLinear": {"zero_point_zero": True},
    "DequantizeLinear": {"zero_point_zero": True},
    "Resize": {"attr_values": {"mode": ["nearest", "linear", "cubic"], "coordinate_transformation_mode": RESIZE_COORDS,
                               "antialias": [0], "keep_aspect_ratio_policy": ["stretch"]}},
}

DELTAS: dict[str, dict[str, Any]] = {
    # TensorRT 8.6 (JetPack 6.0 ships 8.6.2): its own table, read as published.
    "8.6": {
        "taken_from": "the release/8.6-GA table ('TensorRT 8.6 supports operators up to Opset 17'; opset 7 is the "
                      "parser's minimum, release/8.6-GA ModelImporter.cpp); reduce axes from attributes only "
                      "(release/8.6-GA onnx2trt_utils.cpp reduceTensor); Resize cubic from its importer",
        "opset": [7, 17],
        "ops": {},
        "int64_as": "INT32",
        "add_restrictions": {op: {"reduce_axes_attribute": True} for op in REDUCE_OPS if op != "ReduceSum"},
        "device": {"jetpack": "6.0", "sm": 87, "gpu": "Jetson Orin (JetPack 6.0, TensorRT 8.6.2)"},
    },
    # TensorRT 10.3 (JetPack 6.1/6.2): the 10.1 table plus the changelog entries of 10.2 and 10.3.
    "10.3": {
        "taken_from": "the release/10.1-GA table plus onnx-tensorrt's Changelog entries for 10.2 and 10.3 "
                      "(10.3: Slice accepts tensor axes)",
        "opset": [9, 20],
        "ops": {},
        "drop_restrictions": {"Slice": ["const_inputs"]},
        "device": {"jetpack": "6.1, 6.2", "sm": 87, "gpu": "Jetson Orin (JetPack 6.1/6.2, TensorRT 10.3); "
                   "desktop GPUs with --sm"},
    },
    # TensorRT 11: the 10.1 table plus every difference the newest table we could read offline lists
    # (onnx-tensorrt docs/operators.md at the TensorRT 10.15 GA release: opset 9 to 24).
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
        "device": {"jetpack": None, "sm": None, "gpu": "desktop and data-centre GPUs (pass --sm for one)"},
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


def table_of(clone: Path, branch: str) -> dict[str, list[str] | None]:
    text = subprocess.run(["git", "-C", str(clone), "show", f"{branch}:docs/operators.md"], check=True,
                          capture_output=True, text=True).stdout
    ops = parse(text)
    if len(ops) < 120:
        raise SystemExit(f"parsed only {len(ops)} operators from {branch}; is this onnx-tensorrt?")
    return ops


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/trt_support_table.py PATH_TO_ONNX_TENSORRT_CLONE > skipgan_edge/export/trt_support.json")
    clone = Path(sys.argv[1])
    out: dict[str, Any] = {"format": 2, "source": {"tables": {t: f"onnx/onnx-tensorrt docs/operators.md, branch {b}"
                                                             for t, b in BASES.items()}}, "targets": {}}
    for target, delta in DELTAS.items():
        base = table_of(clone, BASES[target])
        ops = {**base, **{k: sorted(v) for k, v in delta["ops"].items()}}
        restr = {op: dict(r) for op, r in RESTRICTIONS.items()}
        for op, keys in delta.get("drop_restrictions", {}).items():
            for k in keys:
                restr.get(op, {}).pop(k, None)
        for op, extra in delta.get("add_restrictions", {}).items():
            restr.setdefault(op, {}).update(extra)
        rec: dict[str, Any] = {"taken_from": delta["taken_from"], "opset": delta["opset"], "device": delta["device"]}
        if "int64_as" in delta:
            rec["int64_as"] = delta["int64_as"]
        rec["ops"] = dict(sorted(ops.items()))
        rec["restrictions"] = {k: v for k, v in sorted(restr.items()) if v}
        out["targets"][target] = rec
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
