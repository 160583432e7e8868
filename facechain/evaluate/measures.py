"""The measures of eval: copy identity, pixel diversity and their crops and thumbnails."""

from __future__ import annotations


import logging

import cv2
import numpy as np

from facechain.face.types import Face


from facechain.evaluate.report import COPY_CROP_SIDE, MIN_REFERENCE_SPREAD, PIXEL_SIDE
from facechain.face.align import portrait_crop_transform, warp_crop

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- measures


def copy_identity(nearest_similarity: float, reference_spread: float) -> float:
    """How much closer an output is to its nearest reference photo than the reference photos are
    to each other: ``1 - (1 - s_nearest) / spread``, clipped to [0, 1]. 1: the same face embedding
    as a reference photo; 0: no closer to one than another photo of the person would be."""
    spread = max(float(reference_spread), MIN_REFERENCE_SPREAD)
    return float(np.clip(1.0 - (1.0 - float(nearest_similarity)) / spread, 0.0, 1.0))


def portrait_crop(image: np.ndarray, face: Face, mirror: bool = False, side: int = COPY_CROP_SIDE) -> np.ndarray:
    """Grey square crop (side x side, float32) of FaceChain's portrait layout around ``face`` (see
    :func:`facechain.face.align.portrait_crop_transform`: about 3.3x the face, de-rolled, face centre
    at x 0.5, y 0.435): the face with its hair, clothes and background. ``mirror``: the crop of the
    mirrored image (the trainer flips its photos, so a memorised output can come out mirrored)."""
    if mirror:
        w = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
        x1, y1, x2, y2 = face.bbox
        kps = face.kps.copy()
        kps[:, 0] = w - 1 - kps[:, 0]
        kps = kps[[1, 0, 2, 4, 3]]  # the image-left eye and mouth corner stay first
        face = Face(bbox=np.array([w - 1 - x2, y1, w - 1 - x1, y2], np.float32), score=face.score, kps=kps,
                    backend=face.backend)
    crop = warp_crop(image, portrait_crop_transform(face, size=side))
    return cv2.GaussianBlur(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)


def picture_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel-level likeness of two portrait crops (:func:`portrait_crop`): the Pearson correlation
    of their pixels, so brightness and contrast changes do not count. 1: the same picture."""
    return float(_standardise(a) @ _standardise(b))


def _standardise(x: np.ndarray) -> np.ndarray:
    v = np.asarray(x, np.float64).ravel()
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-9)


def pixel_diversity(thumbs: list[np.ndarray]) -> float | None:
    """Mean pairwise RMS difference (0..1) of images downsized to the same square (see :func:`thumbnail`)."""
    if len(thumbs) < 2:
        return None
    flat = np.stack([t.reshape(-1) for t in thumbs]).astype(np.float32) / 255.0  # (N, side*side*3)
    rms = [np.sqrt(((flat[i + 1:] - flat[i]) ** 2).mean(1)) for i in range(len(flat) - 1)]  # pairs (i, j > i)
    return float(np.concatenate(rms).mean())


def thumbnail(image: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


