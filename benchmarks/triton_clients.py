"""Beyond one box: four cameras streaming to one Triton server, against four processes each running ONNX Runtime.

For each model (the demo's 32×32 scorer, trained; and a 128×128 paper-width scorer with random weights, where the
model's compute outweighs the per-request overhead), four ``skipgan-edge run`` processes each stream their own
video one frame per request (``--batch 1``, as a camera does):

* ``onnxruntime ×4``: each process runs its own ONNX Runtime (default threads: all cores), and with ``--threads 1``;
* ``triton``: one ``triton-serve`` (Python backend, ONNX Runtime, one instance) and four ``--backend triton://``
  clients (system shared memory), with dynamic batching off, on with a 0 µs queue delay (only what is already
  queued is batched), and on with 2000 µs (Triton's window to gather requests).

Two loads: **saturated** (video files read as fast as they decode: throughput) and **paced** (each camera at
``--fps`` frames/s, ``--replay-fps``: latency at a load the box sustains). Recorded: frames/s over all four, p50 and
p99 of each frame's latency from capture to result (the runtime's ``total`` stage, per frame, all four clients),
CPU time per frame (the clients' own CPU while streaming, from their summaries, plus the server's process tree
from /proc over the same phase), and from Triton's own metrics the mean batch size it executed (inferences /
executions). Repeats alternate the configurations; medians are reported.

Usage: python benchmarks/triton_clients.py [--export-dir DIR] [--frames 600] [--fps 25] [--repeats 3]
Needs the Triton venv (make triton-venv) for the server; the clients run in this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import RESULTS, command_line, export_dir_or_demo, machine, stamp, write_json

from skipgan_edge.demo import write_demo_video

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "skipgan_edge"]
TRITON_CLI = ROOT / ".venv-triton" / "bin" / "skipgan-edge"
TICK = os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every live descendant, from /proc."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / TICK
    keep, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in keep]
        keep.update(kids)
        frontier += kids
    return sum(cpu.get(p, 0.0) for p in keep)


def triton_counts(port: int) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    got = {}
    for line in text.splitlines():
        for name in ("nv_inference_count", "nv_inference_exec_count"):
            if line.startswith(name + "{"):
                got[name] = got.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return got.get("nv_inference_count", 0.0), got.get("nv_inference_exec_count", 0.0)


class Server:
    def __init__(self, onnx: Path, *extra: str) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        self.proc = subprocess.Popen([str(TRITON_CLI), "triton-serve", "--onnx", str(onnx), "--http-port", str(self.http),
                                      "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "READY" not in line:
            raise SystemExit(f"triton-serve did not start: {line}")

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.grpc}/scorer"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


def four_clients(args_for: list[list[str]], work: Path, server: Server | None) -> dict[str, Any]:
    cpu0 = tree_cpu_s(server.proc.pid) if server else 0.0
    counts0 = triton_counts(server.metrics) if server else (0.0, 0.0)
    procs, outs = [], []
    for i, a in enumerate(args_for):
        out = work / f"c{i}.jsonl"
        summ = work / f"c{i}.json"
        out.unlink(missing_ok=True)
        procs.append(subprocess.Popen([*CLI, "run", *a, "--batch", "1", "--jsonl", str(out), "--summary", str(summ),
                                       "--camera-id", f"cam{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        outs.append((out, summ))
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"client failed: {err}")
    server_cpu = (tree_cpu_s(server.proc.pid) - cpu0) if server else 0.0
    counts1 = triton_counts(server.metrics) if server else (0.0, 0.0)
    lat, times, frames, client_cpu, dropped = [], [], 0, 0.0, 0
    for out, summ in outs:
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        lat += [r["latency_ms"] for r in recs]
        times += [r["timestamp"] for r in recs]
        s = json.loads(summ.read_text())
        frames += s["scored"]
        dropped += s["dropped"]
        client_cpu += s["cpu_s"]
    window = max(times) - min(times)
    inf, ex = counts1[0] - counts0[0], counts1[1] - counts0[1]
    return {"frames": frames, "dropped": dropped, "fps": frames / window if window > 0 else None,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "cpu_ms_per_frame": 1e3 * (client_cpu + server_cpu) / frames, "client_cpu_ms_per_frame": 1e3 * client_cpu / frames,
            "server_cpu_ms_per_frame": 1e3 * server_cpu / frames, "mean_server_batch": inf / ex if ex else None}


def paper_model(work: Path) -> Path:
    from skipgan_edge.bench.random_model import random_model_folder
    from skipgan_edge.config import ModelConfig
    from skipgan_edge.export.onnx import export_onnx

    folder = random_model_folder(work / "paper128", ModelConfig(isize=128, channels=3, ngf=64, ndf=64))
    out = work / "paper128.onnx"
    export_onnx(folder, out)
    return out


CONFIGS = {
    "onnxruntime x4": ("ort", []),
    "onnxruntime x4, --threads 1": ("ort", ["--threads", "1"]),
    "triton, no dynamic batching": ("triton", ["--no-dynamic-batching"]),
    "triton, dynamic batching 0 µs": ("triton", ["--max-queue-delay-us", "0"]),
    "triton, dynamic batching 2000 µs": ("triton", ["--max-queue-delay-us", "2000"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", type=Path)
    ap.add_argument("--frames", type=int, default=600, help="frames per camera video")
    ap.add_argument("--fps", type=float, default=25.0, help="paced load: frames/s per camera")
    ap.add_argument("--paper-frames", type=int, default=200, help="frames per camera video for the 128×128 model")
    ap.add_argument("--paper-fps", type=float, default=5.0, help="paced load per camera for the 128×128 model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="demo32,paper128")
    args = ap.parse_args()
    if not TRITON_CLI.exists():
        raise SystemExit("no Triton venv: make triton-venv")
    results: dict[str, Any] = {"machine": machine(), "date": stamp(), "command": command_line(), "repeats": args.repeats, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {}
        if "demo32" in args.models:
            models["demo32"] = export_dir_or_demo(args.export_dir, work) / "scorer.onnx"
        if "paper128" in args.models:
            models["paper128"] = paper_model(work)
        for mname, onnx in models.items():
            frames, fps = (args.paper_frames, args.paper_fps) if mname == "paper128" else (args.frames, args.fps)
            videos = [write_demo_video(work / f"{mname}_v{i}.mp4", frames, defects=(), seed=i) for i in range(4)]
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {"saturated": [], "paced": []} for c in CONFIGS}
            for rep in range(args.repeats):
                for cname, (kind, extra) in CONFIGS.items():
                    server = Server(onnx, *extra) if kind == "triton" else None
                    try:
                        how = ["--backend", server.url] if server else ["--onnx", str(onnx), "--backend", "onnxruntime", *extra]
                        for load in ("saturated", "paced"):
                            pace = ["--replay-fps", str(fps)] if load == "paced" else []
                            r = four_clients([[*how, "--source", str(videos[i]), *pace] for i in range(4)], work, server)
                            runs[cname][load].append(r)
                            print(f"{mname} rep {rep} {cname} {load}: {r['fps']:.0f} frames/s, p50 {r['p50_ms']:.1f} ms, p99 "
                                  f"{r['p99_ms']:.1f} ms, {r['cpu_ms_per_frame']:.2f} CPU ms/frame"
                                  + (f", server batch {r['mean_server_batch']:.2f}" if r["mean_server_batch"] else ""), flush=True)
                    finally:
                        if server:
                            server.stop()
            summary = {}
            for cname, loads in runs.items():
                summary[cname] = {load: {k: statistics.median([r[k] for r in rs]) if rs[0][k] is not None else None for k in rs[0]}
                                  for load, rs in loads.items()}
            results["models"][mname] = {"frames_per_camera": frames, "paced_fps_per_camera": fps, "runs": runs, "median": summary}
    write_json("triton_clients.json", results)
    write_md(results)


def write_md(res: dict[str, Any]) -> None:
    m = res["machine"]
    lines = [
        "# Four cameras: one Triton server against four ONNX Runtime processes",
        "",
        f"{res['date']}, {m.get('cpu', '?')}, {m.get('cores', '?')} cores, no GPU. `{res['command']}`",
        "",
        "Four `skipgan-edge run` processes, one 64×64 mp4v video each, one frame per request (`--batch 1`). **Saturated**: files "
        "as fast as they decode (throughput; latency there is mostly the read-ahead queue, so it is not shown). **Paced**: each "
        "camera as a live source at a fixed rate (`--replay-fps`), latency = each frame's capture-to-result time over all four "
        "clients. CPU per frame = the clients' CPU while streaming + the server's process tree over the same phase (in brackets). "
        "Server batch = Triton's inferences / executions. Medians of "
        f"{res['repeats']} alternated repeats.",
        "",
    ]
    for mname, mres in res["models"].items():
        lines += [f"## {mname}: {mres['frames_per_camera']} frames per camera, paced at {mres['paced_fps_per_camera']:g} frames/s each", "",
                  "| configuration | saturated frames/s | CPU ms/frame (server) | server batch | paced p50 ms | paced p99 ms "
                  "| paced dropped | paced CPU ms/frame | paced server batch |", "|---|---|---|---|---|---|---|---|---|"]
        for cname, loads in mres["median"].items():
            s, p = loads["saturated"], loads["paced"]
            lines.append(f"| {cname} | {s['fps']:.0f} | {s['cpu_ms_per_frame']:.2f} ({s['server_cpu_ms_per_frame']:.2f}) | "
                         f"{s['mean_server_batch'] or 1:.2f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['dropped']:.0f} | "
                         f"{p['cpu_ms_per_frame']:.2f} | {p['mean_server_batch'] or 1:.2f} |")
        lines.append("")
    (RESULTS / "triton_clients.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
