"""The torch backend: the reference. Runs the model folder's Scorer in eval mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skipgan_edge.contract import ScoreBatch
from skipgan_edge.runtime.backends.base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: Path, device: str = "cpu") -> None:
        super().__init__(path)
        self.device = device

    def activate(self) -> None:
        from skipgan_edge.model.folder import build_scorer

        self.card, self.scorer = build_scorer(self.path, self.device)

    def _run(self, images: np.ndarray) -> ScoreBatch:
        return self.scorer.score_numpy(images, batch=self.max_batch)

    def deactivate(self) -> None:
        self.scorer = None  # type: ignore[assignment]
        super().deactivate()
