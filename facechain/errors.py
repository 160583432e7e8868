"""Errors that reach the user. Every message names the input, the rule and the fix."""

import importlib


class FacechainError(Exception):
    """Base class: a problem the user can fix. The CLI prints the message without a traceback."""


class InputError(FacechainError, ValueError):
    """A bad argument, file or config value."""


class ModelNotFoundError(FacechainError, FileNotFoundError):
    """A model (base model, LoRA, face model) could not be found or downloaded."""


class UnsafeCheckpointError(FacechainError):
    """A pickle checkpoint was refused because ``allow_pickle`` was not set."""


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
