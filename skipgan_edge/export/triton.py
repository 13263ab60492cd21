"""A Triton Inference Server model repository around the scorer (``export --triton``).

Layout: ``triton/skipgan_scorer/config.pbtxt`` and ``triton/skipgan_scorer/1/model.onnx`` (ONNX
Runtime backend), or ``1/model.plan`` (``platform: "tensorrt_plan"``) when ``export --engine
--triton`` built engines: the raw serialized plan that ``build --plan`` writes (Triton loads plans,
not our headed engine files), from the lowest precision that passed the accuracy gate. A plan runs
only on the GPU and TensorRT version that built it, like the engine. Dynamic batching is on; the
batch axis is Triton's, so the dims below leave it out, and ``max_batch_size`` is the profile's max.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from skipgan_edge.card import ModelCard


def write_triton_repo(model_path: Path, out: Path, card: ModelCard, max_batch: int = 32, name: str = "skipgan_scorer") -> Path:
    """``model_path``: a scorer ``.onnx`` or a raw ``.plan`` from ``build --plan``."""
    isize, ch = card.input.isize, card.input.channels
    model_dir = Path(out) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    is_plan = Path(model_path).suffix == ".plan"
    for stale in ("model.onnx", "model.plan"):
        (model_dir / "1" / stale).unlink(missing_ok=True)
    shutil.copyfile(model_path, model_dir / "1" / ("model.plan" if is_plan else "model.onnx"))
    platform = "tensorrt_plan" if is_plan else "onnxruntime_onnx"
    config = f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{ name: "images" data_type: TYPE_UINT8 dims: [ {isize}, {isize}, {ch} ] }}
]
output [
  {{ name: "score" data_type: TYPE_FP32 dims: [ ] }},
  {{ name: "anomaly_map" data_type: TYPE_FP32 dims: [ 1, {isize}, {isize} ] }},
  {{ name: "normalized_score" data_type: TYPE_FP32 dims: [ ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
parameters {{ key: "skipgan_edge.model_id" value: {{ string_value: "{card.model_id or 'unknown'}" }} }}
"""
    (model_dir / "config.pbtxt").write_text(config)
    return Path(out)
