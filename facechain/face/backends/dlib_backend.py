"""dlib backend: the models shipped in the ``face_recognition_models`` package.

HOG (default, fast on CPU) or CNN (MMOD) detector, 68-point landmarks, 128-d ResNet
embeddings. Works with no network at all. No gender/age.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from facechain.errors import MissingDependencyError
from facechain.face.types import Face
from facechain.errors import InputError

# HOG SVM margin below which a detection is treated as a false positive. dlib's own detector
# reports every window with margin > 0 by default; real frontal faces in our test photos score
# 0.9-3, textured patches found with a lowered threshold score below 0.3.
HOG_MIN_SCORE = 0.3
# MMOD CNN confidence for a real face (dlib's cnn_face_detector reports > 0 by default).
CNN_MIN_SCORE = 0.3


def models_dir() -> Path:
    """Folder of face_recognition_models' .dat files, found without importing the package
    (its __init__ imports pkg_resources, which is deprecated and absent on new setuptools)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the dlib face backend needs the package 'face_recognition_models' (dlib's model files). "
            "Install it with: pip install face_recognition_models"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise MissingDependencyError(
            f"the dlib face backend needs the package 'dlib' ({exc}). Install it with: pip install dlib "
            "(it compiles from source: needs cmake and a C++ compiler, about 8 minutes)."
        ) from exc
    return dlib


def kps_from_68(pts: np.ndarray) -> np.ndarray:
    """5 keypoints (insightface order) from iBUG 68 landmarks: eye centres, nose tip, mouth corners."""
    return np.stack(
        [pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]
    ).astype(np.float32)


# dlib's documented same-person rule for its 128-d ResNet (trained with a Euclidean margin):
# distance < 0.6 (99.38% on LFW).
DLIB_DISTANCE_THRESHOLD = 0.6


class DlibAnalyzer:
    name = "dlib"

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Calibrated to [0, 1] with 0.5 at dlib's threshold: 1 - d / 1.2, clipped (d = 0.6 -> 0.5)."""
        d = float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
        return float(np.clip(1.0 - d / (2 * DLIB_DISTANCE_THRESHOLD), 0.0, 1.0))
    has_attributes = False
    fork_safe = True  # plain CPU objects: forked workers can use the parent's loaded models

    # Smallest Face.size the detector finds without upsampling: its HOG/MMOD window is 80x80 and
    # its smallest boxes are 72 px; shrinking our sample photos until no face is found, the last
    # faces found measured 59-80 px (benchmarks/face_size_calibration.py), so 80 is the size every
    # face is found at.
    min_face_px = 80

    def __init__(self, detector: str = "hog", upsample: int = 0, jitter: int = 0):
        """detector: "hog" (fast, frontal) or "cnn" (MMOD, more robust, slow on CPU).
        upsample: image pyramid upsampling before detection; each level halves the smallest face
        found (80 px at 0, 40 px at 1) and costs about 4x the time. Callers that need small faces
        can also pass a larger image.
        jitter: dlib's num_jitters for embeddings (0 = single pass; 10 is ~10x slower, slightly better)."""
        if detector not in ("hog", "cnn"):
            raise InputError(f"dlib detector must be 'hog' or 'cnn', got {detector!r}")
        dlib = _import_dlib()
        d = models_dir()
        need = ["shape_predictor_68_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"]
        if detector == "cnn":
            need.append("mmod_human_face_detector.dat")
        missing = [n for n in need if not (d / n).is_file()]
        if missing:
            raise MissingDependencyError(f"face_recognition_models at {d} lacks {missing}; reinstall it: pip install --force-reinstall face_recognition_models")
        self._dlib = dlib
        self.detector_kind = detector
        self.upsample = int(upsample)
        self.jitter = int(jitter)
        self.min_score = HOG_MIN_SCORE if detector == "hog" else CNN_MIN_SCORE
        self._hog = dlib.get_frontal_face_detector()
        self._cnn = dlib.cnn_face_detection_model_v1(str(d / "mmod_human_face_detector.dat")) if detector == "cnn" else None
        self._shape = dlib.shape_predictor(str(d / "shape_predictor_68_face_landmarks.dat"))
        self._rec = dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat"))

    def __repr__(self) -> str:
        return f"DlibAnalyzer(detector={self.detector_kind!r}, upsample={self.upsample})"

    # -- detection -------------------------------------------------------------------------
    def raw_detections(self, image: np.ndarray, min_score: float | None = None) -> list[tuple[np.ndarray, float]]:
        """(box, score) pairs for every detection scoring at least ``min_score`` (default: self.min_score)."""
        image = np.ascontiguousarray(image)
        thr = self.min_score if min_score is None else min_score
        out = []
        if self._cnn is not None:
            for det in self._cnn(image, self.upsample):
                if det.confidence >= thr:
                    r = det.rect
                    out.append((np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), float(det.confidence)))
        else:
            rects, scores, _ = self._hog.run(image, self.upsample, min(thr, 0.0))
            for r, s in zip(rects, scores):
                if s >= thr:
                    out.append((np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), float(s)))
        return out

    def detect(self, image: np.ndarray, *, embed: bool = True, max_faces: int | None = None,
               min_score: float | None = None) -> list[Face]:
        _check_image(image)
        dets = self.raw_detections(image, min_score)
        dets.sort(key=lambda d: -(d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))
        if max_faces is not None:
            dets = dets[:max_faces]
        faces = []
        for box, score in dets:
            rect = self._dlib.rectangle(int(box[0]), int(box[1]), int(box[2]), int(box[3]))
            shape = self._shape(image, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            emb = None
            if embed:
                emb = np.array(self._rec.compute_face_descriptor(image, shape, self.jitter), dtype=np.float32)
            faces.append(Face(bbox=box, score=score, kps=kps_from_68(pts), backend=self.name, landmarks=pts, embedding=emb,
                              extra={"shape": shape}))
        return faces

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        shape = face.extra.get("shape")
        if shape is None:
            b = face.bbox
            shape = self._shape(np.ascontiguousarray(image), self._dlib.rectangle(int(b[0]), int(b[1]), int(b[2]), int(b[3])))
        return np.array(self._rec.compute_face_descriptor(np.ascontiguousarray(image), shape, self.jitter), dtype=np.float32)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"face detection expects an RGB uint8 array of shape (H, W, 3), got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        )
