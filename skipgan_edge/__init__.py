"""skipgan-edge: Skip-GANomaly from training to an edge device.

The package imports with numpy, OpenCV and ONNX Runtime only; torch, ONNX tooling,
Model Optimizer, TensorRT and CUDA are imported inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the model card format (``model.json`` and every card embedded in weights, ONNX and engines). A card
#: with a larger number is refused by every reader (:func:`skipgan_edge.contract.check_card`); older ones are read.
#: 2: the threshold's policy, expected FPR and recall, and ``score.graph_norm``: a reader that ignored it would raise
#: alarms on an engine re-thresholded on the line with the engine's old normalization, so version-1 readers must refuse.
FORMAT_VERSION = 2

__all__ = ["FORMAT_VERSION", "__version__"]
