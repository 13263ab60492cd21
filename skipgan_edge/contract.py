"""The scorer contract, at the bottom of the package: numpy and the standard library only.

What every backend returns (:class:`ScoreBatch`), the exported graph's tensor names, the metadata
keys under which artifacts embed the model card, and the one check every embedded card goes
through (:func:`card_from_json`: valid JSON, an object, a ``format_version`` this package
understands). The runtime, the exporters and the engine builder all use these; none of it needs
torch, so an edge device that installs only the runtime can import it.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np

from skipgan_edge import FORMAT_VERSION  # of model.json and every card embedded in weights, ONNX and engines
from skipgan_edge.errors import ModelFolderError

INPUT_NAME = "images"
#: ONNX ``metadata_props`` keys (and the engine header's ``card``)
CARD_KEY = "skipgan_edge.card"
PRECISION_KEY = "skipgan_edge.precision"


class ScoreBatch(NamedTuple):
    """What every backend returns, as numpy arrays; the field names are the ONNX output names."""

    score: np.ndarray  # (B,) float32
    anomaly_map: np.ndarray  # (B, 1, H, W) float32
    normalized_score: np.ndarray  # (B,) float32


OUTPUT_NAMES = list(ScoreBatch._fields)


def check_card(card: Any, where: str) -> dict[str, Any]:
    """``card`` if it is a card this package can read; a one-line ModelFolderError otherwise."""
    if not isinstance(card, dict):
        raise ModelFolderError(f"{where}: the model card is not a JSON object; re-export or retrain")
    version = card.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFolderError(f"{where}: the model card has no format_version; not made by skipgan-edge")
    if version > FORMAT_VERSION:
        raise ModelFolderError(
            f"{where}: model card format {version} is newer than this skipgan-edge understands ({FORMAT_VERSION}); "
            "upgrade: pip install -U skipgan-edge"
        )
    return card


def card_from_json(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse an embedded card (ONNX metadata, weights metadata, engine header) and check its version."""
    try:
        card = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{where}: the embedded model card is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                               "re-export or retrain") from None
    return check_card(card, where)
