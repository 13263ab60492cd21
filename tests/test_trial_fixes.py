"""What a new user's first trial of the default (rec+bank) head found, each on the real CLI or a tiny real model.

The bank weight's range and its refusals without a bank; one console line, once per run, for a validation set too
small for the auto policy's false-alarm rate and for a bank smaller than asked; the trained threshold's id; an
existing run folder refused before the data is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from skipgan_edge.config import ModelConfig, RunConfig, ScoreConfig
from skipgan_edge.model.networks import default_score


def _refused(p: object, *words: str) -> str:
    err = p.stderr.strip()  # type: ignore[attr-defined]
    assert p.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err  # type: ignore[attr-defined]
    for w in words:
        assert w in err, (w, err)
    return err


def test_bank_weight_range_is_0_exclusive_to_1_in_help_and_errors(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    help_text = "".join(run_cli("train", "--help").stdout.split())
    assert "in(0,1](1:thebanktermalone)" in help_text, help_text
    err = _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-weight", "1.5", check=False), "(0, 1]")
    assert "[0, 1]" not in err
    # weight 0 keeps a bank that counts for nothing: refused, pointing at the option that turns the bank off
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-weight", "0", check=False), "(0, 1]", "--bank-size 0")
    assert not out.exists()
    # 1 (the bank term alone, a measured head) is allowed
    cfg = RunConfig(model=ModelConfig(isize=32), score=ScoreConfig(bank_weight=1.0)).validate(default_score("skipganomaly"))
    assert cfg.score.bank_weight == 1.0 and cfg.score.bank_size == 4096
    # a card may hold weight 0 (allowed before training refused it): it still loads
    from skipgan_edge.card import typed_from_dict

    held = RunConfig(model=ModelConfig(isize=32)).validate(default_score("skipganomaly")).to_dict()
    held["score"]["bank_weight"] = 0.0
    assert typed_from_dict(RunConfig, held, "config").score.bank_weight == 0.0


def test_a_bank_weight_without_a_bank_is_refused_naming_both_options(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--bank-size", "0", "--bank-weight", "0.3", check=False),
             "--bank-weight 0.3", "--bank-size 0")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--paper", "--bank-weight", "0.3", check=False),
             "--paper", "--bank-weight")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[score]\nbank_weight = 0.3\n")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--config", str(cfg), "--bank-size", "0", check=False),
             f"score.bank_weight in {cfg}", "--bank-size 0")
    _refused(run_cli("train", "--data", str(synth_dir), "--out", str(out), "--config", str(cfg), "--paper", check=False),
             "score.bank_weight", "--paper")
    assert not out.exists()


def test_an_existing_run_folder_is_refused_before_the_data_is_read(tmp_path: Path) -> None:
    run = tmp_path / "def"
    run.mkdir()
    (run / "model.json").write_text("{}")
    # the data does not exist: the folder is what is refused, before any loading
    _refused(run_cli("train", "--data", str(tmp_path / "no_such_data"), "--out", str(run), check=False), "already holds a run")
    assert sorted(p.name for p in run.iterdir()) == ["model.json"]


def test_a_handful_of_images_says_the_auto_rate_and_the_small_bank_once_per_run(synth_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "few" / "train" / "good"
    data.mkdir(parents=True)
    for f in sorted((synth_dir / "train" / "good").iterdir())[:12]:
        shutil.copy(f, data / f.name)
    p = run_cli("train", "--data", str(tmp_path / "few"), "--out", str(tmp_path / "m"), "--ngf", "8", "--ndf", "8",
                "--epochs", "3", "--threads", "1", "--bank-kind", "nearest")  # a nearest bank: it keeps up to 4,096 features
    rate = [x for x in p.stderr.splitlines() if "false-alarm rate" in x]
    assert len(rate) == 1 and rate[0].startswith("WARNING "), p.stderr  # once per run, not once per epoch
    assert "the auto policy's false-alarm rate of 0.05" in rate[0] and "need at least 19" in rate[0], rate[0]
    bank = [x for x in p.stderr.splitlines() if "feature bank" in x]
    assert len(bank) == 1 and "fewer than score.bank_size 4096" in bank[0], p.stderr
    import json

    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert f"all {card['score']['bank']['size']} are kept" in bank[0] and card["score"]["bank"]["size"] < 4096
    assert p.stderr.count("epoch ") >= 3  # three epochs ran, each with its validation


def test_the_f1_thresholds_expected_rate_is_inside_its_interval() -> None:
    import numpy as np
    import pytest

    from skipgan_edge.thresholds import apply_policy

    # the trial's card: f1 flagged no validation normal and said expected 0.0 beside the interval [0.0004, 0.056]
    t = apply_policy("f1", np.arange(64.0), np.array([100.0, 200.0]), "labelled")
    assert t.flagged_normal == 0 and t.expected_fpr == pytest.approx(1 / 65)
    assert t.fpr_interval[0] < t.expected_fpr < t.fpr_interval[1] and t.fpr_interval[1] == pytest.approx(0.0552, abs=1e-3)
    t = apply_policy("f1", np.arange(100.0), np.array([50.5, 97.5, 98.5, 200.0, 300.0]), "synthetic")
    assert (t.raw, t.flagged_normal) == (97.0, 2) and t.expected_fpr == pytest.approx(3 / 101)  # 98 and 99 are flagged
    assert t.fpr_interval[0] < t.expected_fpr < t.fpr_interval[1]


def test_the_demos_commissioning_line_gives_the_raw_score_thresholds(demo_onnx: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Step 6 printed only normalized thresholds ("1.000 -> 0.868") beside fewer alarms after: each is on its own
    normalization, so the line gives the raw score thresholds, which the alarms follow."""
    import re
    import shutil

    from skipgan_edge.demo import DEFECT_FRAMES, _commission, write_demo_video
    from skipgan_edge.runtime.backends.onnxrt import read_card

    export = tmp_path / "export"
    shutil.copytree(demo_onnx, export)
    scorer = export / "scorer.int8.onnx"
    before = read_card(scorer).score.threshold
    write_demo_video(tmp_path / "line.mp4")
    _commission(tmp_path, scorer, set(DEFECT_FRAMES))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[6/6]"))
    after = read_card(scorer).score.threshold
    m = re.search(r"raw score threshold (\S+) -> (\S+) \(normalized (\S+) -> (\S+),", line)
    assert m is not None, line
    assert float(m.group(1)) == pytest.approx(before.raw, rel=1e-3) and float(m.group(2)) == pytest.approx(after.raw, rel=1e-3)
    assert float(m.group(3)) == pytest.approx(before.normalized, abs=1e-3) and float(m.group(4)) == pytest.approx(after.normalized, abs=1e-3)
    assert after.commissioning["previous"]["threshold_raw"] == before.raw
