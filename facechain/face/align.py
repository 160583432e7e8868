"""Geometry: roll angle from the eyes, and FaceChain's portrait crop as one affine warp.

FaceChain's crop rule (facechain/data_process/preprocessing.py, see reference notes): a square
of side ``face_size / (0.35 / 1.15)`` (about 3.3x the face) with the face centre at x = 0.5,
y = 0.435 of the crop, white padding where the crop leaves the photo, resized to 512. FaceChain's
face size is max(w, h) of its SCRFD/DamoFD box; ours is :attr:`Face.size`, the same measure taken
from the keypoints for every backend, so the face fills 0.35/1.15 of the crop (156 px at 512) as
FaceChain's does whichever backend found it. The face centre is the backend's box centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facechain.face.types import Face

CROP_SCALE = 1.15 / 0.35  # crop side / Face.size (FaceChain: the face occupies 0.35/1.15 of the side)
FACE_CENTER_X = 0.5
FACE_CENTER_Y = 0.435


def roll_degrees(kps: np.ndarray) -> float:
    """Roll of the face in degrees (positive: the image-right eye is lower), from the two eye keypoints."""
    (lx, ly), (rx, ry) = kps[0], kps[1]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


@dataclass(frozen=True)
class CropTransform:
    matrix: np.ndarray  # (2, 3) affine: source pixel -> output pixel
    size: int
    roll: float
    face_size: float  # Face.size, in source pixels

    def apply_points(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, np.float64)
        return (pts @ self.matrix[:, :2].T + self.matrix[:, 2]).astype(np.float32)


def portrait_crop_transform(face: Face, size: int = 512, align_roll: bool = True,
                            crop_scale: float = CROP_SCALE, center=(FACE_CENTER_X, FACE_CENTER_Y)) -> CropTransform:
    """Affine that de-rolls the face about its centre and maps it to FaceChain's crop layout."""
    roll = roll_degrees(face.kps) if align_roll else 0.0
    face_size = face.size
    side = face_size * crop_scale
    scale = size / side
    cx, cy = face.center
    # rotate by -roll about the face centre, scale, then move the face centre to its target
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), roll, scale)
    m[0, 2] += center[0] * size - cx
    m[1, 2] += center[1] * size - cy
    return CropTransform(matrix=m, size=size, roll=roll, face_size=face_size)


def warp_crop(image: np.ndarray, t: CropTransform, border=(255, 255, 255)) -> np.ndarray:
    """Apply ``t`` to an RGB image with white padding. Only the source region the crop covers is
    touched; large downscales pre-shrink that region with INTER_AREA so the crop is not aliased."""
    m = t.matrix.astype(np.float64).copy()
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [t.size, 0], [0, t.size], [t.size, t.size]], np.float64) @ inv[:, :2].T + inv[:, 2]
    h, w = image.shape[:2]
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return np.full((t.size, t.size, 3), border, np.uint8)
    roi = image[y0:y1, x0:x1]
    m[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # the ROI's origin is (x0, y0) in the source
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        f = 2 * scale  # pre-shrink so the warp scales by ~0.5
        rh, rw = roi.shape[:2]
        roi = cv2.resize(roi, (max(1, round(rw * f)), max(1, round(rh * f))), interpolation=cv2.INTER_AREA)
        m[:, 0] *= rw / roi.shape[1]
        m[:, 1] *= rh / roi.shape[0]
    return cv2.warpAffine(roi, m, (t.size, t.size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
