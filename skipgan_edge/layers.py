"""The package's parts, their layers and the only directions imports may go, declared once (tests/test_layers.py enforces it).

A part is a top-level module or subpackage of skipgan_edge (``runtime``, ``service``, ``export``, ``card``...). Bottom
up; a part may import parts of its own layer or below, never above, at module level or inside a function alike::

    0 contract, errors, logs, card,        numpy and the standard library (card: safetensors lazily)
      config, thresholds
    1 data, metrics                        OpenCV
    2 runtime                              sources, preprocess, pipeline, sinks, backends, CUDA: no torch, matplotlib, scikit-image
    3 service                              serve, MQTT, Prometheus, Triton (repository, server, client): the runtime served to a plant
    4 model                                the networks and the scorer graph: torch
    5 train, export, calibration           torch, onnx, Model Optimizer
    6 bench, evaluate, demo, doctor
    7 cli, __main__

The edge device installs layers 0-3 (plus ``cli``): ``pip install skipgan-edge``. The runtime knows nothing of the
service wing above it; the wing registers its ``triton://`` backend with the runtime when imported. ``data`` is below
``model`` and the runtime is below ``model`` too: the one exception is the torch backend, which imports ``model``
inside its functions (:data:`ALLOWED_UPWARD`). No two parts import each other, directly or through others.

``python -m skipgan_edge.layers`` draws the parts and their imports (the README's drawing is its output).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS: dict[str, int] = {
    "contract": 0, "errors": 0, "logs": 0, "card": 0, "config": 0, "thresholds": 0, "schemas": 0, "layers": 0, "compat": 0, "__init__": 0,
    "data": 1, "metrics": 1,
    "runtime": 2,
    "service": 3,
    "model": 4,
    "train": 5, "export": 5, "calibration": 5,
    "bench": 6, "evaluate": 6, "demo": 6, "doctor": 6,
    "cli": 7, "__main__": 7,
}

#: Third-party modules the runtime layer (and the layers under it) must not import at module level: the edge install
#: does not have them.
HEAVY = ("torch", "matplotlib", "skimage", "scipy", "safetensors", "onnx", "modelopt")

#: Modules (dotted, under skipgan_edge) allowed to import these parts of a higher layer, only inside functions, and
#: the heavy modules: the torch backend.
ALLOWED_UPWARD: dict[str, set[str]] = {
    "runtime.backends.torch": {"model"},
}
TORCH_FREE = ("contract", "errors", "logs", "config", "card", "thresholds", "schemas", "data", "metrics", "runtime", "service", "doctor", "cli")

PKG = Path(__file__).resolve().parent


def layer_of(module: str) -> int | None:
    """Layer of a dotted module name under skipgan_edge (``runtime.backends.onnxrt`` → 2)."""
    return LAYERS.get(part_of(module))


def part_of(module: str) -> str:
    """The part a dotted module name under skipgan_edge belongs to (``runtime.backends.onnxrt`` → ``runtime``)."""
    return module.split(".")[0]


def modules(root: Path = PKG) -> dict[str, ast.Module]:
    """Every module of the package, parsed, by dotted name under skipgan_edge (the package itself is ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__") or "__init__"
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every absolute import, in functions too; ``TYPE_CHECKING`` blocks are
    skipped. ``from a import b`` gives ``a`` and ``a.b`` (b may be a module or a name)."""
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


def target_part(imported: str) -> str | None:
    """The part of skipgan_edge an imported dotted name is in (``skipgan_edge.FORMAT_VERSION`` → ``__init__``), or None
    outside the package."""
    parts = imported.split(".")
    if parts[0] != "skipgan_edge":
        return None
    if len(parts) == 1 or parts[1] not in LAYERS:
        return "__init__"
    return parts[1]


def part_graph(mods: dict[str, ast.Module] | None = None) -> dict[str, set[str]]:
    """Part → the other parts it imports (module level and inside functions)."""
    graph: dict[str, set[str]] = {}
    for name, tree in (modules() if mods is None else mods).items():
        src = part_of(name)
        graph.setdefault(src, set())
        for imported, _top in imports(tree):
            dest = target_part(imported)
            if dest is not None and dest != src:
                graph[src].add(dest)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles between parts, each as the parts on it (strongly connected components of more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def drawing(graph: dict[str, set[str]] | None = None) -> str:
    """A Mermaid flowchart of the parts by layer, bottom up, with each import between parts that no chain of other
    imports already implies (the transitive reduction: every arrow drawn is a direct import, and every import is a
    path of arrows). The basics of layer 0 are one box."""
    graph = part_graph() if graph is None else graph
    base = "contract, errors, logs, card, config, thresholds"
    node = {p: ("base" if LAYERS.get(p) == 0 else p) for p in graph}
    merged: dict[str, set[str]] = {}
    upward: list[str] = []  # the allowed exceptions (ALLOWED_UPWARD), drawn dotted and left out of the reduction
    for src, dests in graph.items():
        if src in ("__main__", "layers", "__init__"):
            continue
        for d in dests:
            if node[d] == node[src] or d == "__init__":
                continue
            if LAYERS[d] > LAYERS[src]:
                who = sorted(m for m, parts in ALLOWED_UPWARD.items() if part_of(m) == src and d in parts)
                upward.append(f"  {node[src]} -.->|{', '.join(who) or 'not allowed'}, in functions| {node[d]}")
            else:
                merged.setdefault(node[src], set()).add(node[d])

    def reach(a: str, b: str, skip: tuple[str, str]) -> bool:
        seen, todo = set(), [a]
        while todo:
            v = todo.pop()
            for w in merged.get(v, ()):
                if (v, w) == skip or w in seen:
                    continue
                if w == b:
                    return True
                seen.add(w)
                todo.append(w)
        return False

    lines = ["flowchart BT"]
    by_layer: dict[int, list[str]] = {}
    for p in set(merged) | {d for ds in merged.values() for d in ds}:
        by_layer.setdefault(0 if p == "base" else LAYERS[p], []).append(p)
    for layer in sorted(by_layer):
        names = sorted(by_layer[layer])
        lines.append(f"  subgraph L{layer}[layer {layer}]")
        lines += [f'    {p}["{base}"]' if p == "base" else f"    {p}" for p in names]
        lines.append("  end")
    for src in sorted(merged):
        for dest in sorted(merged[src]):
            if not reach(src, dest, (src, dest)):
                lines.append(f"  {src} --> {dest}")
    return "\n".join([*lines, *sorted(upward)]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(drawing())
