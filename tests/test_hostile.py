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
from conftest import CLI, model_with_card, run_cli, write_defect_video

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


def _limited(limit: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI with a file-size limit (RLIMIT_FSIZE): writes past it fail with EFBIG, as on a full disk."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd, preexec_fn=cap)


def test_a_jsonl_that_cannot_grow_stops_the_run_and_keeps_only_whole_records(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 120, set(), "MJPG")
    p = _limited(8000, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                 "--batch", "4", "--jsonl", str(tmp_path / "s.jsonl"), cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "JSONL" in lines[0] and "sink failed" in lines[0], p.stderr
    data = (tmp_path / "s.jsonl").read_bytes()
    assert data.endswith(b"\n") and 0 < len(data) <= 8000
    assert all(json.loads(ln)["file"] is None for ln in data.splitlines())  # every line a whole record


def test_a_video_that_cannot_grow_fails_the_run_after_the_other_sinks(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 60, set(), "MJPG")
    p = _limited(30000, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                 "--save-video", str(tmp_path / "out.mp4"), "--csv", str(tmp_path / "s.csv"), cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "video" in lines[-1] and "of the 60 frames written" in lines[-1], (p.returncode, p.stderr)
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 61  # the CSV was flushed and closed first


def test_the_summary_is_never_lost(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 10, set(), "MJPG")
    p = _limited(500, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video),
                 "--summary", str(tmp_path / "summary.json"), cwd=tmp_path)
    assert p.returncode == 2 and "summary went to stdout" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert json.loads(p.stdout.splitlines()[0])["scored"] == 10


def test_unwritable_outputs_are_one_line_before_any_work(demo_onnx: Path, tiny_model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    video = write_defect_video(tmp_path / "v.avi", 3, set(), "MJPG")
    base = ["run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video)]
    for flag in ("--summary", "--jsonl", "--csv", "--save-video", "--watch-state"):
        p = run_cli(*base, flag, str(blocker / "x"), check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and flag in p.stderr, (flag, p.stderr)
    p = run_cli(*base, "--summary", str(tmp_path), check=False)
    assert p.returncode == 2 and "is a folder" in p.stderr
    p = run_cli("export", "--model", str(tiny_model), "--out", str(blocker / "exp"), check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--out" in p.stderr, p.stderr


def test_mismatches_are_one_line_in_every_verb(demo_onnx: Path, tiny_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    import onnx

    from skipgan_edge.export.engine import write_engine_file

    # a card whose widths disagree with the weights (same tensor names, other shapes)
    folder, _ = model_with_card(tiny_model, tmp_path / "m", lambda c: c["config"]["model"].__setitem__("ngf", 16))
    video = write_defect_video(tmp_path / "v.avi", 3, set(), "MJPG")
    for args in (["eval", "--model", str(folder), "--data", str(synth_dir)], ["run", "--model", str(folder), "--source", str(video)],
                 ["export", "--model", str(folder), "--out", str(tmp_path / "e")]):
        p = run_cli(*args, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "does not match the weights" in p.stderr, (args, p.stderr)
    # an ONNX whose input is not uint8 NHWC of the card's size (eval used to print an AUROC for a float-input graph)
    m = onnx.load(str(demo_onnx / "scorer.onnx"))
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(m, str(tmp_path / "float.onnx"))
    for args in (["eval", "--onnx", str(tmp_path / "float.onnx"), "--data", str(synth_dir), "--backend", "onnxruntime"],
                 ["run", "--onnx", str(tmp_path / "float.onnx"), "--source", str(video), "--backend", "onnxruntime"],
                 ["bench", "--onnx", str(tmp_path / "float.onnx"), "--backend", "onnxruntime", "--iterations", "2"]):
        p = run_cli(*args, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "tensor(float)" in p.stderr, (args, p.stderr)
    # engine headers of the wrong type
    for bad in ({"tensorrt": 10, "profile": {"min": 1, "opt": 1, "max": 1}}, {"tensorrt": "10.3", "profile": "1,8,32"},
                {"tensorrt": "ten", "gpu": "x", "compute_capability": "8.7", "profile": {"min": 1, "opt": 2, "max": 4}},
                {"tensorrt": "10.3", "profile": {"min": 4, "opt": 2, "max": 1}}, {"tensorrt": "10.3", "card": [1]}):
        write_engine_file(tmp_path / "e.engine", bad, b"\x00")
        for args in (["run", "--engine", str(tmp_path / "e.engine"), "--source", str(video)],
                     ["eval", "--engine", str(tmp_path / "e.engine"), "--data", str(synth_dir)]):
            p = run_cli(*args, check=False)
            assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, (bad, args, p.stderr)


def test_masks_are_checked_not_guessed(tiny_model: Path, tmp_path: Path) -> None:
    import cv2

    from skipgan_edge.data.datasets import load_folder

    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for sub, n in (("train/good", 8), ("test/good", 3), ("test/bad", 5)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / sub / f"{i}.png"), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    gt = root / "ground_truth" / "bad"
    gt.mkdir(parents=True)
    good_mask = np.zeros((48, 48), np.uint8)
    good_mask[10:20, 10:20] = 255
    cv2.imwrite(str(gt / "0_mask.png"), good_mask)
    bgra = np.zeros((48, 48, 4), np.uint8)
    bgra[..., 3] = 255  # fully opaque, black: no defect; the alpha channel must not read as foreground
    cv2.imwrite(str(gt / "1_mask.png"), bgra)
    (gt / "2_mask.png").write_bytes(b"not a png")
    cv2.imwrite(str(gt / "3_mask.png"), np.zeros((30, 48), np.uint8))  # misshapen: not the image's 48x48
    # 4.png has no mask at all
    test = load_folder(root, 32, 3).test
    assert test is not None and test.masks is not None and test.mask_valid is not None
    assert test.mask_issues == {"missing": 1, "undecodable": 1, "misshapen": 1}
    bad = [i for i, n in enumerate(test.names) if "/bad/" in n]
    by_name = {test.names[i].split("/")[-1]: i for i in bad}
    assert test.masks[by_name["0.png"]].any() and not test.masks[by_name["1.png"]].any()
    assert [bool(test.mask_valid[by_name[f"{k}.png"]]) for k in range(5)] == [True, True, False, False, False]
    from skipgan_edge.card import ScoreSpec, Threshold, ValStats, build_card
    from skipgan_edge.config import ModelConfig, RunConfig
    from skipgan_edge.contract import ScoreBatch
    from skipgan_edge.evaluate import evaluate_split

    card = build_card(RunConfig(model=ModelConfig(isize=32)).validate({"mode": "paper", "lam": 0.9, "pool": 0}),
                      score=ScoreSpec(lam=0.9, mode="paper", pool=0, val_stats=ValStats(min=0.0, max=255.0),
                                      threshold=Threshold(normalized=1.0, method="test")), data={}, training={})

    def fake_scores(images: np.ndarray) -> ScoreBatch:  # a scorer stand-in: brightness as the score, the image as the map
        s = images.mean(axis=(1, 2, 3)).astype(np.float32)
        return ScoreBatch(s, images.mean(axis=3)[:, None].astype(np.float32), s / 255)

    rep = evaluate_split(fake_scores, test, card, None)
    assert rep["pixel_coverage"] == {"anomalous_images": 5, "with_usable_mask": 2, "missing": 1, "undecodable": 1, "misshapen": 1}
    assert "pixel_auroc" in rep
    # and the console says so, not only eval.json
    p = run_cli("eval", "--model", str(tiny_model), "--data", str(root), "--out", str(tmp_path / "ev"))
    assert "pixel AUROC and AUPRO computed on 2 of 5 anomalous images' masks (missing 1, undecodable 1, misshapen 1)" in p.stderr, p.stderr


# ------------------------------------------------------------------------------------------ issue 25, part two
def test_a_watch_state_that_cannot_grow_is_refused_before_anything_is_scored(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    """A state that cannot record a scored file would have the file scored again, its record duplicated, on every rerun:
    refused in one line before the first file is scored, run after run."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.png").write_bytes(_good_png(synth_dir))
    state = tmp_path / "state.scored"
    state.write_text("".join(encode_name(f"old-{i:05d}.png") + "\n" for i in range(600)))  # past the 8000-byte limit below
    for _ in range(2):
        p = _limited(8000, "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", f"watch:{drop}",
                     "--watch-state", str(state), "--jsonl", str(tmp_path / "r.jsonl"), "--stop-after-idle", "1", cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "cannot write the watch state" in lines[0], p.stderr
        assert not (tmp_path / "r.jsonl").exists() or not (tmp_path / "r.jsonl").read_text()  # nothing scored, nothing twice


def test_a_rewritten_file_under_a_scored_name_is_scored_and_an_old_state_still_counts(tmp_path: Path) -> None:
    st = WatchState(tmp_path / "s")
    st.add("a.png", (10, 1000))
    st.add("legacy.png")
    st.close()
    again = WatchState(tmp_path / "s")
    assert again.scored("a.png", (10, 1000)) and not again.scored("a.png", (11, 2000))  # same name, another file
    assert again.scored("legacy.png", (5, 5))  # recorded without its size and mtime: scored, as before
    again.close()


def test_secrets_and_control_characters_never_reach_the_terminal_as_given(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    """A password in an MQTT or Triton URL is redacted in the error line; a file name with a newline cannot forge a log line."""
    video = str(write_defect_video(tmp_path / "v.avi", 3, set(), "MJPG"))
    for args in (["--onnx", str(demo_onnx / "scorer.onnx"), "--mqtt", "mqtt://line:s3cret@127.0.0.1:99999/x"],
                 ["--backend", "triton://u:s3cret@127.0.0.1:99999/scorer"]):
        p = run_cli("run", *args, "--source", video, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "s3cret" not in p.stderr and ":***@" in lines[0], p.stderr
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "ok.png").write_bytes(_good_png(synth_dir))
    (folder / "x\nERROR model reload refused for line 1.png").write_bytes(b"not an image")
    p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(folder))
    assert not any(line.startswith("ERROR model reload refused") for line in p.stderr.splitlines()), p.stderr
    assert "x\\nERROR model reload refused" in p.stderr  # the name is there, escaped, on its own log line


def test_a_password_refused_by_the_real_broker_is_never_printed(demo_onnx: Path, tmp_path: Path) -> None:
    """Mosquitto with a password file refuses the run's credentials: whatever the run and serve print about it (warnings,
    the error line, the summary) holds no password."""
    from test_mqtt import MOSQUITTO, Broker

    assert MOSQUITTO is not None, "needs Debian's mosquitto (make test installs it)"
    b = Broker(tmp_path / "broker")
    pw = tmp_path / "broker" / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "line", "right-one"], check=True, capture_output=True)
    pw.chmod(0o600)
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", f"allow_anonymous false\npassword_file {pw}"))
    b.start()
    try:
        video = str(write_defect_video(tmp_path / "v.avi", 5, set(), "MJPG"))
        url = f"mqtt://line:Wr0ngS3cret@127.0.0.1:{b.port}/x"
        p = run_cli("run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source", video, "--mqtt", url,
                    "--json", check=False, timeout=120)
        cfg = tmp_path / "cell.toml"
        cfg.write_text(f'[serve]\nbackend = "onnxruntime"\nmqtt = "{url}"\n[[camera]]\nid = "c"\nsource = "{video}"\n'
                       f'onnx = "{demo_onnx / "scorer.onnx"}"\n')
        s = run_cli("serve", "--config", str(cfg), "--json", check=False, timeout=120)
    finally:
        b.stop()
    for proc in (p, s):
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "Wr0ngS3cret" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
