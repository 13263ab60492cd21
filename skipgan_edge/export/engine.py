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
refuses a mismatched engine with one line that gives the command to rebuild it.

Nothing here runs without TensorRT; ``build`` exits non-zero with one line saying what to install
and that engines are built on the device that runs them. The code is type-checked with mypy
against ``tensorrt-stubs`` in ``make test``.
"""

from __future__ import annotations

import json
import logging
import shlex
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from packaging.version import Version

if TYPE_CHECKING:
    import tensorrt as trt

from skipgan_edge.errors import EngineError, MissingDependencyError

log = logging.getLogger(__name__)

MAGIC = b"SKIPGAN-ENGINE\n"
ENGINE_FORMAT = 1


def import_tensorrt() -> ModuleType:
    """Check TensorRT is importable or raise a one-line install hint; returns the module.

    Callers then ``import tensorrt as trt`` themselves so that mypy checks every call against
    ``tensorrt-stubs``. A stub-only ``tensorrt`` folder imports as an empty namespace package; it
    has no ``Builder`` and counts as not installed.
    """
    try:
        import tensorrt as trt_mod
    except ImportError:
        trt_mod = None  # type: ignore[assignment]
    if trt_mod is None or not hasattr(trt_mod, "Builder"):
        raise MissingDependencyError(
            "TensorRT is not installed here: install it on the device that will run the engine "
            "(JetPack ships it on Jetson; on x86-64: pip install 'skipgan-edge[tensorrt]') and build there, "
            "since an engine only runs on the GPU and TensorRT version that built it"
        )
    return trt_mod


@dataclass(frozen=True)
class BuildConfig:
    """Engine build options. Defaults suit small scorers on Jetson and desktop GPUs."""

    batch: tuple[int, int, int] = (1, 8, 32)  # optimisation profile over the batch axis: min, opt, max
    workspace_mb: int = 1024  # builder scratch memory limit; the scorer needs far less
    timing_cache: Path | None = None  # persistent tactic timings: rebuilds take seconds instead of minutes
    dla_core: int | None = None  # Jetson DLA core (GPU fallback for layers DLA cannot run)
    opt_level: int = 3  # TensorRT's default builder optimisation level (0-5)

    def validate(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise EngineError(f"--batch must be min,opt,max with 1 <= min <= opt <= max, got {lo},{opt},{hi}")
        if not 0 <= self.opt_level <= 5:
            raise EngineError(f"--opt-level must be 0-5, got {self.opt_level}")


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


def gpu_info() -> dict[str, Any]:
    """Name and compute capability of CUDA device 0 (cuda-python; torch as a fallback)."""
    try:
        from cuda.bindings import runtime as cudart

        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
            return {"gpu": name, "compute_capability": f"{prop.major}.{prop.minor}"}
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    raise EngineError("no CUDA GPU is visible: TensorRT engines are built and run on an NVIDIA GPU or Jetson")


def onnx_precision(onnx_path: Path) -> tuple[str, dict[str, Any]]:
    from skipgan_edge.runtime.backends.onnxrt import read_card

    card = read_card(onnx_path)
    return str(card.get("precision", "fp32")), card


def build_command(onnx_path: Path, out: Path, cfg: BuildConfig) -> str:
    parts = ["skipgan-edge", "build", "--onnx", str(onnx_path), "--out", str(out), "--batch", ",".join(map(str, cfg.batch)),
             "--workspace", str(cfg.workspace_mb), "--opt-level", str(cfg.opt_level)]
    if cfg.timing_cache:
        parts += ["--timing-cache", str(cfg.timing_cache)]
    if cfg.dla_core is not None:
        parts += ["--dla-core", str(cfg.dla_core)]
    return shlex.join(parts)


def build_engine(onnx_path: Path, out: Path, cfg: BuildConfig = BuildConfig()) -> dict[str, Any]:
    """Parse ``onnx_path``, build a strongly typed engine with a batch profile, write ``out``."""
    cfg.validate()
    import_tensorrt()
    import tensorrt as trt

    compat = TrtCompat()
    precision, card = onnx_precision(onnx_path)
    isize, ch = int(card["input"]["isize"]), int(card["input"]["channels"])
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(compat.network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT {compat.version} could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.opt_level
    compat.set_precision_flags(config, precision)
    profile = builder.create_optimization_profile()
    lo, opt, hi = cfg.batch
    profile.set_shape(
        "images", trt.Dims([lo, isize, isize, ch]), trt.Dims([opt, isize, isize, ch]), trt.Dims([hi, isize, isize, ch])
    )
    config.add_optimization_profile(profile)
    cache_bytes = cfg.timing_cache.read_bytes() if cfg.timing_cache and cfg.timing_cache.exists() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT {compat.version} failed to build {onnx_path}; rerun with -v for the builder log")
    if cfg.timing_cache:
        from skipgan_edge.card import atomic_write_bytes

        atomic_write_bytes(cfg.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    meta = {
        "engine_format": ENGINE_FORMAT,
        "tensorrt": str(compat.version),
        **gpu,
        "precision": precision,
        "profile": {"min": lo, "opt": opt, "max": hi},
        "input": card["input"],
        "model_id": card.get("model_id"),
        "card": card,
        "build": asdict(cfg) | {"timing_cache": str(cfg.timing_cache) if cfg.timing_cache else None},
        "build_command": build_command(onnx_path, out, cfg),
        "onnx": str(onnx_path),
    }
    write_engine_file(out, meta, bytes(memoryview(serialized)))
    log.info("built %s (%s, TensorRT %s, %s sm_%s)", out, precision, compat.version, gpu["gpu"], gpu["compute_capability"])
    return meta


def write_engine_file(out: Path, meta: dict[str, Any], engine: bytes) -> None:
    from skipgan_edge.card import atomic_write_bytes

    header = json.dumps(meta).encode()
    atomic_write_bytes(Path(out), MAGIC + struct.pack(">I", len(header)) + header + engine)


def read_engine_file(path: Path) -> tuple[dict[str, Any], bytes]:
    """Header and engine bytes of an engine file we wrote; a one-line error otherwise."""
    path = Path(path)
    if not path.exists():
        raise EngineError(f"engine not found: {path}; build one with: skipgan-edge build --onnx scorer.onnx --out {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise EngineError(f"{path} is not a skipgan-edge engine (no header); build it with: skipgan-edge build --onnx FILE --out {path}")
    (n,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        meta: dict[str, Any] = json.loads(data[start : start + n])
    except json.JSONDecodeError:
        raise EngineError(f"{path} has a corrupt header; rebuild it with skipgan-edge build") from None
    return meta, data[start + n :]


def check_compatible(meta: dict[str, Any], trt_version: str, gpu: dict[str, Any], path: Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, saying how to rebuild."""
    built = f"TensorRT {meta.get('tensorrt')} on {meta.get('gpu')} (sm_{meta.get('compute_capability')})"
    here = f"TensorRT {trt_version} on {gpu['gpu']} (sm_{gpu['compute_capability']})"
    if Version(str(meta.get("tensorrt"))) != Version(trt_version) or meta.get("gpu") != gpu["gpu"] or meta.get(
        "compute_capability"
    ) != gpu["compute_capability"]:
        raise EngineError(f"{path} was built for {built}; this is {here}: rebuild it here with: {meta.get('build_command')}")


def load_engine(path: Path) -> tuple[dict[str, Any], trt.ICudaEngine]:
    """Deserialize an engine after checking it was built for this GPU and TensorRT version."""
    meta, blob = read_engine_file(path)
    import_tensorrt()
    import tensorrt as trt

    check_compatible(meta, trt.__version__, gpu_info(), Path(path))
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise EngineError(f"TensorRT could not deserialize {path}; rebuild it with: {meta.get('build_command')}")
    return meta, engine
