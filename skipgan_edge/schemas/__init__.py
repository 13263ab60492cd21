"""The versioned JSON Schemas shipped with the package: ``record.schema.json`` (a line of ``run --jsonl``, a message
on ``PREFIX/CAMERA/result`` over MQTT, a CSV row), ``summary.schema.json`` (``run --json`` / ``--summary``) and
``event.schema.json`` (an alarm event's start or end on ``PREFIX/CAMERA/events``)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` ("record", "summary" or "event") as a dict."""
    out: dict[str, Any] = json.loads(resources.files(__name__).joinpath(f"{name}.schema.json").read_text())
    return out
