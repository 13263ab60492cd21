"""``skipgan-edge threshold`` and ``run --save-images`` under the ways a site fails (issue 25, classes 6 and 8): frozen
frames, two runs at once, read-only artifacts, SIGKILL mid-write, restarts and a full disk. Real CLI subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CLI, run_cli, write_defect_video

from skipgan_edge.card import load_card
from skipgan_edge.runtime.backends.onnxrt import read_card


def _still_video(path: Path, source: Path, n: int, noise: float) -> Path:
    """``n`` frames of the first frame of ``source``, with Gaussian noise of ``noise`` grey levels (0: identical frames)."""
    first = cv2.VideoCapture(str(source)).read()[1]
    rng = np.random.default_rng(0)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25, first.shape[1::-1])
    for _ in range(n):
        w.write(np.clip(first + rng.normal(0, noise, first.shape).round(), 0, 255).astype(np.uint8) if noise else first)
    w.release()
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_frames_without_variation_are_refused(demo_onnx: Path, tmp_path: Path) -> None:
    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    before = onnx.read_bytes()
    site = write_defect_video(tmp_path / "site.avi", 40, set(), "MJPG", seed=11)
    base = ["threshold", "--onnx", str(onnx), "--fpr", "0.05", "--backend", "onnxruntime", "--yes"]
    # a frozen camera: 120 identical frames score identically
    line = _one_line(run_cli(*base, "--normal", str(_still_video(tmp_path / "frozen.avi", site, 120, 0)), check=False))
    assert "only 1 of the 120 frames" in line and "score differently" in line and "at least 19 different" in line
    # a still scene with sensor noise: different scores, but spread over a few % of the normal spread
    line = _one_line(run_cli(*base, "--normal", str(_still_video(tmp_path / "noisy.avi", site, 120, 2)), check=False))
    assert "hardly vary" in line and "at least 10% expected" in line
    assert onnx.read_bytes() == before
    # frames of the running line pass
    assert "updated:" in run_cli(*base, "--normal", str(site)).stdout


def _copies(demo_model: Path, demo_onnx: Path, tmp_path: Path, frames: int) -> tuple[Path, Path, Path]:
    """A writable copy of the model folder and its ONNX, and a normal site video of ``frames`` frames."""
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    onnx = tmp_path / "scorer.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    return model, onnx, write_defect_video(tmp_path / "site.avi", frames, set(), "MJPG", seed=11)


def _holds_flock(pid: int, path: Path) -> bool:
    ino = os.stat(path).st_ino
    return any(f" {pid} " in line and line.split()[-3].endswith(f":{ino}") and "FLOCK" in line
               for line in Path("/proc/locks").read_text().splitlines())


def test_two_runs_on_one_artifact_one_is_refused_in_one_line(demo_model: Path, demo_onnx: Path, tmp_path: Path) -> None:
    model, onnx, site = _copies(demo_model, demo_onnx, tmp_path, 40)
    drop = tmp_path / "drop"
    drop.mkdir()
    # run A commissions from a watch folder: it holds its locks while it waits for the frames
    a = subprocess.Popen([*CLI, "threshold", "--model", str(model), "--onnx", str(onnx), "--normal", f"watch:{drop}", "--frames", "30",
                          "--fpr", "0.05", "--backend", "onnxruntime", "--yes", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (_holds_flock(a.pid, onnx) and _holds_flock(a.pid, model / "model.safetensors")):
            assert a.poll() is None and time.time() < deadline, a.communicate()
            time.sleep(0.1)
        before = _files(model)
        # run B on the same model while A holds it: refused before scoring, nothing changed
        line = _one_line(run_cli("threshold", "--model", str(model), "--normal", str(site), "--fpr", "0.05", "--yes", check=False))
        assert f"{model} is being commissioned by another skipgan-edge threshold run" in line and "wait for it" in line
        assert _files(model) == before
        cap = cv2.VideoCapture(str(site))
        for i in range(30):  # the frames A waits for, each renamed into the folder whole
            cv2.imwrite(str(tmp_path / "f.png"), cap.read()[1])
            os.replace(tmp_path / "f.png", drop / f"{i:03d}.png")
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 0, err
    r = json.loads(out)
    assert r["frames"] == 30 and load_card(model).score.threshold.threshold_id == r["threshold_id"]
    assert read_card(onnx).score.threshold.threshold_id == r["threshold_id"]
    # the lock went with A: a run now works
    assert "updated:" in run_cli("threshold", "--model", str(model), "--normal", str(site), "--fpr", "0.05", "--yes").stdout


@contextlib.contextmanager
def _unwritable(path: Path) -> Iterator[None]:
    """``path`` unwritable in a way its owner respects: immutable (chattr +i) as root, who ignores permission bits;
    read-only permission bits otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        yield


def test_a_read_only_onnx_is_refused_before_scoring_and_nothing_changes(demo_model: Path, demo_onnx: Path, tmp_path: Path) -> None:
    model, onnx, site = _copies(demo_model, demo_onnx, tmp_path, 60)
    before = {**_files(model), **_files(tmp_path)}
    with _unwritable(onnx):
        p = run_cli("threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(site), "--fpr", "0.05",
                    "--backend", "onnxruntime", "--yes", check=False)
        line = _one_line(p)
        assert f"{onnx} is not writable" in line and "nothing was scored or changed" in line and p.stdout == ""
        assert {**_files(model), **_files(tmp_path)} == before  # the model folder too: all or nothing
    assert "updated:" in run_cli("threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(site), "--fpr", "0.05",
                                 "--backend", "onnxruntime", "--yes").stdout


def test_sigkill_while_writing_leaves_no_temporary_file(demo_model: Path, demo_onnx: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    onnx = tmp_path / "art" / "scorer.onnx"
    onnx.parent.mkdir()
    shutil.copy(demo_onnx / "scorer.onnx", onnx)
    site = write_defect_video(tmp_path / "site.avi", 60, set(), "MJPG", seed=11)
    args = ["threshold", "--model", str(model), "--onnx", str(onnx), "--normal", str(site), "--fpr", "0.05", "--backend",
            "onnxruntime", "--yes"]
    before_model, before_onnx = _files(model), _files(onnx.parent)
    # the real CLI, held inside its first fsync: every new file's bytes are written, none is in place yet
    script = ("import os, sys, time\n"
              "def held(fd):\n    print('in fsync', flush=True)\n    time.sleep(300)\n"
              "os.fsync = held\n"
              f"sys.argv = ['skipgan-edge', *{args!r}]\n"
              "from skipgan_edge.cli import main\nmain()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "in fsync\n", (line, proc.stderr.read() if proc.poll() is not None else "")
        assert any("(deleted)" in os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd"))
    finally:
        proc.kill()
        proc.wait()
    assert _files(model) == before_model and _files(onnx.parent) == before_onnx  # no temporary file, nothing changed
    # where a file system lacks O_TMPFILE a killed run leaves .NAME.*.tmp: the next run on the artifact removes it
    (onnx.parent / ".scorer.onnx.0badc0de.tmp").write_bytes(b"half of an onnx file")
    (model / ".model.json.0badc0de.tmp").write_bytes(b"{")
    assert "updated:" in run_cli(*args).stdout
    assert sorted(_files(model)) == sorted(before_model) and sorted(_files(onnx.parent)) == ["scorer.onnx"]


def _png_whole(path: Path) -> bool:
    data = path.read_bytes()
    return data.endswith(b"IEND\xaeB`\x82") and cv2.imread(str(path)) is not None


def test_save_images_never_overwrites_an_earlier_runs_image(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 5, {2}, "MJPG")
    args = ["run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
            "--save-images", str(tmp_path / "imgs")]
    run_cli(*args)
    first = _files(tmp_path / "imgs")
    assert len(first) == 5 and all(n.endswith(".png") for n in first)
    run_cli(*args)  # a restart: the same frame indices and stems
    run_cli(*args)
    after = _files(tmp_path / "imgs")
    assert {n: after[n] for n in first} == first  # the first run's images are untouched
    stems = sorted(n.removesuffix(".png") for n in first)
    assert sorted(after) == sorted([f"{s}.png" for s in stems] + [f"{s}.1.png" for s in stems] + [f"{s}.2.png" for s in stems])
    assert all(_png_whole(tmp_path / "imgs" / n) for n in after)


@contextlib.contextmanager
def _small_disk(folder: Path) -> Iterator[list[str]]:
    """A 512 KiB file system at ``folder`` (tmpfs, as root), else the process's file-size limit (RLIMIT_FSIZE) at
    20 KiB: writes past it fail as on a full disk. Yields the command prefix to run the CLI with."""
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], check=True)
        try:
            yield CLI
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        yield ["prlimit", f"--fsize={20 * 1024}", *CLI]


def test_a_full_disk_leaves_no_partial_png(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 200, {3}, "MJPG", size=128, seed=3)
    imgs = tmp_path / "imgs"
    with _small_disk(imgs) as cli:
        p = subprocess.run([*cli, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source",
                            str(video), "--save-images", str(imgs)], capture_output=True, text=True, timeout=300)
        line = _one_line(p)
        assert "images" in line and "sink failed" in line
        names = sorted(os.listdir(imgs))
        assert len(names) >= 2 and all(n.endswith(".png") and not n.startswith(".") for n in names), names
        assert all(_png_whole(imgs / n) for n in names)  # every file there is a whole PNG


def test_eval_reports_false_alarms_per_hour(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    # a threshold commissioned at 20 % false alarms on the test normals themselves, so that eval counts some (the
    # trained threshold of the demo model flags none of them)
    onnx = Path(shutil.copy(demo_onnx / "scorer.onnx", tmp_path / "scorer.onnx"))
    run_cli("threshold", "--onnx", str(onnx), "--normal", str(synth_dir / "test" / "good"), "--fpr", "0.2", "--backend", "onnxruntime",
            "--yes")
    base = ["eval", "--onnx", str(onnx), "--data", str(synth_dir), "--backend", "onnxruntime", "--out", str(tmp_path / "e")]
    r = json.loads(run_cli(*base, "--fps", "10", "--json").stdout)
    at = r["at_model_threshold"]
    assert at["fps"] == 10 and at["fpr"] > 0 and at["false_alarms_per_hour"] == pytest.approx(at["fpr"] * 10 * 3600)
    # the rate comes from a few dozen normal images: its Clopper-Pearson interval, per hour, holds it
    lo, hi = at["false_alarms_per_hour_interval_95"]
    assert 0 < lo < at["false_alarms_per_hour"] < hi < 10 * 3600
    out = run_cli(*base).stdout
    from skipgan_edge.thresholds import format_per_hour, rate_interval

    n_normal = len(list((synth_dir / "test" / "good").iterdir()))
    interval = "-".join(format_per_hour(v * 25 * 3600) for v in rate_interval(round(at["fpr"] * n_normal), n_normal))
    assert f"false alarms {at['fpr']:.3f} ({format_per_hour(at['fpr'] * 25 * 3600)} per hour at 25 fps, 95 % interval {interval})" in out, out
