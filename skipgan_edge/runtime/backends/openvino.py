"""OpenVINO backend: Intel's CPU runtime on the exported scorer ONNX (``--backend openvino``).

Compiled for latency with one inference request by default. Reads the same ``scorer*.onnx``
files. The inference precision is pinned to the file's (``f32`` for FP32 and for the FP32 parts
of FP16/INT8 files): on CPUs with AMX or AVX512-BF16 OpenVINO would otherwise silently run an
FP32 model in bf16, which is faster but is not the precision the accuracy gate checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.errors import MissingDependencyError, ModelFolderError
from skipgan_edge.runtime.backends.base import Backend


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, path: Path, threads: int = 0, hint: str = "LATENCY") -> None:
        super().__init__(path)
        self.threads = threads
        self.hint = hint

    def activate(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("--backend openvino needs OpenVINO: pip install 'skipgan-edge[openvino]'") from None
        from skipgan_edge.runtime.backends.onnxrt import read_card

        if not self.path.exists():
            raise ModelFolderError(f"ONNX file not found: {self.path}")
        self.card = read_card(self.path)
        self.precision = str(self.card.get("precision", "fp32"))
        core = ov.Core()
        cfg: dict[str, str] = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        model = core.read_model(str(self.path))
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(n) for n in OUTPUT_NAMES]

    def infer(self, images: np.ndarray) -> ScoreBatch:
        self.check_input(images)
        res = self.request.infer({INPUT_NAME: np.ascontiguousarray(images)})
        return ScoreBatch(*(np.asarray(res[o], np.float32) for o in self.outputs))

    def deactivate(self) -> None:
        self.request = None
        self.compiled = None
        super().deactivate()
