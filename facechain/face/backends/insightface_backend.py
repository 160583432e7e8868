"""insightface backend: the buffalo_l / antelopev2 model packs (SCRFD detection, 5 keypoints,
2d106 landmarks, ArcFace 512-d embeddings, gender/age).

Packs live in insightface's usual folder (``~/.insightface/models/<pack>``, or
``$INSIGHTFACE_HOME``); insightface fetches them there on first use. With ``HF_HUB_OFFLINE``
or ``FACECHAIN_OFFLINE`` set, a missing pack is reported at once instead of attempting a download.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from facechain.errors import MissingDependencyError, ModelNotFoundError
from facechain.face.types import Face
from facechain.models import insightface_root
from facechain.errors import InputError

logger = logging.getLogger(__name__)

PACKS = ("buffalo_l", "antelopev2")
# SCRFD confidence for a real face; insightface's FaceAnalysis default det_thresh is 0.5.
SCRFD_MIN_SCORE = 0.5


def _offline() -> bool:
    return any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("FACECHAIN_OFFLINE", "HF_HUB_OFFLINE"))


def onnx_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


# Same-person cosine of ArcFace (buffalo_l w600k_r50): insightface's own examples verify at 0.2-0.3.
ARCFACE_COSINE_THRESHOLD = 0.28


class InsightFaceAnalyzer:
    name = "insightface"

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Calibrated to [0, 1] with 0.5 at the threshold, piecewise linear in the cosine:
        cos 1 -> 1, cos 0.28 -> 0.5, cos -1 -> 0."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        t = ARCFACE_COSINE_THRESHOLD
        if cos >= t:
            return 0.5 + 0.5 * (cos - t) / (1 - t)
        return max(0.0, 0.5 * (cos + 1) / (t + 1))
    has_attributes = True
    min_face_px = 16  # SCRFD's smallest anchor at the detection size (its box, i.e. Face.size)
    fork_safe = False  # onnxruntime sessions (CUDA contexts above all) do not survive fork

    def __init__(self, pack: str = "buffalo_l", det_size: int = 640):
        if pack not in PACKS:
            raise InputError(f"insightface pack must be one of {list(PACKS)}, got {pack!r}")
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise MissingDependencyError(
                f"the insightface backend needs 'insightface' and 'onnxruntime' ({exc}). "
                "Install them with: pip install insightface onnxruntime (onnxruntime-gpu on a GPU machine)."
            ) from exc
        root = insightface_root()
        pack_dir = root / "models" / pack
        have = pack_dir.is_dir() and any(pack_dir.glob("*.onnx"))
        if not have and _offline():
            raise ModelNotFoundError(
                f"insightface pack '{pack}' is not in {pack_dir} and downloads are off (offline mode). "
                f"Unzip {pack}.zip from insightface's model releases into {pack_dir}."
            )
        self.pack = pack
        self.min_score = SCRFD_MIN_SCORE
        providers = onnx_providers()
        logger.info("insightface %s: onnxruntime providers %s", pack, providers)
        try:
            self._app = FaceAnalysis(name=pack, root=str(root), providers=providers)
            self._app.prepare(ctx_id=0 if "CUDAExecutionProvider" in providers else -1, det_size=(det_size, det_size),
                              det_thresh=0.1)
        except Exception as exc:  # download failure, corrupt pack
            raise ModelNotFoundError(
                f"insightface pack '{pack}' could not be loaded from {pack_dir} or downloaded ({type(exc).__name__}: {exc}). "
                f"Unzip {pack}.zip from insightface's model releases into {pack_dir}."
            ) from exc
        if "recognition" not in self._app.models:
            raise ModelNotFoundError(f"insightface pack '{pack}' in {pack_dir} has no recognition model.")

    def __repr__(self) -> str:
        return f"InsightFaceAnalyzer(pack={self.pack!r})"

    def detect(self, image: np.ndarray, *, embed: bool = True, max_faces: int | None = None,
               min_score: float | None = None) -> list[Face]:
        thr = self.min_score if min_score is None else min_score
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        raw = self._app.get(bgr, max_num=0)
        faces = []
        for f in raw:
            if float(f.det_score) < thr:
                continue
            gender = None
            if getattr(f, "gender", None) is not None:
                gender = "male" if int(f.gender) == 1 else "female"
            # prefer the 68-point (iBUG order, as dlib) landmarks so consumers index one layout;
            # the 106-point set stays in extra
            lmk68 = getattr(f, "landmark_3d_68", None)
            lmk106 = getattr(f, "landmark_2d_106", None)
            lmk = lmk68[:, :2] if lmk68 is not None else lmk106
            emb = getattr(f, "embedding", None) if embed else None
            faces.append(Face(
                bbox=np.asarray(f.bbox, np.float32), score=float(f.det_score), kps=np.asarray(f.kps, np.float32),
                backend=self.name, landmarks=None if lmk is None else np.asarray(lmk, np.float32),
                embedding=None if emb is None else np.asarray(emb, np.float32),
                gender=gender, age=None if getattr(f, "age", None) is None else float(f.age),
                extra={} if lmk106 is None else {"landmarks_106": np.asarray(lmk106, np.float32)},
            ))
        faces.sort(key=lambda f: -f.area)
        return faces[:max_faces] if max_faces else faces

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        from insightface.app.common import Face as IFace

        rec = self._app.models["recognition"]
        f = IFace(bbox=face.bbox, kps=face.kps, det_score=face.score)
        return np.asarray(rec.get(np.ascontiguousarray(image[:, :, ::-1]), f), np.float32)
