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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skipgan_edge import calibration
from skipgan_edge.card import ModelCard, atomic_write_json, check_writable, load_card
from skipgan_edge.data.datasets import Split, load_data
from skipgan_edge.data.progress import score_in_chunks
from skipgan_edge.errors import CalibrationError, DataError, ExportError, require
from skipgan_edge.export.engine import HELDOUT_FILE
from skipgan_edge.export.onnx import export_onnx
from skipgan_edge.export.precision import CALIBRATION_METHODS, head_violations, to_fp16, to_int8
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
        log.info("INT8 calibration: quantizing with %s calibration", m)
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
    log.info("INT8 calibration: %s agrees best with FP32 on %d validation images (Spearman %s)", best, len(val),
             ", ".join(f"{m} {r['spearman_vs_fp32_on_val']:.4f}" for m, r in results.items()))
    return best, results


def gate_variants(files: dict[str, Path], split: Split, max_drop: float) -> dict[str, dict[str, Any]]:
    """AUROC, drop against FP32 and rank correlation for each variant (ONNX Runtime, CPU)."""
    from skipgan_edge.runtime.backends import CPU_ONLY, open_backend

    scores: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, path in files.items():
        with open_backend("onnx", path, "onnxruntime", CPU_ONLY) as be:
            t0 = time.perf_counter()
            res = score_in_chunks(be.infer_all, split.images, f"accuracy gate: scoring {name}", be.max_batch)
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


@dataclass
class ExportJob:
    """What ``export_all``'s steps share: the options, what earlier steps made, and the report being written."""

    model_dir: Path
    out_dir: Path
    fp16: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_data: str | None = None
    eval_data: str | None = None
    max_drop: float = DEFAULT_MAX_DROP
    enforce_gate: bool = True
    calibration_method: str = "auto"
    engine: bool = False
    triton: bool = False
    batch: tuple[int, int, int] = (1, 8, 32)
    triton_settings: TritonSettings | None = None
    triton_name: str = DEFAULT_MODEL_NAME
    # made by the steps
    card: ModelCard | None = None
    calib_set: calibration.CalibrationSet | None = None
    source: str = ""
    split: Split | None = None
    val: Split | None = None
    files: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    t0: float = 0.0


def export_all(
    model_dir: Path, out_dir: Path, *, fp16: bool = False, int8: bool = False, calib: Path | None = None,
    calib_data: str | None = None, eval_data: str | None = None, max_drop: float = DEFAULT_MAX_DROP,
    enforce_gate: bool = True, calibration_method: str = "auto", engine: bool = False,
    triton: bool = False, batch: tuple[int, int, int] = (1, 8, 32), triton_settings: TritonSettings | None = None,
    triton_name: str = DEFAULT_MODEL_NAME,
) -> dict[str, Any]:
    """Export a model folder; returns the report written to ``out_dir/export_report.json``.

    The steps, in order (each a function of the shared :class:`ExportJob`; each says in one log sentence what it did):
    check the options and ``--out``, the calibration set, the gate's held-out split, ONNX with the parity check, the
    FP16 and INT8 variants, the FP32 score head of every variant, ``build --dry-run``, the accuracy gate (with the
    held-out frames and the bf16 CPU check), TensorRT engines, the Triton repository, the report."""
    job = ExportJob(Path(model_dir), Path(out_dir), fp16=fp16, int8=int8, calib=calib, calib_data=calib_data, eval_data=eval_data,
                    max_drop=max_drop, enforce_gate=enforce_gate, calibration_method=calibration_method, engine=engine,
                    triton=triton, batch=batch, triton_settings=triton_settings, triton_name=triton_name)
    for step in EXPORT_STEPS:
        step(job)
    return job.report


def _check_options(job: ExportJob) -> None:
    for module in ("torch", "safetensors", "onnx"):
        require(module, "export", "skipgan-edge export")
    if job.calibration_method not in ("auto", *CALIBRATION_METHODS):  # one line now, not after the calibration set
        raise ExportError(f"--calib-method must be auto, {', '.join(CALIBRATION_METHODS)}, got {job.calibration_method!r}")
    if job.engine:  # an engine is built after every ONNX and the gate: say now that this machine cannot build one
        from skipgan_edge.errors import MissingDependencyError
        from skipgan_edge.runtime.engine_file import import_tensorrt

        try:
            import_tensorrt()
        except MissingDependencyError as exc:
            raise MissingDependencyError(f"--engine: {exc}; or export here without --engine and run skipgan-edge build on "
                                         "that device") from None
    job.card = load_card(job.model_dir)
    if job.triton and job.engine and job.batch[0] != 1:
        raise ExportError(f"a Triton plan needs a batch profile starting at 1 (Triton sends any batch from 1), got --batch "
                          f"{','.join(map(str, job.batch))}: use --batch 1,{job.batch[1]},{job.batch[2]}")
    check_writable(job.out_dir / "export_report.json", "--out")


def _calibration_set(job: ExportJob) -> None:
    if not job.int8:
        return
    assert job.card is not None
    if job.calib is not None:
        job.calib_set = calibration.load(job.calib)
        calibration.check_matches(job.calib_set, job.card, job.calib)
        log.info("INT8 calibration set: %d frames from %s", len(job.calib_set.images), job.calib)
    elif job.calib_data is not None:
        job.calib_set = calibration.build(job.calib_data, 512, job.card.input.isize, job.card.input.channels)
        calibration.save(job.calib_set, job.out_dir / "calib.npz")
        log.info("INT8 calibration set: %d distinct frames from %s, saved as %s", len(job.calib_set.images), job.calib_data,
                 job.out_dir / "calib.npz")
    else:
        raise CalibrationError(
            "--int8 needs real calibration frames (Q/DQ scales without them are random): "
            "pass --calib calib.npz (from skipgan-edge calibrate) or --calib-data DIR_OR_VIDEO"
        )


def _eval_split(job: ExportJob) -> None:
    assert job.card is not None
    job.source, job.split, job.val = eval_split_for(job.card, job.eval_data)
    job.t0 = time.perf_counter()
    job.files = {"fp32": job.out_dir / "scorer.onnx"}
    job.report = {"model": str(job.model_dir), "model_id": job.card.model_id, "eval_data": job.source,
                  "eval_images": len(job.split), "eval_anomalous": int(job.split.labels.sum())}


def _onnx(job: ExportJob) -> None:
    assert job.split is not None
    job.report["export"] = export_onnx(job.model_dir, job.files["fp32"], job.split.images[:256])
    log.info("wrote the FP32 scorer %s (opset %d, %d nodes)", job.files["fp32"], job.report["export"]["opset"],
             job.report["export"]["nodes"])


def _fp16(job: ExportJob) -> None:
    if not job.fp16:
        return
    assert job.split is not None
    sample = job.calib_set.images if job.calib_set is not None else job.split.images[job.split.labels == 0]
    job.files["fp16"] = to_fp16(job.files["fp32"], job.out_dir / "scorer.fp16.onnx", sample)
    log.info("wrote the FP16 variant %s", job.files["fp16"])


def _int8(job: ExportJob) -> None:
    cs = job.calib_set
    if not job.int8 or cs is None:
        return
    assert job.val is not None
    calib_file = str(job.calib) if job.calib else str(job.out_dir / "calib.npz")
    target = job.out_dir / "scorer.int8.onnx"
    if job.calibration_method == "auto":
        method, selection = choose_calibration(job.files["fp32"], target, cs.images, job.val)
        job.report["calibration"] = {**cs.manifest, "method": method, "selected_by": "Spearman vs FP32 on the validation split",
                                     "candidates": selection, "file": calib_file}
    else:
        to_int8(job.files["fp32"], target, cs.images, job.calibration_method)
        job.report["calibration"] = {**cs.manifest, "method": job.calibration_method, "file": calib_file}
    job.files["int8"] = target
    log.info("wrote the INT8 variant %s (%s calibration on %d frames)", target, job.report["calibration"]["method"], len(cs.images))


def _check_heads(job: ExportJob) -> None:
    import onnx

    for path in job.files.values():
        bad = head_violations(onnx.load(str(path)))
        if bad:
            raise ExportError(f"{path}: the score head is not FP32 ({', '.join(bad[:3])}); please report this")


def _tensorrt_check(job: ExportJob) -> None:
    job.report["tensorrt_check"] = tensorrt_check(job.files, job.batch)
    bad = sorted({f"{name} (TensorRT {t})" for name, r in job.report["tensorrt_check"].items() for t, v in r.items() if not v["ok"]})
    targets = ", ".join(next(iter(job.report["tensorrt_check"].values()), {}))
    log.info("build --dry-run (TensorRT %s): %s", targets, "every variant builds" if not bad else "will not build: " + ", ".join(bad))


def _gate(job: ExportJob) -> None:
    assert job.split is not None
    report, split = job.report, job.split
    report["variants"] = gate_variants(job.files, split, job.max_drop)
    report["heldout"] = write_heldout(job.out_dir / HELDOUT_FILE, split, job.files["fp32"], job.max_drop)
    if "fp16" in job.files:
        report["variants"]["fp16"]["cpu_bf16"] = gate_cpu_bf16(job.files["fp16"], split, report["variants"]["fp32"]["auroc"], job.max_drop)
    report["gate"] = {"max_auroc_drop": job.max_drop, "enforced": job.enforce_gate}
    report["seconds"] = round(time.perf_counter() - job.t0, 2)
    job.failed = [n for n, r in report["variants"].items() if r["gate"] == "failed"]
    verdicts = ", ".join(f"{n} {r['gate']} ({r['auroc_drop']:+.4f})" for n, r in report["variants"].items() if n != "fp32")
    log.info("accuracy gate on %d held-out images of %s (%d anomalous; AUROC drop at most %g against FP32 %.4f): %s", len(split),
             job.source, report["eval_anomalous"], job.max_drop, report["variants"]["fp32"]["auroc"], verdicts or "FP32 only")
    if job.failed and job.enforce_gate:
        for n in job.failed:
            Path(report["variants"][n]["file"]).unlink(missing_ok=True)
            report["variants"][n]["file"] = None
            report["variants"][n]["removed"] = True
    log.info("held-out frames for build's engine check: %s (%d frames)", report["heldout"]["file"], report["heldout"]["frames"])


def _engines(job: ExportJob) -> None:
    if not job.engine:
        return
    from skipgan_edge.export.engine import BuildConfig, build_engine

    job.report["engines"] = {}
    for name, path in job.files.items():
        if job.report["variants"][name]["gate"] == "failed" and job.enforce_gate:
            continue
        eng = path.with_suffix(".engine")
        log.info("building the TensorRT engine %s", eng)
        meta = build_engine(path, eng, BuildConfig(batch=job.batch, plan=job.triton))
        job.report["engines"][name] = str(eng)
        if job.triton:
            job.report.setdefault("plans", {})[name] = meta["plan"]


def _triton(job: ExportJob) -> None:
    if not job.triton:
        return
    from skipgan_edge.runtime.artifact import Artifact

    plans = job.report.get("plans", {})
    plan_of = next((p for p in ("int8", "fp16", "fp32") if p in plans), None)  # the lowest gated precision with a plan
    served = Path(plans[plan_of]) if plan_of else job.files["fp32"]
    settings = job.triton_settings or TritonSettings.for_profile(job.batch)
    served_card = Artifact("onnx", job.files[plan_of or "fp32"]).read_card()  # the served variant's own card (its precision and export records)
    rv = write_repository(served, job.out_dir / "triton", served_card, settings, job.triton_name)
    job.report["triton"] = {"repository": str(rv.repository), "model": rv.model, "version": rv.version, "new_version": rv.new,
                            "served": str(served), "platform": "tensorrt_plan" if served.suffix == ".plan" else "python"}
    log.info("Triton repository %s: model %s version %s%s", rv.repository, rv.model, rv.version, "" if rv.new else " (unchanged)")


def _write_report(job: ExportJob) -> None:
    report, path = job.report, job.out_dir / "export_report.json"
    atomic_write_json(path, report)
    report["report"] = str(path)
    if job.failed and job.enforce_gate:
        worst = max(job.failed, key=lambda n: report["variants"][n]["auroc_drop"])
        raise ExportError(
            f"accuracy gate: {', '.join(job.failed)} AUROC dropped by {report['variants'][worst]['auroc_drop']:.4f} "
            f"(> {job.max_drop}); file(s) removed; see {path} (--no-gate keeps them marked failed)"
        )


#: export_all's steps, in order
EXPORT_STEPS: tuple[Callable[[ExportJob], None], ...] = (
    _check_options, _calibration_set, _eval_split, _onnx, _fp16, _int8, _check_heads, _tensorrt_check, _gate, _engines, _triton,
    _write_report,
)


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
    if rec["gate"] == "not run":
        log.info("FP16 as a bf16 CPU runs it: not checked (%s)", rec["why"])
    else:
        log.info("FP16 as a bf16 CPU runs it (OpenVINO): %s the gate, AUROC drop %+.4f", rec["gate"], rec["auroc_drop"])
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
