"""Triton's Python backend running the scorer: copied as ``model.py`` into each version of a repository.

Self-contained on purpose: it imports numpy, ONNX Runtime or OpenVINO (the ``skipgan_edge.runtime`` parameter)
and Triton's own ``triton_python_backend_utils``, never ``skipgan_edge``, so the repository runs on any Triton
server whose Python has those (NVIDIA's container after ``pip install onnxruntime``; the server
``skipgan-edge triton-serve`` starts). It loads ``model.onnx`` from its version folder.

Dynamic batching hands ``execute`` several requests at once; their images are stacked into one runtime call
(at most ``max_batch_size`` images per call, Triton's own limit) and the outputs are split back per request,
so N clients sending one frame each cost one call. A request that fails gets its own error response; the
others in the batch are still answered. With OpenVINO, a model is compiled for each preferred batch size of
the configuration (at most four) as well as the dynamic-shape one, as our OpenVINO backend does for the
batch size it is given, and in bf16 the transposed convolutions are split as that backend splits them: those graph
rewrites live with the OpenVINO backend (:mod:`skipgan_edge.runtime.backends.openvino_graph`), and the repository writer
puts their source in place of the import marked ``# inlined`` (:func:`skipgan_edge.service.triton_repo.model_py_source`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from skipgan_edge.runtime.backends.openvino_graph import MAX_SPECIALISED, split_transposed_convs, with_batch  # inlined

try:  # present inside Triton's Python backend stub only
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests, mypy): the module still loads
    pb_utils = None

OUTPUTS = ("score", "anomaly_map", "normalized_score")


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        runtime = params.get("skipgan_edge.runtime", "onnxruntime")
        threads = int(params.get("skipgan_edge.threads", "0") or 0)
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        if runtime == "openvino":
            import openvino as ov

            core = ov.Core()
            cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": params.get("skipgan_edge.openvino_precision", "f32")}
            if threads:
                cfg["INFERENCE_NUM_THREADS"] = threads
            model = core.read_model(path)
            if cfg["INFERENCE_PRECISION_HINT"] == "bf16":  # as our OpenVINO backend runs (and the export gated) it
                split_transposed_convs(model)
            # compiled for each preferred batch size (what the dynamic batcher aims to form; about 20 % faster than the
            # dynamic batch on OpenVINO's CPU plugin), and once more with the dynamic batch for every other size
            sizes = sorted({int(b) for b in config.get("dynamic_batching", {}).get("preferred_batch_size", [])
                            if 1 <= int(b) <= self.max_batch})[:MAX_SPECIALISED]
            compiled: dict[int | None, tuple[Any, list[Any]]] = {}
            for size in [*sizes, None]:
                m = model if size is None else with_batch(model, size)
                if m is not None:
                    c = core.compile_model(m, "CPU", cfg)
                    compiled[size] = (c.create_infer_request(), [c.output(n) for n in OUTPUTS])

            def run(images: np.ndarray) -> list[np.ndarray]:
                request, names = compiled.get(len(images)) or compiled[None]
                res = request.infer({0: images})
                return [np.asarray(res[n], np.float32) for n in names]
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if threads:
                opts.intra_op_num_threads = threads
            opts.add_session_config_entry("session.force_spinning_stop", "1")
            session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])

            def run(images: np.ndarray) -> list[np.ndarray]:
                return [np.asarray(o, np.float32) for o in session.run(list(OUTPUTS), {"images": images})]
        self.run = run
        self.runtime = runtime

    def execute(self, requests: list[Any]) -> list[Any]:
        batches: list[np.ndarray | None] = []
        for r in requests:
            t = pb_utils.get_input_tensor_by_name(r, "images")
            batches.append(None if t is None else t.as_numpy())
        good = [b for b in batches if b is not None]
        outs: list[list[np.ndarray]] = [[] for _ in OUTPUTS]
        if good:
            stacked = np.ascontiguousarray(np.concatenate(good)) if len(good) > 1 else np.ascontiguousarray(good[0])
            for i in range(0, len(stacked), self.max_batch):
                for k, o in enumerate(self.run(stacked[i : i + self.max_batch])):
                    outs[k].append(o)
        full = [np.concatenate(o) if len(o) > 1 else o[0] for o in outs] if good else []
        responses, at = [], 0
        for b in batches:
            if b is None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError("input 'images' is missing")))
                continue
            n = len(b)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, full[k][at : at + n])
                                                                        for k, name in enumerate(OUTPUTS)]))
            at += n
        return responses

    def finalize(self) -> None:
        self.run = None  # type: ignore[assignment]
