"""Which CPU runtime streams faster, in the whole pipeline: the check behind ``run --backend auto``.

``run --backend auto`` times ONNX Runtime and OpenVINO on the model alone at the run's batch size
and streams with the faster. The pipeline adds decoding and writing beside the model, which the
two runtimes tolerate differently, so this script checks that the runtime that wins alone also
wins in the pipeline: for each exported variant and batch size, the same video through the
whole pipeline (decode, resize, queue, batcher, runtime, JSONL sink) with each runtime,
alternately, ``--repeats`` times; medians reported, with the runtime the race picks.

Usage: python benchmarks/pipeline_runtimes.py [--export-dir DIR] [--batches 1,8,32] [--repeats 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import RESULTS, command_line, export_dir_or_demo, machine, stamp, write_json

from skipgan_edge.demo import write_demo_video
from skipgan_edge.runtime.backends import open_backend, race_cpu_runtimes
from skipgan_edge.runtime.pipeline import Pipeline, PipelineConfig
from skipgan_edge.runtime.sinks import JsonlSink
from skipgan_edge.runtime.sources import open_source

RUNTIMES = ("onnxruntime", "openvino")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", type=Path)
    ap.add_argument("--variants", default="scorer.onnx,scorer.int8.onnx")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--video-frames", type=int, default=1500)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_dir = export_dir_or_demo(args.export_dir, work)
        video = write_demo_video(work / "line.mp4", args.video_frames, ())
        for variant in args.variants.split(","):
            path = export_dir / variant
            for b in [int(x) for x in args.batches.split(",")]:
                picked, race = race_cpu_runtimes(path, b)
                fps: dict[str, list[float]] = {n: [] for n in RUNTIMES}
                backends = {n: open_backend("onnx", path, n, batch=b) for n in RUNTIMES}
                for be in backends.values():
                    be.__enter__()
                try:
                    for _ in range(args.repeats):
                        for n, be in backends.items():
                            sink = JsonlSink(work / "p.jsonl")
                            s = Pipeline(open_source(str(video)), be, [sink], PipelineConfig(batch=b, max_wait_ms=20)).run(handle_signals=False)
                            fps[n].append(s["throughput_fps"])
                            (work / "p.jsonl").unlink()
                finally:
                    for be in backends.values():
                        be.__exit__(None, None, None)
                med = {n: float(np.median(v)) for n, v in fps.items()}
                best = max(med, key=med.__getitem__)
                row = {"variant": variant, "batch": b, "pipeline_fps": med, "pipeline_runs": fps, "race_ms": race, "race_pick": picked,
                       "pipeline_best": best}
                rows.append(row)
                print(row, flush=True)
    res = {"benchmark": "pipeline_runtimes", "args": {k: str(v) for k, v in vars(args).items()}, "command": command_line(), "date": stamp(),
           "machine": machine(), "rows": rows}
    write_json("pipeline_runtimes.json", res)
    m = res["machine"]
    lines = ["# The runtime `run --backend auto` picks, against the whole pipeline with each (demo model, 64×64 mp4v → 32×32)", "",
             f"Command: `{res['command']}`  ", f"Machine: {m['cpu']} ({m['cores']} cores), {res['date']}", "",
             f"Pipeline frames/s: median of {args.repeats} alternating runs over a {args.video_frames}-frame video. Race: the model alone, "
             "ms per call, as `run` times it at start-up.", "",
             "| model | batch | race: ONNX Runtime / OpenVINO ms | race picks | pipeline ONNX Runtime fps | pipeline OpenVINO fps "
             "| faster in the pipeline |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['batch']} | {r['race_ms']['onnxruntime']:.3f} / {r['race_ms']['openvino']:.3f} | {r['race_pick']} | "
                     f"{r['pipeline_fps']['onnxruntime']:.0f} | {r['pipeline_fps']['openvino']:.0f} | {r['pipeline_best']} |")
    agree = sum(r["race_pick"] == r["pipeline_best"] for r in rows)
    lines += ["", f"The race picked the runtime that was faster in the pipeline in {agree} of {len(rows)} cases."]
    (RESULTS / "pipeline_runtimes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
