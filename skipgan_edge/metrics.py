"""AUROC, ROC curve, F1-optimal threshold, rank correlation and the two report plots.

Plain numpy (no scikit-learn): AUROC is the Mann-Whitney statistic with ties counted half,
which equals the area under the trapezoidal ROC curve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 for the rule score >= threshold."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct].astype(np.float64)
    pred_pos = (distinct + 1).astype(np.float64)
    f1 = 2 * tp / (pred_pos + y.sum())
    best = int(np.argmax(f1))
    return float(s[distinct][best]), float(f1[best])


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    labels = np.asarray(labels).astype(bool).ravel()
    pred = np.asarray(scores).ravel() >= threshold
    tp = float((pred & labels).sum())
    denom = float(pred.sum() + labels.sum())
    return 2 * tp / denom if denom else 0.0


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


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right")
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
