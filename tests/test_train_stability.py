"""Training that cannot go silently wrong: recovery from a forced divergence, a run that cannot recover, seed stability.

Divergence is forced honestly, through the real CLI and config: an absurd ``--lr`` (Adam's step is about the learning
rate whatever the gradient, so the weights overflow within a few steps) and the public ``[train]`` options of the
recovery policy. Tiny real models (ngf 8, isize 32), real data (generated textures, Fashion-MNIST), no mocks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from skipgan_edge.card import load_card
from skipgan_edge.errors import ModelFolderError

TINY = ["--isize", "32", "--ngf", "8", "--ndf", "8", "--batch", "32"]
FINITE_KEYS = ("g", "g_adv", "g_con", "g_lat", "d", "d_real", "d_fake", "val_loss")


def _error_lines(stderr: str) -> list[str]:
    """What the CLI says about the failure: every stderr line that is not a log record."""
    return [ln for ln in stderr.strip().splitlines() if not ln.startswith(("INFO ", "WARNING ", "DEBUG "))]


def test_forced_divergence_recovers_and_the_card_records_it(synth_dir: Path, tmp_path: Path) -> None:
    """lr 2e8 overflows the weights within the first epoch; the recovery restores the start and multiplies the rate by
    1e-12, back to the default 2e-4; the run finishes with a finite model whose card and metrics say what happened."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nrecover_lr_factor = 1e-12\nthreads = 1\n")
    run = tmp_path / "run"
    p = run_cli("train", "--data", str(synth_dir), "--out", str(run), "--epochs", "2", "--lr", "2e8", "--config", str(cfg), *TINY)
    assert "recovery 1 of at most 3" in p.stderr, p.stderr
    card = load_card(run)
    (rec,) = card.training.recoveries
    assert (rec.epoch, rec.restored) == (1, "the start") and rec.step >= 1, rec
    assert rec.what in ("generator loss", "generator gradient", "discriminator loss", "discriminator gradient", "weights"), rec
    assert rec.lr == pytest.approx(2e-4)
    assert card.training.epochs_run == 2 and card.training["best_epoch"] in (1, 2)  # dict-style reads still work
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["recovered"] == 1 and "recovered" not in rows[1]
    assert all(math.isfinite(r[k]) for r in rows for k in FINITE_KEYS), rows
    from safetensors.numpy import load_file

    weights = load_file(str(run / "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values() if w.dtype.kind == "f")
    # the record survives the card's JSON round trip (model.json and the weights' header agree)
    assert json.loads((run / "model.json").read_text())["training"]["recoveries"][0]["restored"] == "the start"


def test_unrecoverable_divergence_exits_3_with_one_line_and_keeps_no_model(synth_dir: Path, tmp_path: Path) -> None:
    """lr 1e10 diverges again after each of the 3 default recoveries (x0.5 each): exit 3, one error line, no model."""
    run = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nthreads = 1\n")
    p = run_cli("train", "--data", str(synth_dir), "--out", str(run), "--epochs", "2", "--lr", "1e10", "--config", str(cfg), *TINY,
                check=False)
    assert p.returncode == 3, (p.returncode, p.stderr)
    (line,) = _error_lines(p.stderr)
    assert line.startswith("error: training diverged: non-finite ") and "after 3 recoveries" in line and "--lr" in line, line
    assert p.stderr.count("WARNING non-finite") == 3 and "Traceback" not in p.stderr
    assert not (run / "model.json").exists() and not (run / "model.safetensors").exists()
    assert not (run / "checkpoint").exists()
    record = json.loads((run / "diverged.json").read_text())
    assert len(record["recoveries"]) == 3 and record["lr"] == pytest.approx(1e10 * 0.5**3) and record["message"] in line
    with pytest.raises(ModelFolderError, match="its training diverged"):
        load_card(run)
    for args in (["eval", "--model", str(run), "--data", str(synth_dir)], ["train", "--resume", str(run)],
                 ["train", "--data", str(synth_dir), "--out", str(run), *TINY]):
        q = run_cli(*args, check=False)
        assert q.returncode == 2 and len(_error_lines(q.stderr)) == 1, (args, q.stderr)
        assert "diverged" in q.stderr or "already holds a run" in q.stderr, (args, q.stderr)


def test_recovery_off_stops_at_the_first_non_finite_step(synth_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nmax_recoveries = 0\nthreads = 1\n")
    p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), "--epochs", "1", "--lr", "1e10",
                "--config", str(cfg), *TINY, check=False)
    assert p.returncode == 3 and "WARNING non-finite" not in p.stderr, p.stderr
    (line,) = _error_lines(p.stderr)
    assert "with recovery off" in line and "epoch 1 step " in line, line


@pytest.mark.parametrize(("key", "value", "msg"), [("recover_lr_factor", "1.0", "must be in (0, 1)"),
                                                    ("max_recoveries", "-1", "must be 0 (stop at the first non-finite step)"),
                                                    ("lr", "nan", "must be a positive finite number")])
def test_bad_recovery_options_are_one_line(synth_dir: Path, tmp_path: Path, key: str, value: str, msg: str) -> None:
    """Set in a config file, the refusal names the key and the file; typed as an option, the option."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[train]\n{key} = {value}\n")
    p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), "--config", str(cfg), *TINY, check=False)
    (line,) = _error_lines(p.stderr)
    assert p.returncode == 2 and line.startswith(f"error: {cfg}: train.{key} {msg}"), p.stderr
    flag = "--" + key.replace("_", "-")
    p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), flag, value, *TINY, check=False)
    (line,) = _error_lines(p.stderr)
    assert p.returncode == 2 and line.startswith(f"error: {flag} {msg}"), p.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("toml", "flags", "msg"), [
    ('[score]\nthreshold = "fpr:2"\n', ["--threshold", "fpr:2"], "{} fpr:2: the false-alarm rate must be a number in (0, 0.5)"),
    ('[model]\narch = "ganomaly"\n[score]\nbank_size = 64\nbank_kind = "gaussian"\n',
     ["--arch", "ganomaly", "--bank-size", "64", "--bank-kind", "gaussian"], "{} gaussian is not available for arch ganomaly"),
])
def test_a_refusal_names_the_file_or_the_option(synth_dir: Path, tmp_path: Path, toml: str, flags: list[str], msg: str) -> None:
    """A value checked against another (a bank kind against the arch) or parsed (the alarm policy) is named where it was
    set: the file before its key, or the option typed."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    key = "score.threshold" if "threshold" in toml else "score.bank_kind"
    p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), "--config", str(cfg), check=False)
    assert p.returncode == 2 and _error_lines(p.stderr)[0].startswith(f"error: {cfg}: " + msg.format(key)), p.stderr
    p = run_cli("train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), *flags, check=False)
    assert p.returncode == 2 and _error_lines(p.stderr)[0].startswith("error: " + msg.format(flags[-2])), p.stderr


def test_selection_does_not_stop_at_a_saturated_epoch(synth_dir: Path, tmp_path: Path) -> None:
    """Validation AUROC on the generated textures saturates at 1.0 from the first epochs: the best epoch is the one of
    highest AUROC and, among those, lowest validation loss; epochs_run is the epochs the run completed."""
    from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig
    from skipgan_edge.data.datasets import load_folder
    from skipgan_edge.train.trainer import train

    cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=8, ndf=8), train=TrainConfig(epochs=4, batch=32, threads=1))
    card = train(load_folder(synth_dir, 32, 3, seed=0), cfg, tmp_path / "r", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    top = max(r["val_auroc"] for r in rows)
    tied = [r for r in rows if r["val_auroc"] == top]
    assert len(tied) >= 2, "AUROC did not saturate on this data: the test shows nothing"
    chosen = max(rows, key=lambda r: (r["val_auroc"], -r["val_loss"]))
    assert card.training.best_epoch == chosen["epoch"] and card.metrics["val_loss"] == chosen["val_loss"]
    assert chosen["epoch"] != tied[0]["epoch"], "the first saturated epoch was also the lowest loss: the tie rule went untested"
    assert [r["best"] for r in rows].count(True) >= 2 and card.training.epochs_run == 4


def _seed_run(seed: int, tmp: Path) -> list[dict[str, object]]:
    from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig
    from skipgan_edge.data import fmnist
    from skipgan_edge.data.datasets import load_fmnist
    from skipgan_edge.train.trainer import train

    if not fmnist.root().exists():
        pytest.fail(f"Fashion-MNIST not found at {fmnist.root()}: apt-get install dataset-fashion-mnist (make test installs it)")
    ds = load_fmnist(0, 32, 1, seed=seed, max_train=704, max_test=64)  # 640 train, 64 validation
    cfg = RunConfig(model=ModelConfig(isize=32, channels=1, ngf=8, ndf=8), train=TrainConfig(epochs=3, seed=seed, threads=1))
    card = train(ds, cfg, tmp / f"s{seed}", progress=False)
    assert card.training.recoveries == [], (seed, card.training.recoveries)
    return [json.loads(x) for x in (tmp / f"s{seed}" / "metrics.jsonl").read_text().splitlines()]


def _check_seeds(seeds: range, tmp: Path) -> None:
    for seed in seeds:
        rows = _seed_run(seed, tmp)
        assert len(rows) == 3
        bad = [(r["epoch"], k) for r in rows for k in FINITE_KEYS if not math.isfinite(float(r[k]))]  # type: ignore[arg-type]
        assert not bad, f"seed {seed}: non-finite {bad}"


def test_default_is_finite_over_10_seeds_on_fashion_mnist(tmp_path: Path) -> None:
    """The default configuration (tiny widths), Fashion-MNIST leave-class-0-out, 10 seeds: no non-finite epoch, no
    recovery (about 4 s a seed on one core)."""
    _check_seeds(range(10), tmp_path)
