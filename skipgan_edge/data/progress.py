"""Progress of long work (training epochs, loading and scoring images, calibration, export), on stderr.

No dependency: the runtime install has neither ``tqdm`` nor ``rich``, and ``eval --onnx`` runs there.

* stderr is a terminal: one bar redrawn in place (at most 10 times a second) and erased when the work ends::

      scoring test images [##########..........] 2048/4000 images  3.9 s

* otherwise (a log file, a pipe, systemd, CI): one line every ``SKIPGAN_PROGRESS_SECONDS`` seconds (default 5),
  through the ``skipgan_edge`` logger at INFO, and a closing line if any was written, so that a log shows long work
  is alive without a line per batch::

      INFO scoring test images: 2048/4000 images (51 %), 3.9 s
      INFO scoring test images: 4000 images in 7.8 s

Work that ends before the first period writes nothing. ``SKIPGAN_PROGRESS_SECONDS=0`` writes a line at every update.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType

import numpy as np

from skipgan_edge.contract import ScoreBatch

log = logging.getLogger("skipgan_edge.progress")

#: seconds between two progress lines when stderr is not a terminal (env SKIPGAN_PROGRESS_SECONDS overrides)
DEFAULT_PERIOD_S = 5.0
BAR_WIDTH = 20
REDRAW_S = 0.1


def period_s() -> float:
    text = os.environ.get("SKIPGAN_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_PERIOD_S
    except ValueError:
        return DEFAULT_PERIOD_S


class Progress:
    """``with Progress("scoring test images", total=n, unit="images") as p: ... p.update(k)``.

    ``note`` (e.g. the current losses) is appended to the bar or line. ``enabled=False`` makes every call a no-op."""

    def __init__(self, what: str, total: int, unit: str = "", *, done: int = 0, enabled: bool = True) -> None:
        self.what, self.total, self.unit, self.done = what, int(total), unit, int(done)
        self.note = ""
        self.enabled = enabled and total > 0
        self.tty = self.enabled and _stderr_is_tty()
        self.period = period_s()
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._lines = 0
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(ok=exc_type is None)

    def _count(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.done}/{self.total}{unit}"

    def update(self, n: int = 1, note: str | None = None) -> None:
        if not self.enabled:
            return
        self.done = min(self.total, self.done + n)
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if self.tty:
            if now - self._last >= REDRAW_S or self.done == self.total:
                self._last = now
                filled = round(BAR_WIDTH * self.done / self.total)
                bar = "#" * filled + "." * (BAR_WIDTH - filled)
                text = f"{self.what} [{bar}] {self._count()}  {now - self.t0:.1f} s" + (f"  {self.note}" if self.note else "")
                sys.stderr.write("\r\x1b[K" + text)
                sys.stderr.flush()
                self._drawn = True
        elif now - self._last >= self.period and self.done < self.total:
            self._last = now
            self._lines += 1
            log.info("%s: %s (%d %%), %.1f s%s", self.what, self._count(), 100 * self.done // self.total, now - self.t0,
                     f", {self.note}" if self.note else "")

    def close(self, ok: bool = True) -> None:
        """Erase the bar; in a log, close with one line if a progress line was written."""
        if not self.enabled:
            return
        self.enabled = False
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        elif self._lines and ok:
            unit = f" {self.unit}" if self.unit else ""
            log.info("%s: %d%s in %.1f s", self.what, self.done, unit, time.perf_counter() - self.t0)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def score_in_chunks(fn: Callable[[np.ndarray], ScoreBatch], images: np.ndarray, what: str, chunk: int) -> ScoreBatch:
    """``fn`` over ``images`` in chunks of ``chunk`` with progress; the same result as ``fn(images)`` when ``fn`` scores
    in batches of ``chunk`` (or a divisor of it)."""
    if len(images) <= chunk:
        return fn(images)
    parts = []
    with Progress(what, len(images), "images") as bar:
        for i in range(0, len(images), chunk):
            parts.append(fn(images[i : i + chunk]))
            bar.update(len(parts[-1].score))
    return ScoreBatch(*(np.concatenate([getattr(p, f) for p in parts]) for f in ScoreBatch._fields))
