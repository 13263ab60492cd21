"""Property-based corruption of everything that comes from outside: each must end in a counted skip or a one-line
error (a SkipganError, which the CLI prints as one line with exit 2), never another exception, never a crash."""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipgan_edge.errors import SkipganError

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)


def corruptions() -> st.SearchStrategy[list[tuple[str, int, int]]]:
    """A few edits of a byte string: (kind, position fraction in 1/1000, value)."""
    edit = st.tuples(st.sampled_from(["flip", "truncate", "insert", "zero"]), st.integers(0, 999), st.integers(0, 255))
    return st.lists(edit, min_size=1, max_size=4)


def corrupt(data: bytes, edits: list[tuple[str, int, int]], head: int | None = None) -> bytes:
    """Apply the edits, positions scaled to the first ``head`` bytes (a header) or to the whole."""
    b = bytearray(data)
    for kind, pos, val in edits:
        span = min(len(b), head or len(b)) or 1
        i = pos * span // 1000
        if kind == "flip" and i < len(b):
            b[i] ^= val or 1
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert":
            b[i:i] = bytes([val])
        elif kind == "zero" and i < len(b):
            b[i] = 0
    return bytes(b)


def one_line(exc: BaseException) -> None:
    assert isinstance(exc, SkipganError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc) and str(exc), repr(exc)


@pytest.fixture(scope="module")
def weights(tiny_model: Path) -> tuple[Path, bytes]:
    return tiny_model, (tiny_model / "model.safetensors").read_bytes()


@given(edits=corruptions())
@FUZZ
def test_corrupt_safetensors_headers(weights: tuple[Path, bytes], edits: list[tuple[str, int, int]]) -> None:
    from skipgan_edge.model.folder import load_model

    src, data = weights
    (header_len,) = struct.unpack("<Q", data[:8])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        shutil.copytree(src, folder)
        (folder / "model.safetensors").write_bytes(corrupt(data, edits, head=8 + header_len))
        try:
            load_model(folder)
        except BaseException as exc:  # noqa: BLE001 - the property: only one-line errors
            one_line(exc)


@given(edits=corruptions())
@FUZZ
def test_corrupt_onnx_graphs(demo_onnx: Path, edits: list[tuple[str, int, int]]) -> None:
    from skipgan_edge.export.trtcheck import check_file
    from skipgan_edge.runtime.backends import open_backend

    data = (demo_onnx / "scorer.onnx").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.onnx"
        path.write_bytes(corrupt(data, edits, head=4000))  # the graph and metadata come before the weights
        for fn in (lambda: open_backend("onnx", path, "onnxruntime").__enter__().infer(np.zeros((1, 32, 32, 3), np.uint8)),
                   lambda: check_file(path)):
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001
                one_line(exc)


@given(header=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                               ["tensorrt", "gpu", "compute_capability", "precision", "profile", "card", "min", "opt", "max",
                                "format_version", "input"]), inner, max_size=5), max_leaves=12),
       tail=st.binary(max_size=16))
@FUZZ
def test_corrupt_engine_headers(header: object, tail: bytes) -> None:
    from skipgan_edge.runtime.engine_file import MAGIC, read_engine_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e.engine"
        body = json.dumps(header).encode()
        path.write_bytes(MAGIC + struct.pack(">I", len(body)) + body + tail)
        try:
            read_engine_file(path)
        except BaseException as exc:  # noqa: BLE001
            one_line(exc)
        path.write_bytes(MAGIC + tail)
        try:
            read_engine_file(path)
        except BaseException as exc:  # noqa: BLE001
            one_line(exc)


@given(edits=corruptions())
@FUZZ
def test_corrupt_image_bytes_are_counted(synth_dir: Path, edits: list[tuple[str, int, int]]) -> None:
    from skipgan_edge.runtime.sources import SourceOptions, open_source

    data = sorted((synth_dir / "test" / "good").glob("*.png"))[0].read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.png").write_bytes(corrupt(data, edits))
        (Path(tmp) / "b.png").write_bytes(data)
        src = open_source(tmp, SourceOptions())
        frames = list(src.frames())
        src.close()
        # every file is a frame; one that does not decode arrives without an image, and the pipeline counts it unreadable
        assert [Path(str(f.name)).name for f in frames] == ["a.png", "b.png"] and frames[1].image is not None


@given(mask=st.binary(max_size=64) | st.sampled_from([b"", b"\x89PNG\r\n\x1a\n"]))
@FUZZ
def test_corrupt_masks_are_counted(mask: bytes) -> None:
    from skipgan_edge.data.images import load_masks

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.png").write_bytes(mask)
        masks, valid, issues = load_masks([Path(tmp) / "m.png", None], 32, [(48, 48), None], [True, False])
        assert masks.shape == (2, 32, 32) and bool(valid[1])
        assert bool(valid[0]) or issues["undecodable"] + issues["misshapen"] == 1


@given(card=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10),
       drop=st.integers(0, 20))
@FUZZ
def test_corrupt_cards(tiny_model: Path, card: object, drop: int) -> None:
    from skipgan_edge.card import ModelCard

    for text in (json.dumps(card), json.dumps({"format_version": 1, "input": card})):
        try:
            ModelCard.from_json(text, "x")
        except BaseException as exc:  # noqa: BLE001
            one_line(exc)
    real = json.loads((tiny_model / "model.json").read_text())
    keys = sorted(real)
    del real[keys[drop % len(keys)]]
    try:
        ModelCard.from_dict(real, "x")
    except BaseException as exc:  # noqa: BLE001
        one_line(exc)


@given(names=st.lists(st.text(min_size=1, max_size=12).filter(lambda s: "/" not in s and "\x00" not in s and s not in (".", "..")),
                      min_size=1, max_size=6, unique=True))
@FUZZ
def test_any_file_name_round_trips(names: list[str]) -> None:
    from skipgan_edge.runtime.sinks import jsonl_line
    from skipgan_edge.runtime.sources import WatchState

    names = [*names, *(n + "\udce9" for n in names[:2])]  # and bytes that are not UTF-8
    with tempfile.TemporaryDirectory() as tmp:
        s = WatchState(Path(tmp) / "state")
        for n in names:
            s.add(n)
        s.close()
        assert WatchState(Path(tmp) / "state").done == set(names)
    for n in names:
        rec = {"schema": 1, "camera": "c", "source": "watch:x", "frame": 0, "file": n, "timestamp": 1.0, "time": "1970-01-01T00:00:01.000Z",
               "model_id": "m", "threshold": 1.0, "score": 0.5, "normalized_score": 0.1, "anomalous": False, "bbox": None,
               "where": None, "event": None,
               "latency_ms": 1.0, "stages_ms": dict.fromkeys(("capture", "preprocess", "queue_wait", "infer", "postprocess"), 0.0)}
        line = jsonl_line(rec)
        assert line.isascii() and line.count("\n") == 1 and json.loads(line)["file"] == n


def test_a_corrupt_artifact_is_one_line_through_the_cli(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    """The same property end to end, for a few fixed corruptions: exit 2, one line, no traceback."""
    data = (demo_onnx / "scorer.onnx").read_bytes()
    for i, edits in enumerate(([("truncate", 500, 0)], [("flip", 10, 255)], [("zero", 3, 0), ("insert", 900, 7)])):
        path = tmp_path / f"c{i}.onnx"
        path.write_bytes(corrupt(data, edits, head=4000))
        p = run_cli("eval", "--onnx", str(path), "--data", str(synth_dir), "--backend", "onnxruntime", check=False, cwd=tmp_path)
        assert p.returncode in (0, 2) and "Traceback" not in p.stderr, p.stderr
        if p.returncode == 2:
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr


# ------------------------------------------------------------------------------------- option values and cell files
NUMBERS = st.one_of(st.integers(-(10**7), 10**7), st.floats(allow_nan=True, allow_infinity=True), st.booleans())
SERVE_NUMERIC = ("batch", "max_wait_ms", "metrics_port", "mqtt_heartbeat_s", "mqtt_flush_ms", "summary_every_s", "reload_poll_s",
                 "retry_max_s", "threads", "queue_size")
CAMERA_NUMERIC = ("threshold", "replay_fps", "width", "height", "fps", "stop_after_idle")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value)


@given(serve=st.dictionaries(st.sampled_from(SERVE_NUMERIC), NUMBERS, max_size=4),
       camera=st.dictionaries(st.sampled_from(CAMERA_NUMERIC), NUMBERS, max_size=3))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_cell_file_numbers_are_kept_within_their_limits_or_refused_by_key(serve: dict[str, object], camera: dict[str, object]) -> None:
    from skipgan_edge.config import LIMITS
    from skipgan_edge.errors import ConfigError
    from skipgan_edge.service.serve import load_cell

    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "cell.toml"
        cfg.write_text("[serve]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in serve.items())
                       + '[[camera]]\nid = "c"\nsource = "a.mp4"\nonnx = "m.onnx"\n' + "".join(f"{k} = {_toml(v)}\n" for k, v in camera.items()))
        try:
            cell = load_cell(cfg)
        except ConfigError as exc:
            msg = str(exc)
            assert "\n" not in msg and any(re.search(rf"(?<!\w){k}(?!\w)", msg) for k in (*serve, *camera)), msg
            return
    for key in serve:
        assert LIMITS[key].ok(getattr(cell.defaults, key)), (key, serve[key])
    for key in camera:
        assert LIMITS[key].ok(getattr(cell.cameras[0], key)), (key, camera[key])


@given(batch=st.integers(-5, 5000), threshold=st.floats(allow_nan=True, allow_infinity=True, width=32),
       flush=st.floats(allow_nan=True, allow_infinity=True, width=32))
@settings(max_examples=12, deadline=None, derandomize=True)
def test_run_option_values_are_refused_by_name_or_reach_the_model(batch: int, threshold: float, flush: float) -> None:
    """Through the CLI: a bad value is one line naming its option; good values get as far as the (missing) model."""
    from skipgan_edge.config import LIMITS

    with tempfile.TemporaryDirectory() as d:
        p = run_cli("run", "--onnx", f"{d}/absent.onnx", "--source", f"{d}/a.mp4", "--batch", str(batch), "--threshold", str(threshold),
                    "--mqtt", "mqtt://127.0.0.1/x", "--mqtt-flush-ms", str(flush), "--jsonl", f"{d}/o.jsonl", check=False, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        bad = [o for o, k, v in (("--batch", "batch", batch), ("--threshold", "threshold", threshold),
                                 ("--mqtt-flush-ms", "mqtt_flush_ms", flush)) if not LIMITS[k].ok(v)]
        if bad:
            assert bad[0] in lines[0], (bad, lines[0])
        else:
            assert "absent.onnx" in lines[0], lines[0]
        assert not Path(d, "o.jsonl").exists()


# ------------------------------------------------------------------------------------------ issue 25, part two
CELL_KEYS = ("id", "source", "onnx", "model", "triton", "mode", "mqtt_topic", "jsonl", "loop", "threshold", "width", "fps")
SERVE_KEYS = ("backend", "batch", "mode", "mqtt", "metrics_port", "metrics_addr", "reload", "summary_every_s", "queue_size")
VALUES = st.one_of(NUMBERS, st.text(max_size=12), st.lists(st.integers(0, 3), max_size=2))


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string for these
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml(value)


@given(serve=st.dictionaries(st.sampled_from(SERVE_KEYS), VALUES, max_size=3),
       cams=st.lists(st.dictionaries(st.sampled_from(CELL_KEYS), VALUES, max_size=5), min_size=0, max_size=2),
       edits=st.one_of(st.none(), corruptions()))
@settings(max_examples=150, deadline=None, derandomize=True)
def test_any_cell_file_is_a_cell_or_one_line(serve: dict[str, object], cams: list[dict[str, object]],
                                             edits: list[tuple[str, int, int]] | None) -> None:
    """Any value of any type under any key, and the bytes of the file corrupted (not UTF-8, not TOML): load_cell returns a
    checked cell or raises one line (the file's table and key where a value is at fault), never another exception."""
    from skipgan_edge.service.serve import load_cell

    text = "[serve]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in serve.items())
    for cam in cams:
        text += "[[camera]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in cam.items())
    data = text.encode()
    if edits:
        data = corrupt(data, edits)
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "cell.toml"
        cfg.write_bytes(data)
        try:
            cell = load_cell(cfg)
        except BaseException as exc:  # noqa: BLE001
            one_line(exc)
            return
    assert cell.cameras and all(sum(getattr(c, k) is not None for k in ("model", "onnx", "engine", "triton")) == 1 for c in cell.cameras)


@given(user=st.text(st.characters(blacklist_characters="/@:?#", blacklist_categories=("Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=8),
       password=st.text(st.characters(blacklist_characters="/?#", blacklist_categories=("Cc", "Zs", "Zl", "Zp")), min_size=4, max_size=12),
       around=st.text(max_size=20), scheme=st.sampled_from(["mqtt", "mqtts", "triton", "rtsp", "https"]))
@settings(max_examples=200, deadline=None, derandomize=True)
def test_printed_lines_hold_no_password_and_no_control_character(user: str, password: str, around: str, scheme: str) -> None:
    """What the CLI prints (every log line and the error line go through safe_line): no URL's password, no character
    that breaks a line or drives a terminal, whatever surrounds them."""
    import logging

    from skipgan_edge.logs import SafeFormatter, safe_line

    text = f"{around} {scheme}://{user}:{password}@host:1/x {around}"
    for line in (safe_line(text), SafeFormatter("%(message)s").format(logging.makeLogRecord({"msg": "%s", "args": (text,)}))):
        assert f":{password}@" not in line and f"{scheme}://{user}:***@host" in line, line
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", line), repr(line)
