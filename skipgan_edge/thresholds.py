"""Threshold policies and the statistics of a threshold set from normal images (numpy and the standard library).

A threshold decides the alarm: an image is flagged when its score is *above* it. Policies
(``--threshold`` in ``train``; ``skipgan-edge threshold`` on the line):

* ``fpr:Q``: from normal images only. With ``n`` normal scores, the threshold is the
  ``(k+1)``-th largest with ``k = floor(Q·(n+1)) - 1``, so ``k`` of them are flagged and the
  expected false-alarm rate on new normal images is ``(k+1)/(n+1) <= Q`` (the order statistic's
  exceedance probability is Beta(k+1, n-k) distributed whatever the score distribution; the
  interval reported is that distribution's central 95 %). Fewer than ``ceil(1/Q) - 1`` normal
  images cannot promise Q at all: refused.
* ``f1``: the F1-optimal threshold on validation anomalies: labelled ones when the data has
  them, else synthetic ones (``skipgan_edge.data.synthval``).
* ``max-normal``: the most anomalous normal validation image (anomalib's fallback; what
  training did before policies existed). Expected FPR 1/(n+1).
* ``auto`` (the default): ``f1`` when the data has labelled validation anomalies, else
  :data:`AUTO_UNLABELLED`, the policy that won the study in benchmarks/results/synthval_study.md.

Every policy reports what it expects on validation: the FPR and, where anomalies exist, the recall.

Rates are per frame; a line counts false alarms per hour: at ``fps`` frames a second a per-frame rate ``q`` is
``q · 3600 · fps`` false alarms an hour (:func:`alarms_per_hour`), and ``N`` an hour is a per-frame rate of
``N / (3600 · fps)`` (:func:`rate_for_alarms_per_hour`). Frames without a rate of their own (image folders) are
counted at :data:`DEFAULT_FPS` unless ``--fps`` says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skipgan_edge.errors import ConfigError

POLICIES = ("auto", "fpr:Q", "f1", "max-normal")
#: what ``auto`` means without labelled validation anomalies: the winner of benchmarks/results/synthval_study.md (train's
#: --threshold help says it too; tests/test_cli_help.py holds the two together)
AUTO_UNLABELLED = "fpr:0.05"
CONFIDENCE = 0.95
#: the frame rate false alarms per hour are counted at when the frames have none (image folders) and --fps is not given
DEFAULT_FPS = 25.0


def alarms_per_hour(rate: float, fps: float) -> float:
    """A per-frame false-alarm rate as false alarms per hour at ``fps`` frames a second."""
    return rate * fps * 3600.0


def rate_for_alarms_per_hour(per_hour: float, fps: float) -> float:
    """The per-frame false-alarm rate that gives ``per_hour`` false alarms an hour at ``fps`` frames a second."""
    if not (per_hour > 0 and math.isfinite(per_hour)):
        raise ConfigError(f"--alarms-per-hour must be a positive number, got {per_hour:g}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ConfigError(f"--fps must be a positive number, got {fps:g}")
    return per_hour / (3600.0 * fps)


def format_per_hour(per_hour: float) -> str:
    """``2.4``, ``1500``, ``0`` false alarms an hour: three significant digits, no exponent."""
    return "0" if per_hour == 0 else f"{per_hour:.3g}" if per_hour < 1000 else f"{per_hour:.0f}"


@dataclass(frozen=True)
class ThresholdChoice:
    raw: float  # flag when score > raw
    policy: str  # as given: "fpr:0.01", "f1", "max-normal"
    expected_fpr: float  # on new normal images: (k+1)/(n+1), k = validation normals above (f1: an upper bound), inside fpr_interval
    fpr_interval: tuple[float, float]  # central 95 % interval of the FPR
    expected_recall: float | None  # on validation anomalies (labelled or synthetic), None without any
    recall_source: str | None  # "labelled" or "synthetic"
    n_normal: int
    flagged_normal: int  # validation normals above the threshold


def parse_policy(text: str, name: str = "--threshold") -> tuple[str, float | None]:
    """``"fpr:0.01"`` → ("fpr", 0.01); ``"f1"``; ``"max-normal"``; one line naming the choices otherwise, the value
    named ``name`` (the option, or a config's qualified key: the error's ``key`` then)."""
    key = name if not name.startswith("-") else None
    t = text.strip().lower()
    if t in ("f1", "max-normal", "auto"):
        return t, None
    if t.startswith("fpr:"):
        try:
            q = float(t[4:])
        except ValueError:
            q = -1.0
        if not 0.0 < q < 0.5:
            raise ConfigError(f"{name} {text}: the false-alarm rate must be a number in (0, 0.5), e.g. fpr:0.01", key=key)
        return "fpr", q
    raise ConfigError(f"{name} {text!r}: choose auto, f1, max-normal or fpr:Q (e.g. fpr:0.01)", key=key)


def resolve(policy: str, labelled: bool) -> str:
    """``auto`` → ``f1`` with labelled validation anomalies, else :data:`AUTO_UNLABELLED`; others unchanged."""
    p = policy.strip().lower()
    if p != "auto":
        return p
    return "f1" if labelled else AUTO_UNLABELLED


def _binom_sf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k), summed in log space (exact enough for n up to millions of frames)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)

    def tail(lo: int, hi: int) -> float:  # sum of P(X = i) for lo <= i < hi
        terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(lo, hi)]
        m = max(terms)
        return math.exp(m) * math.fsum(math.exp(t - m) for t in terms)

    # sum the shorter side: a threshold near the top of many frames has small k
    return min(1.0, tail(k, n + 1)) if n - k < k else max(0.0, 1.0 - tail(0, k))


def beta_quantile(a: int, b: int, q: float) -> float:
    """The q-quantile of Beta(a, b) for integers a, b >= 1: P(Beta(a, b) <= x) = P(Binomial(a+b-1, x) >= a)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _binom_sf(a, a + b - 1, mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def order_statistic_fpr(k: int, n: int) -> tuple[float, tuple[float, float]]:
    """A threshold at the (k+1)-th largest of n normal scores: expected FPR and its central 95 % interval."""
    a, b = k + 1, n - k
    tail = (1 - CONFIDENCE) / 2
    return a / (n + 1), (beta_quantile(a, b, tail), beta_quantile(a, b, 1 - tail))


def rate_interval(x: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95 % interval of a rate observed as x events in n trials (e.g. false alarms on a line)."""
    tail = (1 - CONFIDENCE) / 2
    lo = 0.0 if x == 0 else beta_quantile(x, n - x + 1, tail)
    hi = 1.0 if x == n else beta_quantile(x + 1, n - x, 1 - tail)
    return lo, hi


def min_normal_images(q: float) -> int:
    """The fewest normal images that can promise an expected FPR <= q: n + 1 >= 1/q."""
    return max(1, math.ceil(1.0 / q - 1.0 - 1e-9))


def fpr_threshold(normal: np.ndarray, q: float) -> tuple[float, int]:
    """(threshold, k): the (k+1)-th largest normal score with (k+1)/(n+1) <= q; ConfigError when n is too small."""
    s = np.sort(np.asarray(normal, np.float64).ravel())
    n = len(s)
    k = math.floor(q * (n + 1) + 1e-9) - 1
    if k < 0:
        raise ConfigError(
            f"{n} normal image(s) cannot set a false-alarm rate of {q:g}: need at least {min_normal_images(q)}; "
            "give more normal frames or a larger rate"
        )
    return float(s[n - 1 - k]), k


def ranked_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For the rule score >= t at every distinct score t, strictest first: (t, true positives, flagged, positives).
    The one sweep behind the F1-optimal threshold, average precision and the PR curve."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    return s[distinct], np.cumsum(y)[distinct].astype(np.float64), (distinct + 1).astype(np.float64), int(y.sum())


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 for the rule score >= threshold."""
    t, tp, flagged, positives = ranked_counts(labels, scores)
    f1 = 2 * tp / (flagged + positives)
    best = int(np.argmax(f1))
    return float(t[best]), float(f1[best])


def apply_policy(policy: str, normal: np.ndarray, anomalous: np.ndarray | None, recall_source: str | None = "synthetic") -> ThresholdChoice:
    """The threshold ``policy`` gives on validation scores (normal, and anomalous if any)."""
    kind, q = parse_policy(policy)
    if kind == "auto":
        raise ValueError("resolve 'auto' first (thresholds.resolve)")
    normal = np.asarray(normal, np.float64).ravel()
    n = len(normal)
    if n == 0:
        raise ConfigError("no normal validation scores to set a threshold on")
    if kind == "max-normal":
        raw, k = float(normal.max()), 0
    elif kind == "fpr":
        assert q is not None
        raw, k = fpr_threshold(normal, q)
    else:
        if anomalous is None or len(anomalous) == 0:
            raise ConfigError("--threshold f1 needs validation anomalies (labelled, or synthetic ones); use fpr:Q or max-normal")
        scores = np.r_[normal, np.asarray(anomalous, np.float64).ravel()]
        labels = np.r_[np.zeros(n), np.ones(len(anomalous))]
        t_ge, _ = f1_optimal_threshold(labels, scores)  # rule: score >= t; ours is score > raw
        below = scores[scores < t_ge]
        raw = float(below.max()) if len(below) else float(np.nextafter(t_ge, -np.inf))
        k = int((normal > raw).sum())
    flagged = int((normal > raw).sum())
    # f1 flags `flagged` validation normals, so its threshold is at or above the (flagged+1)-th largest normal score: its
    # rate on new normals is at most that order statistic's, whose expectation and interval it states (as fpr:Q does)
    exp, ci = order_statistic_fpr(flagged if kind == "f1" else k, n)
    recall = None
    if anomalous is not None and len(anomalous):
        recall = float((np.asarray(anomalous) > raw).mean())
    return ThresholdChoice(raw=raw, policy=policy.strip().lower(), expected_fpr=float(exp), fpr_interval=(float(ci[0]), float(ci[1])),
                           expected_recall=recall, recall_source=recall_source if recall is not None else None,
                           n_normal=n, flagged_normal=flagged)
