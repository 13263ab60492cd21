"""TensorRT engines: build from the scorer ONNX (FP32, FP16 or INT8 Q/DQ), save with metadata, load safely.

Precision comes from the ONNX file (strongly typed network). Version differences live in
:class:`TrtCompat` and are compared with ``packaging.version``. Which JetPack ships which TensorRT:
JetPack 5 ships 8.5.2 (refused: upgrade to JetPack 6.1 or later), JetPack 6.0 ships 8.6.2, JetPack
6.1 and 6.2 ship 10.3.

* TensorRT 11.x: strongly typed is the only mode (the flag is accepted and ignored); no FP16 /
  INT8 builder flags exist.
* TensorRT 10.x (JetPack 6.1/6.2 ship 10.3): ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.
* TensorRT 8.6 (JetPack 6.0 ships 8.6.2): no strongly typed networks. The ONNX is first rewritten
  for its parser (:mod:`skipgan_edge.export.trt86`: its importer ignores reduce ``axes`` inputs and
  stops at opset 17). The network is weakly typed with explicit batch; the FP16 variant sets the
  FP16 flag, the INT8 variant the INT8 flag alone (its Q/DQ nodes need it; everything else in that
  file is FP32, and without FP16 TensorRT keeps it FP32), and the score head (preprocessing,
  subtractions, squares, reductions, normalisation: ``is_head_node``) is held in FP32 by per-layer
  precision and output types with ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``, as the strongly
  typed build holds it by the ONNX's types.

After the build, the engine is run on held-out frames (``heldout.npz``, written by ``export``
beside the ONNX files, or ``--check-frames``) and compared with ONNX Runtime running the same ONNX
file, output by output, as Polygraphy's ``run --trt --onnxrt`` does; the record goes into the
engine header. The engine is refused (deleted, one line) if its AUROC on those frames drops more
than the export gate's ``max_auroc_drop`` against the FP32 scorer's, so the INT8 gate covers the
engine and not only ONNX Runtime's Q/DQ emulation (:func:`check_engine_outputs`).

An engine runs only on the GPU model and TensorRT version it was built with. The file we write
is a small container: the magic ``SKIPGAN-ENGINE\\n``, a 4-byte big-endian length, a JSON header
(TensorRT version, GPU name and compute capability, precision, batch profile, the model card and
its fingerprint, the exact ``build`` command), then the serialized engine. :func:`load_engine`
refuses a mismatched engine with one line that gives the command to rebuild it (the file format and
loading live in :mod:`skipgan_edge.runtime.engine_file`, the runtime's half, re-exported here).

Nothing here runs without TensorRT; ``build`` exits non-zero with one line saying what to install
and that engines are built on the device that runs them. The code is type-checked with mypy
against ``tensorrt-stubs`` in ``make test``.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

if TYPE_CHECKING:
    import tensorrt as trt

from skipgan_edge.card import ModelCard
from skipgan_edge.errors import EngineError
from skipgan_edge.runtime.engine_file import (  # re-exported: the loading half lives in the runtime
    ENGINE_FORMAT,
    MAGIC,
    EngineHeader,
    Profile,
    check_compatible,
    gpu_info,
    import_tensorrt,
    load_engine,
    read_engine_file,
    write_engine_file,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BuildConfig:
    """Engine build options. Defaults suit small scorers on Jetson and desktop GPUs."""

    batch: tuple[int, int, int] = (1, 8, 32)  # optimisation profile over the batch axis: min, opt, max
    workspace_mb: int = 1024  # builder scratch memory limit; the scorer needs far less
    timing_cache: Path | None = None  # persistent tactic timings: rebuilds take seconds instead of minutes
    dla_core: int | None = None  # Jetson DLA core (GPU fallback for layers DLA cannot run)
    opt_level: int = 3  # TensorRT's default builder optimisation level (0-5)
    plan: bool = False  # also write the raw serialized plan (OUT.plan) and our header beside it (OUT.plan.json)
    check: bool = True  # run the engine on held-out frames against ONNX Runtime and the export gate; refuse beyond it
    check_frames: Path | None = None  # held-out frames (export's heldout.npz); default: heldout.npz beside the ONNX

    def validate(self, precision: str | None = None) -> None:
        """Refuse impossible combinations before TensorRT is touched (one line each)."""
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise EngineError(f"--batch must be min,opt,max with 1 <= min <= opt <= max, got {lo},{opt},{hi}")
        if not 0 <= self.opt_level <= 5:
            raise EngineError(f"--opt-level must be 0-5, got {self.opt_level}")
        if self.workspace_mb < 1:
            raise EngineError(f"--workspace must be at least 1 MiB, got {self.workspace_mb}")
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise EngineError(f"--dla-core must be 0 or 1, got {self.dla_core}")
            if not lo == opt == hi:
                raise EngineError(f"DLA needs a static batch (min = opt = max), got --batch {lo},{opt},{hi}; "
                                  f"use e.g. --batch {opt},{opt},{opt}")
            if precision is not None and precision not in ("fp16", "int8"):
                raise EngineError(f"DLA runs FP16 or INT8 only, and this ONNX is {precision}; "
                                  "build scorer.fp16.onnx or scorer.int8.onnx for the DLA")


@dataclass
class TrtCompat:
    """Every TensorRT version difference, in one place."""

    version: Version = field(init=False)

    def __post_init__(self) -> None:
        import_tensorrt()
        import tensorrt as trt

        self.version = Version(trt.__version__)
        refuse_version(self.version)

    @property
    def strongly_typed(self) -> bool:
        return self.version >= Version("10.0")

    def network_flags(self) -> int:
        import tensorrt as trt

        if self.version >= Version("11.0"):
            return 0  # strongly typed and explicit batch are the only modes
        if self.strongly_typed:
            return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)

    def onnx_for_parser(self, onnx_bytes: bytes) -> bytes:
        """The ONNX this TensorRT's parser gets: as exported on 10.x+, rewritten for 8.6 (reduce axes, opset 17)."""
        if self.strongly_typed:
            return onnx_bytes
        from skipgan_edge.errors import require
        from skipgan_edge.export.trt86 import needs_rewrite, rewrite_for_trt86

        onnx = require("onnx", "onnx", "building on TensorRT 8.6 (the graph is rewritten for its parser)")
        model = onnx.load_from_string(onnx_bytes)
        if not needs_rewrite(model):
            return onnx_bytes
        rewritten: bytes = rewrite_for_trt86(model).SerializeToString()
        return rewritten

    def set_precision_flags(self, config: trt.IBuilderConfig, precision: str) -> None:
        """Only TensorRT 8.6 needs builder flags; later versions read precision from the ONNX.

        FP16 file: FP16. INT8 file: INT8 alone (its Q/DQ need it; its other layers are FP32 in the
        ONNX and stay so without FP16). Either: OBEY_PRECISION_CONSTRAINTS, so that the FP32 head
        (:meth:`hold_head_fp32`) is a requirement, not a preference.
        """
        import tensorrt as trt

        if self.strongly_typed:
            return
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    def hold_head_fp32(self, network: trt.INetworkDefinition, precision: str, onnx_bytes: bytes | None = None) -> list[str]:
        """On a weakly typed (8.6) network, pin the score head to FP32: precision, and each float output's type.

        The parser names each layer after its ONNX node (onnx/onnx-tensorrt release/8.6-GA,
        ImporterContext.cpp ``registerLayer``: the node name, made unique with a ``_N`` suffix), and a
        constant layer after its weights, i.e. the ONNX Constant's output name (onnx2trt_utils.cpp
        ``convertToTensor``), so head layers and head constants match ``is_head_node``. An initializer (the
        feature bank's: ``gauss_whiten`` and ``gauss_mean``, or ``bank_t``, ``bank_sq``, ``bank_center``)
        becomes a constant layer named after the initializer (ModelImporter.cpp gives its weights that
        name), which the regex cannot tell from a
        network's weights: from ``onnx_bytes`` (the ONNX the parser got), the initializers that only head
        nodes read are head constants too. The unnamed shuffles the parser puts in front of an
        elementwise or MatMul layer (``broadcastTensor``; MatMul's rank match) belong to the head when
        they read a head layer's output.

        Output types are pinned to the tensor's own (the ONNX's) type: FP32 for the head's own
        tensors, FP16 for its casts into an FP16 network (``/..._cast_to_fp16``). A layer's output
        type is not its tensor's type (TensorRT reformats between them: NVIDIA/TensorRT release/8.6
        NvInfer.h ``ILayer::setOutputType``) and a cast layer's output type is its ``toType``
        (release/10.3 NvInfer.h ``ICastLayer::getToType``; for the fill, quantize and dequantize layers
        ``setToType`` says "types passed to setOutputType and setToType must be the same"), so FP32
        there would contradict the cast. Returns the pinned layers' names.
        """
        if self.strongly_typed or precision == "fp32":
            return []
        import tensorrt as trt

        from skipgan_edge.export.onnx import is_head_node

        floats = (trt.float32, trt.float16)
        head_consts = head_initializers(onnx_bytes) if onnx_bytes is not None else set()
        head_tensors: set[str] = set()
        pinned: list[str] = []
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            named_head = is_head_node(layer.name) or layer.name in head_consts
            registered = layer.name.startswith("/")
            reads_head = any(layer.get_input(j) is not None and layer.get_input(j).name in head_tensors
                             for j in range(layer.num_inputs))
            if not (named_head or (not registered and reads_head)):
                continue
            outs = [layer.get_output(j) for j in range(layer.num_outputs)]
            head_tensors.update(t.name for t in outs)
            float_outs = [j for j, t in enumerate(outs) if t.dtype in floats]
            if not float_outs:
                continue  # shape and index tensors keep their types
            layer.precision = trt.float32
            for j in float_outs:
                layer.set_output_type(j, outs[j].dtype)  # FP32, or the FP16 a cast into an FP16 network makes
            pinned.append(layer.name)
        return pinned


def head_initializers(onnx_bytes: bytes) -> set[str]:
    """The initializers of an ONNX graph that only score-head nodes (``is_head_node``) read: the head's constants
    that are not Constant nodes (the feature bank's)."""
    from skipgan_edge.errors import require
    from skipgan_edge.export.onnx import is_head_node

    onnx = require("onnx", "onnx", "building on TensorRT 8.6 (the score head's constants are pinned to FP32)")
    graph = onnx.load_from_string(onnx_bytes).graph
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    return {init.name for init in graph.initializer
            if readers.get(init.name) and all(is_head_node(n) for n in readers[init.name])}


def refuse_version(version: Version) -> None:
    """One line for a TensorRT this toolkit does not build with."""
    if version < Version("8.6"):
        raise EngineError(f"TensorRT {version} is too old (JetPack 5 ships 8.5.2): skipgan-edge builds with 8.6 (JetPack 6.0), "
                          f"10.x or 11.x; upgrade to JetPack 6.1 or later (TensorRT 10.3)")


def onnx_precision(onnx_path: Path) -> tuple[str, ModelCard]:
    from skipgan_edge.runtime.artifact import Artifact

    card = Artifact("onnx", Path(onnx_path)).read_card()
    return card.precision, card


def build_command(onnx_path: Path, out: Path, cfg: BuildConfig) -> str:
    parts = ["skipgan-edge", "build", "--onnx", str(onnx_path), "--out", str(out), "--batch", ",".join(map(str, cfg.batch)),
             "--workspace", str(cfg.workspace_mb), "--opt-level", str(cfg.opt_level)]
    if cfg.timing_cache:
        parts += ["--timing-cache", str(cfg.timing_cache)]
    if cfg.dla_core is not None:
        parts += ["--dla-core", str(cfg.dla_core)]
    if cfg.plan:
        parts += ["--plan"]
    if not cfg.check:
        parts += ["--no-check"]
    elif cfg.check_frames:
        parts += ["--check-frames", str(cfg.check_frames)]
    return shlex.join(parts)


def plan_path(out: Path) -> Path:
    """Where ``--plan`` writes the raw serialized engine: ``scorer.engine`` → ``scorer.plan``."""
    return Path(out).with_suffix(".plan")


def load_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> trt.ITimingCache:
    """Attach a timing cache to ``config``: the file's if TensorRT accepts it, else a fresh one.

    A cache written by another GPU or TensorRT version is refused by ``set_timing_cache`` (with
    ``ignore_mismatch=False``, its return is False): it is discarded with a warning, never used
    half-way, and the build continues with an empty cache that later replaces the file.
    """
    blob = b""
    if path is not None and Path(path).exists():
        blob = Path(path).read_bytes()
    cache = config.create_timing_cache(blob) if blob else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if blob:
        log.warning("timing cache %s was made by another GPU or TensorRT version (or is corrupt); discarded, "
                    "building with a fresh one", path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError("TensorRT could not create an empty timing cache; rerun with -v for its log")
    return cache


def layer_placement(network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> dict[str, Any]:
    """Which layers of ``network`` the DLA can take (``IBuilderConfig.can_run_on_DLA``); the rest fall back to the GPU."""
    on_dla, on_gpu = 0, list[str]()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if config.can_run_on_DLA(layer):
            on_dla += 1
        else:
            on_gpu.append(layer.name)
    return {"dla_layers": on_dla, "gpu_layers": len(on_gpu), "gpu_layer_names": on_gpu[:50],
            "source": "IBuilderConfig.can_run_on_DLA before the build"}


def inspect_engine(serialized: bytes) -> dict[str, Any] | None:
    """Per-layer information from TensorRT's engine inspector (built with detailed profiling verbosity), if available."""
    import tensorrt as trt

    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            return None
        inspector = engine.create_engine_inspector()
        if inspector is None:
            return None
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as exc:  # noqa: BLE001 - the inspector is informational; the engine is already written
        log.warning("engine inspector unavailable (%s); the header records the requested placement only", exc)
        return None
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    names = [str(x.get("Name", x)) if isinstance(x, dict) else str(x) for x in layers]
    on_dla = [n for n in names if "dla" in n.lower() or "foreign" in n.lower()]
    return {"layers": len(names), "dla_subgraphs": len(on_dla), "dla_subgraph_names": on_dla[:20],
            "source": "IEngineInspector (DLA subgraphs appear as DLA/ForeignNode layers)"}


def build_engine(onnx_path: Path, out: Path, cfg: BuildConfig = BuildConfig()) -> EngineHeader:
    """Parse ``onnx_path``, build a strongly typed engine with a batch profile, write ``out``; returns its header.

    Order: the engine file is written as soon as the build returns; the optional outputs (the raw
    plan, the timing cache, the engine inspector's report) come after, so a failure in one of them
    never costs the engine.
    """
    precision, card = onnx_precision(onnx_path)
    cfg.validate(precision)
    import_tensorrt()
    compat = TrtCompat()
    gpu = gpu_info()
    heldout = heldout_path(onnx_path, cfg)  # before the build: a missing file costs no build time
    built = _build_serialized(onnx_path, card, precision, compat, cfg)
    header = engine_header(onnx_path, out, cfg, card, precision, compat, gpu, built)
    write_engine_file(out, header, built.blob)  # first: nothing optional below may cost the engine
    log.info("built %s (%s, TensorRT %s, %s sm_%s)", out, precision, compat.version, gpu["gpu"], gpu["compute_capability"])
    header = _check_and_inspect(out, onnx_path, heldout, built.blob, header, cfg)
    return _write_plan_and_cache(out, header, built, cfg)


@dataclass
class _Built:
    """What the builder made: the serialized engine, and what the header and the timing cache need from the build."""

    blob: bytes
    config: Any  # trt.IBuilderConfig (its timing cache is saved after the engine)
    cache: Any  # trt.ITimingCache attached before the build
    placement: dict[str, Any]
    pinned_fp32: list[str]


def _parse(builder: trt.Builder, compat: TrtCompat, onnx_path: Path, logger: trt.ILogger) -> tuple[trt.INetworkDefinition, bytes]:
    """The network TensorRT's ONNX parser makes of the file (rewritten first for 8.6), and the ONNX it parsed; one line
    naming what it refused."""
    import tensorrt as trt

    network = builder.create_network(compat.network_flags())
    parser = trt.OnnxParser(network, logger)
    blob = compat.onnx_for_parser(Path(onnx_path).read_bytes())
    if not parser.parse(blob):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT {compat.version} could not parse {onnx_path}: {errors} "
                          f"(skipgan-edge build --onnx {onnx_path} --dry-run names what it refuses)")
    return network, blob


def _batch_profile(builder: trt.Builder, config: trt.IBuilderConfig, card: ModelCard, cfg: BuildConfig) -> None:
    """The optimisation profile over the batch axis of the uint8 NHWC input."""
    import tensorrt as trt

    isize, ch = card.input.isize, card.input.channels
    lo, opt, hi = cfg.batch
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "images", trt.Dims([lo, isize, isize, ch]), trt.Dims([opt, isize, isize, ch]), trt.Dims([hi, isize, isize, ch])
    )
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT refused the batch profile {lo},{opt},{hi} for input 'images'")


def _place_on_dla(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, cfg: BuildConfig) -> dict[str, Any]:
    """Where the layers run: the GPU, or with ``--dla-core`` the DLA (GPU fallback) and the layers it can take."""
    import tensorrt as trt

    if cfg.dla_core is None:
        return {"device": "gpu"}
    if builder.num_DLA_cores <= cfg.dla_core:
        raise EngineError(f"--dla-core {cfg.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = cfg.dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return {"device": f"dla:{cfg.dla_core}", "gpu_fallback": True, **layer_placement(network, config)}


def _build_serialized(onnx_path: Path, card: ModelCard, precision: str, compat: TrtCompat, cfg: BuildConfig) -> _Built:
    """Parse, configure (workspace, optimisation level, precision, the FP32 head, batch profile, timing cache, DLA), build."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineError("TensorRT could not create a builder (is the GPU driver loaded?)")
    network, parsed = _parse(builder, compat, onnx_path, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the inspector
    compat.set_precision_flags(config, precision)
    pinned_fp32 = compat.hold_head_fp32(network, precision, parsed)
    _batch_profile(builder, config, card, cfg)
    cache = load_timing_cache(config, cfg.timing_cache)
    placement = _place_on_dla(builder, network, config, cfg)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT {compat.version} failed to build {onnx_path}; rerun with -v for the builder log")
    return _Built(bytes(memoryview(serialized)), config, cache, placement, pinned_fp32)


def engine_header(onnx_path: Path, out: Path, cfg: BuildConfig, card: ModelCard, precision: str, compat: TrtCompat,
                  gpu: dict[str, Any], built: _Built) -> EngineHeader:
    """The header written in front of the engine: where and how it was built, for which model."""
    lo, opt, hi = cfg.batch
    return EngineHeader(
        engine_format=ENGINE_FORMAT, tensorrt=str(compat.version), gpu=str(gpu["gpu"]), compute_capability=str(gpu["compute_capability"]),
        cuda_python=gpu.get("cuda_python"), precision=precision, profile=Profile(lo, opt, hi), placement=built.placement,
        network=({"typing": "strong"} if compat.strongly_typed else
                 {"typing": "weak", "onnx_rewrite": "trt86 (reduce axes as attributes, opset 17)",
                  "fp32_layers": len(built.pinned_fp32), "obey_precision_constraints": precision != "fp32"}),
        input=asdict(card.input), model_id=card.model_id, card=card,
        build=asdict(cfg) | {"timing_cache": str(cfg.timing_cache) if cfg.timing_cache else None,
                             "check_frames": str(cfg.check_frames) if cfg.check_frames else None},
        build_command=build_command(onnx_path, out, cfg), onnx=str(onnx_path),
    )


def _check_and_inspect(out: Path, onnx_path: Path, heldout: Path | None, blob: bytes, header: EngineHeader,
                       cfg: BuildConfig) -> EngineHeader:
    """The held-out check (beyond the gate the engine is deleted) and, on the DLA, the inspector's placement: each
    recorded in the header, rewritten in place."""
    if heldout is not None:
        header = header.replace(check=check_built_engine(out, onnx_path, heldout, blob, header))
        write_engine_file(out, header, blob)
    if cfg.dla_core is not None:
        inspected = inspect_engine(blob)
        if inspected is not None:
            header = header.replace(placement={**(header.placement or {}), "inspector": inspected})
            write_engine_file(out, header, blob)
    return header


def _write_plan_and_cache(out: Path, header: EngineHeader, built: _Built, cfg: BuildConfig) -> EngineHeader:
    """``--plan``: the raw plan and the header beside it; ``--timing-cache``: the cache, updated by this build."""
    from skipgan_edge.card import atomic_write_bytes, atomic_write_json

    if cfg.plan:
        atomic_write_bytes(plan_path(out), built.blob)
        atomic_write_json(Path(str(plan_path(out)) + ".json"), header.to_dict())
        header = header.replace(plan=str(plan_path(out)))
    if cfg.timing_cache:
        serialized_cache = built.cache.serialize() if built.cache is not None else None
        fresh = built.config.get_timing_cache()
        if fresh is not None:
            serialized_cache = fresh.serialize()
        if serialized_cache is None:
            log.warning("TensorRT returned no timing cache; %s not updated", cfg.timing_cache)
        else:
            atomic_write_bytes(cfg.timing_cache, bytes(memoryview(serialized_cache)))
    return header


HELDOUT_FILE = "heldout.npz"


def heldout_path(onnx_path: Path, cfg: BuildConfig) -> Path | None:
    """The held-out frames the engine is checked on (None with ``--no-check``); missing ones are one line."""
    if not cfg.check:
        return None
    path = Path(cfg.check_frames) if cfg.check_frames else Path(onnx_path).with_name(HELDOUT_FILE)
    if not path.is_file():
        raise EngineError(f"no held-out frames at {path} to check the engine against ONNX Runtime and the export gate: copy "
                          f"export's {HELDOUT_FILE} beside the ONNX, or pass --check-frames FILE (--no-check skips the check)")
    return path


def load_heldout(path: Path) -> dict[str, Any]:
    """``images`` (uint8 NHWC), ``labels`` (0 normal, 1 anomalous), ``fp32_score`` (the FP32 scorer's, ONNX Runtime) and
    ``max_drop`` (the export gate's), as :func:`skipgan_edge.export.api.write_heldout` stores them."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            rec = {k: z[k] for k in ("images", "labels", "fp32_score", "max_drop")}
    except (OSError, KeyError, ValueError) as exc:
        raise EngineError(f"{path} is not export's held-out frame file ({exc.__class__.__name__}); re-run export, "
                          f"or pass --check-frames with its {HELDOUT_FILE}") from None
    if rec["images"].dtype != np.uint8 or rec["images"].ndim != 4 or len(rec["labels"]) != len(rec["images"]):
        raise EngineError(f"{path} does not hold uint8 NHWC frames with one label each; re-run export")
    if len(set(rec["labels"].tolist())) < 2:
        raise EngineError(f"{path} has no anomalous (or no normal) frames, so the export gate cannot run on the engine; "
                          f"re-run export with a labelled --eval-data")
    return rec


def compare_outputs(ref: Any, got: Any) -> dict[str, Any]:
    """Polygraphy-style comparison of two ``ScoreBatch``es: per output, shape, max/mean absolute and max relative error."""
    import numpy as np

    out: dict[str, Any] = {}
    for name in ref._fields:
        a, b = np.asarray(getattr(ref, name), np.float64), np.asarray(getattr(got, name), np.float64)
        if a.shape != b.shape:
            out[name] = {"shape_ref": list(a.shape), "shape_engine": list(b.shape), "ok": False}
            continue
        d = np.abs(a - b)
        finite = bool(np.isfinite(b).all())
        out[name] = {"max_abs": float(d.max()) if d.size else 0.0, "mean_abs": float(d.mean()) if d.size else 0.0,
                     "max_rel": float((d / np.maximum(np.abs(a), 1e-12)).max()) if d.size else 0.0, "finite": finite,
                     "ok": finite}
    return out


#: the share of held-out frames on which an engine's alarms may differ from ONNX Runtime's on the same ONNX file
MAX_ALARM_FLIPS = 0.05


def check_engine_outputs(run_engine: Any, onnx_path: Path, heldout: dict[str, Any]) -> dict[str, Any]:
    """Run ``run_engine`` (images → ``ScoreBatch``) and ONNX Runtime on ``onnx_path`` over the held-out frames.

    ``ok`` is False when an output has the wrong shape or a non-finite value, when the engine's AUROC is more than
    the export gate's ``max_drop`` below the FP32 scorer's on the same frames, or when its alarms at the card's
    threshold (normalized score above it) differ from ONNX Runtime's on more than :data:`MAX_ALARM_FLIPS` of the
    frames (at least one is allowed): an engine can rank frames as well as ONNX Runtime and still shift every score,
    and the line sees the alarms.
    """
    import numpy as np

    from skipgan_edge.metrics import auroc, spearman
    from skipgan_edge.runtime.backends import CPU_ONLY, open_backend
    from skipgan_edge.runtime.backends.onnxrt import read_card

    images, labels = heldout["images"], heldout["labels"]
    with open_backend("onnx", Path(onnx_path), "onnxruntime", CPU_ONLY) as be:
        ref = be.infer_all(images)
    got = run_engine(images)
    outputs = compare_outputs(ref, got)
    fp32_auroc = auroc(labels, heldout["fp32_score"])
    shapes_ok = all(o["ok"] for o in outputs.values())
    engine_auroc = auroc(labels, got.score) if shapes_ok else float("nan")
    drop = fp32_auroc - engine_auroc
    max_drop = float(heldout["max_drop"])
    alarms: dict[str, Any] = {"ok": False}
    if shapes_ok:
        thr = float(read_card(Path(onnx_path)).score.threshold.normalized)
        want, have = np.asarray(ref.normalized_score) > thr, np.asarray(got.normalized_score) > thr
        flips, allowed = int((want != have).sum()), max(1, int(MAX_ALARM_FLIPS * len(images)))
        alarms = {"threshold": thr, "onnxruntime": int(want.sum()), "engine": int(have.sum()), "disagree": flips,
                  "max_disagree": allowed, "ok": flips <= allowed}
    ok = shapes_ok and drop <= max_drop and bool(alarms["ok"])
    return {"frames": len(images), "anomalous": int(labels.sum()), "against": "onnxruntime (CPU), same ONNX file",
            "outputs": outputs, "alarms": alarms, "fp32_auroc": fp32_auroc, "engine_auroc": engine_auroc,
            "onnxruntime_auroc": auroc(labels, ref.score), "auroc_drop": drop, "max_auroc_drop": max_drop,
            "spearman_vs_onnxruntime": spearman(got.score, ref.score) if shapes_ok else float("nan"), "ok": ok}


def check_built_engine(out: Path, onnx_path: Path, heldout: Path, blob: bytes, meta: EngineHeader) -> dict[str, Any]:
    """:func:`check_engine_outputs` on the engine just written; beyond the gate the engine (and plan) is deleted."""
    from skipgan_edge.runtime.backends import open_backend

    frames = load_heldout(heldout)
    with open_backend("engine", Path(out)) as be:
        rec = check_engine_outputs(lambda x: be.infer_all(x), onnx_path, frames)
    rec["file"] = str(heldout)
    if not rec["ok"]:
        Path(out).unlink(missing_ok=True)
        bad = [n for n, o in rec["outputs"].items() if not o["ok"]]
        al = rec["alarms"]
        why = (f"output(s) {', '.join(bad)} differ in shape or are not finite" if bad else
               f"its AUROC {rec['engine_auroc']:.4f} is {rec['auroc_drop']:.4f} below FP32's {rec['fp32_auroc']:.4f} "
               f"(the export gate allows {rec['max_auroc_drop']})" if rec["auroc_drop"] > rec["max_auroc_drop"] else
               f"its alarms at the card's threshold differ from ONNX Runtime's on {al['disagree']} frames "
               f"(at most {al['max_disagree']} allowed)")
        raise EngineError(f"engine refused and deleted: on {rec['frames']} held-out frames {why}; TensorRT "
                          f"{meta.tensorrt} on {meta.gpu}: try the FP32 or FP16 ONNX, or --no-check to keep it")
    log.info("engine vs ONNX Runtime on %d held-out frames: AUROC %.4f (FP32 %.4f), max |Δscore| %.3g",
             rec["frames"], rec["engine_auroc"], rec["fp32_auroc"], rec["outputs"]["score"]["max_abs"])
    return rec


__all__ = ["ENGINE_FORMAT", "MAGIC", "BuildConfig", "EngineHeader", "Profile", "TrtCompat", "build_engine", "check_compatible",
           "gpu_info", "import_tensorrt", "load_engine", "read_engine_file", "write_engine_file"]
