"""Face analysis types shared by every stage, and the one face-size measure they all use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import dataclasses

# --- face size -------------------------------------------------------------------------------
# FaceChain measures a face as max(w, h) of its SCRFD (or DamoFD) box: its ranking keeps faces of
# 120-300 px at 512 px and its crop is face / (0.35 / 1.15). Detector boxes differ per backend
# (dlib's HOG box is tighter than SCRFD's and comes in pyramid steps of 6/5), so the size is
# computed from the five keypoints instead, which every backend fills with the same points, and
# scaled to SCRFD's box. Figures and sources: benchmarks/RESULTS.md, "Face size";
# re-measure with benchmarks/face_size_calibration.py.

# max(w, h) of an SCRFD box / eye-to-mouth distance (eye centre to mouth-corner centre) on a
# frontal face: 2.67-2.92, median 2.81, over published SCRFD (buffalo_l det_10g) detections that
# print both box and keypoints; median 2.77 over frontal faces of the WIDER FACE training labels
# with RetinaFace's five points, the boxes and points SCRFD is trained to regress.
SCRFD_SIZE_PER_EYE_MOUTH = 2.8
# Eye-to-mouth / inter-ocular distance below which a face counts as pitched (seen from above or
# below) and its size is taken from the inter-ocular distance instead. Frontal faces measure
# 0.95-1.06 (medians: WIDER labels, SCRFD outputs, dlib on our sample photos; ArcFace's 112 px
# template: 1.15); 0.9 sits under them, so a frontal face is measured by its eye-to-mouth distance.
FRONTAL_EYE_MOUTH_PER_EYES = 0.9


def kps_face_size(kps) -> float | None:
    """Face size in pixels from five keypoints (insightface order), scaled to max(w, h) of the
    SCRFD box of a frontal face; None when the keypoints cannot measure a face (missing, not
    finite, or collapsed to a point).

    ``SCRFD_SIZE_PER_EYE_MOUTH x max(d_em, FRONTAL_EYE_MOUTH_PER_EYES x d_eyes)``, with d_em the
    distance from the eyes' midpoint to the mouth corners' midpoint and d_eyes the distance between
    the eyes. Why these two and why their max: both are distances, so the size does not change
    when the face is rolled (the photo turned); turning the head (yaw) foreshortens d_eyes and
    leaves d_em, nodding it (pitch) foreshortens d_em and leaves d_eyes, so the larger of the two,
    each in its frontal proportion, is the least foreshortened view of the face. A box does
    neither: it narrows with yaw and its aspect follows the detector. The nose is not used: it
    moves sideways with yaw and its tip is the keypoint the backends place least alike."""
    if kps is None:
        return None
    k = np.asarray(kps, np.float64)
    if k.shape != (5, 2) or not np.isfinite(k).all():
        return None
    eyes = float(np.linalg.norm(k[1] - k[0]))
    eye_mouth = float(np.linalg.norm((k[3] + k[4]) / 2 - (k[0] + k[1]) / 2))
    d = max(eye_mouth, FRONTAL_EYE_MOUTH_PER_EYES * eyes)
    if d <= 1e-3:
        return None
    return SCRFD_SIZE_PER_EYE_MOUTH * d


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the pixel coordinates of the image it was detected in.

    kps: (5, 2) float32 keypoints in insightface order: eye on the image's left, eye on the
    image's right, nose tip, mouth corner left, mouth corner right.
    landmarks: (68, 2) in iBUG-300W order (dlib; insightface's 1k3d68 model) or (106, 2)
    (insightface 2d106, when its pack has no 68-point model) or None.
    embedding: identity vector of ``backend`` (compare only with :func:`facechain.face.similarity`).
    size: the face size every threshold uses (SCRFD-box scale, from the keypoints); bbox, width,
    height, area, box_side and center are the backend's own box (for drawing and pixel regions).
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
    def box_side(self) -> float:
        """max(width, height) of this backend's detector box, in pixels (what FaceChain calls the
        face size when the box is SCRFD's; dlib's box is about 0.8 of that)."""
        return max(self.width, self.height, 0.0)

    @property
    def size(self) -> float:
        """The face size, in pixels, the same for every backend: what max(w, h) of SCRFD's box
        would be (FaceChain's measure), computed from the keypoints by :func:`kps_face_size`.
        Every threshold and crop scale reads this (preprocessing crop and quality gate, ranking,
        detailer, eval). A face whose keypoints cannot measure it (none, or all at one point)
        falls back to :attr:`box_side`."""
        s = kps_face_size(self.kps)
        return float(s) if s is not None else self.box_side

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2], dtype=np.float32)

    def shifted(self, dx: float, dy: float) -> "Face":
        """This face in a frame moved by (dx, dy): e.g. ``shifted(-x0, -y0)`` in a crop starting at (x0, y0)."""
        d = np.array([dx, dy], dtype=np.float32)
        return dataclasses.replace(self, bbox=np.asarray(self.bbox, np.float32) + np.tile(d, 2), kps=self.kps + d,
                                   landmarks=None if self.landmarks is None else self.landmarks + d)


@runtime_checkable
class FaceAnalyzer(Protocol):
    """A face backend. ``detect`` takes an RGB uint8 (H, W, 3) array and returns faces sorted
    by area, largest first. Faces whose detector score is below ``min_score`` are dropped, so
    a textured patch scored as a weak face does not count as a face."""

    name: str
    min_score: float  # the backend's "this is a real face" detector score
    has_attributes: bool  # gender/age available
    min_face_px: int  # smallest Face.size (pixels) the detector finds in the image it is given
    fork_safe: bool  # may forked worker processes use this instance

    def detect(self, image: np.ndarray, *, embed: bool = True, max_faces: int | None = None) -> list[Face]: ...

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray: ...

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """This backend's embeddings compared on the shared scale: 0.5 = its same-person threshold."""
        ...
