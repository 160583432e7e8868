"""Face analysis types shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the pixel coordinates of the image it was detected in.

    kps: (5, 2) float32 keypoints in insightface order: eye on the image's left, eye on the
    image's right, nose tip, mouth corner left, mouth corner right.
    landmarks: (68, 2) in iBUG-300W order (dlib; insightface's 1k3d68 model) or (106, 2)
    (insightface 2d106, when its pack has no 68-point model) or None.
    embedding: identity vector of ``backend`` (compare only with :func:`facechain.face.similarity`).
    """

    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    score: float  # detector confidence; backend-specific scale, see FaceAnalyzer.min_score
    kps: np.ndarray  # (5, 2)
    backend: str
    landmarks: np.ndarray | None = None
    embedding: np.ndarray | None = None
    gender: str | None = None  # "male" | "female"
    age: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def size(self) -> float:
        """Side of the face box (geometric mean of width and height), in pixels."""
        return float(np.sqrt(self.area))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2], dtype=np.float32)


@runtime_checkable
class FaceAnalyzer(Protocol):
    """A face backend. ``detect`` takes an RGB uint8 (H, W, 3) array and returns faces sorted
    by area, largest first. Faces whose detector score is below ``min_score`` are dropped, so
    a textured patch scored as a weak face does not count as a face."""

    name: str
    min_score: float  # the backend's "this is a real face" detector score
    has_attributes: bool  # gender/age available
    min_face_px: int  # smallest face side (pixels) the detector finds in the image it is given
    fork_safe: bool  # may forked worker processes use this instance

    def detect(self, image: np.ndarray, *, embed: bool = True, max_faces: int | None = None) -> list[Face]: ...

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray: ...

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """This backend's embeddings compared on the shared scale: 0.5 = its same-person threshold."""
        ...
