"""The layers of skipgan_edge/layers.py hold: imports only go down, file by file and part by part, no two parts import
each other, and the runtime runs with torch blocked."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, write_defect_video

from skipgan_edge.layers import ALLOWED_UPWARD, HEAVY, LAYERS, TORCH_FREE, cycles, drawing, imports, layer_of, modules, part_graph

_imports = imports


def _downward_violations(mods: dict[str, ast.Module]) -> list[str]:
    """Every import, at module level or in a function, of a part of a higher layer; the allowed exceptions
    (ALLOWED_UPWARD) only inside functions."""
    bad = []
    for name, tree in mods.items():
        mine = layer_of(name)
        assert mine is not None, f"skipgan_edge.{name} is in no layer of skipgan_edge/layers.py"
        for target, top in imports(tree):
            if not target.startswith("skipgan_edge.") or target.split(".")[1] not in LAYERS:
                continue
            dest = target.split(".", 1)[1]
            t_layer = layer_of(dest)
            if t_layer is None or t_layer <= mine:
                continue
            if dest.split(".")[0] not in ALLOWED_UPWARD.get(name, set()):
                bad.append(f"skipgan_edge.{name} (layer {mine}) imports {target} (layer {t_layer})")
            elif top:
                bad.append(f"skipgan_edge.{name} imports {target} (layer {t_layer}) at module level; only inside a function")
    return sorted(set(bad))


def _part_violations(graph: dict[str, set[str]]) -> list[str]:
    """Parts importing parts of a higher layer (other than the declared exceptions), and cycles between parts."""
    allowed = {(m.split(".")[0], p) for m, parts in ALLOWED_UPWARD.items() for p in parts}
    bad = [f"part {src} (layer {LAYERS[src]}) imports part {dest} (layer {LAYERS[dest]})"
           for src, dests in sorted(graph.items()) for dest in sorted(dests)
           if LAYERS[dest] > LAYERS[src] and (src, dest) not in allowed]
    return bad + [f"import cycle between parts: {' -> '.join(c)}" for c in cycles(graph)]


def test_every_module_has_a_layer() -> None:
    for name in modules():
        assert layer_of(name) is not None, f"skipgan_edge.{name} is in no layer of skipgan_edge/layers.py"


def test_imports_only_go_down() -> None:
    bad = _downward_violations(modules())
    assert not bad, "\n".join(bad)


def test_parts_import_only_down_and_no_two_import_each_other() -> None:
    graph = part_graph()
    assert set(graph) <= set(LAYERS) and {"runtime", "service", "export", "data", "model"} <= set(graph)
    bad = _part_violations(graph)
    assert not bad, "\n".join(bad)


def test_the_declared_nevers() -> None:
    """data is below model; the runtime is below model except for the torch backend; the runtime is below the wing."""
    assert LAYERS["data"] < LAYERS["model"] and LAYERS["runtime"] < LAYERS["model"] and LAYERS["runtime"] < LAYERS["service"]
    graph = part_graph()
    assert "model" not in graph["data"] and "service" not in graph["runtime"] and "runtime" in graph["service"]
    importers = {name for name, tree in modules().items() if name.startswith("runtime")
                 and any(t.startswith("skipgan_edge.model") for t, _ in imports(tree))}
    assert importers == {"runtime.backends.torch"}


def test_torch_free_layers_import_nothing_heavy_at_module_level() -> None:
    bad = []
    for name, tree in modules().items():
        if not name.startswith(TORCH_FREE) or name in ALLOWED_UPWARD:
            continue
        for target, top in imports(tree):
            if top and target.split(".")[0] in HEAVY:
                bad.append(f"skipgan_edge.{name} imports {target} at module level")
            if top and target.startswith("skipgan_edge.model"):
                bad.append(f"skipgan_edge.{name} imports {target} (torch) at module level")
    assert not bad, "\n".join(bad)


def test_the_check_can_fail() -> None:
    tree = ast.parse("import torch\nfrom skipgan_edge.train.trainer import train\ndef f():\n    import matplotlib\n")
    assert _imports(tree) == [("torch", True), ("skipgan_edge.train.trainer", True), ("skipgan_edge.train.trainer.train", True),
                              ("matplotlib", False)]


def test_the_layer_and_cycle_checks_can_fail() -> None:
    """A data module importing the model inside a function, and the model importing it back: a downward violation
    (function-level imports count), a part-level one and a cycle; the torch backend importing the model at module level."""
    mods = {
        "data.x": ast.parse("def f():\n    from skipgan_edge.model.y import z\n"),
        "model.y": ast.parse("from skipgan_edge.data.x import f\n"),
        "runtime.backends.torch": ast.parse("from skipgan_edge.model.scorer import Scorer\n"),
    }
    assert _downward_violations(mods) == [
        "skipgan_edge.data.x (layer 1) imports skipgan_edge.model.y (layer 4)",
        "skipgan_edge.data.x (layer 1) imports skipgan_edge.model.y.z (layer 4)",
        "skipgan_edge.runtime.backends.torch imports skipgan_edge.model.scorer (layer 4) at module level; only inside a function",
        "skipgan_edge.runtime.backends.torch imports skipgan_edge.model.scorer.Scorer (layer 4) at module level; only inside a function",
    ]
    graph = part_graph(mods)
    assert graph == {"data": {"model"}, "model": {"data"}, "runtime": {"model"}}
    assert _part_violations(graph) == ["part data (layer 1) imports part model (layer 4)",
                                       "import cycle between parts: data -> model"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}) == [["a", "b", "c"]]


def test_the_readme_draws_the_parts_from_their_imports() -> None:
    """The README's architecture drawing is ``python -m skipgan_edge.layers``'s output, so it is the imports as they are:
    the runtime below the service wing, nothing pointing back but the torch backend's dotted exception."""
    p = subprocess.run([sys.executable, "-m", "skipgan_edge.layers"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0 and p.stdout == drawing(), p.stderr
    assert "  service --> runtime\n" in p.stdout and "runtime --> service" not in p.stdout
    assert [ln for ln in p.stdout.splitlines() if "-.->" in ln] == ["  runtime -.->|runtime.backends.torch, in functions| model"]
    readme = (ROOT / "README.md").read_text()
    assert f"```mermaid\n{p.stdout}```" in readme, "README's drawing is stale: paste the output of python -m skipgan_edge.layers"


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
