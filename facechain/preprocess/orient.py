"""Step 2: pick the rotation (0/90/180/270 degrees) where the detector finds the best face,
and return that rotation's faces at a scale fine enough for the several-faces rule."""

from __future__ import annotations

import cv2
import numpy as np

from facechain.face.types import Face, FaceAnalyzer

ROTATIONS = (0, 90, 270, 180)  # counter-clockwise degrees applied to the photo, most likely first
# A face scoring this far above the backend's real-face score ends the search: frontal detectors
# (dlib HOG, SCRFD) do not fire confidently on a face turned by 90 degrees, so the other rotations
# cannot beat it in practice, and most photos are upright after EXIF transpose.
CONFIDENT_MARGIN = 0.5
# The small-face pass (see orient_and_detect) never enlarges a photo beyond this many megapixels.
SMALL_FACE_PASS_MAX_MP = 40.0


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    k = {0: None, 90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}[degrees]
    return image if k is None else cv2.rotate(image, k)


def resize_long(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """Resize so the long side is ``long_side`` (down with INTER_AREA, up with INTER_LINEAR); return (image, scale)."""
    h, w = image.shape[:2]
    s = long_side / max(h, w)
    if abs(s - 1) < 1e-3:
        return image, 1.0
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp), s


def _fit(image: np.ndarray, long_side: int, upscale: bool) -> tuple[np.ndarray, float]:
    if not upscale and max(image.shape[:2]) <= long_side:
        return image, 1.0
    return resize_long(image, long_side)


def _best(image: np.ndarray, analyzer: FaceAnalyzer, long_side: int, upscale: bool):
    small, s = _fit(image, long_side, upscale)
    best = None
    for deg in ROTATIONS:
        rotated = rotate(small, deg)
        faces = analyzer.detect(rotated, embed=False)
        if faces and (best is None or max(f.score for f in faces) > best[1]):
            best = (deg, max(f.score for f in faces), faces, rotated, s)
            if best[1] >= analyzer.min_score + CONFIDENT_MARGIN:
                break
    return best


def orient_and_detect(image: np.ndarray, analyzer: FaceAnalyzer, orient_size: int = 800,
                      detect_size: int = 1024, min_face_size: int | None = None) -> tuple[int, list[Face], np.ndarray | None, float]:
    """Return (rotation degrees, faces, the rotated image they were found in, its scale to the photo).

    Rotations are tried most-likely first and the search stops at a confident face.

    The rotation pass runs at ``orient_size`` (faces of at least min_face_px there: ~10% of the
    photo's long side for dlib); if no rotation shows a face it is repeated at twice
    ``detect_size``. The chosen rotation is detected again, enlarged, only when its largest face is
    small enough that a face a quarter of its area could have been missed (the several-faces rule
    needs every face down to 1/4 of the largest's area).

    ``min_face_size``: when still no face is found, the upright photo is searched once more at the
    scale where a face of that many photo pixels is detectable, so that a face too small to train
    on is reported as such rather than as "no face"."""
    best = _best(image, analyzer, orient_size, upscale=False)
    if best is None:
        best = _best(image, analyzer, 2 * detect_size, upscale=True)
    if best is None and min_face_size:
        long_side = max(image.shape[:2])
        target = round(long_side * 1.1 * analyzer.min_face_px / min_face_size)
        if target > 2 * detect_size:
            target = min(target, round(long_side * (SMALL_FACE_PASS_MAX_MP * 1e6 / (image.shape[0] * image.shape[1])) ** 0.5))
            big, s = resize_long(image, target)
            faces = analyzer.detect(big, embed=False)
            if faces:
                best = (0, max(f.score for f in faces), faces, big, s)
    if best is None:
        return 0, [], None, 1.0
    deg, _, faces, det, s = best
    rotated = rotate(image, deg)
    if faces and faces[0].size < 2 * analyzer.min_face_px:
        # enlarge just enough that a face of half the largest's side is still detectable
        factor = min(2 * analyzer.min_face_px / faces[0].size * 1.05, 4.0)
        det2, s2 = resize_long(rotated, round(max(det.shape[:2]) * factor))
        faces2 = analyzer.detect(det2, embed=False)
        if faces2:
            return deg, faces2, det2, s * factor
    return deg, faces, det, s
