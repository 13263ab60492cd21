"""What the operator meets in train, eval and export: a plain folder of good images, the resize note, progress in a log,
eval on a device's test/-only folder (written outside the export folder), eval without matplotlib, unwritable --out.

Every run is the real CLI in a subprocess with stderr a pipe (not a terminal): progress is the periodic one-line form;
SKIPGAN_PROGRESS_SECONDS=0 makes it a line at every update, so that tiny data shows it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from conftest import CLI, ROOT

from skipgan_edge.card import load_card
from skipgan_edge.runtime.backends.onnxrt import read_card

TINY = ["--isize", "32", "--ngf", "8", "--ndf", "8", "--batch", "16", "--epochs", "2"]


def _cli(*args: str, cwd: Path | None = None, exe: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKIPGAN_PROGRESS_SECONDS": "0"}
    return subprocess.run([*(exe or CLI), *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def _test_only(synth_dir: Path, dest: Path) -> Path:
    """A device's evaluation folder: test/good and test/<defect> only (no train/, no masks)."""
    shutil.copytree(synth_dir / "test", dest / "test")
    return dest


def test_train_on_a_plain_folder_states_its_split_and_the_resize(synth_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "good_parts"
    plain.mkdir()
    files = sorted((synth_dir / "train" / "good").iterdir())[:80]  # 64x64 PNGs, straight in the folder
    for f in files:
        shutil.copy(f, plain / f.name)
    run = tmp_path / "run"
    p = _cli("train", "--data", str(plain), "--out", str(run), *TINY)
    assert p.returncode == 0, p.stderr
    assert ("validation: a seeded 10% (at least 2 images) of the folder held out (seed 0): 8 images; training on the other 72; "
            "no test/ to evaluate on") in p.stderr, p.stderr
    resize = [line for line in p.stderr.splitlines() if "resized" in line]
    assert resize == ["INFO images resized to the model's input 32x32 (--isize 32); their own size: 64x64 (80 images)"], p.stderr
    data = load_card(run).data
    assert data["layout"] == "plain" and data["val_split"] == {"from": "the folder", "fraction": 0.1, "seed": 0, "n_val": 8,
                                                               "n_train": 72}
    assert data["n_train"] == 72 and data["n_val"] == 8
    # training progress in a log: a line per update within each epoch (period 0), then the epoch's own line
    assert "INFO epoch 1/2: 1/4 steps (25 %)" in p.stderr and "INFO epoch 2/2: 4 steps in" in p.stderr, p.stderr
    assert "\r" not in p.stderr  # no bar redrawn in a log
    # the same images at the model's size: no note
    p = _cli("train", "--data", str(plain), "--out", str(tmp_path / "run64"), *TINY[2:], "--isize", "64", "--epochs", "1")
    assert p.returncode == 0 and "resized" not in p.stderr, p.stderr


def test_a_folder_without_images_or_train_good_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    p = _cli("train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), *TINY)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "neither train/good/ nor image files" in lines[0], p.stderr


def test_eval_onnx_on_a_test_only_folder_writes_outside_the_export(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    data = _test_only(synth_dir, tmp_path / "device_data")
    before = sorted(x.name for x in demo_onnx.iterdir())
    work = tmp_path / "work"
    work.mkdir()
    p = _cli("eval", "--onnx", str(demo_onnx / "scorer.onnx"), "--data", str(data), "--backend", "onnxruntime", cwd=work)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in demo_onnx.iterdir()) == before  # the export folder being shipped is untouched
    report = json.loads((work / "eval_scorer" / "eval.json").read_text())
    assert report["n_images"] == 80 and report["auroc"] > 0.7 and report["model_id"] == read_card(demo_onnx / "scorer.onnx").model_id
    assert f"report: {work / 'eval_scorer' / 'eval.json'}" in p.stdout
    # progress in a log: reading each test folder and scoring in chunks, one line at a time, and a closing line
    assert "INFO scoring test images: 64/80 images (80 %)" in p.stderr and "INFO scoring test images: 80 images in" in p.stderr, p.stderr
    assert "INFO reading test/good: 1/40 images" in p.stderr, p.stderr
    # an evaluation that fails leaves no empty output folder behind
    idle = tmp_path / "idle"
    idle.mkdir()
    p = _cli("eval", "--onnx", str(demo_onnx / "scorer.onnx"), "--data", str(tmp_path / "nothing"), cwd=idle)
    assert p.returncode == 2 and "data folder not found" in p.stderr and not list(idle.iterdir()), p.stderr


def test_eval_without_matplotlib_writes_numbers_and_says_how_to_get_plots(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    lean = ROOT / ".venv-lean" / "bin" / "skipgan-edge"
    assert lean.exists(), "no .venv-lean: make test builds it (make lean-venv), then runs these tests"
    data = _test_only(synth_dir, tmp_path / "d")
    p = _cli("eval", "--onnx", str(demo_onnx / "scorer.onnx"), "--data", str(data), cwd=tmp_path, exe=[str(lean)])
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "eval_scorer" / "eval.json").read_text())
    assert report["auroc"] > 0.7 and report["plots"] is None
    hint = [line for line in p.stdout.splitlines() if line.startswith("plots:")]
    assert hint == ["plots: none (matplotlib is not installed: pip install 'skipgan-edge[plots]' for ROC, precision-recall "
                    "and histogram PNGs)"], p.stdout
    assert not list((tmp_path / "eval_scorer").glob("*.png"))


def test_export_log_is_sentences_with_the_parity_line_once(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    p = _cli("export", "--model", str(tiny_model), "--out", str(out), "--fp16")
    assert p.returncode == 0, p.stderr
    both = p.stdout + p.stderr
    assert both.count("ONNX Runtime matches torch on") == 1, both
    assert "{'" not in both and "'gate':" not in both, both  # no Python dict printed
    info = p.stderr.splitlines()
    for sentence in (f"INFO wrote the FP32 scorer {out / 'scorer.onnx'} (opset 17,", f"INFO wrote the FP16 variant {out / 'scorer.fp16.onnx'}",
                     "INFO build --dry-run (TensorRT 8.6, 10.3, 11): every variant builds",
                     "INFO accuracy gate on 80 held-out images of", "INFO FP16 as a bf16 CPU runs it",
                     f"INFO held-out frames for build's engine check: {out / 'heldout.npz'}"):
        assert any(line.startswith(sentence) for line in info), (sentence, p.stderr)
    assert "INFO reading test/good: 1/40 images" in p.stderr  # the long parts have progress lines in a log
    assert "accuracy gate on" in p.stdout and f"report: {out / 'export_report.json'}" in p.stdout


def test_unwritable_out_is_one_line_before_any_work(demo_onnx: Path, tmp_path: Path) -> None:
    """Tests run as root, which ignores permission bits: a path under a regular file cannot be written by anyone. The data
    named does not exist, so an error about it would mean the data was read before --out was checked."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    missing = str(tmp_path / "no-such-data")
    for args in (["train", "--data", missing, "--out", str(blocker / "run"), *TINY],
                 ["eval", "--onnx", str(demo_onnx / "scorer.onnx"), "--data", missing, "--out", str(blocker / "ev")],
                 ["calibrate", "--data", missing, "--out", str(blocker / "c.npz")]):
        t0 = time.perf_counter()
        p = _cli(*args)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "--out" in lines[0] and "no-such-data" not in lines[0], (args, p.stderr)
        assert time.perf_counter() - t0 < 60


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log(tmp_path: Path) -> None:
    """The same work under a real pseudo-terminal (a bar redrawn in place, then erased) and into a pipe (periodic lines)."""
    import pty

    code = ("import logging, sys, time\n"
            "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s', stream=sys.stderr)\n"
            "from skipgan_edge.data.progress import Progress\n"
            "with Progress('scoring test images', 30, 'images') as p:\n"
            "    for _ in range(30):\n        time.sleep(0.01)\n        p.update(1)\n")
    env = {**os.environ, "SKIPGAN_PROGRESS_SECONDS": "0.05"}
    leader, follower = pty.openpty()
    proc = subprocess.run([*CLI[:1], "-c", code], stderr=follower, stdout=subprocess.DEVNULL, env=env, timeout=60)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the pty is drained once its other end is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    tty = b"".join(chunks).decode()
    assert proc.returncode == 0 and "\rscoring test images [" in tty.replace("\x1b[K", "") and "/30 images" in tty, tty
    assert tty.endswith("\r\x1b[K") and "INFO" not in tty, repr(tty)  # erased at the end; no log lines on a terminal
    piped = subprocess.run([*CLI[:1], "-c", code], capture_output=True, text=True, env=env, timeout=60)
    lines = piped.stderr.splitlines()
    assert piped.returncode == 0 and "[" not in piped.stderr and "\r" not in piped.stderr, piped.stderr
    assert len(lines) >= 3 and all(x.startswith("INFO scoring test images: ") for x in lines), lines
    assert lines[-1].startswith("INFO scoring test images: 30 images in "), lines
