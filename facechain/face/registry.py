"""Explicit registry of face backends. ``get_analyzer("auto")`` picks insightface when its
models load, else dlib, and says which in one log line."""

from __future__ import annotations

import logging
from typing import Callable

from facechain.errors import FacechainError, InputError, MissingDependencyError
from facechain.face.types import FaceAnalyzer

logger = logging.getLogger(__name__)

_BACKENDS: dict[str, Callable[..., FaceAnalyzer]] = {}
_CACHE: dict[tuple, FaceAnalyzer] = {}
AUTO_ORDER = ("insightface", "dlib")


def register_backend(name: str, factory: Callable[..., FaceAnalyzer]) -> None:
    """Register ``factory(**options) -> FaceAnalyzer`` under ``name``; a duplicate name is refused."""
    if name in _BACKENDS or name == "auto":
        raise ValueError(f"face backend '{name}' is already registered")
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    _register_builtin()
    return sorted(_BACKENDS)


def get_analyzer(name: str = "auto", **options) -> FaceAnalyzer:
    """Return a (cached) analyzer. Raises FacechainError naming what is missing when none loads."""
    _register_builtin()
    key = (name, repr(sorted(options.items())))
    if key in _CACHE:
        return _CACHE[key]
    if name == "auto":
        bad = {k: v for k, v in options.items() if k not in AUTO_ORDER or not isinstance(v, dict)}
        if bad:
            raise InputError(
                f"get_analyzer('auto') takes per-backend option dicts, e.g. dlib={{'detector': 'cnn'}}; got {bad}. "
                "Name the backend to pass its options directly."
            )
        problems = []
        for cand in AUTO_ORDER:
            try:
                analyzer = _BACKENDS[cand](**options.get(cand, {}))
            except FacechainError as exc:
                problems.append(f"{cand}: {exc}")
                continue
            if problems:
                logger.info("face backend: using %s (%s)", cand, "; ".join(problems))
            else:
                logger.info("face backend: using %s", cand)
            _CACHE[key] = analyzer
            return analyzer
        raise MissingDependencyError(
            "no face backend could be loaded:\n  " + "\n  ".join(problems)
            + "\nInstall dlib and face_recognition_models (`pip install dlib face_recognition_models`, works offline), "
            "or make insightface's buffalo_l models available in ~/.insightface/models."
        )
    if name not in _BACKENDS:
        raise InputError(f"unknown face backend '{name}'. Choose one of {['auto', *sorted(_BACKENDS)]}.")
    analyzer = _BACKENDS[name](**options)
    _CACHE[key] = analyzer
    return analyzer


_registered = False


def _register_builtin() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from facechain.face.backends import dlib_backend, insightface_backend

    register_backend("dlib", dlib_backend.DlibAnalyzer)
    register_backend("insightface", insightface_backend.InsightFaceAnalyzer)
