"""Video decoding cost with FFmpeg's default decoder threads against one thread.

Why it matters: the pipeline decodes in a capture thread while the model computes on the same
cores (ONNX Runtime, OpenVINO or torch on the CPU). CPU time spent decoding is CPU time the
model does not get, so what counts is the CPU per frame, not only the wall time.

For each frame size and codec (mp4v, MJPG, both written here by OpenCV from a moving textured
pattern) the script decodes the whole video with ``cv2.CAP_PROP_N_THREADS`` left at FFmpeg's
default (a thread per core) and set to 1, ``--repeats`` times alternately, and records the
median wall time and process CPU time per frame (user + system, all threads). Small frames get
more frames (``--pixels`` per video in all, between 150 and 3,000 frames) so that every
measurement lasts long enough to time.

Usage: python benchmarks/decode_threads.py [--pixels 5e7] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import numpy as np
from common import RESULTS, command_line, machine, stamp, write_json

SIZES = [(64, 64), (320, 240), (640, 480), (1280, 720), (1920, 1080)]
CODECS = [("mp4v", ".mp4"), ("MJPG", ".avi")]


def write_video(path: Path, w: int, h: int, fourcc: str, frames: int) -> None:
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 30, (w, h))
    for i in range(frames):
        vw.write(np.roll(base, 2 * i, axis=1))
    vw.release()


def decode(path: Path, threads: int | None) -> tuple[float, float]:
    """(wall µs, CPU µs) per frame."""
    params = [] if threads is None else [cv2.CAP_PROP_N_THREADS, threads]
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    c0, t0 = time.process_time(), time.perf_counter()
    n = 0
    while cap.read()[0]:
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cap.release()
    return wall / n * 1e6, cpu / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pixels", type=float, default=5e7, help="pixels per test video (sets its frame count)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in SIZES:
            for fourcc, suffix in CODECS:
                path = Path(tmp) / f"v{w}x{h}{suffix}"
                write_video(path, w, h, fourcc, int(np.clip(args.pixels / (w * h), 150, 3000)))
                runs: dict[str, list[tuple[float, float]]] = {"default": [], "one": []}
                for _ in range(args.repeats):
                    runs["default"].append(decode(path, None))
                    runs["one"].append(decode(path, 1))
                med = {k: np.median(np.array(v), axis=0) for k, v in runs.items()}
                row = {"width": w, "height": h, "codec": fourcc,
                       "default_wall_us": float(med["default"][0]), "default_cpu_us": float(med["default"][1]),
                       "one_wall_us": float(med["one"][0]), "one_cpu_us": float(med["one"][1])}
                rows.append(row)
                print(row, flush=True)
    res = {"benchmark": "decode_threads", "args": vars(args), "command": command_line(), "date": stamp(), "machine": machine(),
           "opencv": cv2.__version__, "rows": rows}
    write_json("decode_threads.json", res)
    m = res["machine"]
    lines = ["# FFmpeg decoder threads: default (one per core) against one", "",
             f"Command: `{res['command']}`  ", f"Machine: {m['cpu']} ({m['cores']} cores), OpenCV {cv2.__version__}, {res['date']}", "",
             "Medians per frame over the whole video. CPU = user + system time of the process (every thread).", "",
             "| frame | codec | default wall µs | default CPU µs | 1 thread wall µs | 1 thread CPU µs | CPU saved by 1 thread |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        saved = 1 - r["one_cpu_us"] / r["default_cpu_us"]
        lines.append(f"| {r['width']}×{r['height']} | {r['codec']} | {r['default_wall_us']:.0f} | {r['default_cpu_us']:.0f} | "
                     f"{r['one_wall_us']:.0f} | {r['one_cpu_us']:.0f} | {saved:.0%} |")
    lines += ["", "The runtime decodes video files and RTSP with one thread by default (`--decode-threads 1`); "
                  "`--decode-threads 0` restores FFmpeg's default where decoding large frames is the bottleneck."]
    (RESULTS / "decode_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
