"""A roofline projection of a scorer on Jetson Orin boards: a number to expect before the board is at hand.

Projected time per batch = max(compute time, memory time) with

* compute: the convolution FLOPs (``bench/flops.py``) at the board GPU's dense peak for the variant's
  precision (FP32 on CUDA cores; FP16 and INT8 on tensor cores), except the convolutions the variant
  keeps in FP32 (``fp32_dense``: the INT8 file's image-facing first convolutions, any AutoCast kept
  FP32 in the FP16 file), which are priced at the FP32 rate, plus the elementwise rest at the FP32
  rate;
* memory: the bytes the engine must move at the board's DRAM bandwidth: weights once per batch
  (1 byte per element behind a QuantizeLinear, else their ONNX type), every activation written
  once and read once per image at its type (1 byte for one that only feeds QuantizeLinear: the
  engine writes it as int8, and its DequantizeLinear output is that same tensor read back), the
  uint8 input. No layer fusion is assumed, so this traffic is an upper bound.

The board peaks (:data:`BOARDS`) are the GPU's alone (no DLA), dense (NVIDIA publishes sparse INT8
TOPS; dense is half), derived from NVIDIA's published module specifications: SM count, maximum GPU
clock, sparse INT8 TOPS, DRAM bandwidth. A roofline ignores kernel-launch latency, which dominates
tiny scorers (CUDA graphs reduce it); it is a projection, never a measurement: ``benchmarks/JETSON.md``
gives the command that measures the real figure on the board.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Board:
    name: str
    gpu: str
    fp32_tflops: float  # CUDA cores: 2 FLOP per core per clock
    fp16_tflops: float  # tensor cores, dense
    int8_tops: float  # tensor cores, dense (half the published sparse figure)
    dram_gbs: float
    source: str


BOARDS = (
    Board("Orin Nano 8GB", "1024 CUDA cores, 32 tensor cores, 625 MHz", 1.28, 10.2, 20.0, 68.0,
          "NVIDIA Jetson Orin Nano 8GB module data sheet: 40 sparse INT8 TOPS, 68 GB/s LPDDR5 (before the 'Super' clocks)"),
    Board("Orin NX 16GB", "1024 CUDA cores, 32 tensor cores, 918 MHz", 1.88, 15.0, 30.0, 102.4,
          "NVIDIA Jetson Orin NX 16GB data sheet: GPU 1024 cores at 918 MHz (60 sparse INT8 TOPS of the module's 100), 102.4 GB/s"),
    Board("AGX Orin 64GB", "2048 CUDA cores, 64 tensor cores, 1.3 GHz", 5.32, 42.5, 85.0, 204.8,
          "NVIDIA Jetson AGX Orin 64GB data sheet: GPU 170 sparse INT8 TOPS of the module's 275, 204.8 GB/s"),
)


def bytes_moved(model_or_path: Any, batch: int) -> dict[str, float]:
    """Bytes per batch: ``weights`` (once), ``activations`` (written + read, per image x batch), ``total``."""
    import onnx
    from onnx import helper

    from skipgan_edge.bench.flops import inferred_at_batch_1

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    m = inferred_at_batch_1(model)
    quantized_inputs = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    dq_outputs = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    q_outputs = {n.output[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    weights = 0.0
    inits = {t.name for t in m.graph.initializer}
    # tensors computed from constants only (a weight's Q -> DQ, folded shapes): built once, not per image
    const = set(inits) | {n.output[0] for n in m.graph.node if n.op_type == "Constant"}
    for n in m.graph.node:
        if n.input and all((not i) or i in const for i in n.input):
            const.update(n.output)
    for t in m.graph.initializer:
        n = float(np.prod(t.dims)) if len(t.dims) else 1.0
        size = 1 if t.name in quantized_inputs else helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        weights += n * size
    consumers: dict[str, list[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    per_image = 0.0
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        tt = vi.type.tensor_type
        if vi.name in const or vi.name in q_outputs or tt.elem_type in (0, 7):  # weights, fused Q, int64 shape tensors
            continue
        dims = tt.shape.dim
        if not dims or not all(d.HasField("dim_value") for d in dims):
            continue
        if vi.name in dq_outputs:
            continue  # the int8 tensor it dequantizes was counted at its producer
        only_quantized = bool(consumers.get(vi.name)) and all(op == "QuantizeLinear" for op in consumers[vi.name])
        size = 1 if only_quantized else helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        per_image += 2.0 * float(np.prod([d.dim_value for d in dims])) * size
    return {"weights": weights, "activations": per_image * batch, "total": weights + per_image * batch}


def project(flops: dict[str, float], moved: dict[str, float], board: Board, precision: str, batch: int) -> dict[str, Any]:
    """Roofline time per batch (ms) and images/s for one board and precision."""
    conv = flops.get("conv", 0.0) + flops.get("convtranspose", 0.0) + flops.get("matmul", 0.0)
    rate = {"fp32": board.fp32_tflops, "fp16": board.fp16_tflops, "int8": board.int8_tops}[precision] * 1e12
    fp32_rate = board.fp32_tflops * 1e12
    fp32_conv = conv if precision == "fp32" else min(conv, flops.get("fp32_dense", 0.0))
    compute_s = batch * ((conv - fp32_conv) / rate + fp32_conv / fp32_rate + flops.get("rest", 0.0) / fp32_rate)
    memory_s = moved["total"] / (board.dram_gbs * 1e9)
    t = max(compute_s, memory_s)
    return {"board": board.name, "precision": precision, "batch": batch, "compute_ms": compute_s * 1e3, "memory_ms": memory_s * 1e3,
            "fp32_conv_share": fp32_conv / conv if conv else 0.0,
            "ms_per_batch": t * 1e3, "images_per_s": batch / t, "bound": "compute" if compute_s >= memory_s else "memory"}
