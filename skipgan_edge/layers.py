"""The package's layers and the only directions imports may go, declared once (tests/test_layers.py enforces it).

Bottom up; a module may import modules of its own layer or below, never above::

    0 contract, errors, logs, card,        numpy and the standard library (card: safetensors lazily)
      config, thresholds
    1 data, model, metrics                 OpenCV; torch (model only)
    2 runtime                              sources, preprocess, pipeline, sinks, backends, CUDA: no torch, matplotlib, scikit-image
    3 service                              serve, MQTT, Prometheus, Triton (repository, server, client): the runtime served to a plant
    4 train, export, calibration           torch, onnx, Model Optimizer
    5 bench, evaluate, demo, doctor
    6 cli, __main__

The edge device installs layers 0-3 (plus ``cli``): ``pip install skipgan-edge``. The runtime knows nothing of the
service wing above it; the wing registers its ``triton://`` backend with the runtime when imported. The runtime may reach
``model`` only from the torch backend, lazily (``ALLOWED_UPWARD`` and ``TORCH_FREE`` below).
"""

from __future__ import annotations

LAYERS: dict[str, int] = {
    "contract": 0, "errors": 0, "logs": 0, "card": 0, "config": 0, "thresholds": 0, "schemas": 0, "layers": 0, "compat": 0, "__init__": 0,
    "data": 1, "model": 1, "metrics": 1,
    "runtime": 2,
    "service": 3,
    "train": 4, "export": 4, "calibration": 4,
    "bench": 5, "evaluate": 5, "demo": 5, "doctor": 5,
    "cli": 6, "__main__": 6,
}

#: Third-party modules the runtime layer (and the layers under it, apart from ``model``) must not import at
#: module level: the edge install does not have them.
HEAVY = ("torch", "matplotlib", "skimage", "scipy", "safetensors", "onnx", "modelopt")

#: Modules (dotted, under skipgan_edge) allowed to import these heavy modules or higher layers, and only
#: inside functions: the torch backend, and the card's model-folder readers.
ALLOWED_UPWARD: dict[str, set[str]] = {
    "runtime.backends.torch": {"card", "model"},
}
TORCH_FREE = ("contract", "errors", "logs", "config", "card", "thresholds", "schemas", "data", "metrics", "runtime", "service", "doctor", "cli")


def layer_of(module: str) -> int | None:
    """Layer of a dotted module name under skipgan_edge (``runtime.backends.onnxrt`` → 2)."""
    return LAYERS.get(module.split(".")[0])
