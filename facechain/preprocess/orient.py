"""Step 2: pick the rotation (0/90/180/270 degrees) where the detector finds the best face."""

from __future__ import annotations

import cv2
import numpy as np

from facechain.face.types import FaceAnalyzer

ROTATIONS = (0, 90, 180, 270)  # counter-clockwise degrees applied to the photo


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    k = {0: None, 90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}[degrees]
    return image if k is None else cv2.rotate(image, k)


def resize_long(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    s = long_side / max(h, w)
    if s >= 1:
        return image, 1.0
    return cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA), s


def best_rotation(image: np.ndarray, analyzer: FaceAnalyzer, orient_size: int = 640) -> tuple[int, float]:
    """Return (degrees, best score). The score of a rotation is its best face's detector score
    weighted by the face's relative size, so one clear face beats a weak false positive."""
    small, _ = resize_long(image, orient_size)
    best = (0, -np.inf)
    for deg in ROTATIONS:
        faces = analyzer.detect(rotate(small, deg), embed=False, max_faces=3)
        if not faces:
            continue
        score = max(f.score for f in faces)
        if score > best[1]:
            best = (deg, score)
    return best
