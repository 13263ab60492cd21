from __future__ import annotations

import numpy as np

from skipgan_edge.metrics import auroc, f1_at, f1_optimal_threshold, roc_curve, spearman


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


def test_auroc_matches_pair_counting_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert abs(auroc(y, s) - _pairwise_auc(y, s)) < 1e-12
    fpr, tpr, _ = roc_curve(y, s)
    assert abs(np.trapezoid(tpr, fpr) - auroc(y, s)) < 1e-9


def test_f1_optimal_threshold() -> None:
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.5, 0.9])
    thr, f1 = f1_optimal_threshold(y, s)
    # best rule: score >= 0.5 gives tp 2, fp 1: F1 = 4 / 5
    assert thr == 0.5 and abs(f1 - 0.8) < 1e-12
    assert abs(f1_at(y, s, thr) - f1) < 1e-12


def test_spearman() -> None:
    a = np.arange(10.0)
    assert abs(spearman(a, a**3) - 1) < 1e-12
    assert abs(spearman(a, -a) + 1) < 1e-12
