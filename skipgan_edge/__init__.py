"""skipgan-edge: Skip-GANomaly from training to an edge device.

The package imports with numpy, OpenCV and ONNX Runtime only; torch, ONNX tooling,
Model Optimizer, TensorRT and CUDA are imported inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Version of the model-folder format (``model.json``). A folder with a larger major
#: number is refused by :func:`skipgan_edge.card.load_card`.
FORMAT_VERSION = 1

__all__ = ["FORMAT_VERSION", "__version__"]
