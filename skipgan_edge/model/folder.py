"""A model folder's network and scorer, in torch: the card comes from :func:`skipgan_edge.card.load_card`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from skipgan_edge.card import WEIGHTS_NAME, ModelCard, load_card
from skipgan_edge.errors import ModelFolderError
from skipgan_edge.model.bank import BANK_KEY


def load_model(folder: Path, device: str = "cpu") -> tuple[ModelCard, nn.Module]:
    """Card and network (eval mode) from a model folder, without unpickling anything."""
    card, net, _ = load_model_and_bank(folder, device)
    return card, net


def load_model_and_bank(folder: Path, device: str = "cpu") -> tuple[ModelCard, nn.Module, Any]:
    """Card, network (eval mode) and the feature bank tensor (a nearest bank's (M, C), a gaussian bank's (D + 1, D)), or
    None for a model without one (model/bank.py)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from skipgan_edge.model.networks import build_model

    card = load_card(folder)
    cfg = card.config
    net = build_model(cfg.model)
    try:
        state = load_file(str(Path(folder) / WEIGHTS_NAME), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelFolderError(f"{Path(folder) / WEIGHTS_NAME} is unreadable ({exc}); retrain or restore the folder") from None
    bank = state.pop(BANK_KEY, None)
    if (bank is None) != (card.score.bank is None):
        raise ModelFolderError(f"{folder}: the card and the weights disagree on the feature bank; the folder was mixed from two models")
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same tensor names, other shapes: the card's size, channels or widths are not the weights'
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
        raise ModelFolderError(f"{folder}: the card does not match the weights ({first[:160]}); the folder was mixed from two models") from None
    if missing or unexpected:
        raise ModelFolderError(
            f"{folder}: weights do not match the card's architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); the folder was mixed from two models"
        )
    net.to(device).eval()
    return card, net, bank


def build_scorer(folder: Path, device: str = "cpu") -> tuple[ModelCard, Any]:
    """The torch :class:`~skipgan_edge.model.scorer.Scorer` of a model folder, in eval mode."""
    from skipgan_edge.model.scorer import Scorer

    card, net, bank = load_model_and_bank(folder, device)
    sc = card.score
    weight = float(sc.bank["weight"]) if sc.bank is not None else 0.0
    source = str(sc.bank.get("source", "discriminator")) if sc.bank is not None else "discriminator"  # older cards: D's
    scorer = Scorer(net, sc.lam, sc.val_stats.min, sc.val_stats.max, mode=sc.mode, pool=sc.pool, term_stats=sc.term_stats,
                    bank=bank, bank_weight=weight, bank_source=source, bank_kind=sc.bank_kind or "nearest").to(device).eval()
    return card, scorer
