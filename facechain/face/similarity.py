"""Identity similarity on one scale for every backend.

``similarity(a, b)`` maps each backend's native comparison onto [0, 1] so that
``SAME_PERSON_THRESHOLD = 0.5`` is the same-person decision point for every backend:

* dlib (128-d ResNet, trained with a Euclidean margin): native same-person rule is
  distance < 0.6 (dlib's documented threshold, 99.38% on LFW). score = 1 - d / 1.2,
  clipped to [0, 1]; d = 0.6 -> 0.5.
* insightface ArcFace (512-d, cosine): same-person cosine threshold 0.28 (buffalo_l
  w600k_r50 verification operating point used by insightface's own examples is 0.2-0.3).
  Piecewise-linear: cos 1 -> 1, cos 0.28 -> 0.5, cos -1 -> 0.

Each calibration is the registered backend's own ``similarity(a, b)`` (a backend added to the
registry brings its calibration with it); this module only checks and dispatches.

Scores are comparable in ranking and thresholding within one backend; across backends
only the decision (above or below 0.5) means the same thing.
"""

from __future__ import annotations

import numpy as np

from facechain.errors import InputError
from facechain.face.types import Face
from facechain.face.registry import BACKENDS

SAME_PERSON_THRESHOLD = 0.5



def _vec(x) -> tuple[np.ndarray, str | None]:
    if isinstance(x, Face):
        if x.embedding is None:
            raise InputError("face has no embedding; detect with embed=True")
        return np.asarray(x.embedding, dtype=np.float64), x.backend
    return np.asarray(x, dtype=np.float64), None


def similarity(a, b, backend: str | None = None) -> float:
    """Calibrated identity similarity of two faces (or embeddings + ``backend``)."""
    va, ba = _vec(a)
    vb, bb = _vec(b)
    backend = backend or ba or bb
    if ba and bb and ba != bb:
        raise InputError(f"cannot compare a {ba} embedding with a {bb} embedding; use one backend for both")
    if va.shape != vb.shape:
        raise InputError(f"embedding shapes differ: {va.shape} vs {vb.shape}")

    if backend not in BACKENDS:
        raise InputError(f"unknown embedding backend {backend!r}; expected one of {BACKENDS.names()}")
    return float(BACKENDS.get(backend).similarity(va, vb))


def similarity_matrix(faces_a: list, faces_b: list, backend: str | None = None) -> np.ndarray:
    return np.array([[similarity(a, b, backend) for b in faces_b] for a in faces_a], dtype=np.float64)


def is_same_person(a, b, backend: str | None = None) -> bool:
    return similarity(a, b, backend) >= SAME_PERSON_THRESHOLD
