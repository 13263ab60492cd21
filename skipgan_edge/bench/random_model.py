"""A model folder with freshly initialised weights, for speed measurements only.

Latency and throughput do not depend on trained weights (same graph, same shapes), so the
benchmarks can sweep sizes without training. The card says ``"weights": "random (benchmark only)"``,
the default's feature bank (if it has one) holds random features, and its score statistics are placeholders:
never use such a folder to score real images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from skipgan_edge.card import CARD_NAME, WEIGHTS_NAME, ScoreSpec, Threshold, ValStats, atomic_write_bytes, atomic_write_json, build_card
from skipgan_edge.config import ModelConfig, RunConfig


def random_model_folder(out: Path, model: ModelConfig, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save

    from skipgan_edge.model.networks import build_model, default_score, head_record

    torch.manual_seed(seed)
    net = build_model(model).eval()
    cfg = RunConfig(model=model).validate(default_score(model.arch))
    # the same builder as the trainer's, so the score head's formulation (mode, pool, term stats) is the
    # architecture's default here too; the statistics are placeholders (random weights, no validation data)
    # and the default's feature bank (model/bank.py) of random features, so that the graph costs what the default's does
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    stats = {"rec_mean": 0.0, "rec_std": 1.0, "lat_mean": 0.0, "lat_std": 1.0}
    bank = None
    size = int(cfg.score.bank_size or 0)
    if size > 0:
        from skipgan_edge.model.bank import BANK_KEY, bank_info, fit_gaussian, gaussian_features, gaussian_info, source_patches

        source = str(cfg.score.bank_source)
        with torch.no_grad():
            f_real = net.terms(torch.zeros(1, model.channels, model.isize, model.isize))[1]  # type: ignore[operator]
            _, patches, dim = source_patches(net, f_real, source).shape
            gdim = int(gaussian_features(net).shape[1])
        if cfg.score.bank_kind == "gaussian":  # the Gaussian of random features: the default's shapes and cost
            state[BANK_KEY] = fit_gaussian(torch.randn(64, gdim))
            bank = {**gaussian_info(state[BANK_KEY], "random (benchmark only)", 64), "weight": float(cfg.score.bank_weight)}
        else:
            state[BANK_KEY] = torch.randn(size, dim)
            bank = {**bank_info(state[BANK_KEY], patches, "random (benchmark only)", size, source), "weight": float(cfg.score.bank_weight)}
        stats.update(bank_mean=0.0, bank_std=1.0)
    score = ScoreSpec(lam=float(cfg.score.lam if cfg.score.lam is not None else 0.5), mode=str(cfg.score.mode), pool=int(cfg.score.pool or 0),
                      term_stats=stats, val_stats=ValStats(min=0.0, max=1.0, mean=0.5, std=0.1, n=0),
                      threshold=Threshold(normalized=1.0, method="placeholder", raw=1.0), lam_method="architecture default", bank=bank,
                      head=head_record(model.arch, cfg.score, float(cfg.score.lam if cfg.score.lam is not None else 0.5)))
    card = build_card(cfg, score=score, weights="random (benchmark only)", training={"best_epoch": 0},
                      data={"source": "none", "fingerprint": "none", "n_train": 0, "n_val": 0, "val_has_anomalies": False})
    data = save(state, metadata={"card": json.dumps(card.to_dict())})
    atomic_write_bytes(Path(out) / WEIGHTS_NAME, data)
    atomic_write_json(Path(out) / CARD_NAME, card.replace(model_id=hashlib.sha256(data).hexdigest()[:16]).to_dict())
    return Path(out)
