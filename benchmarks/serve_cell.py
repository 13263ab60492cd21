"""On the line: serve with four cameras against the backend alone, the MQTT sink's cost, memory over a long cell run.

1. ``serve``, four video-file cameras (never dropping) on one model, batch 8, against the backend alone at batch 8 on
   the same number of pre-decoded frames; alternated ``--repeats`` times, ratio = median of the pairs' ratios.
   Target: >= 0.85.
2. The MQTT sink: ``run`` on one video with and without ``--mqtt`` (every frame, QoS 1) to a Mosquitto started on
   loopback, alternated; cost = 1 - median(with / without). Target: <= 5 %.
3. Memory: ``serve`` with four looping cameras for ``--long-s`` seconds, its RSS sampled every 5 s.

Usage: python benchmarks/serve_cell.py [--export-dir DIR] [--repeats 5] [--long-s 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import RESULTS, command_line, export_dir_or_demo, machine, rss_mb, stamp, write_json

from skipgan_edge.bench.latency import BenchConfig, time_backend
from skipgan_edge.demo import write_demo_video
from skipgan_edge.runtime.backends import open_backend
from skipgan_edge.runtime.preprocess import Preprocessor
from skipgan_edge.runtime.sources import open_source

CLI = [sys.executable, "-m", "skipgan_edge"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cell(path: Path, onnx: Path, videos: list[Path], backend: str, loop: bool = False) -> Path:
    text = f'[serve]\nbackend = "{backend}"\nbatch = 8\nmax_wait_ms = 20\nsummary_every_s = 30\nreload = false\n'
    for i, v in enumerate(videos):
        text += f'[[camera]]\nid = "cam{i}"\nsource = "{v}"\nonnx = "{onnx}"\n' + ("loop = true\n" if loop else "")
    path.write_text(text)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--video-frames", type=int, default=750, help="frames per camera video")
    ap.add_argument("--long-s", type=float, default=300.0)
    ap.add_argument("--mqtt-frames", type=int, default=12000, help="frames per run in the MQTT comparison")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--parts", default="serve,mqtt,memory", help="measure only these; the others are kept from the last results")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    old = json.loads((RESULTS / "serve_cell.json").read_text()) if (RESULTS / "serve_cell.json").exists() else {}
    res: dict[str, object] = {"benchmark": "serve_cell", "args": {k: str(v) for k, v in vars(args).items()}, "command": command_line(),
                              "date": stamp(), "machine": machine(),
                              **{k: old[k] for k in ("serve", "mqtt", "memory") if k in old and k not in parts}}
    if parts != {"serve", "mqtt", "memory"}:  # --parts none: only rewrite the table from the recorded results
        res["dates"] = {**old.get("dates", {}), **dict.fromkeys(parts - {"none"}, stamp())}
        if "none" in parts:
            res["command"], res["date"] = old.get("command", res["command"]), old.get("date", res["date"])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx = (export_dir_or_demo(args.export_dir, work) / "scorer.onnx").resolve()
        videos = [write_demo_video(work / f"cam{i}.mp4", args.video_frames, (), seed=20 + i) for i in range(4)]
        pre = Preprocessor(32, 3)
        frames = np.concatenate([pre(f.image).inputs for v in videos for f in open_source(str(v)).frames() if f.image is not None])
        conf = cell(work / "cell.toml", onnx, videos, args.backend)
        # 1. serve against the backend alone
        alone, served = [], []
        with open_backend("onnx", onnx, args.backend) as be:
            for _ in range(args.repeats if "serve" in parts else 0):
                alone.append(time_backend(be, frames, 8, BenchConfig(warmup=5, iterations=-(-len(frames) // 8)))["throughput"])
                p = subprocess.run([*CLI, "serve", "--config", str(conf), "--json"], capture_output=True, text=True, cwd=work, check=True)
                s = json.loads(p.stdout)
                m = next(iter(s["models"].values()))
                assert m["scored"] == len(frames), (m["scored"], len(frames))
                served.append(float(m["throughput_fps"]))
                print(f"backend alone {alone[-1]:.0f} img/s, serve 4 cameras {served[-1]:.0f} frames/s "
                      f"(shared batches {m['shared_batches']}/{m['batches']})", flush=True)
        ratios = [s / a for s, a in zip(served, alone, strict=True)]
        if "serve" in parts:
            res["serve"] = {"backend_images_per_s": float(np.median(alone)), "serve_frames_per_s": float(np.median(served)),
                            "pair_ratios": ratios, "ratio": float(np.median(ratios)), "frames_per_run": len(frames)}
        # 2. MQTT cost
        mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        port = free_port()
        (work / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([mosq, "-c", str(work / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        # long enough (--mqtt-frames, looping the video) that connecting and the final acknowledgements do not count
        base = [*CLI, "run", "--onnx", str(onnx), "--backend", args.backend, "--source", str(videos[0]), "--batch", "8", "--json",
                "--jsonl", str(work / "m.jsonl"), "--loop", "--max-frames", str(args.mqtt_frames)]
        without, with_mqtt = [], []
        try:
            for _ in range(args.repeats if "mqtt" in parts else 0):
                for target, extra in ((without, []), (with_mqtt, ["--mqtt", f"mqtt://127.0.0.1:{port}/bench"])):
                    (work / "m.jsonl").unlink(missing_ok=True)
                    s = json.loads(subprocess.run(base + extra, capture_output=True, text=True, check=True).stdout)
                    if extra:
                        st = next(iter(s["sinks"].values()))
                        assert st["published"] == s["scored"] and st["dropped"] == 0, st
                    target.append(float(s["throughput_fps"]))
                print(f"run without MQTT {without[-1]:.0f} frames/s, with {with_mqtt[-1]:.0f}", flush=True)
        finally:
            broker.terminate()
            broker.wait()
        mr = [w / o for w, o in zip(with_mqtt, without, strict=True)]
        if "mqtt" in parts:
            res["mqtt"] = {"without_fps": float(np.median(without)), "with_fps": float(np.median(with_mqtt)), "pair_ratios": mr,
                           "frames_per_run": args.mqtt_frames,
                           "cost": 1 - float(np.median(mr))}
        # 3. memory over a long run
        if "memory" in parts:
            conf_loop = cell(work / "loop.toml", onnx, videos, args.backend, loop=True)
            proc = subprocess.Popen([*CLI, "serve", "--config", str(conf_loop), "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True, cwd=work)
            samples = []
            t0 = time.time()
            while time.time() - t0 < args.long_s:
                time.sleep(5.0)
                samples.append({"t_s": round(time.time() - t0, 1), "rss_mb": rss_mb(proc.pid)})
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
            s = json.loads(out)
            scored = sum(c["scored"] for c in s["cameras"].values())
            warm = [x for x in samples if x["t_s"] >= 30]
            res["memory"] = {"seconds": args.long_s, "frames": scored, "samples": samples,
                             "rss_at_30s_mb": warm[0]["rss_mb"], "rss_at_end_mb": warm[-1]["rss_mb"],
                             "rss_growth_mb": warm[-1]["rss_mb"] - warm[0]["rss_mb"]}
            print("memory:", {k: v for k, v in res["memory"].items() if k != "samples"}, flush=True)  # type: ignore[union-attr]
    write_json("serve_cell.json", res)
    sv, mq, mem = res["serve"], res["mqtt"], res["memory"]
    assert isinstance(sv, dict) and isinstance(mq, dict) and isinstance(mem, dict)
    q1, q3 = np.percentile(sv["pair_ratios"], [25, 75])
    lines = [f"# On the line: serve, MQTT and memory ({args.backend} on the CPU, demo model)", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']['cpu']} ({res['machine']['cores']} cores), {res['date']}", "",  # type: ignore[index]
             *([f"Parts measured at different times: {res['dates']}.", ""] if "dates" in res else []),
             "| measure | result | target |", "|---|---|---|",
             f"| serve, 4 video cameras on one model, batch 8, vs the backend alone at batch 8 ({sv['frames_per_run']} frames per run, "
             f"{len(sv['pair_ratios'])} alternated pairs) | {sv['serve_frames_per_s']:.0f} vs {sv['backend_images_per_s']:.0f} frames/s: "
             f"**{sv['ratio']:.3f}** (middle half {q1:.3f}-{q3:.3f}) | >= 0.85 |",
             f"| MQTT sink, every frame, QoS 1, local Mosquitto, default 20 ms flush window (run, batch 8, {mq.get('frames_per_run', '?')} "
             f"frames per run, {len(mq['pair_ratios'])} alternated pairs) | "
             f"{mq['with_fps']:.0f} vs {mq['without_fps']:.0f} frames/s: cost **{100 * mq['cost']:.1f} %** (pair ratios' middle half "
             f"{np.percentile(mq['pair_ratios'], 25):.3f}-{np.percentile(mq['pair_ratios'], 75):.3f}) | <= 5 % |",
             f"| memory, serve with 4 looping cameras for {mem['seconds']:.0f} s ({mem['frames']} frames) | RSS {mem['rss_at_30s_mb']:.1f} MB "
             f"at 30 s, {mem['rss_at_end_mb']:.1f} MB at the end (**{mem['rss_growth_mb']:+.1f} MB**) | flat |"]
    (RESULTS / "serve_cell.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
