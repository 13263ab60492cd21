"""A model folder with freshly initialised weights, for speed measurements only.

Latency and throughput do not depend on trained weights (same graph, same shapes), so the
benchmarks can sweep sizes without training. The card says ``"weights": "random (benchmark only)"``
and its score statistics are placeholders: never use such a folder to score real images.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from skipgan_edge import FORMAT_VERSION, __version__
from skipgan_edge.card import CARD_NAME, WEIGHTS_NAME, atomic_write_bytes, atomic_write_json
from skipgan_edge.config import ModelConfig, RunConfig


def random_model_folder(out: Path, model: ModelConfig, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save

    from skipgan_edge.model.networks import build_model, default_score

    torch.manual_seed(seed)
    net = build_model(model).eval()
    cfg = RunConfig(model=model).validate(default_score(model.arch))
    card: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "package": "skipgan-edge", "package_version": __version__, "arch": model.arch,
        "config": cfg.to_dict(), "weights": "random (benchmark only)",
        "input": {"isize": model.isize, "channels": model.channels, "channel_order": "BGR" if model.channels == 3 else "GRAY",
                  "dtype": "uint8", "layout": "NHWC"},
        "score": {"lam": cfg.score.lam, "val_stats": {"min": 0.0, "max": 1.0, "mean": 0.5, "std": 0.1, "n": 0},
                  "threshold": {"normalized": 1.0, "method": "placeholder", "raw": 1.0}},
        "data": {"source": "none", "fingerprint": "none", "n_train": 0, "n_val": 0, "val_has_anomalies": False},
        "training": {"best_epoch": 0}, "metrics": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    data = save(state, metadata={"card": json.dumps(card)})
    atomic_write_bytes(Path(out) / WEIGHTS_NAME, data)
    atomic_write_json(Path(out) / CARD_NAME, dict(card, model_id=hashlib.sha256(data).hexdigest()[:16]))
    return Path(out)
