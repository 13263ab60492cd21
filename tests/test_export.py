"""Export: ONNX scorer, precision variants, accuracy gate, calibration sets, engine files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import ROOT, run_cli

from skipgan_edge import calibration
from skipgan_edge.card import load_card
from skipgan_edge.errors import CalibrationError, EngineError
from skipgan_edge.export.api import export_all
from skipgan_edge.export.engine import check_compatible, read_engine_file, write_engine_file
from skipgan_edge.export.onnx import card_from_onnx
from skipgan_edge.export.precision import head_nodes, head_violations
from skipgan_edge.model.folder import build_scorer
from skipgan_edge.runtime.backends.onnxrt import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def exported(tiny_model: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export")
    calib = calibration.build(str(synth_dir), 64, 32, 3)
    calibration.save(calib, out / "calib.npz")
    report = export_all(tiny_model, out, fp16=True, int8=True, calib=out / "calib.npz")
    return out, report


def test_onnx_matches_torch(exported: tuple[Path, dict], tiny_model: Path, synth_dir: Path) -> None:
    out, report = exported
    parity = report["export"]["parity"]
    assert parity["max_abs_diff_score"] <= parity["tolerance"]
    m = onnx.load(str(out / "scorer.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    assert [i.name for i in m.graph.input] == ["images"]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in m.graph.output] == ["score", "anomaly_map", "normalized_score"]
    # every BatchNorm is folded but the one after the generator encoder's tap the bank reads (the default's gaussian
    # bank: the 2×2 map's): the bank reads that conv's own output (model/bank.py), which also feeds the head
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == 1 and bns[0].name.startswith("/generator/"), [n.name for n in bns]
    tap = next(n for n in m.graph.node if bns[0].input[0] in n.output)
    assert tap.op_type == "Conv" and sum(bns[0].input[0] in n.input for n in m.graph.node) == 2
    # independently: torch scorer vs ORT on fresh images
    _, scorer = build_scorer(tiny_model)
    imgs = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    ref = scorer.score_numpy(imgs)
    with OnnxRuntimeBackend(out / "scorer.onnx") as be:
        got = be.infer(imgs)
    np.testing.assert_allclose(got.score, ref.score, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.normalized_score, ref.normalized_score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.anomaly_map, ref.anomaly_map, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_gives_identical_per_image_results(exported: tuple[Path, dict]) -> None:
    out, _ = exported
    imgs = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for name in ("scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx"):
        with OnnxRuntimeBackend(out / name) as be:
            full = be.infer(imgs)
            parts = [be.infer(imgs[i : i + 1]) for i in range(8)]
            three = be.infer(imgs[:3])
        np.testing.assert_allclose(np.concatenate([p.score for p in parts]), full.score, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(three.anomaly_map, full.anomaly_map[:3], rtol=1e-5, atol=1e-7)


def test_model_card_round_trip(exported: tuple[Path, dict], tiny_model: Path) -> None:
    out, _ = exported
    card = load_card(tiny_model)
    for name, prec in (("scorer.onnx", "fp32"), ("scorer.fp16.onnx", "fp16"), ("scorer.int8.onnx", "int8")):
        got = card_from_onnx(onnx.load(str(out / name)))
        assert got.model_id == card.model_id and got.precision == prec
        assert got.score == card.score and got.input == card.input and got.config == card.config
        assert got.replace(precision="fp32", export={}) == card.replace(export={})  # the whole card, typed, round-trips
        with OnnxRuntimeBackend(out / name) as be:
            assert be.precision == prec


def test_variants_pass_gate_and_report(exported: tuple[Path, dict]) -> None:
    out, _ = exported
    disk = json.loads((out / "export_report.json").read_text())
    assert set(disk["variants"]) == {"fp32", "fp16", "int8"}
    for name in ("fp16", "int8"):
        v = disk["variants"][name]
        assert v["gate"] == "passed", v
        assert v["auroc_drop"] <= 0.01 and v["spearman_vs_fp32"] > 0.95
    assert disk["variants"]["fp32"]["auroc"] > 0.75
    assert disk["calibration"]["count"] >= 32 and disk["calibration"]["method"] in ("max", "entropy", "percentile")
    assert set(disk["calibration"]["candidates"]) == {"max", "entropy", "percentile"}
    # build --dry-run's verdict on every variant, for JetPack 6.0's and 6.1's TensorRT and the current one
    assert {v: {t: r["ok"] for t, r in c.items()} for v, c in disk["tensorrt_check"].items()} == {
        v: {"8.6": True, "10.3": True, "11": True} for v in ("fp32", "fp16", "int8")}
    # the gate's held-out frames, for build to check an engine against on the device
    held = np.load(out / "heldout.npz")
    assert disk["heldout"]["frames"] == len(held["images"]) == len(held["fp32_score"]) and 0 < held["labels"].sum() < len(held["labels"])
    assert float(held["max_drop"]) == disk["gate"]["max_auroc_drop"]


def test_score_head_stays_fp32(exported: tuple[Path, dict]) -> None:
    out, _ = exported
    fp16 = onnx.load(str(out / "scorer.fp16.onnx"))
    int8 = onnx.load(str(out / "scorer.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert any(n.op_type == "Cast" for n in fp16.graph.node)
    for m in (fp16, int8):
        head = head_nodes(m)
        assert {"ReduceMean", "Sub", "Pow"} <= {n.op_type for n in m.graph.node if n.name in head}
        assert head_violations(m) == []
    # the check can fail: a Q/DQ pair spliced into the head is found
    bad = onnx.load(str(out / "scorer.onnx"))
    sub = next(n for n in bad.graph.node if n.name in head_nodes(bad) and n.op_type == "Sub" and n.input[0] != "images")
    scale = onnx.helper.make_tensor("s", onnx.TensorProto.FLOAT, [], [0.01])
    bad.graph.initializer.append(scale)
    q = onnx.helper.make_node("QuantizeLinear", [sub.input[0], "s"], ["q_out"], name="/QuantizeLinear_x")
    dq = onnx.helper.make_node("DequantizeLinear", ["q_out", "s"], ["dq_out"], name="/DequantizeLinear_x")
    sub.input[0] = "dq_out"
    bad.graph.node.extend([q, dq])
    assert any("QuantizeLinear" in v for v in head_violations(bad))


def test_gate_failure_removes_or_marks(tiny_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    """A variant past the gate is removed (or kept marked with enforce_gate off). Every drop exceeds a max_drop of
    -1, so the library call forces the failure; the CLI refuses such a value before any work."""
    from skipgan_edge.errors import ExportError
    from skipgan_edge.export.api import export_all

    calib = calibration.build(str(synth_dir), 40, 32, 3)
    calibration.save(calib, tmp_path / "c.npz")
    with pytest.raises(ExportError, match="accuracy gate: int8"):
        export_all(tiny_model, tmp_path / "a", int8=True, calib=tmp_path / "c.npz", max_drop=-1.0)
    assert not (tmp_path / "a" / "scorer.int8.onnx").exists()
    rep = json.loads((tmp_path / "a" / "export_report.json").read_text())
    assert rep["variants"]["int8"]["gate"] == "failed" and rep["variants"]["int8"]["removed"]
    export_all(tiny_model, tmp_path / "b", int8=True, calib=tmp_path / "c.npz", max_drop=-1.0, enforce_gate=False)
    assert (tmp_path / "b" / "scorer.int8.onnx").exists()
    assert json.loads((tmp_path / "b" / "export_report.json").read_text())["variants"]["int8"]["gate"] == "failed"
    p = run_cli("export", "--model", str(tiny_model), "--int8", "--calib", str(tmp_path / "c.npz"), "--out", str(tmp_path / "c"),
                "--max-drop", "-1", check=False)
    assert p.returncode == 2 and "--max-drop" in p.stderr and len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


def test_int8_without_calibration_refuses(tiny_model: Path, tmp_path: Path) -> None:
    p = run_cli("export", "--model", str(tiny_model), "--int8", "--out", str(tmp_path / "x"), check=False)
    assert p.returncode == 2 and "random" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def _video(path: Path, n: int, fourcc: str, static: bool = False) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (64, 48))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for i in range(n):
        frame = base.copy() if static else np.roll(base, 3 * i, axis=1)
        w.write(frame)
    w.release()
    return path


@pytest.mark.parametrize("fourcc,suffix", [("mp4v", ".mp4"), ("MJPG", ".avi")])
def test_calibration_from_video_spread_over_time(tmp_path: Path, fourcc: str, suffix: str) -> None:
    v = _video(tmp_path / f"line{suffix}", 120, fourcc)
    cs = calibration.build(str(v), 40, 32, 3)
    assert cs.images.shape == (40, 32, 32, 3) and cs.manifest["count"] == 40
    assert "evenly spread over 120 frames" in cs.manifest["picked"]
    calibration.save(cs, tmp_path / "c.npz")
    back = calibration.load(tmp_path / "c.npz")
    assert np.array_equal(back.images, cs.images) and back.manifest == cs.manifest


def test_calibration_drops_duplicates_and_refuses_small_sets(tmp_path: Path) -> None:
    v = _video(tmp_path / "static.avi", 100, "MJPG", static=True)
    with pytest.raises(CalibrationError, match="at least 32"):
        calibration.build(str(v), 64, 32, 3)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(50):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for i in range(50, 70):  # exact copies of image 0
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.imread(str(folder / "000.png")))
    cs = calibration.build(str(folder), 200, 32, 3)
    assert cs.manifest["duplicates_dropped"] >= 19 and cs.manifest["count"] <= 51


def test_export_refuses_mismatched_calibration(tiny_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    cs = calibration.build(str(synth_dir), 40, 64, 1)
    calibration.save(cs, tmp_path / "wrong.npz")
    p = run_cli("export", "--model", str(tiny_model), "--int8", "--calib", str(tmp_path / "wrong.npz"), "--out", str(tmp_path / "x"), check=False)
    assert p.returncode == 2 and "made for 64x64 with 1 channel(s), the model takes 32x32 with 3" in p.stderr


def test_calibrate_cli(synth_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    p = run_cli("calibrate", "--data", str(synth_dir), "--model", str(tiny_model), "--size", "48", "--out", str(tmp_path / "c.npz"))
    assert "48 frames 32x32x3" in p.stdout
    assert calibration.load(tmp_path / "c.npz").manifest["source"].endswith("train/good")


def test_build_without_tensorrt_fails_cleanly(exported: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = exported
    p = run_cli("build", "--onnx", str(out / "scorer.int8.onnx"), "--out", str(tmp_path / "e.engine"), "--batch", "1,4,8", check=False)
    assert p.returncode == 2
    assert p.stderr.startswith("error: TensorRT is not installed here") and len(p.stderr.strip().splitlines()) == 1
    assert "built on" in p.stderr or "build there" in p.stderr


def test_dla_combinations_are_refused_before_tensorrt(exported: tuple[Path, dict], tmp_path: Path) -> None:
    from skipgan_edge.export.engine import BuildConfig

    out, _ = exported
    p = run_cli("build", "--onnx", str(out / "scorer.int8.onnx"), "--out", str(tmp_path / "e.engine"), "--dla-core", "0",
                "--batch", "1,8,32", check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "DLA needs a static batch" in p.stderr
    assert "--batch 8,8,8" in p.stderr
    p = run_cli("build", "--onnx", str(out / "scorer.onnx"), "--out", str(tmp_path / "e.engine"), "--dla-core", "0",
                "--batch", "8,8,8", check=False)
    assert p.returncode == 2 and "DLA runs FP16 or INT8 only, and this ONNX is fp32" in p.stderr
    BuildConfig(batch=(8, 8, 8), dla_core=0).validate("int8")  # a valid DLA build gets as far as TensorRT
    p = run_cli("build", "--onnx", str(out / "scorer.int8.onnx"), "--out", str(tmp_path / "e.engine"), "--dla-core", "0",
                "--batch", "8,8,8", check=False)
    assert p.returncode == 2 and "TensorRT is not installed here" in p.stderr
    # the dry run refuses what the build would, and takes a DLA build it would make
    p = run_cli("build", "--onnx", str(out / "scorer.onnx"), "--dry-run", "--dla-core", "0", "--batch", "8,8,8", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: DLA runs FP16 or INT8 only, and this ONNX is fp32; build scorer.fp16.onnx or scorer.int8.onnx for the DLA"], p.stderr
    p = run_cli("build", "--onnx", str(out / "scorer.int8.onnx"), "--dry-run", "--dla-core", "0", "--batch", "8,8,8")
    assert "TensorRT 10.3: ok" in p.stdout
    p = run_cli("build", "--onnx", str(out / "scorer.onnx"), "--dry-run", "--sm", "999", check=False)
    assert p.returncode == 2 and "--sm must be a compute capability" in p.stderr


def test_engine_file_header_and_mismatch(tmp_path: Path) -> None:
    meta = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "precision": "int8",
            "build_command": "skipgan-edge build --onnx s.onnx --out e.engine --batch 1,4,8"}
    write_engine_file(tmp_path / "e.engine", meta, b"\x00engine-bytes")
    got, blob = read_engine_file(tmp_path / "e.engine")
    assert got.to_dict() == meta and got.precision == "int8" and blob == b"\x00engine-bytes"
    check_compatible(got, "10.3", {"gpu": "Orin", "compute_capability": "8.7"}, tmp_path / "e.engine")  # 10.3 == 10.3.0
    with pytest.raises(EngineError) as e:
        check_compatible(got, "11.4.0", {"gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}, tmp_path / "e.engine")
    msg = str(e.value)
    assert "built for TensorRT 10.3.0 on Orin" in msg and "this is TensorRT 11.4.0" in msg and "--batch 1,4,8" in msg
    (tmp_path / "bad.engine").write_bytes(b"random")
    with pytest.raises(EngineError, match="not a skipgan-edge engine"):
        read_engine_file(tmp_path / "bad.engine")


def test_mypy_checks_tensorrt_calls_against_stubs(tmp_path: Path) -> None:
    """A misspelt TensorRT API is caught without a GPU (and our TensorRT modules are clean)."""
    stubs = ROOT / ".venv" / "stubs"
    if not (stubs / "tensorrt").exists():
        pytest.skip("tensorrt-stubs not installed in .venv/stubs (make test installs them)")
    bad = tmp_path / "bad_trt.py"
    bad.write_text(
        "import tensorrt as trt\n"
        "def f(b: trt.Builder, n: trt.INetworkDefinition, c: trt.IBuilderConfig) -> None:\n"
        "    b.build_serialised_network(n, c)\n"
    )
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental"]
    p = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "build_serialised_network" in p.stdout, p.stdout
    p = subprocess.run([*cmd, "skipgan_edge/export/engine.py", "skipgan_edge/runtime/engine_file.py",
                          "skipgan_edge/runtime/backends/tensorrt.py", "skipgan_edge/runtime/cuda.py"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout
