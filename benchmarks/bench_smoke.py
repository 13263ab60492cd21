"""Regression guard (``make bench-smoke``, not part of ``make test``): a ~30-second sweep on the demo
model; fails if the default CPU path is slower than torch eager in the same run.

The default CPU path is what ``skipgan-edge run --onnx`` uses with ``--backend auto``: OpenVINO
when installed, else ONNX Runtime (``default_onnx_backend``).
Both run the same scorer at batch 1 and 32, interleaved; medians compared.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from skipgan_edge.config import ModelConfig, RunConfig, TrainConfig
from skipgan_edge.data.datasets import load_folder
from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic
from skipgan_edge.export.onnx import export_onnx
from skipgan_edge.runtime.backends import open_backend
from skipgan_edge.train.trainer import train


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_synthetic(work / "d", SyntheticSpec(n_train=128, n_val_good=16, n_val_defect=2, n_test_good=8, n_test_defect=2))
        cfg = RunConfig(model=ModelConfig(isize=32, channels=3, ngf=32, ndf=32), train=TrainConfig(epochs=1, batch=32))
        train(load_folder(work / "d", 32, 3), cfg, work / "m", progress=False)
        export_onnx(work / "m", work / "s.onnx")
        t_end = time.perf_counter() + 24
        worst = 0.0
        with open_backend("model", work / "m", "torch") as torch_be, open_backend("onnx", work / "s.onnx") as default_be:
            for batch in (1, 32):
                x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
                times: dict[str, list[float]] = {"torch": [], "default": []}
                for be in (torch_be, default_be):
                    for _ in range(3):
                        be.infer(x)
                deadline = time.perf_counter() + 12
                while time.perf_counter() < min(deadline, t_end) or len(times["torch"]) < 5:
                    for name, be in (("torch", torch_be), ("default", default_be)):
                        t0 = time.perf_counter()
                        be.infer(x)
                        times[name].append(time.perf_counter() - t0)
                ratio = float(np.median(times["torch"]) / np.median(times["default"]))
                worst = min(worst, ratio) if worst else ratio
                print(f"batch {batch}: torch eager {1e3 * np.median(times['torch']):.2f} ms, default ({default_be.name}) "
                      f"{1e3 * np.median(times['default']):.2f} ms: {ratio:.2f}x faster")
    if worst < 1.0:
        print(f"FAIL: the default CPU path is slower than torch eager ({worst:.2f}x)")
        return 1
    print("ok: the default CPU path is faster than torch eager at every batch size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
