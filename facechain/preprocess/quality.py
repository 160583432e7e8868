"""Step 7: quality gate: face too small, blur, low detector score."""

from __future__ import annotations

import cv2
import numpy as np

from facechain.preprocess.errors import PhotoRejected


def face_box_mask(shape, points: np.ndarray) -> np.ndarray:
    """Filled convex hull of facial landmarks (the region blur is measured in)."""
    mask = np.zeros(shape[:2], np.uint8)
    hull = cv2.convexHull(np.asarray(points, np.float32)).astype(np.int32)
    cv2.fillConvexPoly(mask, hull, 255)
    return mask


def check_quality(face_size: float, score: float, blur: float, *, min_face_size: float, min_score: float,
                  blur_threshold: float) -> None:
    scores = {"face_size": round(face_size, 1), "detector_score": round(score, 3), "blur": round(blur, 1)}
    if face_size < min_face_size:
        raise PhotoRejected("face_too_small", f"face is {face_size:.0f} px, below the {min_face_size:g} px minimum; use a closer or larger photo", scores)
    if score < min_score:
        raise PhotoRejected("low_detector_score", f"detector score {score:.2f} is below {min_score:.2f} (face unclear, turned or occluded)", scores)
    if blur < blur_threshold:
        raise PhotoRejected("blurry", f"sharpness (variance of Laplacian in the face) {blur:.1f} is below {blur_threshold:g}", scores)


def photo_quality(scores: dict) -> float:
    """The quality that picks a person's best photo (the template face of fusion and ranking):
    detector score x sharpness (``blur``), both as report.json records them. FaceChain uses its FQA
    face-quality model for the same choice; this is the offline equivalent. One function, so that
    preprocessing (which keeps the high-resolution crop of the best photo) and generation (which
    picks the template face) choose the same photo."""
    return float(scores["detector_score"]) * float(scores["blur"])
