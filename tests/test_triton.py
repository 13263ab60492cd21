"""Beyond one box: the Triton repository, ``triton-serve`` and ``--backend triton://``, against a real tritonserver on loopback."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI, ROOT, run_cli, write_defect_video
from helpers.triton import Server, free_ports, metrics, triton_cli

from skipgan_edge.errors import ConfigError
from skipgan_edge.runtime.backends import BackendOptions
from skipgan_edge.runtime.backends.onnxrt import read_card
from skipgan_edge.service.triton_client import parse_url
from skipgan_edge.service.triton_repo import TritonSettings, config_text, pbtxt_string, write_repository


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _parse_config(text: str):  # type: ignore[no-untyped-def]
    """Triton's own ModelConfig protobuf, parsed from the text: what the server parses."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


# ------------------------------------------------------------------------------------------- the repository
def test_config_is_tritons_protobuf_and_a_hostile_card_cannot_inject(demo_onnx: Path) -> None:
    card = read_card(demo_onnx / "scorer.onnx")
    hostile = 'x" } parameters { key: "evil" value: { string_value: "1" } } #\n\t\\ é \x01'
    card = card.replace(model_id=hostile)
    text = config_text("scorer", card, TritonSettings(max_batch=16, preferred_batch=(2, 8), max_queue_delay_us=700, instances=3), plan=False)
    cfg = _parse_config(text)
    assert cfg.name == "scorer" and cfg.backend == "python" and cfg.max_batch_size == 16
    assert list(cfg.input[0].dims) == [32, 32, 3] and cfg.input[0].data_type == 2  # TYPE_UINT8
    assert [(o.name, list(o.dims), list(o.reshape.shape)) for o in cfg.output] == [
        ("score", [1], []), ("anomaly_map", [1, 32, 32], []), ("normalized_score", [1], [])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 8] and cfg.dynamic_batching.max_queue_delay_microseconds == 700
    assert cfg.instance_group[0].count == 3 and cfg.instance_group[0].kind == 2  # KIND_CPU
    assert "evil" not in cfg.parameters  # the card's text stayed a string value
    assert cfg.parameters["skipgan_edge.model_id"].string_value == hostile
    assert json.loads(cfg.parameters["skipgan_edge.card"].string_value)["model_id"] == hostile
    assert cfg.parameters["skipgan_edge.runtime"].string_value == "onnxruntime"
    plan = _parse_config(config_text("scorer_gpu", card, TritonSettings(), plan=True))
    assert plan.platform == "tensorrt_plan" and plan.instance_group[0].kind == 1 and "skipgan_edge.runtime" not in plan.parameters  # KIND_GPU
    assert pbtxt_string('a"b\\c\n') == '"a\\"b\\\\c\\012"'
    for bad in (TritonSettings(max_batch=0), TritonSettings(preferred_batch=(64,)), TritonSettings(instances=0), TritonSettings(runtime="tvm")):
        with pytest.raises(ConfigError):
            bad.check()


def _plan(path: Path, lo: int, hi: int, sidecar: bool = True) -> Path:
    """A plan file as ``build --plan`` leaves it: the serialized engine (stand-in bytes) and its header sidecar."""
    path.write_bytes(b"serialized plan")
    if sidecar:
        Path(str(path) + ".json").write_text(json.dumps({"profile": {"min": lo, "opt": hi, "max": hi}, "precision": "int8"}))
    return path


def test_a_plan_needs_a_profile_from_1_to_the_max_batch(demo_onnx: Path, tmp_path: Path) -> None:
    card = read_card(demo_onnx / "scorer.onnx")
    repo = tmp_path / "repo"
    with pytest.raises(ConfigError, match=r"batches 2\.\.32, but Triton sends any batch from 1: rebuild with --batch 1,32,32"):
        write_repository(_plan(tmp_path / "a.plan", 2, 32), repo, card)
    with pytest.raises(ConfigError, match="up to 16, but the Triton max batch is 32"):
        write_repository(_plan(tmp_path / "b.plan", 1, 16), repo, card)
    with pytest.raises(ConfigError, match="no readable c.plan.json"):
        write_repository(_plan(tmp_path / "c.plan", 1, 32, sidecar=False), repo, card)
    assert not (repo / "scorer").exists()  # nothing written for a refused plan
    v = write_repository(_plan(tmp_path / "d.plan", 1, 16), repo, card, TritonSettings.for_profile((1, 8, 16)))
    assert "max_batch_size: 16" in (repo / "scorer" / "config.pbtxt").read_text() and (v.folder / "model.plan").exists()


def test_versions_platforms_and_names(demo_onnx: Path, tmp_path: Path) -> None:
    card = read_card(demo_onnx / "scorer.onnx")
    repo = tmp_path / "repo"
    v1 = write_repository(demo_onnx / "scorer.onnx", repo, card)
    assert (v1.version, v1.new) == (1, True) and sorted(p.name for p in v1.folder.iterdir()) == ["__pycache__", "card.json", "model.onnx",
                                                                                                             "model.py"]
    assert write_repository(demo_onnx / "scorer.onnx", repo, card).version == 1  # same file: same version
    v2 = write_repository(demo_onnx / "scorer.int8.onnx", repo, read_card(demo_onnx / "scorer.int8.onnx"))
    assert (v2.version, v2.new) == (2, True) and (repo / "scorer" / "1" / "model.onnx").exists()  # the old version stays for a rollback
    assert _parse_config((repo / "scorer" / "config.pbtxt").read_text()).parameters["skipgan_edge.precision"].string_value == "int8"
    _plan(tmp_path / "s.plan", 1, 32)
    with pytest.raises(ConfigError, match="one platform"):
        write_repository(tmp_path / "s.plan", repo, card)
    gpu = write_repository(tmp_path / "s.plan", repo, card, name="scorer_gpu")
    assert sorted(p.name for p in gpu.folder.iterdir()) == ["card.json", "model.plan"]
    for bad in ("../x", ".hidden", "a b", "", "x" * 65):
        with pytest.raises(ConfigError, match="model name"):
            write_repository(demo_onnx / "scorer.onnx", repo, card, name=bad)


def test_model_py_runs_without_skipgan_edge_and_carries_the_openvino_rewrites(demo_onnx: Path, tmp_path: Path) -> None:
    """model.py is triton_model.py with the OpenVINO backend's graph rewrites inlined: it loads in a Python where importing
    skipgan_edge fails, and the rewrites it defines are the backend's own source."""
    v = write_repository(demo_onnx / "scorer.onnx", tmp_path / "repo", read_card(demo_onnx / "scorer.onnx"))
    code = v.folder / "model.py"
    probe = ("import sys, runpy; sys.modules['skipgan_edge'] = None; g = runpy.run_path(sys.argv[1]); "
             "print(g['MAX_SPECIALISED'], callable(g['split_transposed_convs']), g['TritonPythonModel'].__name__)")
    out = subprocess.run([sys.executable, "-c", probe, str(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["4", "True", "TritonPythonModel"], out.stderr[-2000:]
    graph = (ROOT / "skipgan_edge" / "runtime" / "backends" / "openvino_graph.py").read_text().split("inlines everything below this line ----\n")[1]
    assert graph.strip() in code.read_text() and "from skipgan_edge" not in code.read_text()
    # the same import marker in the source would otherwise load the rewrites from skipgan_edge: the check can fail
    src = (ROOT / "skipgan_edge" / "service" / "triton_model.py").read_text()
    probe_src = tmp_path / "raw.py"
    probe_src.write_text(src)
    raw = subprocess.run([sys.executable, "-c", probe, str(probe_src)], capture_output=True, text=True, timeout=120)
    assert raw.returncode != 0 and "skipgan_edge" in raw.stderr


def test_a_repository_is_code_and_only_ours_is_served_unasked(demo_onnx: Path, tmp_path: Path) -> None:
    """triton-serve --export-dir serves what it finds; Triton's Python backend runs it. A model.py or a parameter that is not
    ours is refused in one line unless --trust-repository."""
    from skipgan_edge.service.triton_repo import find_models

    card = read_card(demo_onnx / "scorer.onnx")

    def repo(name: str) -> Path:
        return write_repository(demo_onnx / "scorer.onnx", tmp_path / name, card).repository

    assert find_models(repo("ok")) == [{"name": "scorer", "platform": "python", "versions": [1]}]
    tampered = repo("code")
    (tampered / "scorer" / "1" / "model.py").write_text("import os\nos.system('touch /tmp/owned')\n")
    env = repo("env")
    cfg = env / "scorer" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/tmp/evil.tar.gz" } }\n')
    other = repo("other")
    cfg = other / "scorer" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + 'default_model_filename: "evil.py"\n')
    broken = repo("broken")
    (broken / "scorer" / "config.pbtxt").write_text("name: 'scorer' max_batch_size: {")
    for r, expect in ((tampered, "version 1's model.py is not the one this skipgan-edge writes"),
                      (env, "parameter 'EXECUTION_ENV_PATH' is not one skipgan-edge writes"),
                      (other, "it names other code to run ('evil.py')"), (broken, "is not a valid Triton model config")):
        with pytest.raises(ConfigError, match=re.escape(expect)):
            find_models(r)
    assert find_models(tampered, trust=True)[0]["platform"] == "python"  # the user looked at it and said so
    p = subprocess.run([str(triton_cli()), "triton-serve", "--export-dir", str(tampered)], capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "--trust-repository" in lines[0], p.stderr
    # a repository from an older release (another model.py in version 1): the next export rewrites every version's
    write_repository(demo_onnx / "scorer.int8.onnx", tampered, read_card(demo_onnx / "scorer.int8.onnx"))
    assert find_models(tampered) == [{"name": "scorer", "platform": "python", "versions": [1, 2]}]


def test_a_server_answering_other_shapes_is_one_line(demo_onnx: Path, tmp_path: Path) -> None:
    """The server's answer is outside input too: a (trusted, edited) repository whose model returns 16×16 maps for a 32×32
    card is refused at the first frame, not reshaped into garbage."""
    from skipgan_edge.errors import ServerError
    from skipgan_edge.runtime.backends import open_backend

    rv = write_repository(demo_onnx / "scorer.onnx", tmp_path / "repo", read_card(demo_onnx / "scorer.onnx"))
    cfg = rv.repository / "scorer" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 1, 32, 32 ]", "dims: [ 1, 16, 16 ]"))
    code = rv.folder / "model.py"
    code.write_text(code.read_text().replace("full[k][at : at + n]", "(full[k][at : at + n, :, :16, :16] if name == 'anomaly_map' "
                                                                     "else full[k][at : at + n])"))
    http, grpc, mport = free_ports(3)
    server = subprocess.Popen([str(triton_cli()), "triton-serve", "--export-dir", str(rv.repository), "--trust-repository", "--http-port",
                               str(http), "--grpc-port", str(grpc), "--metrics-port", str(mport)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert server.stdout is not None and "READY" in server.stdout.readline()
        with open_backend("triton", Path("-"), f"triton://127.0.0.1:{grpc}/scorer?shm=0") as be, \
                pytest.raises(ServerError, match=r"returned output 'anomaly_map' as float32 \[2, 1, 16, 16\] for 2 images"):
            be.infer(np.zeros((2, 32, 32, 3), np.uint8))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_triton_urls_are_checked_in_one_line() -> None:
    u = parse_url("triton://gpu-box:8001/scorer/3?retry=5&shm=0")
    assert (u.host, u.port, u.model, u.version, u.retry_s, u.shm) == ("gpu-box", 8001, "scorer", "3", 5.0, "0")
    assert str(parse_url("triton://[::1]:8001/scorer")) == "triton://[::1]:8001/scorer"
    for bad in ("triton://h/scorer", "triton://h:0/scorer", "triton://h:70000/scorer", "triton://h:8001/", "triton://h:8001/../etc",
                "triton://h:8001/scorer/0", "triton://h:8001/scorer/x", "triton://u:p@h:8001/scorer", "triton://h:8001/scorer?evil=1",
                "triton://h:8001/scorer?retry=-1", "triton://h:8001/scorer?shm=maybe", "triton://h:8001/sc orer", "http://h:8001/scorer"):
        with pytest.raises(ConfigError, match="bad Triton URL"):
            parse_url(bad)


def test_a_host_name_that_does_not_resolve_is_not_waited_for(tmp_path: Path) -> None:
    """.invalid never resolves (RFC 6761): one line at once saying to check the host, not a minute of retries ending in
    "start it"."""
    t0 = time.monotonic()
    p = run_cli("run", "--backend", "triton://nosuchhost.invalid:8001/scorer?retry=30", "--source", str(tmp_path / "a.mp4"),
                check=False, timeout=60)
    lines = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("WARNING ")]
    assert p.returncode != 0 and len(lines) == 1 and "the host name does not resolve" in lines[0], p.stderr
    assert "check HOST in the URL" in lines[0] and "triton-serve" not in lines[0] and time.monotonic() - t0 < 25


# --------------------------------------------------------------------------------------------- a real server
def _readme_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "triton.md").read_text()
    section = text.split("# Beyond one box", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "docs/triton.md's Beyond one box has no code block"
    return [shlex.split(line.split("  #")[0]) for line in block.group(1).splitlines() if line.strip()]


def _with(args: list[str], **values: str) -> list[str]:
    """``args`` with each ``--option``'s value replaced (options named with _ for -)."""
    out = list(args)
    for opt, value in values.items():
        i = out.index("--" + opt.replace("_", "-"))
        out[i + 1] = value
    return out


def test_readme_beyond_one_box_export_serve_stream(demo_model: Path, tmp_path: Path) -> None:
    """docs/triton.md's three commands, as a user runs them (paths and ports made local): export --triton writes the
    repository; triton-serve --export-dir loads it as it is into a real Triton; run streams to it and gets ONNX Runtime's
    scores."""
    export, serve, stream = _readme_commands()
    assert export[:2] == ["skipgan-edge", "export"] and "--triton" in export
    assert serve[0] == ".venv-triton/bin/skipgan-edge" and serve[1] == "triton-serve" and "--export-dir" in serve
    assert stream[:2] == ["skipgan-edge", "run"] and any(a.startswith("triton://") for a in stream)
    out = tmp_path / "export"
    p = run_cli(*_with(export, model=str(demo_model), out=str(out))[1:])
    assert "triton:" in p.stdout and "version 1" in p.stdout and "triton-serve --export-dir" in p.stdout
    report = json.loads((out / "export_report.json").read_text())
    assert report["triton"]["platform"] == "python" and report["triton"]["model"] == "scorer"
    http, grpc, mport = free_ports(3)
    cmd = [str(triton_cli()), *_with(serve, export_dir=str(out), address="127.0.0.1")[1:], "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(mport)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert "serving scorer version 1: READY" in first, first + (server.stdout.read() if server.poll() is not None else "")
        video = write_defect_video(tmp_path / "v.avi", 40, {10, 25}, "MJPG")
        url = next(a for a in stream if a.startswith("triton://"))
        url = f"triton://127.0.0.1:{grpc}/" + url.split("/", 3)[3]
        run_cli(*_with(stream, source=str(video), backend=url, jsonl=str(tmp_path / "t.jsonl"))[1:])
        run_cli("run", "--onnx", str(out / "scorer.onnx"), "--backend", "onnxruntime", "--source", str(video), "--jsonl", str(tmp_path / "o.jsonl"))
        t, o = _records(tmp_path / "t.jsonl"), _records(tmp_path / "o.jsonl")
        assert len(t) == len(o) == 40
        assert max(abs(a["score"] - b["score"]) for a, b in zip(t, o)) < 1e-5
        assert [a["anomalous"] for a in t] == [b["anomalous"] for b in o] and {a["model_id"] for a in t} == {report["model_id"]}
        assert metrics(mport)['nv_inference_count{model="scorer",version="1"}'] == 40
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0  # a clean stop, as Ctrl-C or systemd give it
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_python_backend_runs_openvino_too(demo_onnx: Path) -> None:
    """The repository's other CPU runtime: OpenVINO inside Triton's Python backend, two instances, against OpenVINO here;
    batches of the preferred sizes (4 and 8: models compiled for them) and of another size (the dynamic-shape model)."""
    from skipgan_edge.runtime.backends import open_backend

    frames = np.random.default_rng(2).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    server = Server(demo_onnx / "scorer.onnx", None, "--runtime", "openvino", "--instances", "2", "--threads", "1",
                    "--preferred-batch", "4,8").start()
    try:
        with open_backend("triton", Path("-"), server.url) as be, open_backend("onnx", demo_onnx / "scorer.onnx", "openvino",
                                                                               BackendOptions(precision_hint="f32")) as ref:
            for n in (12, 8, 4):
                got, want = be.infer(frames[:n]), ref.infer(frames[:n])
                np.testing.assert_allclose(got.score, want.score, rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=1e-4, atol=1e-4)
        m = metrics(server.metrics)
        assert m['nv_inference_count{model="scorer",version="1"}'] == 24
    finally:
        server.stop()


def test_openvino_in_triton_runs_a_gated_fp16_as_our_backend_does(demo_onnx: Path) -> None:
    """The FP16 variant whose bf16 gate passed, on OpenVINO in Triton: bf16 with the transposed convolutions split, the
    graph the export gated and our OpenVINO backend runs, so the same numbers (f32 on a CPU without bf16, both sides)."""
    from skipgan_edge.runtime.backends import open_backend

    frames = np.random.default_rng(5).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    server = Server(demo_onnx / "scorer.fp16.onnx", None, "--runtime", "openvino", "--preferred-batch", "8").start()
    try:
        with open_backend("triton", Path("-"), server.url) as be, \
                open_backend("onnx", demo_onnx / "scorer.fp16.onnx", "openvino", batch=8) as ref:
            got, want = be.infer(frames), ref.infer(frames)
            np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=0, atol=1e-6)
            np.testing.assert_allclose(got.score, want.score, rtol=1e-6, atol=1e-6)
    finally:
        server.stop()


def test_triton_backend_contract(triton_server: Server, demo_onnx: Path) -> None:
    """The same contract as every backend: the card from the server, checked inputs, ScoreBatch out, ONNX Runtime's numbers;
    through system shared memory (same host) and through gRPC messages."""
    from skipgan_edge.runtime.backends import open_backend

    frames = np.random.default_rng(0).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)
    with open_backend("onnx", demo_onnx / "scorer.onnx", "onnxruntime") as ref_be:
        ref = ref_be.infer_all(frames, 8)
        card = ref_be.card
    for url in (triton_server.url, triton_server.url + "?shm=0"):
        with open_backend("triton", Path("-"), url) as be:
            assert be.name == "triton" and be.card.model_id == card.model_id and be.card.score.threshold == card.score.threshold
            assert be.use_shm == ("shm=0" not in url) and be.max_batch == 32
            got = be.infer_all(frames, 8)
            assert got.anomaly_map.shape == (37, 1, 32, 32) and got.score.dtype == np.float32 and got.score.shape == (37,)
            for f in ("score", "anomaly_map", "normalized_score"):
                np.testing.assert_allclose(getattr(got, f), getattr(ref, f), rtol=1e-6, atol=1e-6)
            big = be.infer(np.concatenate([frames, frames]))  # 74 > the server's max batch: split, in order
            np.testing.assert_allclose(big.score, np.concatenate([ref.score, ref.score]), rtol=1e-6, atol=1e-6)
            with pytest.raises(ValueError, match="expected uint8 images"):
                be.infer(frames[:, :16])


def test_two_clients_are_batched_together_by_triton(triton_server: Server, tmp_path: Path) -> None:
    """Two cameras streaming one frame per request at once: Triton's dynamic batcher runs them in shared batches,
    which its own metrics show (fewer executions than inferences), and each client gets every frame."""
    before = metrics(triton_server.metrics)
    video = write_defect_video(tmp_path / "v.avi", 120, {30}, "MJPG")
    procs = [subprocess.Popen([*CLI, "run", "--backend", triton_server.url, "--source", str(video), "--batch", "1",
                               "--jsonl", str(tmp_path / f"c{i}.jsonl"), "--camera-id", f"cam{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    after = metrics(triton_server.metrics)
    key = '{model="scorer",version="1"}'
    inferences = after["nv_inference_count" + key] - before.get("nv_inference_count" + key, 0)
    executions = after["nv_inference_exec_count" + key] - before.get("nv_inference_exec_count" + key, 0)
    assert inferences == 240
    assert executions < inferences, (executions, inferences)  # some executions carried frames of both clients
    for i in range(2):
        assert [r["frame"] for r in _records(tmp_path / f"c{i}.jsonl")] == list(range(120))


def test_server_killed_and_restarted_mid_run_loses_no_frame(demo_onnx: Path, tmp_path: Path) -> None:
    n = 400
    video = write_defect_video(tmp_path / "v.avi", n, {50, 300}, "MJPG")
    server = Server(demo_onnx / "scorer.onnx").start()
    out = tmp_path / "r.jsonl"
    client = subprocess.Popen([*CLI, "run", "--backend", server.url + "?retry=120", "--source", str(video), "--jsonl", str(out),
                               "--batch", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (not out.exists() or len(out.read_text().splitlines()) < 40) and time.monotonic() < deadline:
            assert client.poll() is None, client.communicate()
            time.sleep(0.05)
        server.kill(signal.SIGKILL)  # the whole server, at once, mid-stream
        done_at_kill = len(out.read_text().splitlines())
        assert done_at_kill < n
        time.sleep(1.0)
        killed_pid = server.proc.pid if server.proc else -1
        assert list(Path("/dev/shm").glob(f"skipgan_triton_{killed_pid}_*"))  # the killed server's Python-backend regions, left behind
        restarted = Server(demo_onnx / "scorer.onnx", [server.http, server.grpc, server.metrics]).start()
        assert not list(Path("/dev/shm").glob(f"skipgan_triton_{killed_pid}_*"))  # removed by the next server
        try:
            _, err = client.communicate(timeout=300)
        finally:
            restarted.stop()
        assert client.returncode == 0, err
        assert "retrying" in err and "the server is back" in err
        recs = _records(out)
        assert [r["frame"] for r in recs] == list(range(n))  # every frame once, in order: none lost in flight
    finally:
        if client.poll() is None:
            client.kill()
        server.kill()


def test_stale_shared_memory_of_dead_processes_is_removed(tmp_path: Path) -> None:
    from skipgan_edge.service.triton_client import clean_stale_shm

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"skipgan_client_{dead.pid}_ab12_in").write_bytes(b"x")
    (tmp_path / f"skipgan_client_{os.getpid()}_cd34_in").write_bytes(b"x")  # alive: kept
    (tmp_path / "victim").write_bytes(b"keep")
    (tmp_path / f"skipgan_client_{dead.pid}_ef56_out").symlink_to(tmp_path / "victim")  # never followed or removed
    assert clean_stale_shm("skipgan_client_", tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"skipgan_client_{os.getpid()}_cd34_in", f"skipgan_client_{dead.pid}_ef56_out",
                                                                 "victim"])


# ------------------------------------------------------------------------------------------- one-line errors
def test_client_errors_are_one_line(triton_server: Server, demo_onnx: Path, tmp_path: Path) -> None:
    video = str(write_defect_video(tmp_path / "v.avi", 3, set(), "MJPG"))
    (closed,) = free_ports(1)
    cases = [
        (["--backend", f"triton://127.0.0.1:{closed}/scorer?retry=1"], "did not answer for 1 s"),
        (["--backend", triton_server.url.replace("/scorer", "/nope")], "the server has no model 'nope' (it has: scorer)"),
        (["--backend", triton_server.url, "--onnx", str(demo_onnx / "scorer.onnx")], "give no --model, --onnx or --engine"),
        (["--backend", "triton://127.0.0.1:99999/scorer"], "the port must be a number"),
    ]
    for args, expect in cases:
        p = run_cli("run", *args, "--source", video, check=False)
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and last.startswith("error:") and expect in last, (args, p.stderr)
        assert "Traceback" not in p.stderr


def test_triton_serve_errors_are_one_line(demo_onnx: Path, tmp_path: Path) -> None:
    # this venv has no PyTriton: the install hint
    p = run_cli("triton-serve", "--onnx", str(demo_onnx / "scorer.onnx"), check=False)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: triton-serve needs PyTriton") and len(p.stderr.strip().splitlines()) == 1
    cli = str(triton_cli())
    card = read_card(demo_onnx / "scorer.onnx")
    _plan(tmp_path / "s.plan", 1, 32)
    write_repository(tmp_path / "s.plan", tmp_path / "repo", card)
    for args, expect in (
        (["--export-dir", str(tmp_path / "repo")], "need another Triton backend than Python (a TensorRT plan)"),
        (["--export-dir", str(tmp_path)], "holds no Triton model"),
        (["--onnx", str(demo_onnx / "scorer.onnx"), "--preferred-batch", "64"], "must lie in 1..32"),
        (["--onnx", str(demo_onnx / "scorer.onnx"), "--http-port", "8000", "--grpc-port", "8000"], "ports must differ"),
    ):
        p = subprocess.run([cli, "triton-serve", *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error:") and expect in p.stderr, (args, p.stderr)
    import socket

    with socket.socket() as taken:  # a port another program holds: Triton's own reason, in one line
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http, mport = free_ports(2)
        p = subprocess.run([cli, "triton-serve", "--onnx", str(demo_onnx / "scorer.onnx"), "--grpc-port", str(taken.getsockname()[1]),
                            "--http-port", str(http), "--metrics-port", str(mport)], capture_output=True, text=True, timeout=180)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Triton did not start" in lines[0] and "already in use" in lines[0], p.stderr


def test_serve_cell_streams_to_triton(triton_server: Server, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "v.avi", 30, {12}, "MJPG")
    cfg = tmp_path / "cell.toml"
    cfg.write_text(f'[serve]\nbatch = 4\n[[camera]]\nid = "a"\nsource = "{video}"\ntriton = "{triton_server.url}"\njsonl = "{tmp_path / "a.jsonl"}"\n'
                   f'[[camera]]\nid = "b"\nsource = "{video}"\ntriton = "{triton_server.url}"\njsonl = "{tmp_path / "b.jsonl"}"\n')
    p = run_cli("serve", "--config", str(cfg), "--json")
    s = json.loads(p.stdout)
    assert [m["backend"] for m in s["models"].values()] == ["triton"]  # both cameras share one client
    for cam in ("a", "b"):
        assert [r["frame"] for r in _records(tmp_path / f"{cam}.jsonl")] == list(range(30))
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[camera]]\nid = "a"\nsource = "{video}"\ntriton = "triton://h:1/../x"\n')
    p = run_cli("serve", "--config", str(bad), "--check", check=False)
    assert p.returncode == 2 and "'triton': bad Triton URL" in p.stderr


def test_bench_times_the_server(triton_server: Server, tmp_path: Path) -> None:
    p = run_cli("bench", "--backend", triton_server.url, "--batch", "1,4", "--duration", "0.3", "--warmup", "2", "--json", str(tmp_path / "b.json"))
    recs = json.loads((tmp_path / "b.json").read_text())["records"]
    assert [(r["backend"], r["batch"]) for r in recs] == [("triton", 1), ("triton", 4)] and all(r["throughput"] > 0 for r in recs)
    assert "triton" in p.stdout


def test_many_threads_one_client(triton_server: Server) -> None:
    """Frames from several threads through separate clients keep their order and values (no shared-memory region is shared)."""
    from skipgan_edge.runtime.backends import open_backend

    frames = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        with open_backend("triton", Path("-"), triton_server.url) as be:
            results[i] = np.concatenate([be.infer(frames[k : k + 1]).score for k in range(8)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3 and all(np.array_equal(results[0], r) for r in results.values())


# ------------------------------------------------------------------------------------------ issue 25, part two
_PLANT = """
import importlib._bootstrap_external as be, os, sys
src, pyc, marker = sys.argv[1:4]
st = os.stat(src)
code = compile("open(%r, 'w').write('owned')\\n" % marker, src, "exec")
os.makedirs(os.path.dirname(pyc), exist_ok=True)
with open(pyc, "wb") as fh:
    fh.write(be._code_to_timestamp_pyc(code, st.st_mtime, st.st_size))
"""


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 180) -> str:
    out = ""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        out += line
        if needle in line:
            return out
    raise AssertionError(f"no {needle!r} from triton-serve:\n{out}")


def test_planted_bytecode_is_refused_even_when_trusted_and_the_server_writes_none(demo_onnx: Path, tmp_path: Path) -> None:
    """Python imports a __pycache__/model.*.pyc whose header matches model.py's size and mtime without reading model.py (the
    stub's Python is isolated: no PYTHON* variable turns that off). A planted one is refused, even with --trust-repository;
    the repository blocks bytecode with an empty file named __pycache__, so a served repository gets none written either
    and serves again."""
    from skipgan_edge.service.triton_repo import find_models

    card = read_card(demo_onnx / "scorer.onnx")
    repo = write_repository(demo_onnx / "scorer.onnx", tmp_path / "repo", card).repository
    vdir = repo / "scorer" / "1"
    marker = tmp_path / "owned"
    (vdir / "__pycache__").unlink()
    pyc = vdir / "__pycache__" / "model.cpython-311.pyc"
    subprocess.run([str(triton_cli().parent / "python"), "-c", _PLANT, str(vdir / "model.py"), str(pyc), str(marker)], check=True)
    for trust in (False, True):
        with pytest.raises(ConfigError, match=re.escape("scorer/1/__pycache__ holds bytecode, which Python would run instead")):
            find_models(repo, trust=trust)
        p = subprocess.run([str(triton_cli()), "triton-serve", "--export-dir", str(repo), *(["--trust-repository"] if trust else [])],
                           capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "__pycache__ holds bytecode" in lines[0], p.stderr
    (vdir / "extra.py").write_text("x = 1\n")  # anything else the stub could import, untrusted: refused
    write_repository(demo_onnx / "scorer.onnx", repo, card)  # the export writes it anew: the bytecode folder goes
    with pytest.raises(ConfigError, match=re.escape("scorer/1/extra.py is not a file skipgan-edge writes")):
        find_models(repo)
    (vdir / "extra.py").unlink()
    before = sorted(p.name for p in vdir.rglob("*"))
    assert before == ["__pycache__", "card.json", "model.onnx", "model.py"] and (vdir / "__pycache__").is_file()
    http, grpc, mport = free_ports(3)
    proc = subprocess.Popen([str(triton_cli()), "triton-serve", "--export-dir", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
                             "--metrics-port", str(mport)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_line(proc, "READY; stream to it with")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0 and not marker.exists()
    assert sorted(p.name for p in vdir.rglob("*")) == before  # Python wrote no bytecode into the repository
    assert find_models(repo)[0]["versions"] == [1]  # and it serves again, unasked


def test_a_killed_triton_serve_restarts_at_once_and_sigterm_leaves_nothing(demo_onnx: Path) -> None:
    """SIGKILL to triton-serve alone: its server goes with it, and a new triton-serve on the same ports starts at once and
    removes the dead one's folders; SIGTERM then stops the new one cleanly, folders and server included."""
    import tempfile

    def leftovers(pid: int) -> list[str]:
        return [p.name for p in Path(tempfile.gettempdir()).iterdir() if re.fullmatch(rf"skipgan-(?:repo|triton)-{pid}-\w+", p.name)]

    first = Server(demo_onnx / "scorer.onnx").start()
    assert first.proc is not None
    dead = first.proc.pid
    assert len(leftovers(dead)) == 2  # its repository and the server's work folder
    os.kill(dead, signal.SIGKILL)  # triton-serve only, not its process group
    first.proc.wait(timeout=30)
    second = Server(demo_onnx / "scorer.onnx", [first.http, first.grpc, first.metrics])
    try:
        second.start()
        assert second.proc is not None
        assert leftovers(dead) == []
        t0 = time.monotonic()
        os.kill(second.proc.pid, signal.SIGTERM)
        assert second.proc.wait(timeout=60) == 0
        assert time.monotonic() - t0 < 30 and leftovers(second.proc.pid) == []
        for port in (first.http, first.grpc, first.metrics):  # nothing holds the ports
            import socket

            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
    finally:
        second.kill()
        first.kill()
