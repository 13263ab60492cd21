"""Real subprocess runs of ``skipgan-edge train`` and ``eval``; interruption and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, run_cli

from skipgan_edge.card import load_card
from skipgan_edge.errors import ModelFolderError
from skipgan_edge.model.folder import load_model

TINY = ["--isize", "32", "--ngf", "8", "--ndf", "8", "--batch", "32"]


def test_train_then_eval_subprocess(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli("train", "--data", str(synth_dir), "--out", str(run), "--epochs", "3", *TINY)
    card = load_card(run)
    assert (card.input.isize, card.input.channels, card.input.channel_order, card.input.layout) == (32, 3, "BGR", "NHWC")
    thr = card.score.threshold  # auto: F1-optimal on the labelled validation anomalies this data has
    assert (thr.policy, thr.recall_source, thr.n_normal) == ("f1", "labelled", 32)
    assert thr.expected_recall is not None and thr.expected_fpr is not None and thr.fpr_interval is not None
    assert card.data["val_has_anomalies"] is True and len(card.data["fingerprint"]) == 64
    assert set(card.to_dict()["score"]["val_stats"]) == {"min", "max", "mean", "std", "n"}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    proc = run_cli("eval", "--model", str(run), "--data", str(synth_dir), "--json")
    report = json.loads(proc.stdout)
    assert report["auroc"] > 0.75, report  # well above chance on synthetic defects
    assert "pixel_auroc" in report and report["model_id"] == card.model_id
    assert Path(report["plots"]["roc"]).stat().st_size > 1000
    assert Path(report["plots"]["histogram"]).stat().st_size > 1000
    assert Path(report["plots"]["pr"]).stat().st_size > 1000
    at = report["at_model_threshold"]  # the alarm as run raises it; F1 follows from its precision and recall
    assert 0 <= at["fpr"] <= 1 and 0 <= at["recall"] <= 1 and report["model_threshold_policy"] == "f1"
    if at["precision"]:
        p, r = at["precision"], at["recall"]
        assert report["f1_at_model_threshold"] == pytest.approx(2 * p * r / (p + r))


def test_config_file_and_overrides(synth_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nisize = 32\nngf = 8\nndf = 8\nnz = 16\n[train]\nepochs = 1\nbatch = 32\nseed = 5\n')
    run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), "--config", str(cfg), "--nz", "12")
    c = load_card(tmp_path / "r").config
    assert c.model.nz == 12 and c.model.ngf == 8 and c.train.seed == 5
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "r2"), "--config", str(bad), check=False)
    assert p.returncode == 2 and "unknown key(s) in [train]: epoch" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_seed_determinism_and_resume_after_sigint(synth_dir: Path, tmp_path: Path) -> None:
    args = ["--data", str(synth_dir), "--epochs", "4", "--seed", "7", *TINY]
    run_cli("train", "--out", str(tmp_path / "full"), *args)
    # interrupted run: SIGINT once the first epoch is logged, then resume
    part = tmp_path / "part"
    proc = subprocess.Popen([*CLI, "train", "--out", str(part), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((part / "metrics.jsonl").exists() and (part / "metrics.jsonl").read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: skipgan-edge train --resume" in err
    n_done = len((part / "metrics.jsonl").read_text().splitlines())
    assert n_done < 4, "the interrupt came too late to test anything"
    with open(part / "metrics.jsonl", "a") as fh:  # a row written after the last checkpoint, as a crash would leave it
        fh.write(json.dumps({"epoch": n_done + 1, "g": -1.0}) + "\n")
    run_cli("train", "--resume", str(part))
    from safetensors.numpy import load_file

    full_w = load_file(str(tmp_path / "full" / "model.safetensors"))
    part_w = load_file(str(part / "model.safetensors"))
    assert full_w.keys() == part_w.keys()
    for k in full_w:  # bit-identical weights
        assert full_w[k].tobytes() == part_w[k].tobytes(), f"resumed run differs from the uninterrupted one at {k}"
    full_m = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    part_m = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [m["g"] for m in full_m] == [m["g"] for m in part_m]
    assert [m["epoch"] for m in part_m] == [1, 2, 3, 4]  # no row repeated after the resume


def test_sigkill_leaves_loadable_folder(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "k"
    proc = subprocess.Popen([*CLI, "train", "--out", str(run), "--data", str(synth_dir), "--epochs", "30", *TINY],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 2):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    load_model(run)  # the best model so far is complete
    done = len((run / "metrics.jsonl").read_text().splitlines())
    bad = run_cli("train", "--resume", str(run), "--epochs", "0", check=False)  # the one option a resume takes, named
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: --epochs must be at least 1, got 0", bad.stderr
    p = run_cli("train", "--resume", str(run), "--epochs", str(done + 1))
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= done + 1, p.stderr


def test_model_folder_errors(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="missing model.safetensors"):
        load_card(bad)
    shutil.rmtree(bad)
    shutil.copytree(tiny_model, bad)
    card = json.loads((bad / "model.json").read_text())
    card["format_version"] = 99
    (bad / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelFolderError, match="newer than this skipgan-edge"):
        load_card(bad)
    (bad / "model.json").unlink()
    p = run_cli("eval", "--model", str(bad), "--data", "x", "--json", check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "no model.json" in p.stderr
    assert "resume with: skipgan-edge train --resume" in p.stderr  # a checkpoint is there: the hint is right
    shutil.rmtree(bad / "checkpoint")
    p = run_cli("eval", "--model", str(bad), "--data", "x", "--json", check=False)
    assert p.returncode == 2 and "no model.json" in p.stderr and "--resume" not in p.stderr  # nothing to resume: no hint
    # a pickle renamed to .safetensors is refused, never unpickled
    shutil.rmtree(bad)
    shutil.copytree(tiny_model, bad)
    import pickle

    (bad / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFolderError, match="unreadable"):
        load_card(bad)


def test_batch_sized_to_few_images(tmp_path: Path) -> None:
    """Fewer training images than the default batch: an unset batch becomes the number of images (said in one line, recorded
    in the card); a batch that was set (--batch or the config file) and is larger stays a one-line error, with nothing written."""
    from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic

    data = tmp_path / "few"
    write_synthetic(data, SyntheticSpec(n_train=12, n_val_good=4, n_val_defect=2, n_test_good=6, n_test_defect=3))
    tiny = ["--data", str(data), "--isize", "32", "--ngf", "8", "--ndf", "8", "--epochs", "1"]
    p = run_cli("train", *tiny, "--out", str(tmp_path / "r"))
    said = [line for line in p.stderr.splitlines() if "default batch" in line]
    assert said == ["INFO batch 12: the 12 training images are fewer than the default batch of 64"], p.stderr
    card = load_card(tmp_path / "r")
    assert card.config.train.batch == 12 and card.data["n_train"] == 12
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nbatch = 32\n")
    for given, where in ((["--batch", "32"], "--batch"), (["--config", str(cfg)], f"train.batch in {cfg}")):
        p = run_cli("train", *tiny, "--out", str(tmp_path / "r2"), *given, check=False)
        errors = [line for line in p.stderr.splitlines() if not line.startswith("INFO ")]
        assert p.returncode == 2 and errors == [f"error: batch 32 ({where}) is more than the 12 training images: set it to 12 or "
                                                "less, or leave it out to size the batch to the data"], p.stderr
        assert not (tmp_path / "r2").exists()
    one = tmp_path / "one"
    write_synthetic(one, SyntheticSpec(n_train=1, n_val_good=4, n_val_defect=2, n_test_good=6, n_test_defect=3))
    p = run_cli("train", *tiny[2:], "--data", str(one), "--out", str(tmp_path / "r3"), check=False)
    assert p.returncode == 2 and p.stderr.splitlines()[-1] == ("error: 1 training image: training needs at least 2 (BatchNorm "
                                                               "trains on batches of 2 or more); add images"), p.stderr
