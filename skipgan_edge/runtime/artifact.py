"""What a verb scores with, told apart in one place: :class:`Artifact`, its kind and where it is, and the one reader of
its model card (:meth:`Artifact.read_card`).

Kinds: ``model`` (a model folder: ``model.json`` and ``model.safetensors``), ``onnx`` (an exported scorer, the card in
its metadata), ``engine`` (our header, :class:`skipgan_edge.runtime.engine_file.EngineHeader`, around a TensorRT
engine), ``plan`` (``build --plan``'s raw serialized engine, its header in ``PLAN.json`` beside it) and ``triton`` (a
model on a Triton server, ``triton://HOST:PORT/MODEL[/VERSION]``: a URL, not a path; the card is the server's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from skipgan_edge.card import ModelCard, load_card
from skipgan_edge.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from skipgan_edge.runtime.backends import BackendOptions
    from skipgan_edge.runtime.backends.base import Backend

KINDS = ("model", "onnx", "engine", "plan", "triton")


@dataclass(frozen=True)
class Artifact:
    """One artifact: a local file or folder (``path``) or a server's model (``url``, kind ``triton``)."""

    kind: str
    path: Path | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown artifact kind {self.kind!r}; one of {', '.join(KINDS)}")
        if (self.kind == "triton") != (self.url is not None) or (self.path is None) == (self.url is None):
            raise ValueError("a triton artifact has a url and no path; every other kind a path and no url")

    @property
    def where(self) -> str:
        """The path, or the URL: what a message names."""
        return self.url if self.url is not None else str(self.path)

    @property
    def pair(self) -> tuple[str, Path]:
        """(kind, path) as :func:`skipgan_edge.runtime.backends.open_backend` takes them; a server's model as the URL
        without its scheme (open_backend puts ``triton://`` back)."""
        if self.url is not None:
            return self.kind, Path(self.url.split("://", 1)[1])
        assert self.path is not None
        return self.kind, self.path

    @classmethod
    def given(cls, model: Path | None, onnx: Path | None, engine: Path | None, backend: str = "auto") -> Artifact:
        """The one artifact a verb was given (``--model``, ``--onnx``, ``--engine``), or with ``--backend triton://...``
        the server's model; one line when it is none or several."""
        from skipgan_edge.runtime.backends import is_remote, resolve_backend

        given = [(k, p) for k, p in (("model", model), ("onnx", onnx), ("engine", engine)) if p is not None]
        if is_remote(backend):
            if given:
                raise ConfigError("--backend triton://... scores on the server's model: give no --model, --onnx or --engine with it")
            resolve_backend("triton", backend)
            return cls("triton", url=backend)
        if len(given) != 1:
            raise ConfigError("give exactly one of --model RUN_DIR, --onnx FILE or --engine FILE (or --backend triton://HOST:PORT/MODEL)")
        return cls(given[0][0], Path(given[0][1]))

    @classmethod
    def at(cls, where: str | Path) -> Artifact:
        """The artifact at a path or URL, its kind told from what is there: a ``triton://`` URL, a folder (a model
        folder), ``*.onnx``, ``*.plan``, else an engine file (ours start with the engine magic)."""
        text = str(where)
        if text.startswith("triton://"):
            return cls("triton", url=text)
        path = Path(where)
        if path.is_dir():
            return cls("model", path)
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return cls("onnx", path)
        if suffix == ".plan":
            return cls("plan", path)
        if suffix == ".engine" or _starts_with_engine_magic(path):
            return cls("engine", path)
        raise ConfigError(f"{path} is not a model folder, .onnx, .engine or .plan file (or a triton:// URL)")

    def read_card(self) -> ModelCard:
        """The artifact's model card, checked like every card (version, every field's type); one line otherwise."""
        if self.kind == "model":
            assert self.path is not None
            return load_card(self.path)
        if self.kind == "onnx":
            from skipgan_edge.runtime.backends.onnxrt import read_card

            assert self.path is not None
            return read_card(self.path)
        if self.kind == "engine":
            from skipgan_edge.runtime.engine_file import read_engine_file

            assert self.path is not None
            header, _ = read_engine_file(self.path)
            return header.need_card(self.path)
        if self.kind == "plan":
            return self._plan_card()
        with self.open() as be:  # a server's model: the card it serves
            return be.card

    def _plan_card(self) -> ModelCard:
        from skipgan_edge.runtime.engine_file import EngineHeader

        assert self.path is not None
        side = Path(str(self.path) + ".json")
        try:
            data = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EngineError(f"{self.path} has no readable header beside it ({side}: {exc.__class__.__name__}); "
                              "rebuild it with skipgan-edge build --plan") from None
        return EngineHeader.from_dict(data, str(side)).need_card(side)

    def open(self, backend: str = "auto", options: BackendOptions | None = None, *, batch: int = 1, race: bool = True) -> Backend:
        """:func:`skipgan_edge.runtime.backends.open_backend` on this artifact (a server's: its URL is the backend)."""
        from skipgan_edge.runtime.backends import open_backend

        if self.kind == "plan":
            raise ConfigError(f"{self.path} is a raw TensorRT plan (for Triton); run the engine file built beside it (--engine)")
        kind, path = self.pair
        return open_backend(kind, path, self.url or backend, options, batch=batch, race=race)


def _starts_with_engine_magic(path: Path) -> bool:
    from skipgan_edge.runtime.engine_file import MAGIC

    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


__all__ = ["KINDS", "Artifact"]
