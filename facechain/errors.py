"""Errors that reach the user. Every message names the input, the rule and the fix."""

import importlib
import reprlib


class FacechainError(Exception):
    """Base class: a problem the user can fix. The CLI prints the message without a traceback."""


class InputError(FacechainError, ValueError):
    """A bad argument, file or config value."""


class ModelNotFoundError(FacechainError, FileNotFoundError):
    """A model (base model, LoRA, face model) could not be found or downloaded."""


class UnsafeCheckpointError(FacechainError):
    """A pickle checkpoint was refused because ``allow_pickle`` was not set."""


class DiskFullError(FacechainError, OSError):
    """A write failed for want of space (or quota) on the disk: the message names the disk, the size being
    written and the space free there."""


class MissingDependencyError(FacechainError, ImportError):
    """An optional package is not installed."""


def require(module: str, purpose: str, install: str | None = None):
    """Import ``module`` or raise MissingDependencyError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        pkg = install or module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{pkg}', which could not be imported ({exc}). "
            f"Install it with: pip install {pkg}"
        ) from exc


def excerpt(value, limit: int = 120) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters: a long string is cut in the middle, a
    long or deeply nested list or mapping shows its first items, without ever building the whole repr (a value
    from a config file can expand to gigabytes of text)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 10, 10, 10, 10
    short.maxstring = short.maxother = short.maxlong = limit
    text = short.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
