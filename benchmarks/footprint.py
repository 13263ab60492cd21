"""The edge runtime's footprint: install size, import time and peak RSS of ``run``, before and after the lean runtime.

    python benchmarks/footprint.py --export-dir demo_out/export [--before COMMIT] [--repeats 11]

* install size: site-packages of ``.venv-lean`` (``pip install skipgan-edge``: the runtime only), and with
  ``--before``, of a fresh venv holding the dependencies the package declared at COMMIT;
* import time of ``skipgan_edge.runtime.api`` and ``skipgan_edge.cli`` in a fresh interpreter (median of
  ``--repeats``), in ``.venv-lean``, in ``.venv`` (the full install) and, with ``--before``, COMMIT's tree in ``.venv``;
* peak RSS (the child's ``ru_maxrss``) of ``skipgan-edge run --onnx scorer.onnx --source line.mp4`` on the
  export given, same three cases, ONNX Runtime named, and ``--backend auto`` in ``.venv`` (which races ONNX Runtime
  and OpenVINO when both are installed, so it holds both).

Writes results/footprint.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, command_line, machine, stamp, write_json

ROOT = Path(__file__).resolve().parents[1]
IMPORT = "import time; t = time.perf_counter(); import skipgan_edge.runtime.api, skipgan_edge.cli; print(time.perf_counter() - t)"


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def import_s(python: Path, env: dict[str, str], repeats: int) -> float:
    return statistics.median(float(subprocess.run([str(python), "-c", IMPORT], capture_output=True, text=True, env=env, check=True,
                                                  cwd=tempfile.gettempdir()).stdout) for _ in range(repeats))


def peak_rss_mb(python: Path, args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Peak RSS of one child process: run it from a fresh helper so RUSAGE_CHILDREN holds only that child."""
    helper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", helper, str(python), "-m", "skipgan_edge", *args], capture_output=True, text=True,
                         env=env, cwd=cwd, check=True).stdout
    return float(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--export-dir", type=Path, required=True)
    ap.add_argument("--before", help="a commit to measure the same way (its tree, with .venv's packages)")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    lean, full = ROOT / ".venv-lean" / "bin" / "python", ROOT / ".venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    onnx = str(args.export_dir.resolve() / "scorer.onnx")
    res: dict[str, object] = {"benchmark": "footprint", "export": str(args.export_dir), "machine": machine(), "command": command_line(),
                              "date": stamp()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([str(full), "-m", "skipgan_edge", "data", "video", "--out", str(work / "line.mp4")], check=True, capture_output=True)
        run_args = ["run", "--onnx", onnx, "--source", str(work / "line.mp4"), "--backend", "onnxruntime", "--json"]
        cases = {"runtime install (.venv-lean)": (lean, env), "full install (.venv)": (full, env)}
        if args.before:
            tree = work / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before], cwd=ROOT, check=True, capture_output=True)
            cases[f"before ({args.before[:7]}, .venv)"] = (full, {**env, "PYTHONPATH": str(tree)})
        rows = {}
        try:
            for name, (py, e) in cases.items():
                rows[name] = {"import_s": import_s(py, e, args.repeats), "run_peak_rss_mb": peak_rss_mb(py, run_args, e, work)}
                print(name, rows[name], flush=True)
            rows["full install (.venv)"]["run_auto_peak_rss_mb"] = peak_rss_mb(full, [*run_args[:-3], "--json"], env, work)
            sizes = {"runtime install (.venv-lean)": du_mb(ROOT / ".venv-lean" / "lib")}
            if args.before:
                old = subprocess.run(["git", "show", f"{args.before}:pyproject.toml"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
                deps = old.split("dependencies = [", 1)[1].split("]", 1)[0]
                reqs = [d.strip().strip('",') for d in deps.splitlines() if d.strip().strip('",')]
                venv = work / "venv-before"
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
                subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
                subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *reqs], check=True)
                sizes[f"before ({args.before[:7]}): its declared dependencies"] = du_mb(venv / "lib")
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(work / "before")], cwd=ROOT, capture_output=True)
                shutil.rmtree(work / "before", ignore_errors=True)
    res["runs"], res["site_packages_mb"] = rows, sizes
    res["targets"] = {"import_s": 0.3, "run_peak_rss_mb": 150, "site_packages_mb": 380}
    write_json("footprint.json", res)
    lines = ["# Edge runtime footprint", "", f"`{res['command']}`, {res['date']}; export {args.export_dir}.", "",
             "| install | import runtime (s, median) | `run --onnx` peak RSS (MB) |", "|---|---|---|"]
    for name, r in rows.items():
        extra = f"; `--backend auto` {r['run_auto_peak_rss_mb']:.0f} (races ONNX Runtime and OpenVINO)" if "run_auto_peak_rss_mb" in r else ""
        lines.append(f"| {name} | {r['import_s']:.3f} | {r['run_peak_rss_mb']:.0f}{extra} |")
    lines += ["", "| site-packages | MB |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in sizes.items()]
    lines += ["", "Targets: import ≤ 0.3 s, `run --onnx` on the demo model ≤ 150 MB, runtime install ≤ 380 MB (a venv holding "
              "only numpy, opencv-python-headless, onnxruntime and typer measured 358 MB here, pip and setuptools included)."]
    (RESULTS / "footprint.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
