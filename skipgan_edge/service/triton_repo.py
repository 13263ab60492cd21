"""A Triton Inference Server model repository around the scorer: what ``export --triton`` and ``triton-serve`` write.

Layout (Triton's own: one folder per model, one numbered folder per version)::

    REPO/scorer/config.pbtxt
    REPO/scorer/1/model.onnx + model.py     CPU servers: Triton's Python backend runs the scorer in ONNX Runtime or OpenVINO
    REPO/scorer/2/model.plan                GPU servers: the TensorRT backend runs the raw plan that ``build --plan`` writes

* **Versions.** Writing a model that differs from the newest version's (another file hash) adds the next
  version; writing the same file again reuses that version and only refreshes ``config.pbtxt``. Triton serves
  the newest version (``version_policy: latest 1``); older folders stay on disk for a rollback (delete the
  newest, or set ``version_policy: { specific: { versions: [N] } }``), and a client can name one
  (``triton://host:port/scorer/N``) while it is served.
* **One platform per model.** ``config.pbtxt`` is the model's, not a version's, so a plan and an ONNX cannot be
  versions of one model: writing the other kind into an existing model is refused in one line; give it another
  ``--triton-name`` (``scorer_gpu``) or another repository.
* **Batching.** ``max_batch_size`` (Triton's own batch axis, so the dims below leave it out), dynamic batching
  with preferred sizes and a maximum queue delay, and an instance group (``KIND_CPU`` for the Python backend,
  ``KIND_GPU`` for a plan).
* **Plan profiles.** Triton batches requests into any size from 1 to ``max_batch_size`` and hands that size to
  the TensorRT backend, so a plan's optimisation profile must start at 1 and reach ``max_batch_size``: a plan
  is read with its ``build --plan`` sidecar (``OUT.plan.json``) and refused otherwise, in one line that gives
  the ``build --batch`` to use.
* **Scalars.** ``score`` and ``normalized_score`` are ``[B]`` in the graph; with a batch axis Triton requires
  each output to have at least one dim, so they are ``dims: [1]`` with ``reshape: { shape: [] }``: the model
  produces ``[B]`` and clients receive ``[B, 1]``. (The repository written before this module had ``dims: [ ]``,
  which Triton refuses to load.)
* **The card** travels as the model's parameters: ``skipgan_edge.card`` (the whole card, JSON),
  ``skipgan_edge.model_id``, ``skipgan_edge.precision``, and for the Python backend ``skipgan_edge.runtime`` and
  ``skipgan_edge.threads``. A client (``--backend triton://``) reads its threshold, normalization and input size
  from them. Every string is escaped for protobuf text format, so a card field cannot inject configuration.

The Python backend's ``model.py`` is :mod:`skipgan_edge.service.triton_model` with the OpenVINO graph rewrites
inlined (:func:`model_py_source`): it imports only numpy,
``onnxruntime`` or ``openvino`` and Triton's ``triton_python_backend_utils``, so it runs in NVIDIA's Triton
container once ``pip install onnxruntime`` is done in the container's Python, and in the server that
``skipgan-edge triton-serve`` starts.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skipgan_edge.card import ModelCard, atomic_write_bytes, file_sha256
from skipgan_edge.contract import CARD_KEY, INPUT_NAME
from skipgan_edge.errors import ConfigError, require

DEFAULT_MODEL_NAME = "scorer"
#: Triton model names become folder names and URL path segments: letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
PY_RUNTIMES = ("onnxruntime", "openvino")
PY_MODEL_SOURCE = Path(__file__).with_name("triton_model.py")
#: the OpenVINO graph rewrites model.py shares with our OpenVINO backend, inlined at the marked import
GRAPH_SOURCE = Path(__file__).parents[1] / "runtime" / "backends" / "openvino_graph.py"
GRAPH_MARKER = "# ---- model.py (Triton's Python backend) inlines everything below this line ----\n"
INLINE_IMPORT = "from skipgan_edge.runtime.backends.openvino_graph import MAX_SPECIALISED, split_transposed_convs, with_batch  # inlined\n"


def model_py_source() -> bytes:
    """The ``model.py`` this release writes: :mod:`skipgan_edge.service.triton_model` with the OpenVINO graph rewrites
    (:mod:`skipgan_edge.runtime.backends.openvino_graph`, below its marker) in place of the import that names them, so the
    file imports nothing of skipgan_edge and the rewrites have one source."""
    text, graph = PY_MODEL_SOURCE.read_text(), GRAPH_SOURCE.read_text()
    if INLINE_IMPORT not in text or GRAPH_MARKER not in graph:
        raise ConfigError("this skipgan-edge's Triton model.py sources are damaged: reinstall skipgan-edge")
    body = graph.split(GRAPH_MARKER, 1)[1].strip()
    return text.replace(INLINE_IMPORT, f"# from {GRAPH_SOURCE.name}, inlined by skipgan-edge\n{body}\n").encode()


@dataclass(frozen=True)
class TritonSettings:
    """How Triton batches and places the scorer; the same for ``export --triton`` and ``triton-serve``."""

    max_batch: int = 32
    preferred_batch: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000  # how long Triton holds a request waiting for others to batch with it
    dynamic: bool = True  # dynamic batching (off: each request runs alone; for measuring what batching buys)
    instances: int = 1  # model instances (each its own runtime session)
    runtime: str = "onnxruntime"  # Python backend: onnxruntime or openvino
    threads: int = 0  # Python backend: intra-op threads per instance (0 = the runtime's default)

    @classmethod
    def for_profile(cls, batch: tuple[int, int, int], **kw: Any) -> TritonSettings:
        """Settings for an engine profile (min, opt, max): Triton's max batch is the profile's max, the preferred sizes its opt and max."""
        return cls(max_batch=batch[2], preferred_batch=tuple(sorted({batch[1], batch[2]})), **kw)

    def check(self) -> None:
        if not 1 <= self.max_batch <= 4096:
            raise ConfigError(f"Triton max batch must be 1..4096, got {self.max_batch}")
        if any(not 1 <= b <= self.max_batch for b in self.preferred_batch):
            raise ConfigError(f"preferred batch sizes {list(self.preferred_batch)} must lie in 1..{self.max_batch} (the max batch)")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ConfigError(f"max queue delay must be 0..10000000 µs, got {self.max_queue_delay_us}")
        if not 1 <= self.instances <= 64:
            raise ConfigError(f"instances must be 1..64, got {self.instances}")
        if self.runtime not in PY_RUNTIMES:
            raise ConfigError(f"the Triton Python backend runs onnxruntime or openvino, not {self.runtime!r}")
        if not 0 <= self.threads <= 256:
            raise ConfigError(f"threads must be 0..256, got {self.threads}")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"Triton model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', at most 64, "
                          "not starting with '.'")
    return name


def pbtxt_string(value: str) -> str:
    """``value`` as a protobuf text-format string literal (double quotes; quotes, backslashes and control bytes escaped)."""
    out = []
    for ch in value.encode("utf-8"):
        if ch in (0x22, 0x5C):  # " and \
            out.append("\\" + chr(ch))
        elif 0x20 <= ch < 0x7F:
            out.append(chr(ch))
        else:  # newlines, control bytes and UTF-8 bytes as octal escapes: protobuf text format decodes them to the same bytes
            out.append(f"\\{ch:03o}")
    return '"' + "".join(out) + '"'


def config_text(name: str, card: ModelCard, settings: TritonSettings, plan: bool) -> str:
    """The model's ``config.pbtxt``."""
    settings.check()
    isize, ch = card.input.isize, card.input.channels
    params: dict[str, str] = {CARD_KEY: json.dumps(card.to_dict(), separators=(",", ":"), sort_keys=True),
                              "skipgan_edge.model_id": card.model_id or "unknown", "skipgan_edge.precision": card.precision}
    if not plan:
        params["skipgan_edge.runtime"] = settings.runtime
        params["skipgan_edge.threads"] = str(settings.threads)
        # OpenVINO computes in bf16 by default on a bf16 CPU; like the runtime's OpenVINO backend, only an FP16 variant whose
        # export passed the bf16 gate may (model.py then asks for bf16, which a CPU without it runs in f32)
        gated = str(card.export.get("cpu_bf16", {}).get("gate")) == "passed"
        params["skipgan_edge.openvino_precision"] = "bf16" if card.precision == "fp16" and gated else "f32"
    head = 'platform: "tensorrt_plan"' if plan else 'backend: "python"'
    preferred = ", ".join(str(b) for b in sorted(set(settings.preferred_batch)))
    lines = [
        f"name: {pbtxt_string(name)}",
        head,
        f"max_batch_size: {settings.max_batch}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [",
        f"  {{ name: \"{INPUT_NAME}\" data_type: TYPE_UINT8 dims: [ {isize}, {isize}, {ch} ] }}",
        "]",
        "output [",
        '  { name: "score" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } },',
        f'  {{ name: "anomaly_map" data_type: TYPE_FP32 dims: [ 1, {isize}, {isize} ] }},',
        '  { name: "normalized_score" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } }',
        "]",
        *(["dynamic_batching {",
           *([f"  preferred_batch_size: [ {preferred} ]"] if preferred else []),
           f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}",
           "}"] if settings.dynamic else []),
        f"instance_group [ {{ count: {settings.instances} kind: {'KIND_GPU' if plan else 'KIND_CPU'} }} ]",
    ]
    lines += [f"parameters {{ key: {pbtxt_string(k)} value: {{ string_value: {pbtxt_string(v)} }} }}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def check_plan_profile(plan: Path, settings: TritonSettings) -> dict[str, int]:
    """The plan's batch profile from its ``build --plan`` sidecar; refused unless min is 1 and max covers Triton's max batch."""
    side = Path(str(plan) + ".json")
    try:
        prof = json.loads(side.read_text())["profile"]
        lo, hi = int(prof["min"]), int(prof["max"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{plan} has no readable {side.name} beside it (build --plan writes it): Triton needs the plan's batch "
                          f"profile; rebuild with skipgan-edge build --plan") from None
    if lo != 1:
        raise ConfigError(f"{plan} was built for batches {lo}..{hi}, but Triton sends any batch from 1: rebuild with "
                          f"--batch 1,{prof.get('opt', hi)},{hi}")
    if hi < settings.max_batch:
        raise ConfigError(f"{plan} was built for batches up to {hi}, but the Triton max batch is {settings.max_batch}: rebuild with "
                          f"--batch 1,{prof.get('opt', hi)},{settings.max_batch} or lower the max batch")
    return {"min": lo, "max": hi}


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")) \
        if model_dir.is_dir() else []


@dataclass(frozen=True)
class RepoVersion:
    repository: Path
    model: str
    version: int
    new: bool  # a new version folder (False: the newest version already held this file)

    @property
    def folder(self) -> Path:
        return self.repository / self.model / str(self.version)


def write_repository(model_path: Path, repository: Path, card: ModelCard, settings: TritonSettings = TritonSettings(),
                     name: str = DEFAULT_MODEL_NAME) -> RepoVersion:
    """Add ``model_path`` (a scorer ``.onnx`` or a raw ``.plan`` from ``build --plan``) to a Triton repository as the
    model's newest version (or reuse the newest version when it holds the same file); write ``config.pbtxt``. For the
    Python backend, every version's ``model.py`` is (re)written with this release's, which ``triton-serve`` requires."""
    check_name(name)
    settings.check()
    model_path = Path(model_path)
    plan = model_path.suffix == ".plan"
    if not plan and model_path.suffix != ".onnx":
        raise ConfigError(f"a Triton repository serves a scorer .onnx or a .plan from build --plan, not {model_path.name}")
    if not model_path.is_file():
        raise ConfigError(f"{model_path} not found")
    if plan:
        check_plan_profile(model_path, settings)
    model_dir = Path(repository) / name
    fname = "model.plan" if plan else "model.onnx"
    other = "model.onnx" if plan else "model.plan"
    versions = _versions(model_dir)
    if versions and any((model_dir / str(v) / other).exists() for v in versions):
        raise ConfigError(f"{model_dir} already serves {'ONNX through the Python backend' if plan else 'a TensorRT plan'}; a model has "
                          f"one platform: give this one another name (--triton-name) or another repository")
    digest = file_sha256(model_path)
    newest = model_dir / str(versions[-1]) / fname if versions else None
    if newest is not None and newest.is_file() and file_sha256(newest) == digest:
        version, new = versions[-1], False
    else:
        version, new = (versions[-1] + 1 if versions else 1), True
    vdir = model_dir / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    if new:
        tmp = vdir / f".{fname}.tmp"
        shutil.copyfile(model_path, tmp)
        tmp.replace(vdir / fname)
    if not plan:  # every version's: a repository written by an older release serves again after this export
        for v in sorted({*versions, version}):
            atomic_write_bytes(model_dir / str(v) / "model.py", model_py_source())
            block_bytecode(model_dir / str(v))
    atomic_write_bytes(vdir / "card.json", (json.dumps(card.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    atomic_write_bytes(model_dir / "config.pbtxt", config_text(name, card, settings, plan).encode())
    return RepoVersion(Path(repository), name, version, new)


#: What skipgan-edge writes into a Python-backend version folder: anything else there can be loaded as code (Triton's stub
#: puts the version folder and the model folder on ``sys.path`` and imports ``model``, through a ``__pycache__`` bytecode
#: file whose header matches the source without reading it, or an ``__init__.py``, a module or an extension beside it).
#: ``__pycache__`` is an empty regular *file* we write (:data:`NO_BYTECODE`): Python can then neither read bytecode from
#: the folder nor write any into it (the stub's Python is isolated: PYTHONDONTWRITEBYTECODE and PYTHONPYCACHEPREFIX are
#: ignored, and it would otherwise write its own bytecode there on the first start).
NO_BYTECODE = "__pycache__"
VERSION_FILES = frozenset({"model.py", "model.onnx", "card.json", NO_BYTECODE})


def block_bytecode(vdir: Path) -> None:
    """Make ``vdir/__pycache__`` the empty file that keeps Python from reading or writing bytecode in ``vdir`` (a
    ``__pycache__`` folder there, Python's own from an older release's serving or a planted one, is removed)."""
    cache = vdir / NO_BYTECODE
    if cache.is_dir() and not cache.is_symlink():
        shutil.rmtree(cache)
    elif cache.is_symlink():
        cache.unlink()
    atomic_write_bytes(cache, b"")


def foreign_files(model_dir: Path, versions: list[int]) -> list[str]:
    """The entries of a Python-backend model folder that skipgan-edge did not write (``config.pbtxt`` and the version
    folders in it; :data:`VERSION_FILES` in each version), as ``NAME`` or ``VERSION/NAME``."""
    out = sorted(p.name for p in model_dir.iterdir()
                 if not (p.name == "config.pbtxt" and p.is_file() and not p.is_symlink()) and not (p.is_dir() and p.name.isdigit()))
    for v in versions:
        vdir = model_dir / str(v)
        out += sorted(f"{v}/{p.name}" for p in vdir.iterdir() if p.name not in VERSION_FILES or not p.is_file())
    return out


def find_models(repository: Path, trust: bool = False) -> list[dict[str, Any]]:
    """The models in a repository (name, platform, versions), for ``triton-serve``; each ``config.pbtxt`` parsed by Triton's
    own ModelConfig protobuf (tritonclient's), so a config Triton would refuse is one line here.

    A repository is code: Triton's Python backend runs each version's ``model.py``, and parameters such as
    ``EXECUTION_ENV_PATH`` make it unpack and run another Python environment. Unless ``trust``, a Python-backend model is
    served only when every version's ``model.py`` is byte-identical to the one this skipgan-edge writes, nothing else is
    in the model folder or a version folder (:func:`foreign_files`: a planted ``__pycache__/model.*.pyc`` would run
    instead of ``model.py``), no other file name is configured to run, and every parameter is one of ours
    (``skipgan_edge.*``); otherwise one line says what differs (``--trust-repository`` serves it anyway). The server is
    started with Python's bytecode cache outside the repository either way (:class:`~.triton_server.TritonServer`)."""
    text_format = require("google.protobuf.text_format", "triton", "triton-serve")
    pb = require("tritonclient.grpc.model_config_pb2", "triton", "triton-serve")
    ours = model_py_source()
    found = []
    for cfg_path in sorted(Path(repository).glob("*/config.pbtxt")):
        where = f"{cfg_path.parent.name}/config.pbtxt"
        try:
            cfg = text_format.Parse(cfg_path.read_text(errors="replace"), pb.ModelConfig())
        except text_format.ParseError as exc:
            raise ConfigError(f"{where} is not a valid Triton model config ({str(exc).splitlines()[0]}); re-export it with "
                              "skipgan-edge export --triton") from None
        kind = cfg.platform or cfg.backend or "other"
        versions = _versions(cfg_path.parent)
        if kind == "python":  # trusted or not: bytecode is never what was reviewed, and Python would run it instead of model.py
            for v in versions:
                cache = cfg_path.parent / str(v) / NO_BYTECODE
                if cache.exists() and not (cache.is_file() and not cache.is_symlink()):
                    raise ConfigError(f"{where}: {cfg_path.parent.name}/{v}/{NO_BYTECODE} holds bytecode, which Python would run instead "
                                      f"of model.py, even with --trust-repository; remove it (export --triton writes the repository "
                                      "anew)")
        if kind == "python" and not trust:
            why = ""
            bad = sorted(k for k in cfg.parameters if not k.startswith("skipgan_edge."))
            if bad:
                why = f"parameter {bad[0]!r} is not one skipgan-edge writes"
            elif cfg.runtime or cfg.default_model_filename not in ("", "model.py"):
                why = f"it names other code to run ({cfg.runtime or cfg.default_model_filename!r})"
            elif foreign_files(cfg_path.parent, versions):
                why = (f"{cfg_path.parent.name}/{foreign_files(cfg_path.parent, versions)[0]} is not a file skipgan-edge writes, and "
                       "Triton's Python backend can load it as code (remove it)")
            else:
                for v in versions:
                    code = cfg_path.parent / str(v) / "model.py"
                    if not code.is_file() or code.read_bytes() != ours:
                        why = f"version {v}'s model.py is not the one this skipgan-edge writes"
                        break
            if why:
                raise ConfigError(f"{where}: {why}; a repository is code Triton runs: re-export it with skipgan-edge export --triton, "
                                  "or check it and pass --trust-repository")
        found.append({"name": cfg_path.parent.name, "platform": kind, "versions": versions})
    return found
