"""The full demo as a user runs it (marked slow: `make test-slow`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli


@pytest.mark.slow
def test_full_demo_finds_every_defect(tmp_path: Path) -> None:
    p = run_cli("demo", "--out", str(tmp_path / "demo"), timeout=900)
    assert "7/7 defects found" in p.stdout, p.stdout
    assert p.stdout.count("processing latency p50") == 2 and "median latency" not in p.stdout, p.stdout  # the scorer's own time
    # step 6: commissioning on the camera's first normal frames, promised and achieved false-alarm rates side by side
    assert "commissioned scorer.int8.onnx on 300 normal frames" in p.stdout and "against the promised 0.020" in p.stdout, p.stdout
    report = json.loads((tmp_path / "demo" / "export" / "export_report.json").read_text())
    assert report["variants"]["fp32"]["auroc"] > 0.95
    assert all(v["gate"] in ("reference", "passed") for v in report["variants"].values())
