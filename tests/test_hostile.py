"""Hostile and unlucky inputs (issue #12, the classes fixed so far): the watch folder is not a way in, any file name is
scored exactly once, paths OpenCV cannot take are one line, sinks never raise on a name, artifacts honour the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
from conftest import CLI, run_cli, write_defect_video

from skipgan_edge.runtime.sources import SourceOptions, WatchState, default_watch_state, encode_name, open_source

ODD_NAMES = ["new\nline.png", "carriage\rreturn.png", "sep\u2028arator.png", "quote\"and\\slash.png", "ünïcode.png"]
NON_UTF8 = os.fsdecode(b"latin1-\xe9t\xe9.png")  # bytes that are not UTF-8: U+DCE9 in Python


def _good_png(synth_dir: Path) -> bytes:
    return sorted((synth_dir / "test" / "good").glob("*.png"))[0].read_bytes()


def _watch(demo_onnx: Path, drop: Path, out: Path, *extra: str, idle: float = 2.5) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", f"watch:{drop}",
                           "--jsonl", str(out), "--stop-after-idle", str(idle), *extra], capture_output=True, text=True, timeout=180)


def test_a_symlinked_state_file_in_the_drop_folder_writes_nothing_outside(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    """Before: the state file was DIR/.skipgan-edge-scored, opened for append through a planted symlink."""
    drop, victim = tmp_path / "drop", tmp_path / "victim.txt"
    drop.mkdir()
    victim.write_text("precious\n")
    os.symlink(victim, drop / ".skipgan-edge-scored")
    (drop / "a.png").write_bytes(_good_png(synth_dir))
    p = _watch(demo_onnx, drop, tmp_path / "s.jsonl")
    assert p.returncode == 0, p.stderr
    assert victim.read_text() == "precious\n"  # untouched
    assert "ignoring" in p.stderr and ".skipgan-edge-scored" in p.stderr  # the old in-folder state is named and ignored
    (drop / ".skipgan-edge-scored").unlink()
    assert [json.loads(x)["file"] for x in (tmp_path / "s.jsonl").read_text().splitlines()] == ["a.png"]
    # the state lives outside the folder, and a symlink planted there is refused, not followed
    state = default_watch_state(drop)
    assert state.exists() and drop not in state.parents and stat.S_IMODE(state.stat().st_mode) == 0o600
    state.unlink()
    os.symlink(victim, state)
    p = _watch(demo_onnx, drop, tmp_path / "s2.jsonl")
    assert p.returncode == 2 and "symbolic link; refusing to follow it" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert victim.read_text() == "precious\n"


def test_symlinks_out_of_the_folder_are_not_followed(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    drop, outside = tmp_path / "drop", tmp_path / "secret.png"
    drop.mkdir()
    outside.write_bytes(_good_png(synth_dir))
    os.symlink(outside, drop / "link.png")
    (drop / "real.png").write_bytes(_good_png(synth_dir))
    os.symlink(drop / "real.png", drop / "inner.png")  # a link inside the folder is fine
    p = _watch(demo_onnx, drop, tmp_path / "s.jsonl")
    assert p.returncode == 0, p.stderr
    assert sorted(json.loads(x)["file"] for x in (tmp_path / "s.jsonl").read_text().splitlines()) == ["inner.png", "real.png"]
    assert "symbolic link out of the watch folder" in p.stderr
    p = _watch(demo_onnx, drop, tmp_path / "s.jsonl", "--watch-follow-symlinks")
    assert [json.loads(x)["file"] for x in (tmp_path / "s.jsonl").read_text().splitlines()][-1] == "link.png"


def test_any_file_name_exactly_once_across_restarts(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    names = [*ODD_NAMES, NON_UTF8, "plain.png"]
    png = _good_png(synth_dir)
    for n in names[:4]:
        (drop / n).write_bytes(png)
    (drop / "empty.png").write_bytes(b"")
    out, csv = tmp_path / "s.jsonl", tmp_path / "s.csv"
    p = _watch(demo_onnx, drop, out, "--csv", str(csv))
    assert p.returncode == 0, p.stderr
    for n in names[4:]:
        (drop / n).write_bytes(png)
    p = _watch(demo_onnx, drop, out, "--csv", str(csv))
    assert p.returncode == 0, p.stderr
    p = _watch(demo_onnx, drop, out, "--csv", str(csv))  # a third run finds nothing new
    assert p.returncode == 0, p.stderr
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(ln.isascii() for ln in lines)  # one ASCII line per record, none broken by a name
    got = [json.loads(ln)["file"] for ln in lines[:-1]]
    assert sorted(got) == sorted(names) and len(got) == len(set(got)), got  # every name exactly once, lossless
    assert os.fsencode(NON_UTF8) in csv.read_bytes()  # CSV keeps the original bytes
    state = default_watch_state(drop).read_bytes().split(b"\n")
    assert all(ln.isascii() for ln in state) and len([ln for ln in state if ln]) == len(names)


def test_state_file_round_trip_and_torn_line(tmp_path: Path) -> None:
    st = WatchState(tmp_path / "s")
    for n in [*ODD_NAMES, NON_UTF8]:
        st.add(n)
    st.close()
    with open(tmp_path / "s", "ab") as fh:
        fh.write(encode_name("torn.png").encode()[:5])  # a crash mid-append
    again = WatchState(tmp_path / "s")
    assert again.done == {*ODD_NAMES, NON_UTF8}
    again.close()
    (tmp_path / "legacy").write_bytes(b"old-one.png\nold two.png\n")  # the plain-line format before JSON lines
    assert WatchState(tmp_path / "legacy").done == {"old-one.png", "old two.png"}


def test_empty_files_are_counted_not_lost(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "empty.png").write_bytes(b"")
    (drop / "ok.png").write_bytes(_good_png(synth_dir))
    src = open_source(f"watch:{drop}", SourceOptions(watch_poll=0.05, watch_settle=0.1, watch_give_up=0.5, stop_after_idle=1.5))
    frames = list(src.frames())
    for f in frames:
        src.ack(f)
    src.close()
    by_name = {f.name: f.image for f in frames}
    assert set(by_name) == {"empty.png", "ok.png"} and by_name["empty.png"] is None and by_name["ok.png"] is not None


def test_paths_opencv_cannot_take_are_one_line(demo_onnx: Path, tmp_path: Path) -> None:
    bad_dir = tmp_path / os.fsdecode(b"vid\xe9os")
    bad_dir.mkdir()
    video = write_defect_video(tmp_path / "v.avi", 5, set(), "MJPG")
    shutil.copy(video, bad_dir / "v.avi")
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(bad_dir / "v.avi"),
                check=False)
    assert p.returncode == 2 and "not valid UTF-8" in p.stderr and len(p.stderr.strip().splitlines()) == 1, (p.returncode, p.stderr)
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--save-video", str(bad_dir / "out.mp4"), check=False)
    assert p.returncode == 2 and "not valid UTF-8" in p.stderr and len(p.stderr.strip().splitlines()) == 1, (p.returncode, p.stderr)
    # images are written through imencode: any folder name works, and frames with the same stem never collide
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                "--save-images", str(bad_dir / "imgs"))
    assert len(list((bad_dir / "imgs").glob("*.png"))) == 5


def test_image_sink_never_overwrites_a_frame_with_the_same_stem(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    png = _good_png(synth_dir)
    (src / "a" / "x.png").write_bytes(png)
    (src / "x.jpg").write_bytes(__import__("cv2").imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))[1].tobytes())
    (src / "x.png").write_bytes(png)
    run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(src / "*"),
            "--save-images", str(tmp_path / "imgs"), check=False)
    run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(src),
            "--save-images", str(tmp_path / "imgs2"))
    assert len(list((tmp_path / "imgs2").glob("*.png"))) == 2  # x.jpg and x.png: two images, not one


def test_artifacts_honour_the_umask(tmp_path: Path) -> None:
    from skipgan_edge.card import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644  # was 0600 from mkstemp
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)
