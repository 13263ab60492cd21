"""The versioned JSON Schemas shipped with the package: ``record.schema.json`` (a line of ``run --jsonl``, a message
on ``PREFIX/CAMERA/result`` over MQTT, a CSV row) and ``summary.schema.json`` (``run --json`` / ``--summary``)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` ("record" or "summary") as a dict."""
    out: dict[str, Any] = json.loads(resources.files(__name__).joinpath(f"{name}.schema.json").read_text())
    return out
