"""Every command of the README's tour, run as a user would (fewer epochs), in a fresh folder."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from skipgan_edge.doctor import gpu_stack_missing

GPU_MISSING = gpu_stack_missing(tensorrt=True)  # what `build` needs: TensorRT, cuda-python and a GPU
TENSORRT_ABSENT = len(GPU_MISSING) > len(gpu_stack_missing(tensorrt=False))


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Tour", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README has no Tour code block"
    cmds = []
    for line in block.group(1).splitlines():
        line = line.split("   #")[0].strip()
        if line and not line.startswith("#"):
            cmds.append(line)
    return cmds


def test_readme_starts_with_make_demo_and_make_test() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block and first_block.group(1).splitlines()[0].startswith("make demo")
    assert first_block.group(1).splitlines()[1].startswith("make test")


def test_readme_tour_runs(tmp_path: Path) -> None:
    cmds = tour_commands()
    assert len(cmds) >= 10
    verbs = {shlex.split(c)[1] for c in cmds}
    assert {"train", "eval", "calibrate", "export", "build", "run", "bench", "data"} <= verbs
    for cmd in cmds:
        args = shlex.split(cmd.replace("--epochs 12", "--epochs 3"))
        assert args[0] == "skipgan-edge"
        p = subprocess.run([sys.executable, "-m", "skipgan_edge", *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        if args[1] == "build" and "--dry-run" in args:  # the static check needs no TensorRT: our export passes it
            assert p.returncode == 0 and "TensorRT 10.3: ok" in p.stdout and "TensorRT 11: ok" in p.stdout, p.stdout + p.stderr
            continue
        if args[1] == "build":  # builds where TensorRT and a GPU are; fails with one line where TensorRT is absent
            lines = p.stderr.strip().splitlines()
            built = p.returncode == 0 and Path(tmp_path, args[args.index("--out") + 1]).stat().st_size > 1000
            if TENSORRT_ABSENT:
                assert p.returncode == 2 and len(lines) == 1 and "TensorRT is not installed" in lines[0], p.stderr
            elif not GPU_MISSING:
                assert built, p.stdout + p.stderr
            else:  # TensorRT without the rest of the stack: built (PyCUDA can stand in for cuda-python), or one line
                assert built or (p.returncode == 2 and len(lines) == 1), p.stderr
            continue
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
        if args[1] == "eval":
            assert json.loads(p.stdout)["auroc"] > 0.7
    assert (tmp_path / "scores.jsonl").exists() and (tmp_path / "annotated.mp4").stat().st_size > 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert {r["batch"] for r in bench["records"]} == {1, 8, 64}
    for kind in ("latency", "throughput"):  # bench writes its own plots beside its JSON
        assert (tmp_path / f"bench_{kind}.png").stat().st_size > 1000
