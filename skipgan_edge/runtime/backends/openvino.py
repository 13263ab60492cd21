"""OpenVINO backend: Intel's CPU runtime on the exported scorer ONNX (``--backend openvino``).

Compiled for latency with one inference request by default. Reads the same ``scorer*.onnx``
files. The inference precision is always set, never left to OpenVINO's default (which is bf16 on
CPUs with AMX or AVX512-BF16, silently, even for an FP32 model):

* ``precision_hint="auto"`` (the default): the FP16 variant runs in **bf16** on a CPU that has
  bf16 (AMX or AVX512-BF16), when its export gated it as the CPU runs it (the card's
  ``export.cpu_bf16.gate`` is ``passed``: ``export`` scores the FP16 file through OpenVINO in bf16
  on held-out data). Everything else runs in **f32**: the FP32 and INT8 files (INT8's Q/DQ
  convolutions run as int8 either way), and the FP16 file on a CPU without bf16 or without a
  passed bf16 gate, where "half precision" means FP16 weights computed in f32.
* ``"f32"`` or ``"bf16"``: forced. ``inference_precision`` says what ran; ``bench`` records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.errors import ConfigError, MissingDependencyError, ModelFolderError
from skipgan_edge.runtime.backends.base import Backend


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16), from /proc/cpuinfo's flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def inference_precision(export: dict[str, Any], precision: str, hint: str, has_bf16: bool | None = None) -> str:
    """The precision OpenVINO computes in for a file whose card's ``export`` record is ``export``: see the module docstring."""
    if hint != "auto":
        return hint
    gated = str(export.get("cpu_bf16", {}).get("gate")) == "passed"
    bf16 = cpu_has_bf16() if has_bf16 is None else has_bf16
    return "bf16" if precision == "fp16" and gated and bf16 else "f32"


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, path: Path, threads: int = 0, hint: str = "LATENCY", precision_hint: str = "auto") -> None:
        super().__init__(path)
        if precision_hint not in ("auto", "f32", "bf16"):
            raise ConfigError(f"OpenVINO precision hint must be auto, f32 or bf16, got {precision_hint!r}")
        self.threads = threads
        self.hint = hint
        self.precision_hint = precision_hint
        self.inference_precision = "f32"

    def activate(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("--backend openvino needs OpenVINO: pip install 'skipgan-edge[openvino]'") from None
        from skipgan_edge.runtime.backends.onnxrt import read_card

        if not self.path.exists():
            raise ModelFolderError(f"ONNX file not found: {self.path}")
        self.card = read_card(self.path)
        self.precision = self.card.precision
        core = ov.Core()
        self.inference_precision = inference_precision(self.card.export, self.precision, self.precision_hint)
        cfg: dict[str, str] = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        model = core.read_model(str(self.path))
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(n) for n in OUTPUT_NAMES]

    def _run(self, images: np.ndarray) -> ScoreBatch:
        res = self.request.infer({INPUT_NAME: np.ascontiguousarray(images)})
        return ScoreBatch(*(np.asarray(res[o], np.float32) for o in self.outputs))

    def deactivate(self) -> None:
        self.request = None
        self.compiled = None
        super().deactivate()
