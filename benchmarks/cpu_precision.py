"""Half precision on the CPU: each of our variants, as we run it, against OpenVINO's own defaults.

    python benchmarks/cpu_precision.py [--export-dir demo_out/export] [--batch 64] [--rounds 9]

On the same exported scorer, at one batch size, in rounds whose calls alternate between the
configurations one call at a time (this VM's speed jumps between states within seconds, by up to
25 %; a ratio is taken within a round, and the median over rounds is reported with its spread):

* reference: OpenVINO's defaults on ``scorer.onnx`` (no precision hint: bf16 on a CPU with AMX or
  AVX512-BF16, silently);
* ``fp16 as we run it``: ``scorer.fp16.onnx`` through our OpenVINO backend with ``auto`` precision
  (bf16 where the export's bf16 gate passed and the CPU has bf16; f32 otherwise);
* ``fastest gated``: the fastest of our variants whose accuracy gate passed (INT8 on this CPU);
* ``fp32 ours`` against OpenVINO pinned to f32 on ``scorer.onnx``.

"As we run it" includes the shape-specialised compile (runtime/backends/openvino.py): our backend
compiles the model for the batch size it is told, where OpenVINO's defaults compile the ONNX file's
dynamic batch. So the table also gives each against OpenVINO's defaults on ``scorer.onnx`` reshaped
to the same batch size by hand (``ov_default_static``): those rows are what we do beyond the shape
(in bf16, the transposed convolutions split into phase convolutions: runtime/backends/openvino.py).

Writes results/cpu_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, command_line, export_dir_or_demo, machine, stamp, write_json

from skipgan_edge.runtime.backends import BackendOptions, open_backend
from skipgan_edge.runtime.backends.openvino import cpu_has_bf16


class RawOpenVino:
    """OpenVINO with its own defaults (or one explicit precision hint), no skipgan-edge code in the loop."""

    def __init__(self, path: Path, precision: str | None, static_batch: int = 0) -> None:
        import openvino as ov

        cfg = {"PERFORMANCE_HINT": "LATENCY"}
        if precision:
            cfg["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        model = core.read_model(str(path))
        if static_batch:
            shape = model.input("images").get_partial_shape()
            shape[0] = static_batch
            model.reshape({"images": shape})
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()
        t = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
        self.precision = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(name, name)

    def infer(self, x: np.ndarray) -> Any:
        return self.request.infer({"images": x})


def round_ms(fns: dict[str, Any], x: np.ndarray, seconds: float) -> dict[str, float]:
    """Median ms per call of each configuration, calls interleaved one by one (A, B, C, A, B, C, ...): the VM's
    speed jumps between states within seconds, and only interleaving at this grain gives each the same states."""
    for fn in fns.values():
        for _ in range(3):
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or min(len(v) for v in times.values()) < 5:
        for k, fn in fns.items():
            t0 = time.perf_counter_ns()
            fn(x)
            times[k].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--export-dir", type=Path)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        exp = export_dir_or_demo(args.export_dir, Path(work))
        report = json.loads((exp / "export_report.json").read_text())
        x = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
        gated = [n for n, v in report["variants"].items() if v["gate"] in ("reference", "passed")]
        ours = {}
        for name, file in (("fp32", "scorer.onnx"), ("fp16", "scorer.fp16.onnx"), ("int8", "scorer.int8.onnx")):
            if name in gated:
                be = open_backend("onnx", exp / file, "openvino", BackendOptions(), batch=args.batch)
                be.__enter__()
                x = np.random.default_rng(0).integers(0, 256, (args.batch, *be.input_shape), dtype=np.uint8)
                ours[name] = be
        raw = {"ov_default": RawOpenVino(exp / "scorer.onnx", None), "ov_f32": RawOpenVino(exp / "scorer.onnx", "f32"),
               "ov_default_static": RawOpenVino(exp / "scorer.onnx", None, args.batch)}
        rows: list[dict[str, float]] = []
        for r in range(args.rounds):
            ms = round_ms({k: v.infer for k, v in {**raw, **ours}.items()}, x, args.seconds * len(raw | ours))
            rows.append(ms)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), flush=True)
        compiled_for = {n: be.compiled_for(args.batch) for n, be in ours.items()}  # type: ignore[attr-defined]
        split = {n: be.split_deconvs for n, be in ours.items()}  # type: ignore[attr-defined]
        for be in ours.values():
            be.__exit__(None, None, None)

    def ratio(num: str, den: str) -> dict[str, float]:
        rs = sorted(row[den] / row[num] for row in rows)  # speed-up of `num` over `den`
        return {"median": statistics.median(rs), "q1": rs[len(rs) // 4], "q3": rs[(3 * len(rs)) // 4]}

    fastest = min(ours, key=lambda n: statistics.median(row[n] for row in rows))
    results = {
        "fp16_as_we_run_it_vs_ov_default": ratio("fp16", "ov_default") if "fp16" in ours else None,
        "fastest_gated_vs_ov_default": {"variant": fastest, **ratio(fastest, "ov_default")},
        "fp32_ours_vs_ov_f32": ratio("fp32", "ov_f32"),
        # not targets: the same comparisons with OpenVINO's defaults compiled for the same batch size (what we do beyond the shape)
        "fp16_as_we_run_it_vs_ov_default_static": ratio("fp16", "ov_default_static") if "fp16" in ours else None,
        "fastest_gated_vs_ov_default_static": {"variant": fastest, **ratio(fastest, "ov_default_static")},
    }
    targets = {"fp16_as_we_run_it_vs_ov_default": 1.0, "fastest_gated_vs_ov_default": 1.5, "fp32_ours_vs_ov_f32": 0.95}
    precisions = {**{k: r.precision for k, r in raw.items()},
                  **{n: getattr(be, "inference_precision", "?") for n, be in ours.items()}}
    res = {"benchmark": "cpu_precision", "batch": args.batch, "rounds": rows, "ratios": results, "targets": targets,
           "inference_precision": precisions, "ours_compiled_for": compiled_for, "ours_split_deconvs": split, "cpu_has_bf16": cpu_has_bf16(),
           "fp16_cpu_bf16_gate": report["variants"].get("fp16", {}).get("cpu_bf16"),
           "model_id": report["model_id"], "machine": machine(), "command": command_line(), "date": stamp()}
    write_json("cpu_precision.json", res)
    lines = [f"# Half precision on the CPU (batch {args.batch}, {args.rounds} interleaved rounds, median speed-up [q1, q3])", "",
             f"`{res['command']}`, {res['date']}; model {res['model_id']}; CPU bf16: {res['cpu_has_bf16']}; "
             f"inference precision: {', '.join(f'{k} {v}' for k, v in precisions.items())}.", "",
             f"Ours compiled for: {', '.join(f'{k} {v}' for k, v in compiled_for.items())} (shape-specialised); ov_default and "
             f"ov_f32 are OpenVINO's defaults on the file's dynamic batch; ov_default_static is scorer.onnx reshaped to batch "
             f"{args.batch} by hand, so the rows against it are what we do beyond the shape (for FP16 in bf16: also the "
             f"transposed convolutions split into phase convolutions, {split.get('fp16', 0)} of them).", "",
             "| comparison | speed-up | target | met |", "|---|---|---|---|"]
    for k, v in results.items():
        if v is None:
            continue
        label = k.replace("_", " ") + (f" ({v['variant']})" if "variant" in v else "")
        target, met = (f"≥ {targets[k]}", "yes" if v["median"] >= targets[k] else "no") if k in targets else ("(no target)", "")
        lines.append(f"| {label} | {v['median']:.3f}× [{v['q1']:.3f}, {v['q3']:.3f}] | {target} | {met} |")
    (RESULTS / "cpu_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
