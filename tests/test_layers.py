"""The layers of skipgan_edge/layers.py hold: imports only go down, and the runtime runs with torch blocked."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, write_defect_video

from skipgan_edge.layers import ALLOWED_UPWARD, HEAVY, LAYERS, TORCH_FREE, layer_of

PKG = ROOT / "skipgan_edge"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__") or "__init__"
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import; TYPE_CHECKING blocks are skipped."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.extend([(child.module, top)] + [(f"{child.module}.{a.name}", top) for a in child.names])
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


def test_every_module_has_a_layer() -> None:
    for name in _modules():
        assert layer_of(name) is not None, f"skipgan_edge.{name} is in no layer of skipgan_edge/layers.py"


def test_imports_only_go_down() -> None:
    bad = []
    for name, tree in _modules().items():
        mine = layer_of(name)
        assert mine is not None
        for target, _top in _imports(tree):
            if not target.startswith("skipgan_edge.") or target.split(".")[1] not in LAYERS:
                continue
            dest = target.split(".", 1)[1]
            t_layer = layer_of(dest)
            if t_layer is not None and t_layer > mine and dest.split(".")[0] not in ALLOWED_UPWARD.get(name, set()):
                bad.append(f"skipgan_edge.{name} (layer {mine}) imports {target} (layer {t_layer})")
    assert not bad, "\n".join(sorted(set(bad)))


def test_torch_free_layers_import_nothing_heavy_at_module_level() -> None:
    bad = []
    for name, tree in _modules().items():
        if not name.startswith(TORCH_FREE) or name in ALLOWED_UPWARD:
            continue
        for target, top in _imports(tree):
            if top and target.split(".")[0] in HEAVY:
                bad.append(f"skipgan_edge.{name} imports {target} at module level")
            if top and target.startswith("skipgan_edge.model"):
                bad.append(f"skipgan_edge.{name} imports {target} (torch) at module level")
    assert not bad, "\n".join(bad)


def test_the_check_can_fail() -> None:
    tree = ast.parse("import torch\nfrom skipgan_edge.train.trainer import train\ndef f():\n    import matplotlib\n")
    assert _imports(tree) == [("torch", True), ("skipgan_edge.train.trainer", True), ("skipgan_edge.train.trainer.train", True),
                              ("matplotlib", False)]


BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'matplotlib', 'skimage', 'scipy'):
            raise ModuleNotFoundError(f"No module named '{name}' (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Block())
from skipgan_edge.cli import main
sys.argv = ['skipgan-edge', *sys.argv[1:]]
main()
"""


def _blocked(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_runtime_verbs_run_with_torch_blocked(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    video = write_defect_video(tmp_path / "line.avi", 30, {10}, "MJPG")
    onnx = str(demo_onnx / "scorer.onnx")
    p = _blocked("run", "--onnx", onnx, "--source", str(video), "--backend", "onnxruntime", "--jsonl", "s.jsonl", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["scored"] == 30 and len((tmp_path / "s.jsonl").read_text().splitlines()) == 30
    p = _blocked("eval", "--onnx", onnx, "--data", str(synth_dir), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["auroc"] > 0.5
    p = _blocked("bench", "--onnx", onnx, "--backend", "onnxruntime", "--batch", "1,4", "--iterations", "5", "--warmup", "1",
                 "--json", "b.json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert {r["batch"] for r in json.loads((tmp_path / "b.json").read_text())["records"]} == {1, 4}
    p = _blocked("threshold", "--onnx", onnx, "--normal", str(video), "--fpr", "0.05", "--dry-run", "--json", cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout)["frames"] == 30, p.stderr
    p = _blocked("doctor", cwd=tmp_path)
    assert p.returncode == 0 and "torch" in p.stdout and "missing" in p.stdout, p.stdout + p.stderr


def test_a_training_verb_without_torch_names_its_extra(synth_dir: Path, tmp_path: Path) -> None:
    p = _blocked("train", "--data", str(synth_dir), "--out", "r", "--epochs", "1", cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "pip install 'skipgan-edge[train]'" in lines[0], p.stderr
