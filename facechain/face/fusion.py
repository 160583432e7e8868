"""Face fusion: put the reference person's face onto a generated face.

Methods behind an explicit registry (``register_fusion``; a duplicate name is refused):

* ``swapper`` — insightface's inswapper_128 (ONNX) when its model file is present; needs faces
  from the insightface backend (ArcFace embeddings).
* ``landmark`` — offline, any backend with 68 landmarks (dlib): piecewise-affine warp of the
  reference face along Delaunay triangles of the dense landmarks onto a destination shape that
  keeps the reference's inner-face proportions (see :func:`destination_shape`), colour matched in Lab
  (Reinhard et al. 2001, "Color Transfer between Images", mean/std per channel), blended with
  Poisson image editing (Pérez et al. 2003; ``cv2.seamlessClone``) inside a feathered face mask.

``get_fusion("auto")`` picks the swapper when its model file exists, else landmark, and logs which.
Every method returns the fused image and the alpha mask it used; pixels where the mask is 0 are
the target's pixels, unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from facechain.errors import InputError, ModelNotFoundError
from facechain.face.types import Face
from facechain.models import swapper_model_path
from facechain.registry import Registry
from facechain.errors import require

logger = logging.getLogger(__name__)


# iBUG-300W 68-point layout: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
JAW = slice(0, 17)


@dataclass(frozen=True)
class FusionResult:
    image: np.ndarray  # RGB uint8, same size as the target
    mask: np.ndarray  # float32 (H, W) in [0, 1]: how much of each pixel was replaced
    method: str
    notes: tuple[str, ...] = ()  # what the user should know about this fusion (kept in the manifest)


# Sideways offset of the nose tip from the eyes' midpoint, as a fraction of the eye distance, above
# which a face counts as a profile: its far-side landmarks are guesses, and warping them tears the face.
# Frontal faces measure under 0.1; a head turned about 45 degrees about 0.4.
PROFILE_NOSE_OFFSET = 0.45
# The generated face this many times larger than the reference face: the warp upscales the reference
# and the fused face looks soft (a note, not a refusal).
SOFT_UPSCALE = 2.0


def nose_offset(kps: np.ndarray) -> float:
    """|nose tip - eyes' midpoint| along the eye line / eye distance: 0 for a frontal face."""
    k = np.asarray(kps, np.float64)
    axis = k[1] - k[0]
    d = float(np.linalg.norm(axis))
    if not np.isfinite(d) or d < 1e-6:
        return float("inf")
    return abs(float(np.dot(k[2] - (k[0] + k[1]) / 2, axis / d))) / d


class FusionMethod(Protocol):
    name: str
    # the face backend whose faces (embeddings) this method needs, or None for any
    required_backend: str | None

    def fuse(self, target: np.ndarray, target_face: Face, source: np.ndarray, source_face: Face,
             strength: float = 1.0) -> FusionResult: ...


@dataclass(frozen=True)
class FusionSpec:
    """A registered fusion method and what it needs and allows. Callers ask the spec (``fusion_spec``),
    never a method's name.

    ``factory(**options) -> FusionMethod`` fuses a finished image with the reference face; None for a method
    that runs inside generation instead (``in_generation``: DIIR re-draws each face while the face LoRA or
    identity adapter is active, so it has no post-hoc ``fuse``)."""

    name: str
    factory: Callable[..., FusionMethod] | None
    required_backend: str | None = None  # the face backend whose faces (embeddings) it needs; None: any
    in_generation: bool = False  # runs inside generation, while the identity is active
    needs_reference: bool = True  # needs the reference face of the processed set (the person's best photo)
    needs_identity: bool = False  # needs the person's identity in the model (a face LoRA or identity adapter)
    allows_fast: bool = True  # works in fast mode (few LCM steps)
    options: str | None = None  # the config block holding its settings ("diir"), if any
    takes_model: bool = False  # its factory takes the swapper model file (``model_path``)
    why_not_fast: str = ""  # why it does not run in fast mode, for the error

    def check_fast(self, fast: bool) -> None:
        """Refuse fast mode for a method that does not run with it."""
        if fast and not self.allows_fast:
            raise InputError(f"fusion: {self.name} does not run with fast: true ({self.why_not_fast}). Turn fast off, "
                             "or use fusion: landmark or swapper.")


def _builtin(registry: Registry) -> None:
    registry.register("landmark", FusionSpec("landmark", LandmarkFusion, LandmarkFusion.required_backend))
    registry.register("swapper", FusionSpec("swapper", SwapperFusion, SwapperFusion.required_backend, takes_model=True))
    # MagicID's DDIM-inversion restoration (facechain.generate.diir): inversion needs the full scheduler, not LCM's few steps
    registry.register("diir", FusionSpec("diir", None, in_generation=True, needs_reference=False, needs_identity=True,
                                         allows_fast=False, options="diir",
                                         why_not_fast="DDIM inversion needs the full scheduler, not LCM's few steps"))


# name -> FusionSpec; ``auto`` and ``off`` are choices of get_fusion, not methods
METHODS: Registry[FusionSpec] = Registry("fusion method", reserved=("auto", "off"), builtins=_builtin)


def register_fusion(name: str, factory: Callable[..., FusionMethod], **needs) -> None:
    """Register ``factory(**options) -> FusionMethod`` under ``name`` (``needs``: the FusionSpec fields, e.g.
    ``allows_fast=False``); a duplicate name is refused."""
    METHODS.register(name, FusionSpec(name, factory, getattr(factory, "required_backend", None), **needs))


def available_fusions() -> list[str]:
    return METHODS.names()


def fusion_spec(name: str) -> FusionSpec | None:
    """What fusion choice ``name`` needs: the registered method's spec; ``auto`` as landmark or swapper (a
    post-hoc method that needs the reference face); None for ``off``."""
    if name == "off":
        return None
    if name == "auto":
        return FusionSpec("auto", None)
    return METHODS.get(name)


def check_backend(name: str, backend: str) -> None:
    """Refuse fusion method ``name`` with faces from ``backend`` when it needs another backend's faces."""
    required = METHODS.get(name).required_backend
    if required not in (None, backend):
        raise InputError(
            f"fusion: {name} needs {required} faces (their embeddings), but face_backend is {backend}. Set "
            f"face_backend: {required} (or auto), or use fusion: landmark."
        )


def get_fusion(name: str = "auto", *, swapper_model: str | os.PathLike | None = None,
               backend: str | None = None) -> FusionMethod:
    """A fusion method by name. ``auto``: the swapper when its model file exists and faces come
    from the insightface backend (``backend``; the swapper needs ArcFace embeddings), else landmark."""
    model = swapper_model_path(swapper_model)
    if name == "auto":
        swapper = METHODS.get("swapper")
        if model.is_file() and backend in (None, swapper.required_backend):
            logger.info("face fusion: insightface swapper (%s)", model)
            return swapper.factory(model_path=model)
        why = f"no swapper model at {model}" if not model.is_file() else f"faces come from the {backend} backend"
        logger.info("face fusion: landmark warp + Poisson blend (%s)", why)
        return METHODS.get("landmark").factory()
    if backend is not None:
        check_backend(name, backend)
    spec = METHODS.get(name)
    if spec.factory is None:
        raise InputError(f"fusion: {name} runs inside generation (it re-draws each face while the identity is active); "
                         "it has no separate fusion step.")
    return spec.factory(model_path=model) if spec.takes_model else spec.factory()


# ---------------------------------------------------------------------------- landmark method


def _feathered_hull_mask(points: np.ndarray, shape: tuple[int, int], face_size: float) -> np.ndarray:
    """Convex hull of ``points``, eroded then blurred so the mask falls to 0 inside the hull's edge.

    Erosion and blur scale with the face size (Face.size; 1/50 and 1/20 of it, i.e. 1/40 and 1/16 of
    dlib's box side, where they were measured on real face pairs: a wider erosion loses identity at
    the cheeks, a narrower blur shows the seam)."""
    import cv2

    h, w = shape
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 255)
    k = max(3, int(face_size / 50) | 1)
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    blur = max(3, int(face_size / 20) | 1)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (blur, blur), 0)
    soft[mask == 0] = 0.0  # feathering stays inside the hull: nothing outside it changes
    return soft


def warp_triangles(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, out_shape) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-affine warp of ``src`` so ``src_pts`` land on ``dst_pts``.

    The destination points are triangulated (Delaunay, scipy); every output pixel inside their
    convex hull is assigned to the triangle that holds it and sampled from ``src`` through that
    triangle's barycentric coordinates (one ``cv2.remap``). Pixels are assigned, not triangles
    rasterised one by one, so no pixel inside the hull is left out (per-triangle rasterising with
    rounded boxes left cracks and, where a triangle's vertex lookup failed, whole holes such as a
    dark patch on the lip). Coincident landmarks (closed lips put the inner upper and lower lip on
    the same points) are merged first. Returns (float32 (H, W, 3) image, bool (H, W) coverage)."""
    import cv2
    from scipy.spatial import Delaunay, QhullError

    h, w = out_shape
    out = np.zeros((h, w, 3), dtype=np.float32)
    covered = np.zeros((h, w), dtype=bool)
    dst = np.asarray(dst_pts, np.float64)
    srcp = np.asarray(src_pts, np.float64)
    _, keep = np.unique(np.round(dst, 3), axis=0, return_index=True)
    keep = np.sort(keep)
    dst, srcp = dst[keep], srcp[keep]
    try:
        tri = Delaunay(dst)
    except QhullError as exc:
        raise InputError(f"landmark fusion: the face's landmarks are degenerate (all on a line or a point: "
                         f"{str(exc).splitlines()[0][:120]}); fusion skipped for this face.") from exc
    x0, y0 = np.floor(dst.min(0)).astype(int)
    x1, y1 = np.ceil(dst.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if x1 < x0 or y1 < y0:
        return out, covered
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    simplex = tri.find_simplex(pts)
    inside = simplex >= 0
    if not inside.any():
        return out, covered
    p, s = pts[inside], simplex[inside]
    t = tri.transform[s]  # (n, 3, 2): barycentric coordinates of p in its triangle
    b = np.einsum("nij,nj->ni", t[:, :2], p - t[:, 2])
    bary = np.concatenate([b, 1.0 - b.sum(1, keepdims=True)], axis=1)
    src_xy = np.einsum("ni,nij->nj", bary, srcp[tri.simplices[s]])
    map_x = np.full(pts.shape[0], -1.0, np.float32)
    map_y = np.full(pts.shape[0], -1.0, np.float32)
    map_x[inside], map_y[inside] = src_xy[:, 0], src_xy[:, 1]
    bh, bw = ys.shape
    patch = cv2.remap(src.astype(np.float32), map_x.reshape(bh, bw), map_y.reshape(bh, bw), cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REFLECT_101)
    cover = inside.reshape(bh, bw)
    region = out[y0:y1 + 1, x0:x1 + 1]
    region[cover] = patch[cover]
    covered[y0:y1 + 1, x0:x1 + 1] = cover
    return out, covered


def match_colour(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer in Lab: give ``src`` the mean/std of ``dst`` inside ``mask``."""
    import cv2

    sel = mask > 0.5
    if sel.sum() < 16:
        logger.info("landmark fusion: face mask under 16 px; colour match skipped")
        return src
    s = cv2.cvtColor(np.clip(src, 0, 255).astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    d = cv2.cvtColor(dst, cv2.COLOR_RGB2LAB).astype(np.float32)
    for c in range(3):
        sm, ss = s[..., c][sel].mean(), s[..., c][sel].std() + 1e-6
        dm, ds = d[..., c][sel].mean(), d[..., c][sel].std() + 1e-6
        s[..., c] = (s[..., c] - sm) * (ds / ss) + dm
    return cv2.cvtColor(np.clip(s, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def destination_shape(target_lm: np.ndarray, source_lm: np.ndarray, outline_follow: float = 0.3) -> np.ndarray:
    """Where the reference's 68 landmarks should land on the target.

    The reference's landmarks are placed by the similarity transform that best maps them onto
    the target's (least median of squares over all 68). The inner points (brows, eyes, nose,
    mouth: 17-67) stay there: their proportions carry identity. The jaw points (0-16) move
    ``outline_follow`` of the way towards the target's jaw so the face fits the generated head.
    0.3 is a measured trade-off: on five real face pairs with the dlib backend, 0 / 0.3 / 1.0
    gave mean identity 0.57 / 0.55 / 0.54 after fusion, and 0.3 keeps the outline plausible."""
    import cv2

    m, _ = cv2.estimateAffinePartial2D(source_lm.astype(np.float32), target_lm.astype(np.float32), method=cv2.LMEDS)
    if m is None:
        logger.warning("landmark fusion: no similarity transform between the faces' landmarks; "
                       "using the generated face's own landmarks (the face shape is not transferred)")
        return target_lm.astype(np.float32).copy()
    placed = source_lm.astype(np.float32) @ m[:, :2].T + m[:, 2]
    out = placed.copy()
    out[JAW] = placed[JAW] + outline_follow * (target_lm[JAW].astype(np.float32) - placed[JAW])
    return out


class LandmarkFusion:
    """Offline fusion along 68 dense landmarks (see module docstring)."""

    name = "landmark"
    required_backend = None  # any backend: 68 landmarks are found with dlib where the faces lack them

    def __init__(self, outline_follow: float = 0.3):
        if not 0.0 <= outline_follow <= 1.0:
            raise InputError(f"outline_follow must be in [0, 1], got {outline_follow}")
        self.outline_follow = outline_follow
        self._told = False

    def fuse(self, target: np.ndarray, target_face: Face, source: np.ndarray, source_face: Face,
             strength: float = 1.0) -> FusionResult:
        import cv2

        if not 0.0 <= strength <= 1.0:
            raise InputError(f"fusion strength must be in [0, 1], got {strength}")
        target = np.ascontiguousarray(target[..., :3], dtype=np.uint8)
        source = np.ascontiguousarray(source[..., :3], dtype=np.uint8)
        for face, what in ((target_face, "generated"), (source_face, "reference")):
            off = nose_offset(face.kps)
            if off > PROFILE_NOSE_OFFSET:
                raise InputError(
                    f"landmark fusion: the {what} face is turned sideways (nose {off:.2f} of the eye distance off "
                    f"centre, over {PROFILE_NOSE_OFFSET}): half its landmarks are guesses, so it is not warped. Use a "
                    "near-frontal pose, or fusion: swapper."
                )
        target_face = self._with_68_landmarks(target, target_face, "generated")
        source_face = self._with_68_landmarks(source, source_face, "reference")
        notes = []
        if target_face.size > SOFT_UPSCALE * source_face.size:
            notes.append(f"the reference face ({source_face.size:.0f} px) is upscaled x{target_face.size / source_face.size:.1f} "
                         "onto the generated face: the fused face may look soft (a sharper or larger reference "
                         "photo helps)")
        h, w = target.shape[:2]
        dst_pts = destination_shape(target_face.landmarks, source_face.landmarks, self.outline_follow)
        warped, covered = warp_triangles(source, source_face.landmarks.astype(np.float32), dst_pts, (h, w))
        # outside the warped face, the target itself: the Poisson blend's gradients at the mask's
        # edge then come from real image content, not from the black of an empty canvas
        warped[~covered] = target[~covered]
        hull_pts = np.concatenate([dst_pts[JAW], dst_pts[17:27]])
        alpha = _feathered_hull_mask(hull_pts, (h, w), target_face.size)
        if alpha.max() <= 0:
            raise InputError("landmark fusion: the face mask is empty (face too small or outside the image).")
        warped = match_colour(warped, target, alpha)
        binary = (alpha > 0).astype(np.uint8) * 255
        ys, xs = np.nonzero(binary)
        # seamlessClone's ROI must stay inside the image; the centre of the mask's bounding box.
        center = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
        try:
            cloned = cv2.seamlessClone(warped, target, binary, center, cv2.NORMAL_CLONE)
        except cv2.error as exc:  # mask touching the border: fall back to feathered alpha blend
            logger.warning("Poisson blend failed (%s); using the feathered alpha blend only", str(exc).splitlines()[0])
            cloned = warped
        a = (alpha * strength)[..., None]
        out = target.astype(np.float32) * (1 - a) + cloned.astype(np.float32) * a
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        out[alpha == 0] = target[alpha == 0]
        return FusionResult(out, (alpha * strength).astype(np.float32), self.name, tuple(notes))


    def _with_68_landmarks(self, image: np.ndarray, face: Face, what: str) -> Face:
        """``face`` if it has dlib's 68 landmarks; else the dlib face at the same place (insightface
        gives 106 points in another layout), found through the face-backend registry."""
        if face.landmarks is not None and len(face.landmarks) == 68:
            return face
        from facechain.face import get_analyzer

        if not self._told:
            logger.info("landmark fusion: %s faces have no 68-point landmarks; locating them with dlib", face.backend)
            self._told = True
        found = get_analyzer("dlib").detect(image, embed=False)
        near = [f for f in found if np.linalg.norm(f.center - face.center) < 0.5 * face.size]
        if not near:
            raise InputError(
                f"landmark fusion needs 68 landmarks on the {what} face, and dlib found no face at "
                f"{face.bbox.round().tolist()}. Use fusion: swapper with insightface, or fusion: off."
            )
        return min(near, key=lambda f: float(np.linalg.norm(f.center - face.center)))


# ---------------------------------------------------------------------------- insightface swapper


class SwapperFusion:
    """insightface inswapper_128 (ONNX). ``strength`` blends the swapped result with the original."""

    name = "swapper"
    required_backend = "insightface"  # the swap is conditioned on the reference's ArcFace embedding

    def __init__(self, model_path: str | os.PathLike | None = None):
        path = swapper_model_path(model_path)
        if not path.is_file():
            raise ModelNotFoundError(
                f"face swapper model {path} does not exist. Put inswapper_128.onnx there (swapper_model), or use "
                "fusion: landmark, which needs no model file."
            )
        require("insightface", "the insightface face swapper")
        import insightface

        self.model = insightface.model_zoo.get_model(str(path))

    def fuse(self, target: np.ndarray, target_face: Face, source: np.ndarray, source_face: Face,
             strength: float = 1.0) -> FusionResult:
        from insightface.app.common import Face as InsightFace

        if source_face.backend != "insightface" or source_face.embedding is None:
            raise InputError(
                "the insightface swapper needs the reference face from the insightface backend (ArcFace embedding); "
                f"got a {source_face.backend} face. Set face_backend: insightface, or use fusion: landmark."
            )
        src = InsightFace(bbox=source_face.bbox, kps=source_face.kps, det_score=source_face.score,
                          embedding=np.asarray(source_face.embedding, dtype=np.float32))
        dst = InsightFace(bbox=target_face.bbox, kps=target_face.kps, det_score=target_face.score)
        bgr = np.ascontiguousarray(target[..., ::-1])
        swapped = self.model.get(bgr, dst, src, paste_back=True)[..., ::-1]
        diff = np.abs(swapped.astype(np.int16) - target.astype(np.int16)).max(axis=2) > 0
        a = diff.astype(np.float32) * strength
        out = np.clip(np.rint(target * (1 - a[..., None]) + swapped * a[..., None]), 0, 255).astype(np.uint8)
        return FusionResult(out, a, self.name)


