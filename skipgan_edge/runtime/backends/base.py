"""The backend contract: every backend runs the scorer graph and returns a :class:`ScoreBatch`.

A backend is a context manager: creating one allocates nothing; ``__enter__`` (``activate``)
loads the model and allocates; ``infer(images)`` takes uint8 NHWC [B, H, W, C] with B up to
``max_batch`` and returns a ScoreBatch of numpy arrays; ``__exit__`` frees. ``infer`` is the
base class's: it checks the batch against the model card (uint8, NHWC, the card's size and
channels, at least one image), times the call (``last_ms``, ``perf_counter_ns``) and calls the
subclass's ``_run``, which is only the inference itself. Where the card's ``score.graph_norm`` says the
graph normalizes with other numbers than the card (an engine re-thresholded by ``skipgan-edge threshold``
after it was built), ``infer`` recomputes ``normalized_score`` from ``score`` with the card's. One shared test runs every backend
present on the machine through the same frames.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from skipgan_edge.card import ModelCard
from skipgan_edge.contract import ScoreBatch


class Backend:
    """Base class; subclasses set ``name`` and implement ``activate``, ``infer``, ``deactivate``."""

    name = "base"
    #: the model card, set by ``activate`` (read from the artifact)
    card: ModelCard
    #: tolerance of this backend's scores against the torch FP32 reference (relative to the
    #: spread of normal scores); the contract test uses it.
    precision = "fp32"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.max_batch = 256
        self.active = False
        self.last_ms = 0.0
        #: how ``auto`` picked this backend, when it did (the rule, and the race's timings): reports name it
        self.chosen_by: dict[str, Any] | None = None

    # subclasses -----------------------------------------------------------------------------
    def activate(self) -> None:
        raise NotImplementedError

    def _run(self, images: np.ndarray) -> ScoreBatch:
        """The inference itself, on a batch ``infer`` has already checked."""
        raise NotImplementedError

    def infer(self, images: np.ndarray) -> ScoreBatch:
        """Check ``images`` against the card, run, time: every backend's entry point."""
        self.check_input(images)
        t0 = time.perf_counter_ns()
        out = self._run(images)
        if self.card.score.graph_norm is not None:  # re-set on the line after the graph was built: the card's numbers rule
            vs = self.card.score.val_stats
            out = out._replace(normalized_score=((out.score - np.float32(vs.min)) * np.float32(1.0 / vs.span)).astype(np.float32))
        self.last_ms = (time.perf_counter_ns() - t0) / 1e6
        return out

    def deactivate(self) -> None:
        self.active = False

    def expect_batch(self, n: int) -> None:
        """The caller will now mostly call with ``n`` images: a backend may prepare for that size, outside any
        timed call (OpenVINO compiles a model specialised to it; the others need nothing)."""

    # shared ---------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        inp = self.card.input
        return inp.isize, inp.isize, inp.channels

    def check_input(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape \
                or len(images) == 0:
            raise ValueError(
                f"{self.name}: expected uint8 images of shape (B, {', '.join(map(str, self.input_shape))}), "
                f"got {getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
            )

    def infer_all(self, images: np.ndarray, batch: int | None = None) -> ScoreBatch:
        """Score any number of images in chunks of ``batch`` (at most ``max_batch``, its default)."""
        step = max(1, min(batch or self.max_batch, self.max_batch))
        if 0 < len(images) <= step:
            return self.infer(images)
        parts = [self.infer(images[i : i + step]) for i in range(0, len(images), step)]
        if not parts:
            h, w, _ = self.input_shape
            return ScoreBatch(np.zeros(0, np.float32), np.zeros((0, 1, h, w), np.float32), np.zeros(0, np.float32))
        return ScoreBatch(*(np.concatenate([getattr(p, f) for p in parts]) for f in ScoreBatch._fields))

    def __enter__(self) -> Backend:
        self.activate()
        self.active = True
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.deactivate()
