"""``skipgan-edge bench``: latency and throughput like trtexec, per backend × precision × batch.

For each configuration: ``warmup`` untimed calls, then timed calls (``iterations``, or as many as
fit in ``duration`` seconds, at least ``min_iterations``), each timed with
``time.perf_counter_ns`` around one ``infer`` call (uint8 frames in, ScoreBatch out: the whole
scorer, preprocessing and score head included). With the TensorRT backend, CUDA events split
each call into host→device, compute and device→host, as trtexec reports them.

Reported per configuration: latency min/mean/median/p90/p95/p99/max (ms per batch), throughput
(images/s = batch × calls / total time), and, against the roofline, the scorer's FLOPs per image
(counted from the ONNX graph) × throughput as a fraction of the device's matmul peak measured in
the same run, in the precision the record computes in (:func:`peak_precision`: a TensorRT INT8
engine against the GPU's int8 peak, FP16 against fp16; ``fraction_of_fp32_peak`` is kept beside it).
Every result records the machine, library versions, power mode on Jetson, joules per image where
power can be read, and the model card's fingerprint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge.bench.power import PowerSampler, jetson_power_mode
from skipgan_edge.errors import ConfigError
from skipgan_edge.runtime.backends import RUNS, BackendOptions, open_backend, resolve_backend
from skipgan_edge.runtime.backends.base import Backend
from skipgan_edge.runtime.backends.openvino import OpenVinoBackend
from skipgan_edge.runtime.timing import BenchConfig
from skipgan_edge.runtime.timing import time_backend as _time_backend

log = logging.getLogger(__name__)


def machine_info() -> dict[str, Any]:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    for mod in ("onnxruntime", "torch", "openvino", "tensorrt", "numpy"):
        try:
            m = __import__(mod)
            if hasattr(m, "__version__"):
                info[mod] = str(m.__version__)
        except ImportError:
            pass
    try:
        from skipgan_edge.runtime.engine_file import gpu_info

        info.update(gpu_info())
    except Exception as exc:  # noqa: BLE001 - no GPU is a normal answer here; why is kept (cuda-python 13 on a CUDA 12 driver)
        info["gpu"] = None
        info["gpu_error"] = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=5)
        info["driver"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    info["jetson_power_mode"] = jetson_power_mode()
    from skipgan_edge import __version__

    info["skipgan_edge"] = __version__
    return info


def time_backend(be: Backend, frames: np.ndarray, batch: int, cfg: BenchConfig) -> dict[str, Any]:
    """:func:`skipgan_edge.runtime.timing.time_backend` with the board's power sampled during the timed calls."""
    return _time_backend(be, frames, batch, cfg, sampler=PowerSampler)


def discover(export_dir: Path) -> list[tuple[str, Path]]:
    """Every scorer variant in an export folder: ONNX files and engines."""
    found = [("onnx", p) for p in sorted(Path(export_dir).glob("scorer*.onnx"))]
    found += [("engine", p) for p in sorted(Path(export_dir).glob("*.engine"))]
    if not found:
        raise ConfigError(f"no scorer*.onnx or *.engine in {export_dir}; run skipgan-edge export --out {export_dir}")
    return found


def run_bench(
    artifacts: list[tuple[str, Path]], cfg: BenchConfig, backends: list[str] | None = None, probe_peak: bool = True,
) -> dict[str, Any]:
    """Benchmark each artifact with each backend that can run it; return records + machine + roofline."""
    from skipgan_edge.bench.flops import count_flops
    from skipgan_edge.bench.peak import PeakUnavailable, matmul_peak

    records: list[dict[str, Any]] = []
    flops_cache: dict[str, dict[str, float]] = {}
    model_ids: set[str] = set()
    frames_cache: dict[tuple[int, ...], np.ndarray] = {}
    on_gpu = False
    flops_available = True
    for kind, path in artifacts:
        # of the requested backends, those that run this kind of artifact (an engine in an export
        # folder benchmarked with --backend onnxruntime,openvino still runs, on TensorRT)
        names = runnable(kind, path, backends)
        opts = BackendOptions(threads=cfg.threads, profile=kind == "engine")
        for name in names:
            # auto: the rule every verb uses; a race is timed at the sweep's middle batch size
            be = open_backend(kind, path, name, opts, batch=sorted(cfg.batches)[len(cfg.batches) // 2])
            with be:
                on_gpu = on_gpu or be.name == "tensorrt"
                shape = be.input_shape
                if shape not in frames_cache:
                    frames_cache[shape] = np.random.default_rng(0).integers(0, 256, (max(cfg.batches), *shape), dtype=np.uint8)
                onnx_path = _onnx_for(kind, path, be)
                if onnx_path is not None and str(onnx_path) not in flops_cache and flops_available:
                    try:
                        flops_cache[str(onnx_path)] = count_flops(onnx_path)
                    except ImportError:  # the runtime install has no onnx: no FLOP count, no roofline
                        flops_available = False
                model_ids.add(str(be.card.model_id))
                for b in cfg.batches:
                    if b > be.max_batch and be.name in ("tensorrt", "triton"):  # a server's max_batch_size is its limit too
                        continue
                    rec = time_backend(be, frames_cache[shape], b, cfg)
                    rec.update({"artifact": str(path), "model_id": be.card.model_id, "input": list(shape),
                                "backend_chosen_by": (be.chosen_by or {}).get("rule")})
                    if isinstance(be, OpenVinoBackend):
                        rec["inference_precision"] = be.inference_precision
                        rec["openvino_compiled_for"] = be.compiled_for(b)
                        rec["openvino_split_deconvs"] = be.split_deconvs
                    if be.precision == "fp16":
                        rec["half_precision_meant"] = half_precision_meant(be)
                    if onnx_path is not None and str(onnx_path) in flops_cache:
                        rec["flops_per_image"] = flops_cache[str(onnx_path)]["total"]
                    records.append(rec)
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine_info(), "model_ids": sorted(model_ids), "records": records,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if probe_peak:
        # each record against the peak of the device it ran on (TensorRT: the GPU; the rest: the CPU)
        peaks: dict[str, dict[str, float]] = {}
        for dev in sorted({"gpu" if r["backend"] == "tensorrt" else "cpu" for r in records}):
            try:
                peaks[dev] = matmul_peak("cuda" if dev == "gpu" else "cpu")
            except PeakUnavailable as exc:
                result.setdefault("peak_unavailable", {})[dev] = str(exc)
        result["peaks_gflops"] = peaks
        result["peak_gflops"] = peaks.get("gpu" if on_gpu else "cpu", {})
        for r in records:
            r["peak_device"] = "gpu" if r["backend"] == "tensorrt" else "cpu"
            peak = peaks.get(r["peak_device"], {})
            if "flops_per_image" in r and peak.get("fp32"):
                achieved = r["throughput"] * r["flops_per_image"] / 1e9
                r["achieved_gflops"] = achieved
                r["fraction_of_fp32_peak"] = achieved / peak["fp32"]
                prec = peak_precision(r)
                if peak.get(prec):
                    r["peak_precision"] = prec
                    r["fraction_of_peak"] = achieved / peak[prec]
                else:
                    r["peak_precision_missing"] = f"no {prec} matmul peak was measured on this {r['peak_device']}"
    result["flops"] = flops_cache
    if not flops_available:
        result["flops_unavailable"] = "onnx is not installed (pip install 'skipgan-edge[export]'): no FLOP count or roofline"
    return result


def peak_precision(rec: dict[str, Any]) -> str:
    """The matmul peak a record is measured against: the precision it computes in.

    A TensorRT engine computes in its own precision (an INT8 engine against the GPU's int8 peak, FP16 against
    fp16); on the CPU, OpenVINO's bf16 against the bf16 peak, and everything else against fp32 (the CPU
    runtimes compute FP16 files in f32, and no int8 matmul peak is probed on the CPU).
    """
    if rec.get("backend") == "tensorrt" and rec.get("precision") in ("fp32", "fp16", "int8"):
        return str(rec["precision"])
    if rec.get("inference_precision") == "bf16":
        return "bf16"
    return "fp32"


def half_precision_meant(be: Backend) -> str:
    """What running the FP16 variant meant on this backend and machine (recorded with every FP16 result)."""
    if isinstance(be, OpenVinoBackend):
        if be.inference_precision == "bf16":
            return ("bf16 compute (this CPU has bf16 and the export's bf16 gate passed; transposed convolutions run as "
                    "bf16 phase convolutions)")
        return "FP16 weights computed in f32 (no bf16 on this CPU, or the export's bf16 gate did not pass)"
    if be.name == "onnxruntime":
        return "FP16 tensors; ONNX Runtime's CPU provider computes most of them in f32 (GPU providers: fp16)"
    if be.name == "tensorrt":
        return "fp16 compute on the GPU (strongly typed engine)"
    return be.name


def _onnx_for(kind: str, path: Path, be: Backend) -> Path | None:
    if kind == "onnx":
        return Path(path)
    if kind == "engine":
        onnx = getattr(be, "meta", {}).get("onnx")
        return Path(onnx) if onnx and Path(onnx).exists() else None
    return None


def backends_for(kind: str, backends: list[str]) -> list[str]:
    """Of ``backends``, those that run this kind of artifact (``auto`` always does)."""
    return [n for n in backends if (kind, resolve_backend(kind, n)) in RUNS]


def runnable(kind: str, path: Path, backends: list[str] | None) -> list[str]:
    """Of the requested ``backends``, those that run this kind of artifact; ``auto`` when none does (an engine in an
    export folder benchmarked with --backend onnxruntime,openvino still runs, on TensorRT). One left out is a warning."""
    if kind == "triton":
        return ["auto"]
    names = backends_for(kind, backends or ["auto"]) or ["auto"]
    if backends and [n for n in backends if n not in names]:  # said, not silently swapped
        log.warning("%s (%s): %s cannot run it; timed with %s", path.name, kind, ", ".join(n for n in backends if n not in names),
                    ", ".join(names))
    return names


def format_table(result: dict[str, Any]) -> str:
    """A trtexec-style summary: one line per configuration."""
    lines = [
        f"{'backend':12s} {'prec':5s} {'batch':>5s} {'min':>8s} {'median':>8s} {'mean':>8s} {'p90':>8s} {'p95':>8s} {'p99':>8s}"
        f" {'img/s':>9s} {'%peak':>6s} {'peak':>5s} {'calls':>6s}  (latency ms per batch; %peak: of the matmul peak at that"
        " precision; calls: timed calls, the percentiles' sample)"
    ]
    for r in result["records"]:
        L = r["latency_ms"]
        frac = f"{100 * r['fraction_of_peak']:5.1f}%" if "fraction_of_peak" in r else "     -"
        lines.append(
            f"{r['backend']:12s} {r['precision']:5s} {r['batch']:5d} {L['min']:8.3f} {L['median']:8.3f} {L['mean']:8.3f} {L['p90']:8.3f}"
            f" {L['p95']:8.3f} {L['p99']:8.3f} {r['throughput']:9.1f} {frac} {r.get('peak_precision', '-'):>5s} {r['iterations']:6d}"
        )
        for k, st in r.get("stages_ms", {}).items():
            lines.append(f"{'':12s} {k:>11s} median {st['median']:.3f} ms  p99 {st['p99']:.3f} ms")
    if "peak_gflops" in result:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_gflops"].items())
        lines.append(f"measured matmul peak (GFLOP/s): {peaks}")
    for path, f in result.get("flops", {}).items():
        lines.append(f"{Path(path).name}: {f['total'] / 1e9:.4f} GFLOP/image (conv {f['conv'] / 1e9:.4f}, "
                     f"convtranspose {f['convtranspose'] / 1e9:.4f}, rest {f['rest'] / 1e9:.5f})")
    return "\n".join(lines)


def pipeline_bench(artifacts: list[tuple[str, Path]], source: str, batches: tuple[int, ...], backends: list[str] | None = None,
                   threads: int = 0) -> list[dict[str, Any]]:
    """End to end: source → pipeline → backend, no sinks; per-stage latency and frames/s."""
    from skipgan_edge.runtime.pipeline import Pipeline, PipelineConfig
    from skipgan_edge.runtime.sources import open_source

    out = []
    for kind, path in artifacts:
        for name in runnable(kind, path, backends):
            with open_backend(kind, path, name, BackendOptions(threads=threads), batch=max(batches)) as be:
                for b in batches:
                    s = Pipeline(open_source(source), be, [], PipelineConfig(batch=b, max_wait_ms=50)).run(handle_signals=False)
                    s.update({"artifact": str(path), "batch": b})
                    out.append(s)
    return out
