"""Roofline projection of the scorer variants on Orin Nano, Orin NX and AGX Orin (no board needed).

    python benchmarks/jetson_projection.py [--export-dir demo_out/export] [--batch 8]

Writes results/jetson_projection.{json,md} and the projected column of benchmarks/JETSON.md (between
its PROJECTION markers). A projection from FLOPs, bytes moved and NVIDIA's published peaks
(skipgan_edge/bench/projection.py says how); the board's real figure comes from the one command in
JETSON.md.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from common import RESULTS, command_line, export_dir_or_demo, stamp, write_json

from skipgan_edge.bench.flops import count_flops
from skipgan_edge.bench.projection import BOARDS, bytes_moved, project
from skipgan_edge.export.onnx import card_from_onnx

JETSON_MD = Path(__file__).resolve().parent / "JETSON.md"
VARIANTS = (("fp32", "scorer.onnx"), ("fp16", "scorer.fp16.onnx"), ("int8", "scorer.int8.onnx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--export-dir", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        export = export_dir_or_demo(args.export_dir, Path(work))
        import onnx

        rows, models = [], {}
        for prec, name in VARIANTS:
            path = export / name
            if not path.exists():
                continue
            m = onnx.load(str(path))
            flops, moved = count_flops(m), bytes_moved(m, args.batch)
            card = card_from_onnx(m)
            models[prec] = {"file": name, "gflop_per_image": flops["total"] / 1e9, "mb_moved_per_batch": moved["total"] / 1e6,
                            "model_id": card.model_id, "input": {"isize": card.input.isize, "channels": card.input.channels}}
            rows += [project(flops, moved, b, prec, args.batch) for b in BOARDS]
    res = {"benchmark": "jetson_projection", "kind": "projection (roofline), not a measurement", "batch": args.batch,
           "models": models, "boards": [b.__dict__ for b in BOARDS], "rows": rows, "command": command_line(), "date": stamp()}
    write_json("jetson_projection.json", res)
    table = ["| board | precision | projected ms/batch | projected images/s | bound |", "|---|---|---|---|---|"]
    table += [f"| {r['board']} | {r['precision']} | {r['ms_per_batch']:.4f} | {r['images_per_s']:,.0f} | {r['bound']} |" for r in rows]
    sizes = ", ".join(f"{p}: {v['gflop_per_image']:.4f} GFLOP/image, {v['mb_moved_per_batch']:.2f} MB/batch" for p, v in models.items())
    head = f"Projected (roofline, batch {args.batch}; {sizes}). `{res['command']}`, {res['date']}."
    (RESULTS / "jetson_projection.md").write_text("# Jetson projection\n\n" + head + "\n\n" + "\n".join(table) + "\n")
    text = JETSON_MD.read_text()
    block = "<!-- PROJECTION START -->\n" + head + "\n\n" + "\n".join(table) + "\n<!-- PROJECTION END -->"
    text = re.sub(r"<!-- PROJECTION START -->.*<!-- PROJECTION END -->", lambda _: block, text, flags=re.S)
    JETSON_MD.write_text(text)
    print("\n".join(table))


if __name__ == "__main__":
    main()
