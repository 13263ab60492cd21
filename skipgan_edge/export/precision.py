"""Precision variants of the scorer, decided in ONNX with NVIDIA Model Optimizer.

* ``scorer.fp16.onnx``: AutoCast (``modelopt.onnx.autocast``) of the networks to FP16; I/O types
  kept (uint8 in, float32 out).
* ``scorer.int8.onnx``: explicit quantization (``modelopt.onnx.quantization``): Q/DQ pairs on
  the convolutions, scales calibrated on a calibration set of real normal frames. Everything that
  is not quantized stays FP32 (``high_precision_dtype="fp32"``).
  The image-facing convolutions (those whose input reaches the graph input without passing
  another convolution: the generator's first layer and the feature extractor's first layer,
  which reads both x and G(x)) stay FP32 too. Measured on the demo model (isize 32, ngf 16),
  test AUROC: FP32 0.975; everything quantized 0.941 (max), 0.930 (entropy), 0.935 (percentile);
  quantizing one convolution at a time showed only those two mattered (0.941 and 0.933 alone,
  every other layer within 0.001); both kept FP32: 0.970. They are 2 of 14 convolutions and a
  small share of the FLOPs.

In both, the nodes outside the networks (preprocessing and the score head: subtractions,
squares, reductions, normalisation) are excluded by name (``HEAD_NODE_REGEX``) and stay FP32: a
score is a small difference of large numbers, and quantizing it destroys the ranking. A test
walks the graph back from every output and proves no Q/DQ and no FP16 cast sits in the head.

Calibration methods: Model Optimizer's ``max`` and ``entropy``, and ``percentile`` (99.99 % of |a|
over the calibration set, written as a calibration cache that Model Optimizer imports). Measured
(benchmarks/results/export_accuracy.md), none wins everywhere: max on the synthetic textures,
entropy/percentile on Fashion-MNIST. So ``export`` picks per model (``--calib-method auto``,
:func:`skipgan_edge.export.api.choose_calibration`): the method whose INT8 scores agree best with
FP32 on the validation split. ``to_int8`` itself defaults to ``max``.

TensorRT builds these files as strongly typed networks: precision comes from the ONNX, not from
builder flags (TensorRT 11 removed them; 10.x accepts both).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard
from skipgan_edge.card import set_onnx_metadata as set_metadata
from skipgan_edge.errors import CalibrationError, ExportError, require
from skipgan_edge.export.onnx import HEAD_NODE_REGEX, card_from_onnx, is_head_node

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("max", "entropy", "percentile")
DEFAULT_CALIBRATION = "max"
NETWORK_NODE_REGEX = r"^/[^/]+/.*"


@contextlib.contextmanager
def _quiet() -> Any:
    """Model Optimizer logs a lot at INFO; keep our output readable unless -v."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    logging.disable(logging.ERROR)  # e.g. "Failed to get GPU count" on every machine without a driver
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _finish(model: Any, src_card: ModelCard, precision: str, out: Path, extra: dict[str, Any]) -> None:
    onnx = require("onnx", "export", "precision conversion")
    from skipgan_edge.card import atomic_write_bytes

    card = src_card.replace(export={**src_card.export, "precision": precision, **extra})
    set_metadata(model, card, precision)
    onnx.checker.check_model(model)
    atomic_write_bytes(out, model.SerializeToString())


def to_fp16(src: Path, out: Path, sample: np.ndarray) -> Path:
    """AutoCast the networks of ``src`` to FP16; head and I/O stay FP32/uint8.

    ``sample`` (uint8 NHWC real frames, a few dozen are enough) drives AutoCast's reference run:
    nodes whose activations exceed FP16's safe range on real data stay FP32.
    """
    onnx = require("onnx", "export", "FP16 export")
    with _quiet():
        require("modelopt.onnx.autocast", "export", "FP16 export (NVIDIA Model Optimizer)")
    from modelopt.onnx.autocast import convert_to_mixed_precision

    card = card_from_onnx(onnx.load(str(src)))
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        data = Path(tmp) / "sample.npz"
        np.savez(data, images=np.ascontiguousarray(sample[:64], dtype=np.uint8))
        model = convert_to_mixed_precision(
            onnx_path=str(src), low_precision_type="fp16", keep_io_types=True,
            nodes_to_exclude=[HEAD_NODE_REGEX], providers=["cpu"], calibration_data=str(data),
        )
    _finish(model, card, "fp16", out, {"method": "modelopt.autocast", "fp32_nodes": HEAD_NODE_REGEX})
    return out


def to_int8(src: Path, out: Path, calib: np.ndarray, method: str = DEFAULT_CALIBRATION) -> Path:
    """Q/DQ INT8 of the networks' convolutions, calibrated on ``calib`` (uint8 NHWC frames)."""
    onnx = require("onnx", "export", "INT8 export")
    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    if calib is None or len(calib) == 0:
        raise CalibrationError("INT8 needs a calibration set of real frames: without one the Q/DQ scales are random; "
                               "make one with: skipgan-edge calibrate --data DIR --out calib.npz")
    given_out = out
    src, out = Path(src).resolve(), Path(out).resolve()  # Model Optimizer runs in a temporary working directory
    src_model = onnx.load(str(src))
    card = card_from_onnx(src_model)
    fp32_convs = image_facing_convs(src_model)
    fp32_convs += [n for n in bank_path_convs(src_model) if n not in fp32_convs]
    keep_fp32 = [HEAD_NODE_REGEX] + [re.escape(n) + "$" for n in fp32_convs]
    calib = np.ascontiguousarray(calib, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / "int8.onnx"
        with _quiet():  # its import logs an error when no NVIDIA driver is present
            require("modelopt.onnx.quantization", "export", "INT8 export (NVIDIA Model Optimizer)")
        from modelopt.onnx.quantization import quantize

        cache = None
        if method == "percentile":
            cache = Path(tmp) / "percentile.cache"
            write_percentile_cache(src, calib, cache)
        cwd = os.getcwd()
        try:
            os.chdir(tmp)  # Model Optimizer may drop intermediate files in the working directory
            with _quiet():
                quantize(
                    onnx_path=str(src), quantize_mode="int8", calibration_data={"images": calib},
                    calibration_method="max" if method == "percentile" else method,
                    calibration_cache_path=str(cache) if cache else None,
                    calibration_eps=["cpu"], nodes_to_quantize=[NETWORK_NODE_REGEX],
                    nodes_to_exclude=keep_fp32, op_types_to_quantize=["Conv", "ConvTranspose"],
                    high_precision_dtype="fp32", output_path=str(tmp_out), log_level="ERROR",
                )
        finally:
            os.chdir(cwd)
        if not tmp_out.exists():
            raise ExportError("INT8 quantization produced no file; run with -v to see Model Optimizer's log")
        model = onnx.load(str(tmp_out))
    _finish(model, card, "int8", out, {"method": f"q/dq int8, calibration {method}", "calibration_frames": len(calib),
                                       "fp32_convs": fp32_convs})
    return Path(given_out)


PERCENTILE = 99.99


def write_percentile_cache(src: Path, calib: np.ndarray, out: Path, percentile: float = PERCENTILE) -> dict[str, float]:
    """Activation ranges by percentile of |a| over the calibration set, as a TensorRT-style
    calibration cache that Model Optimizer imports (its own INT8 methods are max and entropy).

    The tensors are the inputs of the networks' Conv/ConvTranspose nodes; scale = amax / 127.
    """
    import struct

    import onnx
    import onnxruntime as ort

    model = onnx.load(str(src))
    fp32_convs = set(image_facing_convs(model)) | set(bank_path_convs(model))
    names = sorted({n.input[0] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose") and not is_head_node(n.name)
                    and n.name not in fp32_convs})
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(calib), 32):
        outs = sess.run(names, {"images": calib[i : i + 32]})
        for n, v in zip(names, outs):
            values[n].append(np.abs(v).ravel())
    scales = {}
    lines = ["TRT-8501-EntropyCalibration2"]
    for n in names:
        amax = float(np.percentile(np.concatenate(values[n]), percentile))
        scale = max(amax, 1e-8) / 127.0
        scales[n] = scale
        lines.append(f"{n}: {struct.pack('!f', scale).hex()}")
    out.write_text("\n".join(lines) + "\n")
    return scales


def bank_path_convs(model: Any) -> list[str]:
    """The generator's convolutions on the encoder bank's path: the tapped convolution whose own output the score
    head reads (model/bank.py) and every generator convolution before it. INT8 keeps them FP32: quantized, they moved
    the demo model's normalized scores by 0.84 of the normal range with the gaussian bank and 1.43 with the nearest
    (the bank's distances are small against the quantization noise in the features); kept FP32, by 0.0023 and 0.0025.
    Empty without an encoder bank."""
    producers = {o: n for n in model.graph.node for o in n.output}
    read_by_head = {t for n in model.graph.node if is_head_node(n.name) for t in n.input}
    start = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/generator/") and n.output[0] in read_by_head]
    seen: set[str] = set()
    out: list[str] = []
    stack = list(start)
    while stack:
        n = stack.pop()
        if n.name in seen or not n.name.startswith("/generator/"):
            continue
        seen.add(n.name)
        if n.op_type in ("Conv", "ConvTranspose"):
            out.append(n.name)
        stack += [producers[t] for t in n.input if t in producers]
    return sorted(out)


def image_facing_convs(model: Any) -> list[str]:
    """Conv/ConvTranspose nodes whose data input reaches the graph input without another conv."""
    producers = {o: n for n in model.graph.node for o in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    convs = ("Conv", "ConvTranspose")

    def reaches_input(tensor: str, seen: set[str]) -> bool:
        if tensor in graph_inputs:
            return True
        n = producers.get(tensor)
        if n is None or n.name in seen or n.op_type in convs:
            return False
        seen.add(n.name)
        return any(reaches_input(t, seen) for t in n.input if t)

    return [n.name for n in model.graph.node if n.op_type in convs and not is_head_node(n.name) and reaches_input(n.input[0], set())]


def head_violations(model: Any) -> list[str]:
    """Nodes in the score head (reachable backwards from an output without entering a network
    node) that are Q/DQ or cast to FP16. Empty means the head is FP32."""
    head = set(head_nodes(model))
    bad: list[str] = []
    for n in model.graph.node:
        if n.name not in head:
            continue
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            bad.append(f"{n.op_type} {n.name}")
        if n.op_type == "Cast" and any(a.name == "to" and a.i == 10 for a in n.attribute):  # 10 = FLOAT16
            bad.append(f"Cast-to-fp16 {n.name}")
    return bad


def head_nodes(model: Any) -> list[str]:
    """The head's node names (for reports and tests)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    seen: list[str] = []
    stack = [o.name for o in model.graph.output]
    while stack:
        n = producers.get(stack.pop())
        if n is None or n.name in seen or not is_head_node(n.name):
            continue
        seen.append(n.name)
        stack.extend(n.input)
    return seen
