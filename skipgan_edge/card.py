"""The model card, typed (:class:`ModelCard`), and the model folder: ``model.json`` and ``model.safetensors``.

This module owns the card: the dataclasses, their JSON round trip (:meth:`ModelCard.to_dict`,
:meth:`ModelCard.from_dict`, which names the first missing or mistyped field in one line), the one
builder the trainer and the random benchmark models share (:func:`build_card`), and the readers:
``model.json`` and the weights' embedded card here, ONNX metadata (:func:`skipgan_edge.export.onnx.card_from_onnx`
and the runtime's ``read_card``) and engine headers through :meth:`ModelCard.from_json` /
:meth:`ModelCard.from_dict`. Every reader checks ``format_version``
(:func:`skipgan_edge.contract.check_card`), and mypy checks every field access.

Weights are safetensors only: loading a model never unpickles, so it cannot run code. Every
write goes to a temporary file in the same folder and is renamed into place, so a killed
process leaves either the old file or the new one, never half of one.

The card's ``model_id`` (sha256 of the weights file, first 16 hex digits) is carried by every
later artifact (ONNX metadata, engines, calibration manifests, benchmark results), so a score
can be traced to the model that produced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import os
import platform
import struct
import tempfile
import time
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skipgan_edge import FORMAT_VERSION, __version__
from skipgan_edge.config import RunConfig
from skipgan_edge.contract import card_from_json, check_card
from skipgan_edge.errors import ModelFolderError, SinkError

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
DIVERGED_NAME = "diverged.json"  # what a training run that diverged past its recoveries leaves instead of a model


def _umask() -> int:
    """The process umask, read without changing it where /proc says it (Linux 4.7+), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the name a staged file has between its link and its rename (or, where O_TMPFILE is missing, while it is written):
#: ``.NAME.<random>.tmp`` next to NAME; :func:`clean_stale_temps` removes those a killed writer left
TEMP_PATTERN = ".{name}.*.tmp"


class StagedFile:
    """New contents for ``path``, written and fsynced but not yet visible under its name (:func:`stage_bytes`).

    Where the file system has O_TMPFILE (Linux ext4, xfs, btrfs, tmpfs), the data lives in an unnamed file until
    :meth:`commit`: a SIGKILL while writing leaves nothing behind. Elsewhere it is a hidden ``.NAME.*.tmp`` file
    (:data:`TEMP_PATTERN`) that :func:`clean_stale_temps` removes on the next write under a lock."""

    def __init__(self, path: Path, fd: int, tmp: str | None) -> None:
        self.path, self.fd, self.tmp = Path(path), fd, tmp

    def _named(self) -> str:
        """A complete, named temporary file in the target's folder (links the unnamed one)."""
        if self.tmp is not None:
            return self.tmp
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the unnamed file; CPython uses it only with a dir_fd given
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(100):
                name = str(self.path.parent.absolute() / f".{self.path.name}.{os.urandom(4).hex()}.tmp")
                try:
                    os.link(f"/proc/self/fd/{self.fd}", name, src_dir_fd=root, follow_symlinks=True)
                except FileExistsError:
                    continue
                self.tmp = name
                return name
        finally:
            os.close(root)
        raise FileExistsError(f"no free temporary name next to {self.path}")

    def commit(self) -> None:
        """Make the staged contents ``path``'s, atomically (rename over the old file)."""
        try:
            tmp = self._named()
            os.replace(tmp, self.path)
            self.tmp = None
        except OSError as exc:
            self.discard()
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}; free disk space or choose another --out") from None
        self.discard()

    def commit_new(self) -> Path:
        """Link the staged contents under ``path``, never replacing a file: ``STEM.1.SUFFIX``, ``STEM.2.SUFFIX``... when
        the name is taken (by an earlier run). Returns the name used."""
        try:
            tmp = self._named()
            stem, suffix = self.path.stem, self.path.suffix
            for i in range(100000):
                target = self.path if i == 0 else self.path.with_name(f"{stem}.{i}{suffix}")
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    continue
                return target
            raise FileExistsError(f"every name like {self.path} is taken")
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}; free disk space or choose another path") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Forget the staged contents (removes the temporary name, if any, and closes the file)."""
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def stage_bytes(path: Path, data: bytes) -> StagedFile:
    """Write ``data`` for ``path`` to a file not yet under that name, fsynced (:class:`StagedFile`); SinkError if it cannot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    fd = -1
    try:
        try:  # the kernel applies the umask: artifacts are as readable as it allows (0644 usually)
            fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o666) if hasattr(os, "O_TMPFILE") and Path("/proc/self/fd").is_dir() else -1
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
        if fd < 0:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        StagedFile(path, fd, tmp).discard()
        raise SinkError(f"cannot write {path}: {exc.strerror or exc}; free disk space or choose another --out") from None
    return StagedFile(path, fd, tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (an unnamed or hidden temporary file, fsync, rename): a killed process
    leaves the old file or the new one, never half of one, and (with O_TMPFILE) no temporary file."""
    stage_bytes(path, data).commit()


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files (:data:`TEMP_PATTERN`) a killed writer left next to ``path``; call it only while
    holding the lock on ``path`` (no other writer can be using them). Returns what was removed."""
    removed = []
    for p in Path(path).parent.glob(TEMP_PATTERN.format(name=glob.escape(Path(path).name))):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def check_writable(path: Path, what: str) -> None:
    """One line, before any work starts, if ``path`` cannot be written (its folder cannot be made, it is a folder, or
    it or its folder is not writable)."""
    p = Path(path)
    check_writable_file(p, what)  # a folder, a path under a file, a read-only folder: said before anything is made
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"cannot create the folder of {what} {p}: {exc.strerror or exc}; choose another path") from None
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise SinkError(f"{what} {p} is not writable; choose another path")


def check_writable_folder(folder: Path, what: str) -> None:
    """One line, before any work starts, if the folder ``folder`` (made later if missing) cannot be written: it is a file,
    a part of its path is a file, or its nearest existing folder is not writable. Creates nothing, so that a run that
    fails later leaves no empty folder behind."""
    p = Path(folder)
    probe = _nearest_existing(p)
    if probe == p and not p.is_dir():
        raise SinkError(f"{what} {p} is a file; give a folder")
    if not probe.is_dir():
        raise SinkError(f"cannot create {what} {p}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK):
        raise SinkError(f"{what} {p} is not writable ({probe} is read-only); choose another path")


def _nearest_existing(p: Path) -> Path:
    """``p``, or its nearest ancestor that exists (what a later mkdir would create under)."""
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def check_writable_file(path: Path, what: str) -> None:
    """One line, before any work starts, if the file ``path`` cannot be written: it is a folder, a part of its path is a
    file, or its nearest existing folder is not writable. Creates nothing."""
    p = Path(path)
    if p.is_dir():
        raise SinkError(f"{what} {p} is a folder; give a file name")
    probe = _nearest_existing(p.parent)
    if not probe.is_dir():
        raise SinkError(f"cannot write {what} {p}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise SinkError(f"cannot write {what} {p}: {p if p.exists() else probe} is read-only; choose another path")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------- the typed card
@dataclass(frozen=True)
class InputSpec:
    """What the exported graph takes: uint8 NHWC frames of this size, in this channel order."""

    isize: int
    channels: int
    channel_order: str = "BGR"
    dtype: str = "uint8"
    layout: str = "NHWC"
    scaling: str = "x / 127.5 - 1 inside the graph; 16-bit files / 257 first"


@dataclass(frozen=True)
class ValStats:
    """The raw scores of the normal validation images: ``normalized_score`` = (s - min) / (max - min)."""

    min: float
    max: float
    mean: float = 0.0
    std: float = 0.0
    n: int = 0

    @property
    def span(self) -> float:
        """max - min, the normalization's divisor (1.0 when every normal score was the same)."""
        return self.max - self.min if self.max > self.min else 1.0


@dataclass(frozen=True)
class Threshold:
    """The alarm: flag when ``normalized_score`` > ``normalized`` (``raw`` is the same in score units).

    ``policy`` is how it was set (skipgan_edge/thresholds.py); ``expected_fpr`` (with its 95 % interval) and
    ``expected_recall`` are what that policy measured on validation (recall on labelled or synthetic anomalies,
    ``recall_source``); ``commissioning`` is filled by ``skipgan-edge threshold`` when it was re-set on the line.
    ``threshold_id`` names the setting of this threshold and of the normalization (:func:`threshold_id`)."""

    normalized: float
    method: str
    raw: float | None = None
    val_f1: float | None = None
    policy: str | None = None
    expected_fpr: float | None = None
    fpr_interval: list[float] | None = None
    expected_recall: float | None = None
    recall_source: str | None = None
    n_normal: int | None = None
    commissioning: dict[str, Any] | None = None
    threshold_id: str | None = None


@dataclass(frozen=True)
class ScoreSpec:
    """How the graph's score head combines its terms (see ``model/scorer.py``), and the alarm threshold."""

    lam: float
    mode: str
    pool: int
    val_stats: ValStats
    threshold: Threshold
    term_stats: dict[str, float] | None = None
    map_scale: float | None = None  # anomaly-map level drawn as full red (1.5x the normal validation maps' p99 peak)
    lam_method: str = "configured"
    formula: str = ""
    normalization: str = "min-max over the normal validation scores"
    #: [min, max] the artifact's graph computes normalized_score with, when that differs from val_stats: an engine
    #: commissioned after it was built (its constants cannot change without a rebuild); the runtime re-normalizes
    graph_norm: list[float] | None = None
    #: the feature-bank head (model/bank.py), None without one: kind, source, size, dim, patches, subsample, weight, bytes,
    #: FLOPs (and a gaussian bank's ridge, ``shrink``; cards without a kind hold a nearest bank)
    bank: dict[str, Any] | None = None
    #: which head this is (``model.networks.head_record``): its name (``rec+bank``), whether it is the architecture's
    #: default, ``measured_in`` (the study that chose that default, e.g. benchmarks/results/study_recall.md) and, for
    #: another head, the settings that differ from the default. None in cards written before it: nothing scores with it
    head: dict[str, Any] | None = None

    @property
    def bank_kind(self) -> str | None:
        """The feature bank's kind (gaussian or nearest), None without a bank: a card written before the kind was
        recorded holds a nearest bank."""
        return str(self.bank.get("kind", "nearest")) if self.bank is not None else None


@dataclass(frozen=True)
class Recovery:
    """One recovery from a non-finite loss, gradient or validation score (``train/trainer.py``): where it happened,
    what was non-finite, the checkpoint training restarted from and the learning rate it continued with."""

    epoch: int  # 1-based epoch in which the non-finite value appeared
    step: int  # 1-based step of that epoch; 0 = at the epoch's validation
    what: str  # "generator loss", "generator gradient", "discriminator loss", "discriminator gradient", "validation scores", ...
    restored: str  # the checkpoint restarted from: "the start", "the end of epoch N", "epoch N step S"
    lr: float  # both optimizers' learning rate from the restart on


@dataclass(frozen=True)
class Training:
    """How the model was trained and chosen. ``epochs_run`` is the number of epochs the run completed (the card is
    rewritten when the run ends); ``recoveries`` is empty for a run that never met a non-finite value.

    Dict-style reads (``card.training["best_epoch"]``) still work: the section was a dict before it was typed, and
    ``extra`` keeps keys a newer writer of the same format added. Added within format 2: a reader that ignores
    ``recoveries`` loses the record only, never a number it scores with."""

    best_epoch: int = 0
    epochs_run: int | None = None
    selection: str = ""
    selection_value: float | None = None
    device: str = ""
    recoveries: list[Recovery] = field(default_factory=list)
    arch_auto: dict[str, Any] | None = None  # train --arch auto: the candidates and the choice
    ema: dict[str, Any] | None = None  # the generator's weight average used for validation, selection and export (train.ema_decay)
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key != "extra" and key in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, key)
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra" and not (k in ("arch_auto", "ema") and v is None)}
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "training") -> Training:
        """A typed section from its JSON form; one line naming the first missing or mistyped field."""
        try:
            out: Training = _build(cls, data, where)
        except _CardFieldError as exc:
            raise ModelFolderError(f"the model card's {exc}") from None
        return out


class _Section(Mapping[str, Any]):
    """A card section typed field by field (every field optional: None is "not written"), keys a writer added beyond
    them kept in ``extra``, and the file's key order kept in ``order``, so the JSON form round-trips byte for byte. It
    reads like the dict it was before it was typed: ``section["key"]``, ``.get``, ``.items()``, ``{**section}`` give
    the JSON form."""

    extra: dict[str, Any]
    order: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        typed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "order")}  # type: ignore[arg-type]
        out: dict[str, Any] = {}
        for k in self.order:
            if k in typed:
                out[k] = typed[k]
            elif k in self.extra:
                out[k] = self.extra[k]
        out.update({k: v for k, v in typed.items() if v is not None and k not in out})
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Any:
        try:
            return _build(cls, data, where)
        except _CardFieldError as exc:
            raise ModelFolderError(f"the model card's {exc}") from None

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True, eq=True)
class DataInfo(_Section):
    """What the model was trained on: the data set's name or folder, its fingerprint, the split sizes."""

    source: str | None = None
    fingerprint: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    val_has_anomalies: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, eq=True)
class Metrics(_Section):
    """The chosen epoch's validation numbers (the AUROCs where validation has anomalies, real or synthetic)."""

    val_loss: float | None = None
    val_auroc: float | None = None
    val_synth_auroc: float | None = None
    val_synth_pixel_auroc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, eq=True)
class ExportInfo(_Section):
    """What export added to this precision variant's card: its precision, how it was made, and (FP16) whether the CPU's
    bf16 passed the gate (``cpu_bf16``); a variant's own records (calibration frames, FP32 layers) in ``extra``."""

    precision: str | None = None
    method: str | None = None
    cpu_bf16: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)


_SECTIONS: dict[str, type[_Section]] = {"data": DataInfo, "metrics": Metrics, "export": ExportInfo}


@dataclass(frozen=True)
class ModelCard:
    """Everything a score can be traced to. ``model_id`` is set by the readers (sha256 of the weights file);
    ``precision`` is that of the artifact the card was read from (ONNX metadata), ``export`` what export added."""

    format_version: int
    arch: str
    config: RunConfig
    input: InputSpec
    score: ScoreSpec
    data: DataInfo
    training: Training
    metrics: Metrics
    package: str = "skipgan-edge"
    package_version: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    weights: str | None = None
    model_id: str | None = None
    precision: str = "fp32"
    export: ExportInfo = field(default_factory=ExportInfo)
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer writer of the same format added: kept, not read

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():  # a section given as its JSON form (card.replace(export={...})) is typed here
            v = getattr(self, name)
            if not isinstance(v, cls):
                object.__setattr__(self, name, cls.from_dict(dict(v), name))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``model.json``, ONNX metadata, engine headers); ``from_dict(to_dict())`` is the identity."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if f.name in ("weights", "model_id") and v is None:
                continue
            if isinstance(v, (RunConfig, Training, _Section)):
                v = v.to_dict()
            elif dataclasses.is_dataclass(v) and not isinstance(v, type):
                v = dataclasses.asdict(v)
            out[f.name] = v
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelCard:
        """Check the version, then every field's presence and type; one line naming the first that is wrong."""
        return cls._typed(check_card(data, where), where)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> ModelCard:
        return cls._typed(card_from_json(text, where), where)  # card_from_json parses and checks the version

    @classmethod
    def _typed(cls, data: dict[str, Any], where: str) -> ModelCard:
        try:
            return _build(cls, data, "")
        except _CardFieldError as exc:
            raise ModelFolderError(f"{where}: the model card's {exc}; re-export or retrain") from None

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)


class _CardFieldError(ValueError):
    pass


#: what :func:`typed_from_dict` raises: the first missing or mistyped field, in words (``field 'profile.min' is not an integer``)
TypedFieldError = _CardFieldError


def typed_from_dict(cls: Any, data: Any, where: str) -> Any:
    """A card-style dataclass (typed fields, an ``extra`` dict for unknown keys) from its JSON form, every field's type
    checked the card's way; raises :data:`TypedFieldError` naming the first that is wrong (``where`` prefixes its path)."""
    return _build(cls, data, where)


def _build(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise _CardFieldError(f"'{path or 'card'}' is not an object")
    if cls is RunConfig:
        try:
            cfg = RunConfig.from_dict(data)
            cfg.model.validate()
            cfg.train.validate()
            cfg.score.validate()
            return cfg
        except Exception as exc:  # noqa: BLE001 - ConfigError and type errors alike: a card we cannot use
            raise _CardFieldError(f"'config' is invalid ({exc})") from None
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        if f.name in ("extra", "order"):
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _CardFieldError(f"field '{key}' is missing")
            continue
        kwargs[f.name] = _value(hints[f.name], data[f.name], key)
    if "extra" in names:
        kwargs["extra"] = {k: v for k, v in data.items() if k not in names}
    if "order" in names:
        kwargs["order"] = tuple(data)
    return cls(**kwargs)


def _value(tp: Any, v: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        return _value(next(a for a in args if a is not type(None)), v, key)
    if tp is RunConfig or dataclasses.is_dataclass(tp):
        return _build(tp, v, key)
    if origin is list:
        if not isinstance(v, list):
            raise _CardFieldError(f"field '{key}' is not a list")
        (item,) = typing.get_args(tp) or (Any,)
        return [_value(item, x, f"{key}[{i}]") for i, x in enumerate(v)]
    if origin is dict or tp is dict:
        if not isinstance(v, dict):
            raise _CardFieldError(f"field '{key}' is not an object")
        return dict(v)
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _CardFieldError(f"field '{key}' is not a number")
        return float(v)
    if tp is bool:
        if not isinstance(v, bool):
            raise _CardFieldError(f"field '{key}' is not true or false")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _CardFieldError(f"field '{key}' is not an integer")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise _CardFieldError(f"field '{key}' is not a string")
        return v
    return v


def new_threshold_id(date: str, model_id: str | None, raw: float, norm: tuple[float, float], frames: int) -> str:
    """The id of one commissioning: ``c`` + its UTC time (YYYYMMDDTHHMMSSZ) + ``-`` + 8 hex digits of the sha256 of the
    model id and the numbers it set (raw threshold, normalization min and max, frames), e.g. ``c20261202T163512Z-3f9a0c1b``:
    sortable by time, and two commissionings in the same second differ unless they set the same numbers."""
    digest = hashlib.sha256(json.dumps([model_id, raw, norm[0], norm[1], frames]).encode()).hexdigest()[:8]
    return "c" + date.replace("-", "").replace(":", "") + "-" + digest


def threshold_id(card: ModelCard, threshold: float | None = None) -> str:
    """Which setting the threshold and normalization in force come from: the commissioning's id
    (:func:`new_threshold_id`), or ``trained-<model_id>`` for the threshold training set. With ``threshold``
    (the one a record was judged by) different from the card's, ``+override`` follows: the normalization is the
    card's, the threshold was given (``run --threshold``, a camera's setting in ``serve``)."""
    tid = card.score.threshold.threshold_id or f"trained-{card.model_id or 'unknown'}"
    return tid if threshold is None or threshold == card.score.threshold.normalized else f"{tid}+override"


def build_card(cfg: RunConfig, *, score: ScoreSpec, data: DataInfo | dict[str, Any], training: Training | dict[str, Any],
               metrics: Metrics | dict[str, Any] | None = None, weights: str | None = None, versions: dict[str, str] | None = None) -> ModelCard:
    """The one card builder, for trained models and random benchmark models alike: the input spec and the score
    head's formulation come from ``cfg`` (validated, so ``mode``, ``pool`` and ``lam`` are always set)."""
    mc = cfg.model
    if not isinstance(training, Training):
        training = Training.from_dict(training)
    if cfg.score.mode is None or cfg.score.pool is None or cfg.score.lam is None:
        raise ValueError("build_card needs a validated RunConfig (RunConfig.validate fills the score's defaults)")
    return ModelCard(
        format_version=FORMAT_VERSION, arch=mc.arch, config=cfg,
        input=InputSpec(isize=mc.isize, channels=mc.channels, channel_order="BGR" if mc.channels == 3 else "GRAY"),
        score=score, data=data if isinstance(data, DataInfo) else DataInfo.from_dict(data, "data"), training=training,
        metrics=metrics if isinstance(metrics, Metrics) else Metrics.from_dict(metrics or {}, "metrics"), package_version=__version__,
        versions={"python": platform.python_version(), **(versions or {})}, weights=weights,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def set_onnx_metadata(model: Any, card: ModelCard, precision: str) -> None:
    """Replace the card and precision in an ONNX ModelProto's ``metadata_props`` (no onnx import: protobuf fields only)."""
    from skipgan_edge.contract import CARD_KEY, PRECISION_KEY

    for key in (CARD_KEY, PRECISION_KEY):
        for i in reversed(range(len(model.metadata_props))):
            if model.metadata_props[i].key == key:
                del model.metadata_props[i]
    for key, text in ((CARD_KEY, json.dumps(card.replace(precision=precision).to_dict())), (PRECISION_KEY, precision)):
        p = model.metadata_props.add()
        p.key, p.value = key, text


def card_from_onnx_metadata(meta: dict[str, str], where: str) -> ModelCard:
    """The card of an exported ONNX file from its ``metadata_props`` (as a dict), with the file's precision: the one
    reader of ONNX cards, for an ONNX Runtime session (the runtime) and an ONNX ModelProto (export) alike."""
    from skipgan_edge.contract import CARD_KEY, PRECISION_KEY

    if CARD_KEY not in meta:
        raise ModelFolderError(f"{where} has no model card in its metadata; re-export it with skipgan-edge export")
    return ModelCard.from_json(meta[CARD_KEY], where).replace(precision=meta.get(PRECISION_KEY, "fp32"))


def weights_with_card(path: Path, card_json: str) -> bytes:
    """The bytes of safetensors file ``path`` with its metadata's ``card`` replaced; the tensors are untouched."""
    data = path.read_bytes()
    if len(data) < 8:
        raise ModelFolderError(f"{path} is not a safetensors file; retrain or restore the folder")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFolderError(f"{path} has a corrupt header; retrain or restore the folder") from None
    meta = dict(header.get("__metadata__") or {})
    meta["card"] = card_json
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def load_card(folder: Path) -> ModelCard:
    """Read and check ``model.json`` (and the card embedded in the weights); one-line errors for every way it can be wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}; train one with: skipgan-edge train --data DIR --out {folder}")
    card_path = folder / CARD_NAME
    if not card_path.exists():
        if (folder / DIVERGED_NAME).exists():  # the trainer gave up on a non-finite run and kept no model
            raise ModelFolderError(f"{folder} holds no model: its training diverged (see {folder / DIVERGED_NAME}); "
                                   "train again with a lower --lr or another --seed")
        if (folder / "checkpoint" / "state.safetensors").exists():  # the trainer's resumable checkpoint
            raise ModelFolderError(f"{folder} has no {CARD_NAME} yet: its training was interrupted; resume with: "
                                   f"skipgan-edge train --resume {folder}")
        raise ModelFolderError(f"{folder} has no {CARD_NAME}: not a model folder; train one with: skipgan-edge train --data DIR --out {folder}")
    try:
        raw = card_path.read_bytes()
    except OSError as exc:
        raise ModelFolderError(f"{card_path} is unreadable ({exc.strerror}); restore the folder") from None
    card = ModelCard.from_json(raw, str(card_path))
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        raise ModelFolderError(f"{folder} is missing {WEIGHTS_NAME}; retrain or restore the folder")
    # The weights file embeds the card it was written with (one atomic rename): it is the
    # authority when a crash fell between writing the weights and the readable model.json.
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), "np") as fh:
            embedded = (fh.metadata() or {}).get("card")
    except (SafetensorError, OSError) as exc:
        raise ModelFolderError(f"{weights} is unreadable ({exc}); retrain or restore the folder") from None
    if embedded:
        card = ModelCard.from_json(embedded, str(weights))
    # the id of the trained weights: a card re-thresholded on the line (skipgan-edge threshold) rewrote the file's
    # header, not its tensors, and keeps the id it had
    kept = (card.score.threshold.commissioning or {}).get("model_id")
    return card.replace(model_id=kept if isinstance(kept, str) and kept else file_sha256(weights)[:16])


def model_id(card: ModelCard) -> str:
    return card.model_id or "unknown"
