"""TensorRT engines: build from the scorer ONNX (FP32, FP16 or INT8 Q/DQ), save with metadata, load safely.

Precision comes from the ONNX file (strongly typed network). Version differences live in
:class:`TrtCompat` and are compared with ``packaging.version``:

* TensorRT 11.x: strongly typed is the only mode (the flag is accepted and ignored); no FP16 /
  INT8 builder flags exist.
* TensorRT 10.x (JetPack 6 ships 10.3): ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.
* TensorRT 8.6 (JetPack 5): no strongly typed networks; explicit batch, and the FP16 / INT8
  builder flags are set from the ONNX file's precision (Q/DQ nodes need the INT8 flag there).

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
        if self.version < Version("8.6"):
            raise EngineError(f"TensorRT {self.version} is too old: skipgan-edge supports 8.6, 10.x and 11.x")

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

    def set_precision_flags(self, config: trt.IBuilderConfig, precision: str) -> None:
        """Only TensorRT 8.6 needs builder flags; later versions read precision from the ONNX."""
        import tensorrt as trt

        if self.strongly_typed:
            return
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)


def onnx_precision(onnx_path: Path) -> tuple[str, ModelCard]:
    from skipgan_edge.runtime.backends.onnxrt import read_card

    card = read_card(onnx_path)
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


def build_engine(onnx_path: Path, out: Path, cfg: BuildConfig = BuildConfig()) -> dict[str, Any]:
    """Parse ``onnx_path``, build a strongly typed engine with a batch profile, write ``out``.

    Order: the engine file is written as soon as the build returns; the optional outputs (the raw
    plan, the timing cache, the engine inspector's report) come after, so a failure in one of them
    never costs the engine.
    """
    precision, card = onnx_precision(onnx_path)
    cfg.validate(precision)
    import_tensorrt()
    import tensorrt as trt

    compat = TrtCompat()
    isize, ch = card.input.isize, card.input.channels
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineError("TensorRT could not create a builder (is the GPU driver loaded?)")
    network = builder.create_network(compat.network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT {compat.version} could not parse {onnx_path}: {errors} "
                          f"(skipgan-edge build --onnx {onnx_path} --dry-run names what it refuses)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the inspector
    compat.set_precision_flags(config, precision)
    profile = builder.create_optimization_profile()
    lo, opt, hi = cfg.batch
    profile.set_shape(
        "images", trt.Dims([lo, isize, isize, ch]), trt.Dims([opt, isize, isize, ch]), trt.Dims([hi, isize, isize, ch])
    )
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT refused the batch profile {lo},{opt},{hi} for input 'images'")
    cache = load_timing_cache(config, cfg.timing_cache)
    placement: dict[str, Any] = {"device": "gpu"}
    if cfg.dla_core is not None:
        if builder.num_DLA_cores <= cfg.dla_core:
            raise EngineError(f"--dla-core {cfg.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        placement = {"device": f"dla:{cfg.dla_core}", "gpu_fallback": True, **layer_placement(network, config)}
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT {compat.version} failed to build {onnx_path}; rerun with -v for the builder log")
    blob = bytes(memoryview(serialized))
    meta = {
        "engine_format": ENGINE_FORMAT,
        "tensorrt": str(compat.version),
        **gpu,
        "precision": precision,
        "profile": {"min": lo, "opt": opt, "max": hi},
        "placement": placement,
        "input": asdict(card.input),
        "model_id": card.model_id,
        "card": card.to_dict(),
        "build": asdict(cfg) | {"timing_cache": str(cfg.timing_cache) if cfg.timing_cache else None},
        "build_command": build_command(onnx_path, out, cfg),
        "onnx": str(onnx_path),
    }
    write_engine_file(out, meta, blob)  # first: nothing optional below may cost the engine
    log.info("built %s (%s, TensorRT %s, %s sm_%s)", out, precision, compat.version, gpu["gpu"], gpu["compute_capability"])
    from skipgan_edge.card import atomic_write_bytes, atomic_write_json

    if cfg.dla_core is not None:
        inspected = inspect_engine(blob)
        if inspected is not None:
            meta["placement"]["inspector"] = inspected
            write_engine_file(out, meta, blob)
    if cfg.plan:
        meta["plan"] = str(plan_path(out))
        atomic_write_bytes(plan_path(out), blob)
        atomic_write_json(Path(str(plan_path(out)) + ".json"), {k: v for k, v in meta.items() if k != "plan"})
    if cfg.timing_cache:
        serialized_cache = cache.serialize() if cache is not None else None
        fresh = config.get_timing_cache()
        if fresh is not None:
            serialized_cache = fresh.serialize()
        if serialized_cache is None:
            log.warning("TensorRT returned no timing cache; %s not updated", cfg.timing_cache)
        else:
            atomic_write_bytes(cfg.timing_cache, bytes(memoryview(serialized_cache)))
    return meta


__all__ = ["ENGINE_FORMAT", "MAGIC", "BuildConfig", "TrtCompat", "build_engine", "check_compatible", "gpu_info", "import_tensorrt",
           "load_engine", "read_engine_file", "write_engine_file"]
