"""Engine files: our header around a serialized TensorRT engine, read and checked before TensorRT loads it.

The file is a small container: the magic ``SKIPGAN-ENGINE\\n``, a 4-byte big-endian length, a JSON
header (TensorRT version, GPU name and compute capability, precision, batch profile, placement,
the model card, the exact ``build`` command), then the serialized engine. :func:`load_engine`
refuses an engine built for another GPU or TensorRT version with one line that gives the command to
rebuild it, and checks the embedded card like every other card (:meth:`skipgan_edge.card.ModelCard.from_dict`). The header is
typed (:class:`EngineHeader`), beside the typed card it carries.

This is the runtime's half of TensorRT (loading); building lives in :mod:`skipgan_edge.export.engine`.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import KeysView
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorrt as trt

from packaging.version import InvalidVersion, Version

from skipgan_edge.card import ModelCard, TypedFieldError, typed_from_dict
from skipgan_edge.errors import EngineError, MissingDependencyError

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


def gpu_info() -> dict[str, Any]:
    """Name and compute capability of CUDA device 0: cuda-python, else PyCUDA alone, else torch.

    A cuda-python newer than the driver (cuda-python 13 on JetPack 6's CUDA 12) answers every call with error 35:
    then the GPU is looked up the other ways and the record carries the one-line reason under ``cuda_python``; with no
    other way, that line is the error."""
    from skipgan_edge.runtime.cudaenv import cuda_python_mismatch

    mismatch: str | None = None
    try:
        from cuda.bindings import runtime as cudart

        mismatch = cuda_python_mismatch()
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
            return {"gpu": name, "compute_capability": f"{prop.major}.{prop.minor}"}
    except ImportError:
        pass
    extra = {"cuda_python": mismatch} if mismatch is not None else {}
    try:
        import pycuda.driver as drv

        try:
            drv.init()
            dev = drv.Device(0)
            major, minor = dev.compute_capability()
            return {"gpu": str(dev.name()), "compute_capability": f"{major}.{minor}", **extra}
        except drv.Error:
            pass
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}", **extra}
    except ImportError:
        pass
    if mismatch is not None:
        raise EngineError(mismatch)
    raise EngineError("no CUDA GPU is visible: TensorRT engines are built and run on an NVIDIA GPU or Jetson")


@dataclass(frozen=True)
class Profile:
    """The engine's optimisation profile over the batch axis."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class EngineHeader:
    """The JSON header of an engine file, typed beside the card it carries. Every field is optional on reading (a field
    an older writer did not write is None and left out of :meth:`to_dict` again); the backend needs ``precision`` and
    ``profile``, the version check ``tensorrt``, ``gpu`` and ``compute_capability``. Dict-style reads
    (``header["precision"]``) give the JSON form."""

    engine_format: int | None = None
    tensorrt: str | None = None
    gpu: str | None = None
    compute_capability: str | None = None
    cuda_python: str | None = None  # why cuda-python could not be used where it was built (gpu_info), if it could not
    precision: str | None = None
    profile: Profile | None = None
    placement: dict[str, Any] | None = None  # gpu, or dla:N with the layers the DLA takes (and the engine inspector's count)
    network: dict[str, Any] | None = None  # strongly or weakly typed (TensorRT 8.6: the rewrite and the FP32 layers)
    input: dict[str, Any] | None = None
    model_id: str | None = None
    card: ModelCard | None = None
    build: dict[str, Any] | None = None  # the BuildConfig it was built with
    build_command: str | None = None  # the exact command that rebuilds it
    onnx: str | None = None
    check: dict[str, Any] | None = None  # the run on held-out frames against ONNX Runtime and the export gate
    plan: str | None = None  # where --plan wrote the raw plan
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer writer added: kept, not read

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "extra" or v is None:
                continue
            out[f.name] = v.to_dict() if isinstance(v, ModelCard) else dataclasses.asdict(v) if isinstance(v, Profile) else v
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EngineHeader:
        """Check every field's type (and the card like every other card); one line naming the first that is wrong."""
        if not isinstance(data, dict):
            raise EngineError(f"{where} has a corrupt header (not a JSON object); rebuild it with skipgan-edge build")
        problem = _header_problem(data)
        if problem:
            raise EngineError(f"{where} has an invalid header ({problem}); rebuild it with skipgan-edge build")
        card = ModelCard.from_dict(data["card"], where) if "card" in data else None
        try:
            header: EngineHeader = typed_from_dict(cls, {k: v for k, v in data.items() if k != "card"}, "")
        except TypedFieldError as exc:
            raise EngineError(f"{where} has an invalid header ({exc}); rebuild it with skipgan-edge build") from None
        return dataclasses.replace(header, card=card)

    def replace(self, **changes: Any) -> EngineHeader:
        return dataclasses.replace(self, **changes)

    def need_card(self, where: Path | str) -> ModelCard:
        if self.card is None:
            raise EngineError(f"{where} has no model card in its header; rebuild it with skipgan-edge build")
        return self.card

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def keys(self) -> KeysView[str]:
        return self.to_dict().keys()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


def write_engine_file(out: Path, meta: EngineHeader | dict[str, Any], engine: bytes) -> None:
    """Header (typed, or its JSON form) and serialized engine, atomically."""
    from skipgan_edge.card import atomic_write_bytes

    header = json.dumps(meta.to_dict() if isinstance(meta, EngineHeader) else meta).encode()
    atomic_write_bytes(Path(out), MAGIC + struct.pack(">I", len(header)) + header + engine)


def read_engine_file(path: Path) -> tuple[EngineHeader, bytes]:
    """Typed header and engine bytes of an engine file we wrote; a one-line error otherwise."""
    path = Path(path)
    if not path.exists():
        raise EngineError(f"engine not found: {path}; build one with: skipgan-edge build --onnx scorer.onnx --out {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise EngineError(f"{path} is not a skipgan-edge engine (no header); build it with: skipgan-edge build --onnx FILE --out {path}")
    (n,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        meta = json.loads(data[start : start + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EngineError(f"{path} has a corrupt header; rebuild it with skipgan-edge build") from None
    return EngineHeader.from_dict(meta, str(path)), data[start + n :]


def _header_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with an engine header's fields, or None (the card is checked on its own)."""
    for key in ("tensorrt", "gpu", "compute_capability", "precision"):
        if key in meta and not isinstance(meta[key], str):
            return f"'{key}' is not a string"
    prof = meta.get("profile")
    if prof is not None:
        if not isinstance(prof, dict) or not all(isinstance(prof.get(k), int) and not isinstance(prof.get(k), bool)
                                                 for k in ("min", "opt", "max")):
            return "'profile' is not {min, opt, max} integers"
        if not 1 <= prof["min"] <= prof["opt"] <= prof["max"]:
            return "'profile' is not 1 <= min <= opt <= max"
    if "card" in meta and not isinstance(meta["card"], dict):
        return "'card' is not an object"
    return None


def check_compatible(meta: EngineHeader, trt_version: str, gpu: dict[str, Any], path: Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, saying how to rebuild."""
    built = f"TensorRT {meta.tensorrt} on {meta.gpu} (sm_{meta.compute_capability})"
    here = f"TensorRT {trt_version} on {gpu['gpu']} (sm_{gpu['compute_capability']})"
    try:
        built_version = Version(str(meta.tensorrt))
    except InvalidVersion:
        raise EngineError(f"{path} has an invalid header (TensorRT version {meta.tensorrt!r}); rebuild it with skipgan-edge build") from None
    if built_version != Version(trt_version) or meta.gpu != gpu["gpu"] or meta.compute_capability != gpu["compute_capability"]:
        raise EngineError(f"{path} was built for {built}; this is {here}: rebuild it here with: {meta.build_command}")


def load_engine(path: Path) -> tuple[EngineHeader, trt.ICudaEngine]:
    """Deserialize an engine after checking it was built for this GPU and TensorRT version."""
    meta, blob = read_engine_file(path)
    import_tensorrt()
    import tensorrt as trt

    check_compatible(meta, trt.__version__, gpu_info(), Path(path))
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise EngineError(f"TensorRT could not deserialize {path}; rebuild it with: {meta.build_command}")
    return meta, engine
