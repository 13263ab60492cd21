"""A Triton Inference Server model repository around the scorer (``export --triton``).

Layout: ``triton/skipgan_scorer/config.pbtxt`` and ``triton/skipgan_scorer/1/model.onnx``
(ONNX Runtime backend; put a ``model.plan`` from ``skipgan-edge build`` there and set
``platform: "tensorrt_plan"`` to serve the engine instead). Dynamic batching is on; the batch
axis is Triton's, so the dims below leave it out.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def write_triton_repo(onnx_path: Path, out: Path, card: dict[str, Any], max_batch: int = 32, name: str = "skipgan_scorer") -> Path:
    isize, ch = card["input"]["isize"], card["input"]["channels"]
    model_dir = Path(out) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    config = f"""name: "{name}"
platform: "onnxruntime_onnx"
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
parameters {{ key: "skipgan_edge.model_id" value: {{ string_value: "{card.get('model_id', 'unknown')}" }} }}
"""
    (model_dir / "config.pbtxt").write_text(config)
    return Path(out)
