"""The model folder: ``model.json`` (the model card) and ``model.safetensors`` (the weights).

Weights are safetensors only: loading a model never unpickles, so it cannot run code. Every
write goes to a temporary file in the same folder and is renamed into place, so a killed
process leaves either the old file or the new one, never half of one.

The card's ``model_id`` (sha256 of the weights file, first 16 hex digits) is carried by every
later artifact (ONNX metadata, engines, calibration manifests, benchmark results), so a score
can be traced to the model that produced it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skipgan_edge import FORMAT_VERSION
from skipgan_edge.contract import card_from_json
from skipgan_edge.errors import ModelFolderError, SinkError

if TYPE_CHECKING:
    from torch import nn

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SinkError(f"cannot write {path}: {exc.strerror or exc}; free disk space or choose another --out") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(path: Path, module: nn.Module) -> str:
    """Save a module's state dict as safetensors, atomically; returns the file's sha256."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    data = save(state)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_card(folder: Path) -> dict[str, Any]:
    """Read and check ``model.json``; one-line errors for every way it can be wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}; train one with: skipgan-edge train --data DIR --out {folder}")
    card_path = folder / CARD_NAME
    if not card_path.exists():
        raise ModelFolderError(
            f"{folder} has no {CARD_NAME}: not a finished model folder "
            f"(was training interrupted? resume with: skipgan-edge train --resume {folder})"
        )
    try:
        card: dict[str, Any] = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{card_path} is not valid JSON ({exc}); retrain or restore the folder") from None
    version = card.get("format_version")
    if not isinstance(version, int):
        raise ModelFolderError(f"{card_path} has no format_version: not a skipgan-edge model folder")
    if version > FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder} uses model format {version}, newer than this skipgan-edge understands ({FORMAT_VERSION}); "
            "upgrade: pip install -U skipgan-edge"
        )
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        raise ModelFolderError(f"{folder} is missing {WEIGHTS_NAME}; retrain or restore the folder")
    # The weights file embeds the card it was written with (one atomic rename): it is the
    # authority when a crash fell between writing the weights and the readable model.json.
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), "np") as fh:
            embedded = (fh.metadata() or {}).get("card")
    except (SafetensorError, OSError) as exc:
        raise ModelFolderError(f"{weights} is unreadable ({exc}); retrain or restore the folder") from None
    if embedded:
        card = card_from_json(embedded, str(weights))
    card["model_id"] = file_sha256(weights)[:16]
    return card


def model_id(card: dict[str, Any]) -> str:
    return str(card.get("model_id", "unknown"))
