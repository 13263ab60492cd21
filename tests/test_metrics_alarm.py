"""Average precision, recall at a false-alarm rate and AUPRO: hand-computed cases and scikit-learn on random data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from skipgan_edge.metrics import aupro, auroc, average_precision, pr_curve, recall_at_fpr


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_average_precision_agree_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + 0.8 * y
    s[::9] = s[0]  # ties
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_hand_computed_cases() -> None:
    y, s = np.array([0, 0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.95])
    assert average_precision(y, s) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))  # precision 1 at recall 0.5, 2/3 at 1
    assert recall_at_fpr(y, s, 0.25) == (1.0, 0.25)  # threshold 0.8 flags 0.9 (one good part in four) and both defects
    assert recall_at_fpr(y, s, 0.2) == (0.5, 0.0)  # no false alarm allowed: only 0.95 is above every good part
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 3, 3] = True
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    # points (FPR, PRO): (0, 0), (0, 0.5), (1, 1); interpolated at 0.3: 0.65; area 0.3 * 0.575, normalised: 0.575
    assert aupro(masks, maps) == pytest.approx(0.575)
    assert aupro(masks, masks.astype(float) * 2 - 1) == pytest.approx(1.0)  # a perfect map


def test_eval_and_export_state_recall_at_a_false_alarm_rate(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    rep = json.loads(run_cli("eval", "--onnx", str(demo_onnx / "scorer.onnx"), "--data", str(synth_dir), "--backend", "onnxruntime",
                             "--json", cwd=tmp_path).stdout)
    assert set(rep["recall_at_fpr"]) == {"0.01", "0.05"} and all(v["fpr"] <= float(k) for k, v in rep["recall_at_fpr"].items())
    assert 0 < rep["average_precision"] <= 1 and 0 <= rep["aupro"] <= 1
    p = run_cli("eval", "--onnx", str(demo_onnx / "scorer.onnx"), "--data", str(synth_dir), "--backend", "onnxruntime", cwd=tmp_path)
    assert "recall at a false-alarm rate:" in p.stdout
    export = json.loads((demo_onnx / "export_report.json").read_text())
    assert all("recall_at_1pct_fpr" in v for v in export["variants"].values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pr_curve_agrees_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties, the case that needs care
    rec, prec = pr_curve(y, s)
    p_ref, r_ref, _ = precision_recall_curve(y, s)  # sklearn: loosest threshold first, plus a final (recall 0, precision 1)
    assert np.allclose(rec, r_ref[:-1][::-1]) and np.allclose(prec, p_ref[:-1][::-1])
