"""``skipgan-edge export``: model folder → scorer.onnx (+ fp16, int8), accuracy gate, report.

The accuracy gate evaluates every variant with ONNX Runtime on held-out data (the test split of
the data the model was trained on, as its card records, or ``--eval-data``): AUROC per variant,
the drop against FP32, and the Spearman rank correlation of the scores against FP32. A variant
whose AUROC drops by more than ``max_drop`` (default 0.01) fails: by default its file is deleted
and export exits non-zero; with ``--no-gate`` the file is kept and marked failed in
``export_report.json``. No file is shipped silently worse than FP32.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge import calibration
from skipgan_edge.card import ModelCard, atomic_write_json, check_writable, load_card
from skipgan_edge.data.datasets import Split, load_data
from skipgan_edge.errors import CalibrationError, DataError, ExportError, require
from skipgan_edge.export.engine import HELDOUT_FILE
from skipgan_edge.export.onnx import export_onnx
from skipgan_edge.export.precision import head_violations, to_fp16, to_int8
from skipgan_edge.metrics import auroc, recall_at_fpr, spearman
from skipgan_edge.service.triton_repo import DEFAULT_MODEL_NAME, TritonSettings, write_repository

log = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.01
GATE_BATCH = 64  # the bf16 gate scores in batches of eval's size (evaluate.EVAL_BATCH)


def eval_split_for(card: ModelCard, eval_data: str | None) -> tuple[str, Split, Split]:
    """The held-out labelled split the gate uses, and the validation split (for choices made before the gate)."""
    source = eval_data or str(card.data.get("source", ""))
    if not eval_data and not source.startswith("fmnist:") and not Path(source).exists():
        raise DataError(
            f"the model's training data {source} is not on this machine; pass --eval-data DIR "
            "(an MVTec-style folder with test/good and test/<defect>) for the accuracy gate"
        )
    ds = load_data(source, card.input.isize, card.input.channels, seed=card.config.train.seed)
    if ds.test is None or not ds.test.has_anomalies:
        raise DataError(f"{source} has no labelled test split (test/good and test/<defect>) for the accuracy gate")
    return source, ds.test, ds.val


def choose_calibration(fp32: Path, out: Path, calib: np.ndarray, val: Split) -> tuple[str, dict[str, Any]]:
    """``--calib-method auto``: quantize with max, entropy and percentile; keep the one whose scores on
    the validation split (never the test split) agree best with FP32 (Spearman; ties: smaller max
    relative error). Label-free, so it works when validation has no anomalies."""
    from skipgan_edge.export.precision import CALIBRATION_METHODS
    from skipgan_edge.runtime.backends import CPU_ONLY, open_backend

    with open_backend("onnx", fp32, "onnxruntime", CPU_ONLY) as be:
        ref = be.infer_all(val.images).score
    results: dict[str, Any] = {}
    for m in CALIBRATION_METHODS:
        path = out.with_name(f".{out.stem}.{m}.onnx")
        to_int8(fp32, path, calib, m)
        with open_backend("onnx", path, "onnxruntime", CPU_ONLY) as be:
            got = be.infer_all(val.images).score
        rel = float((np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)).max())
        results[m] = {"spearman_vs_fp32_on_val": spearman(got, ref), "max_rel_error_on_val": rel, "file": path}
    best = max(results, key=lambda m: (round(results[m]["spearman_vs_fp32_on_val"], 4), -results[m]["max_rel_error_on_val"]))
    results[best]["file"].replace(out)
    for m, r in results.items():
        if m != best:
            Path(r["file"]).unlink(missing_ok=True)
        r.pop("file")
    log.info("INT8 calibration: chose %s (%s)", best, ", ".join(f"{m} ρ={r['spearman_vs_fp32_on_val']:.4f}" for m, r in results.items()))
    return best, results


def gate_variants(files: dict[str, Path], split: Split, max_drop: float) -> dict[str, dict[str, Any]]:
    """AUROC, drop against FP32 and rank correlation for each variant (ONNX Runtime, CPU)."""
    from skipgan_edge.runtime.backends import CPU_ONLY, open_backend

    scores: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, path in files.items():
        with open_backend("onnx", path, "onnxruntime", CPU_ONLY) as be:
            t0 = time.perf_counter()
            res = be.infer_all(split.images)
            dt = time.perf_counter() - t0
        scores[name] = res.score
        recall, fpr = recall_at_fpr(split.labels, res.score, 0.01)
        out[name] = {"file": str(path), "auroc": auroc(split.labels, res.score), "recall_at_1pct_fpr": recall, "fpr_reached": fpr,
                     "eval_seconds": round(dt, 3)}
    ref = out["fp32"]["auroc"]
    for name, rec in out.items():
        rec["auroc_drop"] = ref - rec["auroc"]
        rec["spearman_vs_fp32"] = spearman(scores[name], scores["fp32"])
        if name == "fp32":
            rec["gate"] = "reference"
        else:
            rec["gate"] = "passed" if rec["auroc_drop"] <= max_drop else "failed"
    return out


def export_all(
    model_dir: Path, out_dir: Path, *, fp16: bool = False, int8: bool = False, calib: Path | None = None,
    calib_data: str | None = None, eval_data: str | None = None, max_drop: float = DEFAULT_MAX_DROP,
    enforce_gate: bool = True, calibration_method: str = "auto", engine: bool = False,
    triton: bool = False, batch: tuple[int, int, int] = (1, 8, 32), triton_settings: TritonSettings | None = None,
    triton_name: str = DEFAULT_MODEL_NAME,
) -> dict[str, Any]:
    """Export a model folder; returns the report written to ``out_dir/export_report.json``."""
    for module in ("torch", "safetensors", "onnx"):
        require(module, "export", "skipgan-edge export")
    card = load_card(model_dir)
    out_dir = Path(out_dir)
    if triton and engine and batch[0] != 1:
        raise ExportError(f"a Triton plan needs a batch profile starting at 1 (Triton sends any batch from 1), got --batch "
                          f"{','.join(map(str, batch))}: use --batch 1,{batch[1]},{batch[2]}")
    check_writable(out_dir / "export_report.json", "--out")
    cs = None
    if int8:
        if calib is not None:
            cs = calibration.load(calib)
            calibration.check_matches(cs, card, calib)
        elif calib_data is not None:
            cs = calibration.build(calib_data, 512, card.input.isize, card.input.channels)
            calibration.save(cs, out_dir / "calib.npz")
        else:
            raise CalibrationError(
                "--int8 needs real calibration frames (Q/DQ scales without them are random): "
                "pass --calib calib.npz (from skipgan-edge calibrate) or --calib-data DIR_OR_VIDEO"
            )
    source, split, val = eval_split_for(card, eval_data)
    t0 = time.perf_counter()
    files: dict[str, Path] = {"fp32": out_dir / "scorer.onnx"}
    report: dict[str, Any] = {"model": str(model_dir), "model_id": card.model_id, "eval_data": source,
                              "eval_images": len(split), "eval_anomalous": int(split.labels.sum())}
    report["export"] = export_onnx(model_dir, files["fp32"], split.images[:256])
    import onnx

    if fp16:
        sample = cs.images if cs is not None else split.images[split.labels == 0]
        files["fp16"] = to_fp16(files["fp32"], out_dir / "scorer.fp16.onnx", sample)
    if int8 and cs is not None:
        calib_file = str(calib) if calib else str(out_dir / "calib.npz")
        if calibration_method == "auto":
            method, selection = choose_calibration(files["fp32"], out_dir / "scorer.int8.onnx", cs.images, val)
            report["calibration"] = {**cs.manifest, "method": method, "selected_by": "Spearman vs FP32 on the validation split",
                                     "candidates": selection, "file": calib_file}
        else:
            to_int8(files["fp32"], out_dir / "scorer.int8.onnx", cs.images, calibration_method)
            report["calibration"] = {**cs.manifest, "method": calibration_method, "file": calib_file}
        files["int8"] = out_dir / "scorer.int8.onnx"
    for path in files.values():
        bad = head_violations(onnx.load(str(path)))
        if bad:
            raise ExportError(f"{path}: the score head is not FP32 ({', '.join(bad[:3])}); please report this")
    report["tensorrt_check"] = tensorrt_check(files, batch)
    report["variants"] = gate_variants(files, split, max_drop)
    report["heldout"] = write_heldout(out_dir / HELDOUT_FILE, split, files["fp32"], max_drop)
    if "fp16" in files:
        report["variants"]["fp16"]["cpu_bf16"] = gate_cpu_bf16(files["fp16"], split, report["variants"]["fp32"]["auroc"], max_drop)
    report["gate"] = {"max_auroc_drop": max_drop, "enforced": enforce_gate}
    report["seconds"] = round(time.perf_counter() - t0, 2)
    failed = [n for n, r in report["variants"].items() if r["gate"] == "failed"]
    if failed and enforce_gate:
        for n in failed:
            Path(report["variants"][n]["file"]).unlink(missing_ok=True)
            report["variants"][n]["file"] = None
            report["variants"][n]["removed"] = True
    if engine:
        from skipgan_edge.export.engine import BuildConfig, build_engine

        report["engines"] = {}
        for name, path in files.items():
            if report["variants"][name]["gate"] == "failed" and enforce_gate:
                continue
            eng = path.with_suffix(".engine")
            meta = build_engine(path, eng, BuildConfig(batch=batch, plan=triton))
            report["engines"][name] = str(eng)
            if triton:
                report.setdefault("plans", {})[name] = meta["plan"]
    if triton:
        plans = report.get("plans", {})
        plan_of = next((p for p in ("int8", "fp16", "fp32") if p in plans), None)  # the lowest gated precision with a plan
        served = Path(plans[plan_of]) if plan_of else files["fp32"]
        settings = triton_settings or TritonSettings.for_profile(batch)
        from skipgan_edge.runtime.artifact import Artifact

        served_card = Artifact("onnx", files[plan_of or "fp32"]).read_card()  # the served variant's own card (its precision and export records)
        rv = write_repository(served, out_dir / "triton", served_card, settings, triton_name)
        report["triton"] = {"repository": str(rv.repository), "model": rv.model, "version": rv.version, "new_version": rv.new,
                            "served": str(served), "platform": "tensorrt_plan" if served.suffix == ".plan" else "python"}
    atomic_write_json(out_dir / "export_report.json", report)
    report["report"] = str(out_dir / "export_report.json")
    if failed and enforce_gate:
        worst = max(failed, key=lambda n: report["variants"][n]["auroc_drop"])
        raise ExportError(
            f"accuracy gate: {', '.join(failed)} AUROC dropped by {report['variants'][worst]['auroc_drop']:.4f} "
            f"(> {max_drop}); file(s) removed; see {out_dir / 'export_report.json'} (--no-gate keeps them marked failed)"
        )
    return report


HELDOUT_MAX_FRAMES = 512
HELDOUT_MAX_BYTES = 64 << 20


def write_heldout(path: Path, split: Split, fp32: Path, max_drop: float) -> dict[str, Any]:
    """The gate's held-out frames, for ``build`` to check an engine against on the device (``heldout.npz``).

    Every anomalous frame and as many normal ones as fit (at most 512 frames and 64 MiB in all, anomalies
    first, each class in split order), their labels, the FP32 scorer's scores on them (ONNX Runtime) and the
    gate's ``max_drop``: the engine must keep its AUROC within ``max_drop`` of that FP32 AUROC.
    """
    from skipgan_edge.runtime.backends import CPU_ONLY, open_backend

    per_frame = int(np.prod(split.images.shape[1:]))
    cap = max(16, min(HELDOUT_MAX_FRAMES, HELDOUT_MAX_BYTES // max(per_frame, 1)))
    anomalous, normal = np.flatnonzero(split.labels == 1), np.flatnonzero(split.labels == 0)
    n_anom = min(len(anomalous), cap // 2) if len(normal) else min(len(anomalous), cap)
    take = np.sort(np.concatenate([anomalous[:n_anom], normal[: cap - n_anom]]))
    images, labels = np.ascontiguousarray(split.images[take]), split.labels[take].astype(np.int8)
    with open_backend("onnx", fp32, "onnxruntime", CPU_ONLY) as be:
        fp32_score = be.infer_all(images).score
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels, fp32_score=fp32_score.astype(np.float32),
                        max_drop=np.float64(max_drop))
    tmp.replace(path)
    return {"file": str(path), "frames": len(images), "anomalous": int(labels.sum()), "max_auroc_drop": max_drop,
            "fp32_auroc": auroc(labels, fp32_score)}


def gate_cpu_bf16(fp16: Path, split: Split, fp32_auroc: float, max_drop: float) -> dict[str, Any]:
    """The FP16 variant as a bf16 CPU runs it (OpenVINO, inference precision bf16), through the same gate.

    The verdict goes into the FP16 file's card (``export.cpu_bf16``): OpenVINO's ``auto`` precision
    uses bf16 for this file only where this gate passed (runtime/backends/openvino.py). Not run
    (and so never bf16 at run time) where this machine has no bf16 or no OpenVINO.
    """
    import importlib.util

    from skipgan_edge.runtime.backends import BackendOptions, open_backend
    from skipgan_edge.runtime.backends.openvino import cpu_has_bf16

    if importlib.util.find_spec("openvino") is None:
        rec: dict[str, Any] = {"gate": "not run", "why": "OpenVINO is not installed (pip install 'skipgan-edge[openvino]')"}
    elif not cpu_has_bf16():
        rec = {"gate": "not run", "why": "this CPU has no bf16 (AMX or AVX512-BF16): FP16 runs in f32 here"}
    else:
        # at eval's batch size, shape-specialised as run and eval compile it (runtime/backends/openvino.py)
        with open_backend("onnx", fp16, "openvino", BackendOptions(precision_hint="bf16"), batch=GATE_BATCH) as be:
            scores = be.infer_all(split.images, GATE_BATCH).score
        a = auroc(split.labels, scores)
        rec = {"gate": "passed" if fp32_auroc - a <= max_drop else "failed", "auroc": a, "auroc_drop": fp32_auroc - a,
               "runtime": "openvino", "inference_precision": "bf16"}
    import onnx

    from skipgan_edge.card import atomic_write_bytes
    from skipgan_edge.card import set_onnx_metadata as set_metadata
    from skipgan_edge.export.onnx import card_from_onnx

    m = onnx.load(str(fp16))
    card = card_from_onnx(m)
    card = card.replace(export={**card.export, "cpu_bf16": {k: rec[k] for k in ("gate", "auroc_drop", "why") if k in rec}})
    set_metadata(m, card, "fp16")
    atomic_write_bytes(fp16, m.SerializeToString())
    log.info("FP16 as a bf16 CPU runs it: %s", rec)
    return rec


def tensorrt_check(files: dict[str, Path], batch: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """``build --dry-run`` on every variant for every target (TensorRT 8.6, 10.3, 11) with the export's batch
    profile: a violation is logged, one line each, and recorded; the ONNX files stay usable by ONNX Runtime
    and OpenVINO, so it does not stop the export."""
    from skipgan_edge.export.trtcheck import verdict

    out: dict[str, Any] = {}
    for name, path in files.items():
        out[name] = verdict(path, batch=batch)
        for target, r in out[name].items():
            for line in r["violations"]:
                log.warning("%s will not build with TensorRT %s: %s", path.name, target, line)
    return out


def format_table(report: dict[str, Any]) -> str:
    rows = ["variant  AUROC    drop     recall@1%FPR  spearman  gate       file"]
    for name, r in report["variants"].items():
        file = r["file"] or "(removed)"
        rows.append(f"{name:7s}  {r['auroc']:.4f}  {r['auroc_drop']:+.4f}  {r['recall_at_1pct_fpr']:.3f}         "
                    f"{r['spearman_vs_fp32']:.4f}    {r['gate']:9s}  {file}")
    return "\n".join(rows)
