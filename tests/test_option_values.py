"""Values that should be refused are refused (issue 25, class 2): through the real CLI, before any work, in one line that
names the option (or the cell file's key), exit 2, nothing written.

One rule per value (``skipgan_edge.config.LIMITS``) serves the command line and the cell file alike. Port 0 for
``--metrics-port`` is refused rather than bound to a port nobody is told.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, run_cli, write_defect_video

from skipgan_edge.config import LIMITS, Limit

RUN_BAD = [
    (["--batch", "0"], "--batch"), (["--batch", "-4"], "--batch"), (["--threshold", "nan"], "--threshold"),
    (["--threshold", "inf"], "--threshold"), (["--threshold", "-inf"], "--threshold"), (["--max-frames", "-1"], "--max-frames"),
    (["--max-frames", "0"], "--max-frames"), (["--replay-fps", "0"], "--replay-fps"), (["--replay-fps", "nan"], "--replay-fps"),
    (["--metrics-port", "0"], "--metrics-port"), (["--metrics-port", "70000"], "--metrics-port"),
    (["--mqtt", "mqtt://127.0.0.1/x", "--mqtt-flush-ms", "inf"], "--mqtt-flush-ms"),
    (["--mqtt", "mqtt://127.0.0.1/x", "--mqtt-heartbeat", "0"], "--mqtt-heartbeat"),
    (["--mqtt", "mqtt://127.0.0.1/x", "--mqtt-buffer", "0"], "--mqtt-buffer"),
    (["--mqtt", "mqtt://127.0.0.1:0/x"], "--mqtt"), (["--mqtt", "mqtt://127.0.0.1/line#1"], "--mqtt"),
    (["--mqtt", "mqtt://127.0.0.1/line+1"], "--mqtt"), (["--mqtt", "mqtt://[::1/x"], "--mqtt"),
    (["--mqtt", "mqtt://127.0.0.1/" + "p" * 70_000], "--mqtt"),
    (["--max-wait-ms", "nan"], "--max-wait-ms"), (["--overlap", "1"], "--overlap"), (["--fps", "-5"], "--fps"),
    (["--width", "0"], "--width"), (["--stop-after-idle", "0"], "--stop-after-idle"), (["--threads", "-1"], "--threads"),
    (["--reconnect-attempts", "-1"], "--reconnect-attempts"), (["--decode-threads", "-1"], "--decode-threads"),
    (["--debounce", "0"], "--debounce"), (["--debounce", "-3"], "--debounce"), (["--mode", "tile"], "--mode"),
]


def _one_line(p: subprocess.CompletedProcess[str], name: str) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], (p.returncode, p.stderr[:500])
    assert "Traceback" not in p.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "name"), RUN_BAD, ids=[" ".join(a)[:40] for a, _ in RUN_BAD])
def test_run_refuses_before_opening_anything(args: list[str], name: str, tmp_path: Path) -> None:
    # the model file does not exist: the value's own error comes first, so it is checked before anything opens
    p = run_cli("run", "--onnx", str(tmp_path / "absent.onnx"), "--source", str(tmp_path / "absent.mp4"), *args,
                "--jsonl", str(tmp_path / "out.jsonl"), "--summary", str(tmp_path / "s.json"), check=False, timeout=60)
    line = _one_line(p, name)
    assert "absent" not in line and "p" * 1025 not in line
    assert sorted(x.name for x in tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "name"), [
    (["--batch", "0"], "--batch"), (["--batch", "-1"], "--batch"), (["--fpr", "nan"], "--fpr"), (["--frames", "-1"], "--frames"),
    (["--camera-fps", "0"], "--camera-fps"), (["--threads", "-2"], "--threads"), (["--mode", "tile"], "--mode")])
def test_threshold_refuses_before_opening_anything(args: list[str], name: str, tmp_path: Path) -> None:
    p = run_cli("threshold", "--onnx", str(tmp_path / "absent.onnx"), "--normal", str(tmp_path), *args, check=False, timeout=60)
    _one_line(p, name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "name"), [
    (["triton-serve", "--onnx", "absent.onnx", "--http-port", "0"], "--http-port"),
    (["triton-serve", "--onnx", "absent.onnx", "--metrics-port", "0"], "--metrics-port"),
    (["bench", "--onnx", "absent.onnx", "--duration", "inf"], "--duration"),
    (["bench", "--onnx", "absent.onnx", "--batch", "1,0"], "--batch"),
    (["export", "--model", "absent", "--out", "x", "--max-drop", "nan"], "--max-drop"),
    (["export", "--model", "absent", "--out", "x", "--batch", "8,4,2"], "--batch"),
    (["export", "--model", "absent", "--out", "x", "--calib-method", "foo"], "--calib-method must be auto, max"),
    (["calibrate", "--data", "absent", "--out", "c.npz", "--size", "0"], "--size"),
    (["calibrate", "--data", "absent", "--out", "c.npz", "--size", "16"], "--size must be at least 32"),
    (["calibrate", "--data", "absent", "--out", "c.npz", "--isize", "33"], "--isize must be one of 32, 64"),
    (["eval", "--data", "absent", "--threads", "-1"], "--threads"),
    (["train", "--data", "absent", "--out", "run", "--max-recoveries", "-1"], "--max-recoveries"),
    (["train", "--data", "absent", "--out", "run", "--recover-lr-factor", "1.5"], "--recover-lr-factor"),
    (["train", "--data", "absent", "--out", "run", "--input-noise", "nan"], "--input-noise"),
    (["train", "--data", "absent", "--out", "run", "--threads", "-1"], "--threads"),
    (["data", "video", "--out", "v.mp4", "--frames", "0"], "--frames"),
], ids=lambda a: " ".join(a)[:50] if isinstance(a, list) else a)
def test_other_verbs_refuse_too(args: list[str], name: str, tmp_path: Path) -> None:
    p = run_cli(*args, check=False, timeout=120, cwd=tmp_path)
    _one_line(p, name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "name"), [
    (["data", "video", "--out", "f/v.mp4"], "f is a file"), (["data", "video", "--out", "v.txt"], "a video is written as .avi"),
    (["data", "video", "--out", "d"], "a video is written as .avi"), (["data", "synthetic", "--out", "f"], "--out f is a file"),
    (["data", "fmnist", "--out", "f/x"], "f is a file"), (["demo", "--out", "f"], "--out f is a file"),
    (["bench", "--onnx", "absent.onnx", "--json", "f/b.json"], "f is a file"), (["bench", "--onnx", "absent.onnx", "--json", "d"], "is a folder"),
    (["bench", "--onnx", "absent.onnx", "--plots", "f"], "--plots f is a file"),
    # /proc takes no new folder even for root, whom the check before the work lets through: the OSError is one line too
    (["data", "synthetic", "--out", "/proc/skipgan-x"], "/proc/skipgan-x"),
], ids=lambda a: " ".join(a)[:50] if isinstance(a, list) else a)
def test_an_output_path_that_cannot_be_written_is_one_line_before_any_work(args: list[str], name: str, tmp_path: Path) -> None:
    """A file where a folder must be, a folder where a file must be, a video suffix OpenCV is not asked to write: one line
    before anything is read or written (no OpenCV warnings, no traceback), and nothing is left behind."""
    (tmp_path / "f").write_text("a file")
    (tmp_path / "d").mkdir()
    p = run_cli(*args, check=False, timeout=120, cwd=tmp_path)
    _one_line(p, name)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d", "f"] and list((tmp_path / "d").iterdir()) == []


def _cell(tmp_path: Path, serve: str, camera: str, source: str = "absent.mp4", artifact: str = 'onnx = "absent.onnx"') -> Path:
    cfg = tmp_path / "cell.toml"
    cfg.write_text(f'[serve]\n{serve}\n[[camera]]\nid = "cam1"\nsource = "{source}"\n{artifact}\n'
                   f'jsonl = "{tmp_path / "out" / "cam1.jsonl"}"\n{camera}\n')
    return cfg


CELL_BAD = [
    ("batch = 0", "", "'batch'"), ("batch = -2", "", "'batch'"), ("summary_every_s = 0", "", "'summary_every_s'"),
    ("summary_every_s = nan", "", "'summary_every_s'"), ("retry_max_s = 0", "", "'retry_max_s'"),
    ("reload_poll_s = 0", "", "'reload_poll_s'"), ("metrics_port = 0", "", "'metrics_port'"),
    ("mqtt_flush_ms = inf", "", "'mqtt_flush_ms'"), ("mqtt_heartbeat_s = 0", "", "'mqtt_heartbeat_s'"),
    ("max_wait_ms = -1", "", "'max_wait_ms'"), ("queue_size = 0", "", "'queue_size'"),
    ('mqtt = "mqtt://127.0.0.1:0/x"', "", "'mqtt'"), ('mqtt = "mqtt://[::1/x"', "", "'mqtt'"),
    ('mqtt = "mqtt://127.0.0.1/a#b"', "", "'mqtt'"), (f'mqtt = "mqtt://127.0.0.1/{"p" * 70_000}"', "", "'mqtt'"),
    ('mqtt = "mqtt://127.0.0.1/x"', 'mqtt_topic = "line/+"', "'mqtt_topic'"),
    ('mqtt = "mqtt://127.0.0.1/x"', 'mqtt_topic = "line/#"', "'mqtt_topic'"),
    ("", "threshold = nan", "'threshold'"), ("", "threshold = inf", "'threshold'"), ("", "replay_fps = 0.0", "'replay_fps'"),
    ("", "stop_after_idle = -1.0", "'stop_after_idle'"), ("", "width = 0", "'width'"), ("", "debounce = 0", "'debounce'"),
]


@pytest.mark.parametrize(("serve", "camera", "name"), CELL_BAD, ids=[(s or c)[:40] for s, c, _ in CELL_BAD])
def test_cell_file_values_are_refused_by_their_key(serve: str, camera: str, name: str, tmp_path: Path) -> None:
    cfg = _cell(tmp_path, serve, camera)
    for check in (["--check"], []):  # --check refuses what serve would
        p = run_cli("serve", "--config", str(cfg), *check, check=False, timeout=60)
        line = _one_line(p, name)
        assert str(cfg) in line and "--" not in line.split(name)[0][-20:], line
    assert not (tmp_path / "out").exists()


def test_triton_url_with_an_unterminated_ipv6_host_is_one_line(tmp_path: Path) -> None:
    p = run_cli("run", "--backend", "triton://user:secret@[::1:8001/scorer", "--source", str(tmp_path / "a.mp4"), check=False)
    line = _one_line(p, "Triton URL")
    assert "secret" not in line
    cfg = _cell(tmp_path, "", "", artifact='triton = "triton://[::1:8001/scorer"')
    _one_line(run_cli("serve", "--config", str(cfg), "--check", check=False), "'triton'")


def test_limits_cover_every_kind_of_bad_number() -> None:
    for key, lim in LIMITS.items():
        for bad in (float("nan"), float("inf"), float("-inf"), True):
            assert not lim.ok(bad), (key, bad)
        if lim.lo is not None:
            assert not lim.ok(lim.lo - 1), key
            assert lim.ok(lim.lo) != lim.lo_open, key
        if lim.hi is not None:
            assert not lim.ok(lim.hi + 1), key
    assert not Limit(0, 10, integer=True).ok(2.5) and Limit(0, 10, integer=True).ok(2)


# ------------------------------------------------------------------ with a real model and video: nothing runs
@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_defect_video(tmp_path_factory.mktemp("v") / "line.avi", 30, {10}, "MJPG")


def test_a_refused_value_runs_nothing_where_a_good_one_runs(tiny_model: Path, video: Path, tmp_path: Path) -> None:
    base = ["run", "--model", str(tiny_model), "--source", str(video), "--max-frames", "5"]
    good = run_cli(*base, "--jsonl", str(tmp_path / "good.jsonl"), "--threshold", "0.5", timeout=300)
    assert good.returncode == 0 and len((tmp_path / "good.jsonl").read_text().splitlines()) == 5
    for bad in (["--threshold", "nan"], ["--batch", "0"], ["--max-frames", "-1"]):
        t0 = time.monotonic()
        p = subprocess.run([*CLI, *base, *bad, "--jsonl", str(tmp_path / "bad.jsonl")], capture_output=True, text=True, timeout=120)
        _one_line(p, bad[0])
        assert time.monotonic() - t0 < 60 and not (tmp_path / "bad.jsonl").exists()


def test_a_refused_cell_value_opens_no_camera(tiny_model: Path, video: Path, tmp_path: Path) -> None:
    good = _cell(tmp_path, "summary_every_s = 0.5", "threshold = 0.5", str(video), f'model = "{tiny_model}"')
    run_cli("serve", "--config", str(good), timeout=300)
    assert len((tmp_path / "out" / "cam1.jsonl").read_text().splitlines()) == 30
    (tmp_path / "out" / "cam1.jsonl").unlink()
    bad = _cell(tmp_path, "summary_every_s = 0", "threshold = 0.5", str(video), f'model = "{tiny_model}"')
    _one_line(run_cli("serve", "--config", str(bad), check=False, timeout=60), "'summary_every_s'")
    assert not (tmp_path / "out" / "cam1.jsonl").exists()


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".mkv", ".mov", ".m4v"])
def test_data_video_writes_every_container_it_names(suffix: str, tmp_path: Path) -> None:
    import cv2

    out = tmp_path / f"line{suffix}"
    p = run_cli("data", "video", "--out", str(out), "--frames", "6")
    assert p.stdout.startswith(f"wrote {out}: 6 frames")
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 and cap.read()[1].shape == (64, 64, 3)


def test_export_engine_without_tensorrt_is_refused_before_any_work(tmp_path: Path) -> None:
    """--engine builds after every ONNX and the gate: without TensorRT that is said first, with what to do instead."""
    from skipgan_edge.errors import MissingDependencyError
    from skipgan_edge.runtime.engine_file import import_tensorrt

    try:
        import_tensorrt()
        present = True
    except MissingDependencyError:
        present = False
    p = run_cli("export", "--model", "absent", "--out", "x", "--engine", check=False, timeout=120, cwd=tmp_path)
    line = _one_line(p, "absent" if present else "--engine: TensorRT is not installed here")
    assert present or "run skipgan-edge build on that device" in line
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_scored_nothing_is_an_error(tiny_model: Path, tmp_path: Path) -> None:
    """Every file of a folder read to its end failed to decode: the summary is printed, then one line, exit 2 (not 0). A
    watch folder that met one bad upload, or a --max-frames run, is not an error."""
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.png", "b.png"):
        (junk / name).write_bytes(b"not an image")
    p = run_cli("run", "--model", str(tiny_model), "--source", str(junk), check=False, timeout=120)
    assert p.returncode == 2 and "scored 0" in p.stdout and "unreadable 2" in p.stdout, (p.stdout, p.stderr)
    assert p.stderr.strip().splitlines()[-1].startswith("error: nothing was scored: none of the 2 frame(s)"), p.stderr
    p = run_cli("run", "--model", str(tiny_model), "--source", str(junk), "--max-frames", "1", timeout=120)
    assert "scored 0" in p.stdout and "unreadable 1" in p.stdout and "error" not in p.stderr
    p = run_cli("run", "--model", str(tiny_model), "--source", f"watch:{junk}", "--stop-after-idle", "1", timeout=120)
    assert "scored 0" in p.stdout and "error" not in p.stderr


def test_a_cell_path_not_found_says_which_folder_relative_paths_start_from(tmp_path: Path) -> None:
    cfg = _cell(tmp_path, "", "", artifact='onnx = "models/absent.onnx"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = run_cli("serve", "--config", str(cfg), "--check", check=False, timeout=60, cwd=elsewhere)
    line = _one_line(p, "'onnx'")
    assert "models/absent.onnx" in line and f"relative paths in a cell start from the folder serve runs in, {elsewhere}" in line, line
    # an absolute path not found, or a URL, gets no such note
    cfg = _cell(tmp_path, "", "", artifact=f'onnx = "{tmp_path / "absent.onnx"}"')
    line = _one_line(run_cli("serve", "--config", str(cfg), "--check", check=False, timeout=60, cwd=elsewhere), "'onnx'")
    assert "relative paths" not in line, line
