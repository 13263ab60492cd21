"""genicam:// against Aravis's simulated GigE Vision camera (arv-fake-gv-camera-0.8 on 127.0.0.1), through the real CLI in the
Jetson venv (system PyGObject and Aravis, Debian's GStreamer OpenCV and numpy 1). No mock of Aravis: the camera is real.

The option parser and the missing-Aravis line need no camera and run in the default lane."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from conftest import ROOT

from skipgan_edge.errors import SourceError
from skipgan_edge.runtime.genicam import missing_between, packet_socket_allowed, parse_spec
from skipgan_edge.runtime.sources import SourceOptions
from skipgan_edge.schemas import load

FAKE = "arv-fake-gv-camera-0.8"
SERIAL = "SKGE1"  # the simulated camera's device id is then Aravis-Fake-SKGE1
N = 30


# ------------------------------------------------------------------------------------------- no camera needed
def test_options_parse_and_bad_values_are_one_line_naming_the_key() -> None:
    o = parse_spec("genicam://Aravis-Fake-GV01?exposure_us=2000&gain=1.5&pixel_format=Mono8&fps=25&packet_socket=off"
                   "&socket_buffer=262144&packet_size=8000&resend=off&buffers=8&timeout_s=2&width=256&height=128")
    assert (o.name, o.exposure_us, o.gain, o.pixel_format, o.fps, o.packet_socket, o.socket_buffer, o.packet_size, o.resend, o.buffers,
            o.timeout_s, o.width, o.height) == ("Aravis-Fake-GV01", 2000, 1.5, "Mono8", 25, "off", 262144, 8000, False, 8, 2, 256, 128)
    d = parse_spec("genicam://", SourceOptions(fps=12, stall_timeout=3))
    assert (d.name, d.fps, d.timeout_s, d.socket_buffer, d.packet_socket, d.resend, d.buffers) == (None, 12, 3, "auto", "auto", True, 8)
    assert parse_spec("genicam://My%20Cam-1?fps=5").name == "My Cam-1"
    bad = {
        "genicam://x?exposure_us=-5": "exposure_us",
        "genicam://x?exposure_us=nan": "exposure_us",
        "genicam://x?exposure_us=1e300": "exposure_us",
        "genicam://x?gain=inf": "gain",
        "genicam://x?pixel_format=Mono8%3Brm": "pixel_format",
        "genicam://x?pixel_format=YUV422_8": "pixel_format",
        "genicam://x?fps=0": "fps",
        "genicam://x?buffers=1000": "buffers",
        "genicam://x?buffers=0x10": "buffers",
        "genicam://x?packet_size=-1": "packet_size",
        "genicam://x?socket_buffer=1": "socket_buffer",
        "genicam://x?packet_socket=yes": "packet_socket",
        "genicam://x?resend=1": "resend",
        "genicam://x?timeout_s=0": "timeout_s",
        "genicam://x?ExposureTime=5": "ExposureTime",
        "genicam://x?fps=5&fps=6": "fps",
        "genicam://x?fps": "fps",
        "genicam://a/b": "camera name",
        "genicam://a%0Ab": "camera name",
        "genicam://" + "a" * 200: "camera name",
        "genicam://x#frag": "fragment",
    }
    for spec, key in bad.items():
        with pytest.raises(SourceError) as e:
            parse_spec(spec)
        msg = str(e.value)
        assert key in msg and "\n" not in msg, (spec, msg)


def test_frame_id_gaps_and_the_16_bit_wrap() -> None:
    assert missing_between(10, 11) == 0 and missing_between(10, 14) == 3
    assert missing_between(65535, 1) == 0 and missing_between(65534, 2) == 2  # GVSP 1.x block ids skip 0
    assert missing_between(40000, 3) == 0  # the camera restarted its count: not a gap
    assert missing_between(1 << 40, (1 << 40) + 2) == 1  # 64-bit ids (USB3 Vision, GVSP 2.0)


def test_without_aravis_one_line_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['gi'] = None\n"  # as on a Python without PyGObject
            "from skipgan_edge.errors import SkipganError\nfrom skipgan_edge.runtime.sources import open_source\n"
            "try:\n    open_source('genicam://Aravis-Fake-GV01')\nexcept SkipganError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.startswith("MissingDependencyError ") and out.count("\n") == 1, out
    assert "apt-get install gir1.2-aravis-0.8 python3-gi" in out and "--system-site-packages" in out and "make jetson" in out


# ------------------------------------------------------------------------------------ the simulated camera
@pytest.fixture(scope="module")
def jetson_cli() -> Path:
    venv = Path(os.environ.get("JETSON_VENV") or ROOT / ".venv-jetson")
    venv = venv if venv.is_absolute() else ROOT / venv
    exe = venv / "bin" / "skipgan-edge"
    assert exe.exists(), f"{venv} is missing: make test builds it (make jetson-ci)"
    return exe


def _gvcp_port_taken() -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 3956))
    except OSError:
        return True
    finally:
        s.close()
    return False


def _start_fake(log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([FAKE, "-i", "127.0.0.1", "-s", SERIAL], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not _gvcp_port_taken():
        assert proc.poll() is None and time.monotonic() < deadline, f"{FAKE} did not start: {log.read_text()[-500:]}"
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def fake_camera(tmp_path: Path) -> Iterator[dict[str, object]]:
    """One simulated camera on 127.0.0.1 (GVCP's port 3956 is fixed, so one at a time: a lock file queues concurrent runs)."""
    assert shutil.which(FAKE), f"{FAKE} not found: apt-get install aravis-tools"
    with open(Path(os.environ.get("TMPDIR", "/tmp")) / "skipgan-edge-fake-gv.lock", "w") as lock:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "another test run held the simulated camera for 10 minutes"
                time.sleep(0.5)
        assert not _gvcp_port_taken(), "127.0.0.1:3956 is taken by another GigE Vision camera or program: stop it (ss -lunp 'sport = 3956')"
        log = tmp_path / "fake.log"
        state: dict[str, object] = {"proc": _start_fake(log), "log": log}
        try:
            yield state
        finally:
            _stop(state["proc"])  # type: ignore[arg-type]


def _run(cli: Path, onnx: Path, spec: str, tmp: Path, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cli), "run", "--onnx", str(onnx), "--backend", "onnxruntime", "--source", spec, "--jsonl", str(tmp / "r.jsonl"),
                           "--summary", str(tmp / "s.json"), *extra], capture_output=True, text=True, timeout=timeout)


def _check_run(p: subprocess.CompletedProcess[str], tmp: Path, n: int) -> tuple[list[dict[str, object]], dict[str, object]]:
    assert p.returncode == 0, p.stderr[-2000:]
    records = [json.loads(x) for x in (tmp / "r.jsonl").read_text().splitlines()]
    summary = json.loads((tmp / "s.json").read_text())
    record_schema, summary_schema = load("record"), load("summary")
    jsonschema.Draft202012Validator(summary_schema).validate(summary)
    for r in records:
        jsonschema.Draft202012Validator(record_schema).validate(r)
        assert isinstance(r["camera_frame_id"], int) and isinstance(r["camera_timestamp_ns"], int) and r["camera_timestamp_ns"] > 0, r
    assert summary["frames_in"] == n and summary["scored"] == len(records), summary
    return records, summary


@pytest.mark.jetson
@pytest.mark.parametrize("spec,receiver", [
    # Aravis's packet socket where it may open one (root, as in CI), the camera opened by address: its interface is lo
    ("genicam://127.0.0.1?fps=5&exposure_us=2000&gain=1&pixel_format=Mono8", "packet" if packet_socket_allowed() else "udp"),
    # by name, as the aravissrc camera-name=: where discovery answers through another interface (eth0 here),
    # packet_socket=auto takes the UDP socket, whose buffer is twice a frame, at least 4 MiB (socket_buffer=auto)
    (f"genicam://Aravis-Fake-{SERIAL}?fps=5&exposure_us=2000&gain=1&pixel_format=Mono8", None),
    # the UDP socket (what an unprivileged user gets), 8000-byte packets: one frame of buffer loses most frames there,
    # socket_buffer=auto does not; and 786432-byte RGB8 frames
    ("genicam://127.0.0.1?fps=5&packet_socket=off&packet_size=8000&pixel_format=BayerRG8", "udp"),
    ("genicam://127.0.0.1?fps=5&packet_socket=off&pixel_format=RGB8", "udp"),
])
def test_every_frame_scored_with_the_cameras_frame_id_and_timestamp(fake_camera: dict[str, object], jetson_cli: Path, demo_onnx: Path,
                                                                     tmp_path: Path, spec: str, receiver: str | None) -> None:
    p = _run(jetson_cli, demo_onnx / "scorer.onnx", spec, tmp_path, "--max-frames", str(N))
    records, summary = _check_run(p, tmp_path, N)
    g = summary["genicam"]
    assert isinstance(g, dict)
    # at 5 fps the tiny scorer keeps up: every frame the camera sent is scored, none dropped, none missing (every frame
    # alarms here, the fake camera's pattern being no texture the model knows; at 10 fps, inside the whole suite on 2
    # cores, the reader fell a frame behind in about one run in four)
    assert len(records) == N and summary["dropped"] == 0 and summary["unreadable"] == 0, summary
    assert g["missing"] == 0 and g["skipped"] == 0 and g["reconnects"] == 0, g
    # the UDP socket gets its buffer when the first frame starts arriving (Aravis sizes it then): that first frame, before any
    # complete one, may come incomplete; with the packet socket nothing is lost at all
    assert g["incomplete"] <= (0 if g["receiver"]["socket"] == "packet" else 1), g  # type: ignore[index]
    assert g["aravis"]["underruns"] == 0, g  # type: ignore[index]
    assert receiver is None or g["receiver"]["socket"] == receiver, g  # type: ignore[index]
    if "packet_size=8000" in spec:
        assert g["receiver"]["packet_size"] == 8000, g  # type: ignore[index]
    assert g["received"] >= N, g
    ids = [int(r["camera_frame_id"]) for r in records]  # type: ignore[call-overload]
    stamps = [int(r["camera_timestamp_ns"]) for r in records]  # type: ignore[call-overload]
    assert ids == list(range(ids[0], ids[0] + N)), ids  # consecutive: the camera's own count, nothing lost
    assert all(b > a for a, b in itertools.pairwise(stamps)), stamps
    period = (stamps[-1] - stamps[0]) / (N - 1) / 1e6  # the camera's clock says 5 fps
    assert 160 < period < 240, period
    assert [r["frame"] for r in records] == list(range(N))
    assert g["pixel_format"] == spec.split("pixel_format=")[1].split("&")[0]


@pytest.mark.jetson
def test_a_camera_that_disappears_is_reopened(fake_camera: dict[str, object], jetson_cli: Path, demo_onnx: Path, tmp_path: Path) -> None:
    n = 40
    cmd = [str(jetson_cli), "run", "--onnx", str(demo_onnx / "scorer.onnx"), "--backend", "onnxruntime", "--source",
           "genicam://127.0.0.1?fps=10&timeout_s=1", "--max-frames", str(n), "--jsonl", str(tmp_path / "r.jsonl"),
           "--summary", str(tmp_path / "s.json")]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        out = tmp_path / "r.jsonl"
        while not out.exists() or len(out.read_text().splitlines()) < 10:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-2000:]
            time.sleep(0.1)
        _stop(fake_camera["proc"])  # type: ignore[arg-type]
        time.sleep(2.5)  # gone for longer than timeout_s: the source reopens with backoff
        fake_camera["proc"] = _start_fake(fake_camera["log"])  # type: ignore[arg-type]
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    p = subprocess.CompletedProcess(cmd, run.returncode, "", err)
    records, summary = _check_run(p, tmp_path, n)
    g = summary["genicam"]
    assert isinstance(g, dict) and g["reconnects"] == 1, (g, err[-1500:])
    assert "lost; reopening (attempt 1/10" in err and "reopened" in err, err[-1500:]
    ids = [int(r["camera_frame_id"]) for r in records]  # type: ignore[call-overload]
    restarts = [i for i in range(1, len(ids)) if ids[i] <= ids[i - 1]]
    assert len(restarts) == 1, ids  # the new camera process counts from its start again; within each connection ids increase
    assert len(records) == n and summary["dropped"] == 0, summary


@pytest.mark.jetson
def test_option_errors_through_the_cli(fake_camera: dict[str, object], jetson_cli: Path, demo_onnx: Path, tmp_path: Path) -> None:
    cases = {
        "genicam://127.0.0.1?exposure_us=-5": "exposure_us",  # refused before the camera is touched
        "genicam://127.0.0.1?Gain=1": "'Gain' is not known",
        "genicam://127.0.0.1?pixel_format=Mono8%3BReset": "pixel_format",
        "genicam://127.0.0.1?exposure_us=50000000": "outside",  # within the parser's range, outside the camera's (10 s)
        "genicam://127.0.0.1?gain=50": "gain=50 is outside",
        "genicam://127.0.0.1?pixel_format=BGR8": "offers",  # the simulated camera has no BGR8
        "genicam://Aravis-Fake-NOSUCH": "cannot open",
    }
    for spec, text in cases.items():
        p = _run(jetson_cli, demo_onnx / "scorer.onnx", spec, tmp_path, "--max-frames", "1", timeout=120)
        err = p.stderr.strip()
        assert p.returncode == 2 and err.count("\n") == 0 and err.startswith("error: ") and text in err, (spec, p.returncode, p.stderr[-1500:])
    with contextlib.suppress(FileNotFoundError):
        assert (tmp_path / "r.jsonl").read_text() == ""
