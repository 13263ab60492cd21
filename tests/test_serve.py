"""``skipgan-edge serve``: real cells in subprocesses: several cameras, two models, a camera that is missing and one that
disappears, model hot-reload (file replaced, SIGHUP, a broken file refused), systemd notifications, config errors."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import pytest
from conftest import CLI, run_cli, write_defect_video


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("skipgan_up{"):
            out[line.split('camera="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait(cond, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _frames_to_folder(video: Path, folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    for i in range(n):
        ok, img = cap.read()
        assert ok
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)


def test_a_cell_of_four_cameras_two_models_one_missing_one_disappearing(demo_onnx: Path, tiny_model: Path, tmp_path: Path) -> None:
    a = write_defect_video(tmp_path / "a.avi", 60, {5, 40}, "MJPG", seed=1)
    b = write_defect_video(tmp_path / "b.avi", 45, {20}, "MJPG", seed=2)
    _frames_to_folder(write_defect_video(tmp_path / "w.avi", 8, {3}, "MJPG", seed=3), tmp_path / "drop", 8)
    port = _free_port()
    (tmp_path / "cell.toml").write_text(f"""
[serve]
batch = 8
max_wait_ms = 20
metrics_port = {port}
summary_every_s = 0.5
retry_max_s = 1

[[camera]]
id = "line-a"
source = "{a}"
replay_fps = 40
onnx = "{demo_onnx / 'scorer.onnx'}"
jsonl = "a.jsonl"

[[camera]]
id = "line-b"
source = "{b}"
replay_fps = 40
onnx = "{demo_onnx / 'scorer.onnx'}"
threshold = 1000.0
jsonl = "b.jsonl"

[[camera]]
id = "scanner"
source = "watch:{tmp_path / 'drop'}"
model = "{tiny_model}"
jsonl = "w.jsonl"

[[camera]]
id = "late"
source = "{tmp_path / 'late.avi'}"
onnx = "{demo_onnx / 'scorer.onnx'}"
jsonl = "late.jsonl"
debounce = 1000
""")
    proc = subprocess.Popen([*CLI, "-v", "serve", "--config", "cell.toml", "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: len(_lines(tmp_path / "w.jsonl")) == 8), "the watch folder camera scores its files"
        ups = _up(port)
        assert ups["late"] == 0.0 and ups["scanner"] == 1.0  # missing at start: retried, shown down, the others run
        # the scanner's folder disappears: that camera goes down and is retried; the others go on
        shutil.rmtree(tmp_path / "drop")
        assert _wait(lambda: _up(port)["scanner"] == 0.0, 20)
        # the late camera's file appears: it is picked up on a retry
        write_defect_video(tmp_path / "late.avi", 20, {7}, "MJPG", seed=4)
        assert _wait(lambda: len(_lines(tmp_path / "late.jsonl")) == 20, 60)
        # the folder comes back with two new files: scored, the old ones are not scored again
        _frames_to_folder(write_defect_video(tmp_path / "w2.avi", 2, set(), "MJPG", seed=5), tmp_path / "drop2", 2)
        (tmp_path / "drop").mkdir()
        for i, p in enumerate(sorted((tmp_path / "drop2").iterdir())):
            os.replace(p, tmp_path / "drop" / f"new{i}.png")
        assert _wait(lambda: len(_lines(tmp_path / "w.jsonl")) == 10, 30)
        assert _wait(lambda: len(_lines(tmp_path / "a.jsonl")) >= 55 and len(_lines(tmp_path / "b.jsonl")) >= 40, 60)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        assert 'skipgan_frames_per_second{camera="line-a"}' in text  # the periodic summary reaches the metrics too
        assert 'skipgan_frames_total{camera="scanner",outcome="scored"} 10.0' in text
        assert 'skipgan_events_total{camera="late"} 0.0' in text and 'skipgan_events_total{camera="line-a"}' in text
    finally:
        proc.send_signal(signal.SIGTERM)  # the watch camera never ends by itself
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    s = json.loads(out)
    cams = s["cameras"]
    assert set(cams) == {"line-a", "line-b", "scanner", "late"}
    ra, rb, rw = _lines(tmp_path / "a.jsonl"), _lines(tmp_path / "b.jsonl"), _lines(tmp_path / "w.jsonl")
    assert cams["line-a"]["scored"] == len(ra) and cams["line-a"]["scored"] + cams["line-a"]["dropped"] == 60
    assert cams["late"]["scored"] == 20 and cams["late"]["failures"] >= 1 and cams["late"]["opens"] == 1
    assert cams["scanner"]["opens"] >= 2 and cams["scanner"]["scored"] == 10
    assert {r["camera"] for r in ra} == {"line-a"} and {r["camera"] for r in rw} == {"scanner"}
    assert not any(r["anomalous"] for r in rb) and all(r["threshold"] == 1000.0 for r in rb)  # the camera's own threshold
    assert any(r["anomalous"] for r in ra)
    # alarm events: line-a's default debounce 1 makes each run of anomalous frames one; late's debounce of 1000 never opens one
    assert all((r["event"] is not None) == r["anomalous"] for r in ra)
    rl = _lines(tmp_path / "late.jsonl")
    assert any(r["anomalous"] for r in rl) and all(r["event"] is None for r in rl)
    shared = s["models"][str(demo_onnx / "scorer.onnx")]
    assert shared["cameras"] == ["line-a", "line-b", "late"] and shared["shared_batches"] > 0  # one backend, batches mixed
    assert s["models"][str(tiny_model)]["model_id"] == rw[0]["model_id"] != ra[0]["model_id"]
    assert "camera late:" in err and "retrying" in err and "camera line-a " in err and "frames/s" in err, err  # events, summaries


def test_hot_reload_swaps_between_batches_and_refuses_a_broken_model(demo_onnx: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The watched file is replaced by another model's scorer (atomic rename), then by garbage, then SIGHUP."""
    from skipgan_edge.export.onnx import export_onnx

    other = tmp_path / "other.onnx"
    export_onnx(tiny_model, other)
    live = tmp_path / "live.onnx"
    shutil.copy(demo_onnx / "scorer.onnx", live)
    video = write_defect_video(tmp_path / "v.avi", 300, {10, 100}, "MJPG")
    port = _free_port()
    (tmp_path / "cell.toml").write_text(f"""
[serve]
metrics_port = {port}
reload_poll_s = 0.2
[[camera]]
id = "cam"
source = "{video}"
replay_fps = 25
onnx = "{live}"
jsonl = "r.jsonl"
""")
    proc = subprocess.Popen([*CLI, "serve", "--config", "cell.toml", "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = None
    try:
        assert _wait(lambda: len(_lines(tmp_path / "r.jsonl")) > 10)
        first = _lines(tmp_path / "r.jsonl")[0]["model_id"]
        tmp = tmp_path / "incoming.onnx"
        shutil.copy(other, tmp)
        os.replace(tmp, live)  # the deployment step: write beside, rename over
        assert _wait(lambda: _lines(tmp_path / "r.jsonl")[-1]["model_id"] != first, 30)
        (tmp_path / "broken.onnx").write_bytes(b"not a model")
        os.replace(tmp_path / "broken.onnx", live)
        assert _wait(lambda: 'outcome="refused"} 1.0' in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode(), 30)
        n = len(_lines(tmp_path / "r.jsonl"))
        assert _wait(lambda: len(_lines(tmp_path / "r.jsonl")) > n + 5, 30)  # the previous model keeps scoring
        shutil.copy(demo_onnx / "scorer.onnx", tmp_path / "back.onnx")
        os.replace(tmp_path / "back.onnx", live)
        assert _wait(lambda: _lines(tmp_path / "r.jsonl")[-1]["model_id"] == first, 30)
        proc.send_signal(signal.SIGHUP)  # a reload on demand (same file): counted as a reload
        assert _wait(lambda: 'outcome="ok"} 3.0' in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode(), 30)
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    s = json.loads(out)
    recs = _lines(tmp_path / "r.jsonl")
    cam = s["cameras"]["cam"]
    assert cam["scored"] == len(recs) and cam["scored"] + cam["dropped"] == 300
    frames = [r["frame"] for r in recs]
    assert frames == sorted(set(frames))  # in order, none twice
    ids = [r["model_id"] for r in recs]
    switches = sum(1 for x, y in itertools.pairwise(ids) if x != y)
    assert switches >= 2 and len(set(ids)) == 2  # demo -> other -> demo, the broken file never scored
    assert s["models"][str(live)]["reloads"] == {"ok": 3, "refused": 1}
    refused = [line for line in err.splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "keeps running" in refused[0]


def test_systemd_notifications_and_the_unit(demo_onnx: Path, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(30)
    video = write_defect_video(tmp_path / "v.avi", 40, set(), "MJPG")
    (tmp_path / "cell.toml").write_text(f'[serve]\nsummary_every_s = 0.5\n[[camera]]\nid = "c"\nsource = "{video}"\nreplay_fps = 20\n'
                                        f'onnx = "{demo_onnx / "scorer.onnx"}"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([*CLI, "serve", "--config", "cell.toml"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    got: list[str] = []
    try:
        while not ({"READY=1", "WATCHDOG=1"} <= {m.split("\n")[0] for m in got} and any(m.startswith("STATUS=c ") for m in got)):
            got.append(srv.recv(4096).decode())
    finally:
        _, err = proc.communicate(timeout=60)
        srv.close()
    assert proc.returncode == 0, err
    assert got[0].startswith("READY=1")  # readiness first, once the model is loaded
    unit = run_cli("serve", "--print-unit").stdout
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "ExecStart=" in unit and "serve --config" in unit


@pytest.mark.parametrize(("text", "msg"), [
    ('[[camera]]\nid = "a"\nsorce = "x.mp4"\nonnx = "m.onnx"\n', "[[camera]] 1 ('a'): unknown key 'sorce'"),
    ('[[camera]]\nid = "a"\nonnx = "m.onnx"\n', "[[camera]] 1 ('a'): 'source' is required"),
    ('[[camera]]\nid = "a"\nsource = "x"\nonnx = "m.onnx"\nmodel = "r"\n', "give exactly one of 'model', 'onnx', 'engine' or 'triton'"),
    ('[[camera]]\nid = "a"\nsource = "x"\nonnx = "m"\n[[camera]]\nid = "a"\nsource = "y"\nonnx = "m"\n', "is used by another camera"),
    ('[serve]\nbatch = "8"\n[[camera]]\nid = "a"\nsource = "x"\nonnx = "m"\n', "[serve]: batch must be int"),
    ('[servr]\n', "unknown table 'servr'"),
    ('[serve]\nbatch = 2\n', "no [[camera]] table"),
    ('[[camera]]\nid = "a b"\nsource = "x"\nonnx = "m"\n', "'id' must be"),
])
def test_a_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, msg: str) -> None:
    (tmp_path / "cell.toml").write_text(text)
    p = run_cli("serve", "--config", str(tmp_path / "cell.toml"), "--check", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and msg in lines[0], p.stderr


# ------------------------------------------------------------------------------------- issue 25: nothing lost, nothing let in
class _Stderr:
    """A subprocess's stderr, read on a thread: what it printed so far, and waits for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.text = ""
        assert proc.stderr is not None
        self._t = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._t.start()

    def _read(self, fh) -> None:  # type: ignore[no-untyped-def]
        for line in fh:
            self.text += line

    def wait_for(self, needle: str, timeout: float = 120) -> bool:
        return _wait(lambda: needle in self.text, timeout)


def _cell(path: Path, cameras: list[dict[str, object]], serve: str = 'backend = "onnxruntime"\n') -> Path:
    text = f"[serve]\n{serve}\n"
    for cam in cameras:
        text += "[[camera]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cam.items()) + "\n"
    path.write_text(text)
    return path


def test_idle_watch_cameras_stop_well_within_systemds_timeout(demo_onnx: Path, tmp_path: Path) -> None:
    """Four watch cameras with nothing to score, SIGTERM: the process is gone within a second or two, not 10 s per camera
    (the unit's TimeoutStopSec is 30: systemd would have SIGKILLed every stop)."""
    cams = []
    for i in range(4):
        (tmp_path / f"w{i}").mkdir()
        cams.append({"id": f"w{i}", "source": f"watch:{tmp_path / f'w{i}'}", "onnx": str(demo_onnx / "scorer.onnx")})
    cfg = _cell(tmp_path / "cell.toml", cams)
    proc = subprocess.Popen([*CLI, "serve", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = _Stderr(proc)
    try:
        assert err.wait_for("serving 4 camera(s)"), err.text
        time.sleep(1.0)  # every camera idle in its poll
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and took < 5, (took, err.text)
    assert "SIGTERM received" in err.text
    # every camera opened its folder and scored nothing: stopped, not "never opened"
    assert [ln.split(", ")[-1] for ln in proc.stdout.read().splitlines() if ln.startswith("w")] == \
        [f"finished (model {_model_id(demo_onnx)})"] * 4


def _model_id(export: Path) -> str:
    from skipgan_edge.runtime.artifact import Artifact

    return Artifact("onnx", export / "scorer.onnx").read_card().model_id


def test_a_camera_that_never_opened_says_so(demo_onnx: Path, tmp_path: Path) -> None:
    cfg = _cell(tmp_path / "cell.toml", [{"id": "gone", "source": str(tmp_path / "absent.avi"), "onnx": str(demo_onnx / "scorer.onnx")}])
    proc = subprocess.Popen([*CLI, "serve", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = _Stderr(proc)
    try:
        assert err.wait_for("retrying"), err.text
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.text
    (line,) = out.splitlines()
    assert line.startswith("gone: scored 0,") and "never opened (last error: video file not found" in line, line


def test_check_opens_what_serve_opens_and_names_the_key(demo_onnx: Path, tmp_path: Path) -> None:
    """serve --check opens every model, source and output as serve would (running nothing), and a failure is one line
    naming the camera's table and the TOML key, never a command-line flag."""
    video = write_defect_video(tmp_path / "v.avi", 5, set(), "MJPG")
    onnx = str(demo_onnx / "scorer.onnx")
    good = {"id": "a", "source": str(video), "onnx": onnx, "jsonl": str(tmp_path / "out" / "a.jsonl")}
    p = run_cli("serve", "--config", str(_cell(tmp_path / "ok.toml", [good])), "--check", check=False)
    assert p.returncode == 0 and "ok, 1 camera(s)" in p.stdout and "camera a:" in p.stdout, p.stderr
    assert not (tmp_path / "out" / "a.jsonl").exists()  # nothing ran, nothing was written
    (tmp_path / "a-folder").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            ([{**good, "source": str(tmp_path / "missing.avi")}], "", "'source'"),
            ([{**good, "onnx": str(tmp_path / "missing.onnx")}], "", "'onnx'"),
            ([good], 'backend = "torch"\n', "'backend'"),
            ([{**good, "jsonl": str(tmp_path / "a-folder")}], "", "'jsonl'"),
            ([{**good, "source": f"watch:{tmp_path / 'no-such-folder'}"}], "", "'source'"),
            ([good], f"metrics_port = {port}\n", "'metrics_port'"),
        ]
        for cams, serve, key in cases:
            p = run_cli("serve", "--config", str(_cell(tmp_path / "bad.toml", cams, serve)), "--check", check=False)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and key in lines[0] and "bad.toml" in lines[0], (key, p.stderr)
            assert " --" not in lines[0], lines[0]  # the file's words, not the command line's


def test_a_config_path_that_is_not_a_toml_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes('[serve]\nmode = "r\xe9size"\n'.encode("latin-1"))
    for path, expect in ((tmp_path, "is a folder"), (Path("/dev/zero"), "not a regular file"), (tmp_path / "latin1.toml", "not UTF-8")):
        for verb in (["serve", "--check"], ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]):
            p = run_cli(*verb, "--config", str(path), check=False, timeout=60)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and expect in lines[0] and "Traceback" not in p.stderr, (verb, path, p.stderr)


def test_serve_counts_unreadable_files_as_run_does(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 4, set(), "MJPG")
    folder = tmp_path / "frames"
    _frames_to_folder(video, folder, 4)
    for i in range(3):
        (folder / f"bad{i}.png").write_bytes(b"not a png at all" * (i + 1))
    onnx = str(demo_onnx / "scorer.onnx")
    ran = run_cli("run", "--onnx", onnx, "--backend", "onnxruntime", "--source", str(folder))
    assert "unreadable 3" in ran.stdout + ran.stderr
    served = run_cli("serve", "--config", str(_cell(tmp_path / "cell.toml", [{"id": "f", "source": str(folder), "onnx": onnx}])), "--json")
    cam = json.loads(served.stdout)["cameras"]["f"]
    assert cam["unreadable"] == 3 and cam["scored"] == 4, cam


def test_a_watch_folder_deleted_and_made_again_scores_its_new_files(demo_onnx: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 3, set(), "MJPG")
    frames = tmp_path / "frames"
    _frames_to_folder(video, frames, 3)
    drop, out = tmp_path / "drop", tmp_path / "r.jsonl"
    drop.mkdir()
    shutil.copy(frames / "000.png", drop / "a.png")
    cfg = _cell(tmp_path / "cell.toml", [{"id": "w", "source": f"watch:{drop}", "onnx": str(demo_onnx / "scorer.onnx"), "jsonl": str(out)}],
                'backend = "onnxruntime"\nretry_max_s = 1\n')
    proc = subprocess.Popen([*CLI, "serve", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = _Stderr(proc)
    try:
        assert _wait(lambda: len(_lines(out)) == 1), err.text
        shutil.rmtree(drop)
        drop.mkdir()
        shutil.copy(frames / "001.png", drop / "a.png")  # the scanner numbers from the start again: an old name, a new file
        shutil.copy(frames / "002.png", drop / "b.png")
        assert _wait(lambda: len(_lines(out)) == 3, 60), (err.text, _lines(out))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert sorted(str(r["file"]) for r in _lines(out)) == ["a.png", "a.png", "b.png"]
    # said, not silent: the folder's replacement (a new inode), its absence (caught by a poll), or, where the file system
    # gave the new folder the old one's inode, the old name's new file
    assert any(s in err.text for s in ("was replaced", "is gone", "scored as a new file")), err.text
