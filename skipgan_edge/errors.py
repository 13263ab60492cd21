"""Exception types. Every one carries a message a user can act on, on one line."""

from __future__ import annotations

from typing import Any


class SkipganError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero."""

    exit_code = 2
    prefix = "error"


class DataError(SkipganError):
    """The data given cannot be used (missing folder, no readable image, bad layout)."""


class ModelFolderError(SkipganError):
    """A model folder is missing files, is corrupt, or is from an incompatible format."""


class ConfigError(SkipganError):
    """A configuration value is invalid. ``key``: the value's qualified config key (``score.bank_kind``) when the message
    begins with it; ``train`` says it in the user's terms (the option they typed, or the key and the file it came from)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class MissingDependencyError(SkipganError):
    """An optional dependency is needed for what was asked; the message says what to install."""


class ExportError(SkipganError):
    """Export, precision conversion or an accuracy gate failed."""


class CalibrationError(SkipganError):
    """A calibration set is missing, too small or made for another model."""


class EngineError(SkipganError):
    """A TensorRT engine cannot be built or loaded here."""


class SourceError(SkipganError):
    """A frame source cannot be opened or read."""


class SinkError(SkipganError):
    """A sink cannot be written (disk full, unwritable path)."""


class ServerError(SkipganError):
    """An inference server (``--backend triton://``) stayed unreachable past the retry budget, or refused a request."""


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency or raise a one-line install hint.

    Args:
        module: the import name, e.g. ``"tensorrt"``.
        extra: the pip extra or package that provides it.
        what: what the user asked for, for the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{what} needs the Python module '{module}' ({exc.__class__.__name__}: {exc}); "
            f"install it with: pip install 'skipgan-edge[{extra}]'"
        ) from None
