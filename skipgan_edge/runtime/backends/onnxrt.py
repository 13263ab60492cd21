"""ONNX Runtime backend: the exported scorer on the CPU (or the CUDA / TensorRT providers when installed).

Provider choice (``providers="auto"``): TensorRT EP, then CUDA EP, then CPU, whichever this
onnxruntime build offers. The CPU session uses every optimisation ORT has and, by default, as
many intra-op threads as there are cores.

Its worker threads spin between operators inside a run (fast hand-offs; turning spinning off
cost 25-30 % of throughput on the demo model) but stop spinning when a run returns
(``session.force_spinning_stop``): in a pipeline the capture thread decodes the next frames
and the main thread writes results between runs, and a worker spinning on a core they need
cost 8-10 % of the pipeline's throughput at batch 1 on 2 cores (benchmarks/results/pipeline.md),
while the backend alone was as fast with or without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard, card_from_onnx_metadata
from skipgan_edge.contract import INPUT_NAME, OUTPUT_NAMES, ScoreBatch
from skipgan_edge.errors import ModelFolderError
from skipgan_edge.runtime.backends.base import Backend


def read_card(path: Path) -> ModelCard:
    """The model card stored in an exported ONNX file's metadata_props, with I/O checks (what
    :meth:`skipgan_edge.runtime.artifact.Artifact.read_card` reads an ONNX file with)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the metadata and I/O are read
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises many private exception types
        raise ModelFolderError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
    return _card_from_session(sess, path)


def _card_from_session(sess: Any, path: Path) -> ModelCard:
    meta = sess.get_modelmeta().custom_metadata_map
    inputs = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ModelFolderError(
            f"{path} is not a skipgan-edge scorer: inputs {inputs}, outputs {outputs}; expected input "
            f"'{INPUT_NAME}' and outputs {OUTPUT_NAMES}; export one with: skipgan-edge export --model RUN_DIR"
        )
    card = card_from_onnx_metadata(dict(meta), str(path))
    inp = sess.get_inputs()[0]
    want = [card.input.isize, card.input.isize, card.input.channels]
    if inp.type != "tensor(uint8)" or len(inp.shape) != 4 or list(inp.shape[1:]) != want:
        raise ModelFolderError(f"{path}: input '{INPUT_NAME}' is {inp.type} {inp.shape}, but its card says uint8 [batch, {want[0]}, "
                               f"{want[1]}, {want[2]}] (NHWC); re-export it with skipgan-edge export")
    return card


def release_freed_memory() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim``; nothing elsewhere).

    Building a session parses the model, optimises the graph and pre-packs the weights; the
    temporaries are freed afterwards but glibc keeps those pages, so everything allocated next
    (the video decoder, the pipeline) would stack on top of them. On the demo model this returns
    about 27 MB and lowers ``run``'s peak RSS by the same (benchmarks/results/install.md).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return
    trim(0)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, providers: str | list[str] = "auto", threads: int = 0) -> None:
        super().__init__(path)
        self.providers = providers
        self.threads = threads

    def activate(self) -> None:
        import onnxruntime as ort

        if not self.path.exists():
            raise ModelFolderError(f"ONNX file not found: {self.path}; export one with: skipgan-edge export --model RUN_DIR")
        avail = ort.get_available_providers()
        if self.providers == "auto":
            order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
            providers = [p for p in order if p in avail]
        else:
            providers = list(self.providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        # no CPU memory arena: the scorer's activations are small and fixed-size, and the arena's
        # growth shows up as peak RSS on an edge device (about 3 MB on the demo model) at no measured speed cost
        opts.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises many private exception types
            raise ModelFolderError(f"{self.path} cannot be loaded by ONNX Runtime ({str(exc).splitlines()[0]})") from None
        release_freed_memory()  # the parsed model and optimiser temporaries are freed by now: give them back
        self.card = _card_from_session(self.session, self.path)
        self.precision = self.card.precision
        self.provider = self.session.get_providers()[0]

    def _run(self, images: np.ndarray) -> ScoreBatch:
        out = self.session.run(OUTPUT_NAMES, {INPUT_NAME: np.ascontiguousarray(images)})
        return ScoreBatch(*(np.asarray(o, np.float32) for o in out))

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()
