"""Step 8: identity consistency. Photos whose embedding is far from the set's medoid (another
person got in) are rejected."""

from __future__ import annotations

import numpy as np

from facechain.face.similarity import SAME_PERSON_THRESHOLD, similarity_matrix

MIN_PHOTOS_FOR_CHECK = 3  # with two photos of different people there is no telling which is the intruder


def medoid_outliers(embeddings: list[np.ndarray], backend: str, threshold: float = SAME_PERSON_THRESHOLD) -> tuple[int, list[float], list[int]]:
    """Return (medoid index, similarity of each photo to the medoid, indices below ``threshold``)."""
    sims = similarity_matrix(embeddings, embeddings, backend)
    medoid = int(np.argmax(sims.sum(1)))
    to_medoid = [float(s) for s in sims[medoid]]
    if len(embeddings) < MIN_PHOTOS_FOR_CHECK:
        return medoid, to_medoid, []
    return medoid, to_medoid, [i for i, s in enumerate(to_medoid) if s < threshold]
