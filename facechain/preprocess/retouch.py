"""Step 6 (optional, off by default): edge-preserving skin retouch inside the face, sparing eyes,
brows and mouth. A bilateral filter stands in for FaceChain's ABPN retouching network."""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)


def retouch_skin(image: np.ndarray, landmarks: np.ndarray, strength: float = 0.5) -> np.ndarray:
    if strength <= 0:
        return image
    if landmarks is None or len(landmarks) != 68:  # the skin region is drawn from the iBUG 68-point layout
        logger.warning("retouch skipped: it needs 68-point landmarks, the face backend gave %s",
                       "none" if landmarks is None else f"{len(landmarks)} points")
        return image
    h, w = image.shape[:2]
    skin = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(skin, cv2.convexHull(landmarks.astype(np.int32)), 255)
    for sl in (slice(17, 22), slice(22, 27), slice(36, 42), slice(42, 48), slice(48, 60)):  # brows, eyes, mouth
        cv2.fillConvexPoly(skin, cv2.convexHull(landmarks[sl].astype(np.int32)), 0)
    iod = float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))
    d = max(3, int(iod / 8) | 1)
    smooth = cv2.bilateralFilter(image, d, 30, d)
    alpha = cv2.GaussianBlur(skin.astype(np.float32) / 255.0, (0, 0), max(1.0, iod / 20))[..., None] * strength
    return (image * (1 - alpha) + smooth * alpha).round().clip(0, 255).astype(np.uint8)
