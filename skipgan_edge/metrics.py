"""AUROC, average precision, recall at a false-alarm rate, AUPRO, F1-optimal threshold, rank correlation, plots.

Plain numpy (no scikit-learn at run time): AUROC is the Mann-Whitney statistic with ties counted
half, which equals the area under the trapezoidal ROC curve; average precision is scikit-learn's
definition. The tests check both against scikit-learn on random data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skipgan_edge.thresholds import f1_optimal_threshold, ranked_counts  # noqa: F401 - re-exported: the F1 sweep lives with the policies


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    i = 0
    n = len(x)
    while i < n:
        j = i
        while j + 1 < n and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; labels 1 = anomalous. Needs both classes present."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both normal and anomalous samples")
    ranks = _rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; score >= threshold means anomalous."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(1, y.sum())]
    fpr = np.r_[0.0, fps / max(1, (~y).sum())]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    labels = np.asarray(labels).astype(bool).ravel()
    pred = np.asarray(scores).ravel() >= threshold
    tp = float((pred & labels).sum())
    denom = float(pred.sum() + labels.sum())
    return 2 * tp / denom if denom else 0.0


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, as scikit-learn defines it (no interpolation)."""
    if not np.asarray(labels).astype(bool).any():
        raise ValueError("average precision needs anomalous samples")
    recall, precision = pr_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> tuple[float, float]:
    """(recall, false-alarm rate actually reached) at the strictest threshold whose false-alarm rate on the normal
    samples is at most ``fpr``: what an operator gets when the alarm may fire on that share of good parts."""
    f, t, _ = roc_curve(labels, scores)
    ok = f <= fpr + 1e-12
    i = int(np.flatnonzero(ok)[-1])
    return float(t[i]), float(f[i])


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, steps: int = 200) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr`` (MVTec AD's AUPRO), normalised to [0, 1].

    For each threshold: PRO is the mean, over every connected defect region (8-connected) of every mask, of
    the share of that region's pixels at or above the threshold; the false-positive rate is the share of
    defect-free pixels (of all images) at or above it. The curve PRO(FPR) is integrated from 0 to
    ``max_fpr`` (trapezoids, the last point interpolated at ``max_fpr``) and divided by ``max_fpr``.
    ``masks`` (N, H, W) bool, ``maps`` (N, H, W); thresholds are ``steps`` quantiles of the maps.
    """
    import cv2

    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, np.float64)
    regions: list[np.ndarray] = []  # each region's map values, sorted
    for m, a in zip(masks, maps):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        regions += [np.sort(a[lab == k]) for k in range(1, n)]
    if not regions:
        raise ValueError("AUPRO needs at least one defect region")
    neg = np.sort(maps[~masks])
    thresholds = np.unique(np.quantile(maps, np.linspace(0.0, 1.0, steps)))[::-1]

    def share_at_or_above(sorted_values: np.ndarray, th: float) -> float:
        return 1.0 - np.searchsorted(sorted_values, th, side="left") / max(len(sorted_values), 1)

    f = np.r_[0.0, [share_at_or_above(neg, th) for th in thresholds]]
    p = np.r_[0.0, [float(np.mean([share_at_or_above(r, th) for r in regions])) for th in thresholds]]
    keep = f <= max_fpr
    fk, pk = f[keep], p[keep]
    j = int(np.flatnonzero(keep)[-1])
    if j + 1 < len(f) and f[j + 1] > f[j]:  # the curve at exactly max_fpr
        fk = np.r_[fk, max_fpr]
        pk = np.r_[pk, p[j] + (p[j + 1] - p[j]) * (max_fpr - f[j]) / (f[j + 1] - f[j])]
    area = float(np.sum(np.diff(fk) * (pk[1:] + pk[:-1]) / 2))
    return area / max_fpr


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation."""
    ra, rb = _rankdata(np.asarray(a, np.float64).ravel()), _rankdata(np.asarray(b, np.float64).ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom else 0.0


def plots_available() -> bool:
    """Whether matplotlib is installed (it is part of ``[train]``, not of the runtime install)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, strictest first (the points average_precision sums over)."""
    _, tp, flagged, positives = ranked_counts(labels, scores)
    return tp / max(1, positives), tp / flagged


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "",
             operating_point: tuple[float, float] | None = None) -> None:
    """The ROC curve; ``operating_point`` (false-alarm rate, recall) marks where the model's threshold puts the alarm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc(labels, scores):.3f}")
    if operating_point is not None:
        ax.plot([operating_point[0]], [operating_point[1]], "o", color="crimson", ms=8,
                label=f"model threshold: FPR {operating_point[0]:.3f}, recall {operating_point[1]:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pr(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "",
            operating_point: tuple[float, float] | None = None) -> None:
    """Precision against recall with the average precision; ``operating_point`` (recall, precision) marks the model's threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec, prec = pr_curve(labels, scores)
    base = float(np.mean(np.asarray(labels).astype(bool)))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.step(np.r_[0.0, rec], np.r_[prec[0] if len(prec) else 1.0, prec], where="pre", lw=2,
            label=f"AP {average_precision(labels, scores):.3f}")
    ax.axhline(base, color="k", ls="--", lw=1, label=f"chance ({base:.2f})")
    if operating_point is not None:
        ax.plot([operating_point[0]], [operating_point[1]], "o", color="crimson", ms=8,
                label=f"model threshold: recall {operating_point[0]:.3f}, precision {operating_point[1]:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_histogram(labels: np.ndarray, scores: np.ndarray, threshold: float, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(bool)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(float(np.min(scores)), float(np.max(scores)), 50).tolist()
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"normal ({(~labels).sum()})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"anomalous ({labels.sum()})")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("normalized score")
    ax.set_ylabel("images")
    ax.set_title(title or "score histogram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
