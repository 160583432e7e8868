"""A face's region in an image: the square crop around it and the feathered mask over it, and the paste
back that leaves every pixel outside the mask bit-identical. The face detailer, templates and DIIR
re-draw faces through these (docs/generate.md, "Face detailer")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facechain.face.types import Face

# Ellipse around the face box: centre raised by 0.1 x box height and half-axes 0.5 w x 0.6 h, so
# it reaches 0.2 h above the box (the forehead; dlib's and insightface's boxes stop at the brows)
# and down to the box's bottom (the chin). The landmarks' hull is added when the face has them.
_ELLIPSE_RAISE, _ELLIPSE_AX, _ELLIPSE_AY = 0.1, 0.5, 0.6


def needs_detail(face: Face, image_shape: tuple[int, ...], max_fraction: float = 0.23) -> bool:
    """True when ``face.size`` is below ``max_fraction`` of the image's short side (mode auto's rule)."""
    return face.size < max_fraction * min(image_shape[:2])


@dataclass(frozen=True)
class FaceRegion:
    """Where one face is re-drawn: the square crop ``image[y0:y0+side, x0:x0+side]`` and the
    feathered mask ``alpha`` over it (float32 (side, side) in [0, 1]; 0 = keep the original)."""

    x0: int
    y0: int
    side: int
    alpha: np.ndarray

    def full_alpha(self, image_shape: tuple[int, ...]) -> np.ndarray:
        """The mask over the whole image (float32 (H, W), 0 outside the crop)."""
        out = np.zeros(image_shape[:2], dtype=np.float32)
        out[self.y0:self.y0 + self.side, self.x0:self.x0 + self.side] = self.alpha
        return out


def _face_outline(face: Face) -> np.ndarray:
    """(N, 2) float32 points whose convex hull is the face mask before dilation."""
    x1, y1, x2, y2 = (float(v) for v in face.bbox[:4])
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 - _ELLIPSE_RAISE * h
    t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    pts = np.stack([cx + _ELLIPSE_AX * w * np.cos(t), cy + _ELLIPSE_AY * h * np.sin(t)], axis=1)
    if face.landmarks is not None and len(face.landmarks):
        pts = np.concatenate([pts, np.asarray(face.landmarks, dtype=np.float64)[:, :2]])
    return pts.astype(np.float32)


def face_region(face: Face, image_shape: tuple[int, ...], cfg) -> FaceRegion:
    """The crop and feathered mask for ``face`` in an image of ``image_shape``. ``cfg``: the region's settings
    (``padding``, ``mask_dilation``, ``mask_feather``: a DetailerConfig). The mask is the convex hull of the
    face's landmarks and an ellipse around its box (raised to take in the forehead), dilated by
    ``mask_dilation`` x face side and Gaussian feathered with sigma ``mask_feather`` x face side; the crop is a
    square of ``padding`` x face side that also holds the whole feathered mask, shifted (never padded) to stay
    inside the image."""
    import cv2

    h_img, w_img = image_shape[:2]
    size = max(face.size, 1.0)
    pts = _face_outline(face)
    dilate = int(round(cfg.mask_dilation * size))
    sigma = cfg.mask_feather * size
    radius = int(math.ceil(3 * sigma)) if sigma > 0 else 0  # Gaussian kernel half-width: 3 sigma
    reach = dilate + radius + 2
    lo = pts.min(axis=0) - reach
    hi = pts.max(axis=0) + reach
    side = int(math.ceil(max(cfg.padding * size, *(hi - lo))))
    side = max(8, min(side, h_img, w_img))  # never larger than the image: the crop stays square
    cx, cy = (lo + hi) / 2
    x0 = int(np.clip(round(cx - side / 2), 0, w_img - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h_img - side))
    mask = np.zeros((side, side), dtype=np.uint8)
    hull = cv2.convexHull(np.round(pts - np.float32([x0, y0])).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255)
    if dilate > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1)))
    alpha = mask.astype(np.float32) / 255.0
    if radius > 0:
        # zero padding around the crop: the feathered edge falls to exactly 0 (a sum of zeros) once
        # it is more than 3 sigma from the dilated mask, which the crop was sized to hold
        alpha = cv2.GaussianBlur(alpha, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_CONSTANT)
    alpha = np.clip(alpha, 0.0, 1.0)
    return FaceRegion(x0, y0, side, alpha)


def compose(orig: np.ndarray, new: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``orig * (1 - alpha) + new * alpha``, with ``orig`` copied bit for bit where alpha == 0."""
    a = alpha[..., None]
    out = np.clip(np.rint(orig.astype(np.float32) * (1.0 - a) + new.astype(np.float32) * a), 0, 255).astype(np.uint8)
    keep = alpha == 0
    out[keep] = orig[keep]
    return out
