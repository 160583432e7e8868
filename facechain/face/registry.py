"""Explicit registry of face backends. ``get_analyzer("auto")`` picks insightface when its
models load, else dlib, and says which in one log line."""

from __future__ import annotations

import logging
from typing import Callable

from facechain.errors import FacechainError, InputError, MissingDependencyError
from facechain.face.types import FaceAnalyzer
from facechain.registry import Registry
from facechain.face.backends import dlib_backend, insightface_backend

logger = logging.getLogger(__name__)

def _builtin(registry: Registry) -> None:
    registry.register("dlib", dlib_backend.DlibAnalyzer)
    registry.register("insightface", insightface_backend.InsightFaceAnalyzer)


# name -> analyzer class: ``cls(**options)`` loads the models; ``cls.similarity(a, b)`` is its calibration
BACKENDS: Registry[Callable[..., FaceAnalyzer]] = Registry("face backend", reserved=("auto",), builtins=_builtin)
# Loaded analyzers, one per (name, options): loading face models takes seconds.
_LOADED: dict[tuple, FaceAnalyzer] = {}
AUTO_ORDER = ("insightface", "dlib")


def register_backend(name: str, factory: Callable[..., FaceAnalyzer]) -> None:
    """Register ``factory(**options) -> FaceAnalyzer`` under ``name``; a duplicate name is refused.
    The factory (usually the analyzer class) also carries ``similarity(a, b)``, its calibration."""
    BACKENDS.register(name, factory)


def available_backends() -> list[str]:
    return BACKENDS.names()


def get_analyzer(name: str = "auto", **options) -> FaceAnalyzer:
    """Return a (cached) analyzer. Raises FacechainError naming what is missing when none loads."""
    key = (name, repr(sorted(options.items())))
    if key in _LOADED:
        return _LOADED[key]
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
                analyzer = BACKENDS.get(cand)(**options.get(cand, {}))
            except FacechainError as exc:
                problems.append(f"{cand}: {exc}")
                continue
            if problems:
                logger.info("face backend: using %s (%s)", cand, "; ".join(problems))
            else:
                logger.info("face backend: using %s", cand)
            _LOADED[key] = analyzer
            return analyzer
        raise MissingDependencyError(
            "no face backend could be loaded:\n  " + "\n  ".join(problems)
            + "\nInstall dlib and face_recognition_models (`pip install dlib face_recognition_models`, works offline), "
            "or make insightface's buffalo_l models available in ~/.insightface/models."
        )
    analyzer = BACKENDS.get(name)(**options)
    _LOADED[key] = analyzer
    return analyzer
