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

**Shape-specialised compiles.** Our ONNX files have a dynamic batch dimension, and OpenVINO's CPU
plugin runs a dynamic-shape model 10 to 20 % slower than the same model compiled for one batch size
(``benchmarks/results/cpu_precision.md``). So the backend compiles a copy of the model reshaped to the
batch size the caller said it will mostly use (``open_backend(..., batch=N)``: ``run --batch``,
``eval``'s 64, ``bench``'s size being timed, via :meth:`OpenVinoBackend.expect_batch`), much as a
TensorRT profile is built for an opt shape. Any other size (a stream's short last batch, or a batch
the batcher closed early) runs on the dynamic-shape model: compiled with the specialised one when the
batch size is above 1 (about 0.1 s and 3 MB on the demo model, so not in the middle of a stream),
else the first time such a batch comes. ``Pipeline.run`` tells the backend its batch size too. At
most ``MAX_SPECIALISED`` sizes are kept, the oldest dropped first. ``compiled_for(n)`` says which one
a batch of ``n`` runs on; ``bench`` records it. Scores from the two agree to float rounding in f32;
in bf16 they differ by bf16 rounding (the kernels differ).

**Transposed convolutions in bf16.** OpenVINO's CPU plugin (2026.4) runs ConvTranspose in f32 even when
told bf16 (``brgconv_avx512_f32``): on the demo model the decoder's five took 66 % of a bf16 call, and the
FP16 and FP32 files compiled to the same runtime graph. So when the backend computes in bf16, each
ConvTranspose with a 4×4 kernel, stride 2 and padding 1 (every one the U-Net decoder has) is rewritten in
the OpenVINO model before compiling (:func:`split_transposed_convs`): as four 2×2 convolutions, one per
output phase, interleaved by DepthToSpace. That is the same arithmetic (f32 results equal to 4e-6 on
scores of 30), no extra multiply-adds, and convolutions do run in bf16: 1.34-1.44× on the demo model
at batch 8-64, 1.5× on the paper-sized one (isize 64, ngf 64). In f32 it is not applied: 0.9× at batch
1 on the demo model, 1.03-1.11× elsewhere. ``split_deconvs`` says how many were rewritten; ``bench``
records it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.errors import ConfigError, MissingDependencyError, ModelFolderError
from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.backends.openvino_graph import MAX_SPECIALISED, split_transposed_convs, with_batch

__all__ = ["MAX_SPECIALISED", "OpenVinoBackend", "cpu_has_bf16", "inference_precision", "split_transposed_convs"]

log = logging.getLogger(__name__)


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16), from /proc/cpuinfo's flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def inference_precision(export: Mapping[str, Any], precision: str, hint: str, has_bf16: bool | None = None) -> str:
    """The precision OpenVINO computes in for a file whose card's ``export`` record is ``export``: see the module docstring."""
    if hint != "auto":
        return hint
    gated = str((export.get("cpu_bf16") or {}).get("gate")) == "passed"
    bf16 = cpu_has_bf16() if has_bf16 is None else has_bf16
    return "bf16" if precision == "fp16" and gated and bf16 else "f32"


class _Compiled:
    """One compiled model with its inference request and output ports."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.outputs = [compiled.output(n) for n in OUTPUT_NAMES]


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, path: Path, threads: int = 0, hint: str = "LATENCY", precision_hint: str = "auto", batch: int = 1) -> None:
        super().__init__(path)
        if precision_hint not in ("auto", "f32", "bf16"):
            raise ConfigError(f"OpenVINO precision hint must be auto, f32 or bf16, got {precision_hint!r}")
        self.threads = threads
        self.hint = hint
        self.precision_hint = precision_hint
        self.inference_precision = "f32"
        self.batch = batch  # the size to compile a shape-specialised model for at activation (0: none)
        self._specialised: dict[int, _Compiled] = {}
        self._dynamic: _Compiled | None = None
        self._batch_dynamic = False  # set by activate: whether the file's batch dimension is dynamic
        self.split_deconvs = 0  # transposed convolutions rewritten for bf16 (split_transposed_convs)

    def activate(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("--backend openvino needs OpenVINO: pip install 'skipgan-edge[openvino]'") from None
        from skipgan_edge.runtime.artifact import Artifact

        if not self.path.exists():
            raise ModelFolderError(f"ONNX file not found: {self.path}")
        self.card = Artifact("onnx", self.path).read_card()
        self.precision = self.card.precision
        self._core = ov.Core()
        self.inference_precision = inference_precision(self.card.export, self.precision, self.precision_hint)
        self._config: dict[str, str] = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.threads:
            self._config["INFERENCE_NUM_THREADS"] = str(self.threads)
        self._model = self._core.read_model(str(self.path))
        self.split_deconvs = split_transposed_convs(self._model) if self.inference_precision == "bf16" else 0
        self._batch_dynamic = self._model.input(INPUT_NAME).get_partial_shape()[0].is_dynamic
        if self.batch < 1 or not self._batch_dynamic:
            self._dynamic = self._compile(self._model)
        else:
            self.expect_batch(self.batch)

    def _compile(self, model: Any) -> _Compiled:
        return _Compiled(self._core.compile_model(model, "CPU", self._config))

    def expect_batch(self, n: int) -> None:
        """Compile a model specialised to batches of ``n`` (once per size; at most ``MAX_SPECIALISED`` kept)."""
        if n < 1 or not self._batch_dynamic:
            return
        if n not in self._specialised:
            self._specialised[n] = self._compile(with_batch(self._model, n))
            while len(self._specialised) > MAX_SPECIALISED:
                del self._specialised[next(iter(self._specialised))]
        if n > 1 and self._dynamic is None:
            # other sizes will come (a batcher with a time limit closes batches early): compiled now rather than in the
            # middle of a stream (about 3 MB until it first runs)
            self._dynamic = self._compile(self._model)

    def compiled_for(self, n: int) -> str:
        """Which compiled model a batch of ``n`` runs on: ``"batch n"`` (shape-specialised) or ``"dynamic"``."""
        return f"batch {n}" if n in self._specialised else "dynamic"

    def _run(self, images: np.ndarray) -> ScoreBatch:
        entry = self._specialised.get(len(images)) or self._dynamic
        if entry is None:
            log.info("OpenVINO: a batch of %d images; compiling the dynamic-shape model for sizes other than %s (once)",
                     len(images), ", ".join(map(str, self._specialised)))
            entry = self._dynamic = self._compile(self._model)
        res = entry.request.infer({INPUT_NAME: np.ascontiguousarray(images)})
        return ScoreBatch(*(np.asarray(res[o], np.float32) for o in entry.outputs))

    def deactivate(self) -> None:
        self._specialised.clear()
        self._dynamic = None
        super().deactivate()
