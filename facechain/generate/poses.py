"""OpenPose skeleton maps: draw them, recognise them, load a pose for the ControlNet.

Maps follow the OpenPose COCO-18 body convention that the OpenPose ControlNets were trained on
(controlnet_aux ``draw_bodypose``): 18 keypoints, 17 limbs drawn as filled ellipses of
half-width 4 px at 60% opacity on black, each limb and keypoint in its fixed colour, keypoints
as 4 px discs. ``poses/*.png`` are drawn by ``poses/draw_poses.py`` from keypoints written
there, so no annotator weights are needed. A photo is turned into a map with controlnet_aux's
OpenposeDetector when its weights can be had.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from facechain.errors import InputError
from facechain.images import read_image
from facechain.models import load_pose_annotator

logger = logging.getLogger(__name__)

POSES_DIR = Path(__file__).resolve().parents[2] / "poses"

# COCO-18 keypoint order used by OpenPose.
KEYPOINTS = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip", "r_knee",
    "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
# Limbs as keypoint index pairs (OpenPose body_25-to-COCO limbSeq, 0-based); the first 17 are drawn.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# OpenPose's 18 colours (RGB), used for limb i and keypoint i.
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
STICK_WIDTH = 4  # half-width of a limb ellipse in px (controlnet_aux draw_bodypose)
LIMB_ALPHA = 0.6  # limbs are blended at 60% over the canvas (draw_bodypose)

# A pixel counts as "skeleton" when it is clearly coloured; a map is mostly black.
_MAP_BLACK_FRACTION = 0.80
_MIN_SKELETON_FRACTION = 0.002


def draw_openpose(keypoints: dict[str, tuple[float, float]], size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """Draw an OpenPose COCO-18 map. ``keypoints``: name -> (x, y) in [0, 1] image fractions
    (missing names are not drawn). ``size`` is (width, height). Returns RGB uint8 (H, W, 3)."""
    import cv2

    unknown = sorted(set(keypoints) - set(KEYPOINTS))
    if unknown:
        raise InputError(f"unknown keypoint name(s) {unknown}; valid: {list(KEYPOINTS)}")
    w, h = size
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    pts = {KEYPOINTS.index(k): (float(x) * w, float(y) * h) for k, (x, y) in keypoints.items()}
    for i, (a, b) in enumerate(LIMBS):
        if a not in pts or b not in pts:
            continue
        (xa, ya), (xb, yb) = pts[a], pts[b]
        cx, cy = (xa + xb) / 2, (ya + yb) / 2
        length = float(np.hypot(xa - xb, ya - yb)) / 2
        angle = float(np.degrees(np.arctan2(ya - yb, xa - xb)))
        poly = cv2.ellipse2Poly((int(cx), int(cy)), (int(length), STICK_WIDTH), int(angle), 0, 360, 1)
        layer = canvas.copy()
        cv2.fillConvexPoly(layer, poly, COLORS[i])
        canvas = cv2.addWeighted(canvas, 1 - LIMB_ALPHA, layer, LIMB_ALPHA, 0)
    for i, (x, y) in sorted(pts.items()):
        cv2.circle(canvas, (int(x), int(y)), 4, COLORS[i], thickness=-1)
    return canvas


def skeleton_fraction(image: np.ndarray) -> float:
    """Fraction of pixels that are saturated, bright colours (skeleton strokes)."""
    img = image.astype(np.int16)
    sat = img.max(axis=2) - img.min(axis=2)
    return float(((img.max(axis=2) > 100) & (sat > 80)).mean())


def is_pose_map(image: np.ndarray) -> bool:
    """A skeleton map is mostly black (>= 80% of pixels darker than 20)."""
    return float((image.max(axis=2) < 20).mean()) >= _MAP_BLACK_FRACTION


def letterbox(image: np.ndarray, size: tuple[int, int], resample: str = "nearest") -> np.ndarray:
    """``image`` scaled to fit inside ``size`` (w, h) with its aspect kept, centred, the rest black.

    A pose map (or depth map) whose aspect differs from the output would otherwise be stretched,
    and the ControlNet would draw a stretched body. Black is the OpenPose map's background (no
    skeleton) and the far plane of a depth map. ``resample``: nearest (skeleton maps: keep the exact
    limb colours) or bicubic (depth maps, photos)."""
    from PIL import Image

    w, h = size
    ih, iw = image.shape[:2]
    if (iw, ih) == (w, h):
        return np.ascontiguousarray(image)
    scale = min(w / iw, h / ih)
    nw, nh = max(1, min(w, round(iw * scale))), max(1, min(h, round(ih * scale)))
    method = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC}[resample]
    scaled = np.asarray(Image.fromarray(image).resize((nw, nh), method))
    out = np.zeros((h, w) + image.shape[2:], dtype=image.dtype)
    x0, y0 = (w - nw) // 2, (h - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = scaled
    return out


def face_keypoint_map(face, x0: int, y0: int, side: int) -> np.ndarray:
    """The face's landmarks (or its 5 keypoints) in the crop, drawn as OpenPose face keypoints: white dots
    on black, as controlnet_aux draws a face (RGB uint8 (side, side, 3))."""
    import cv2

    out = np.zeros((side, side, 3), np.uint8)
    pts = face.landmarks if face.landmarks is not None else face.kps
    r = max(1, round(side / 160))
    for x, y in np.asarray(pts, np.float64)[:, :2] - (x0, y0):
        cv2.circle(out, (int(round(x)), int(round(y))), r, (255, 255, 255), -1)
    return out


def mask_heads_in_depth(depth: np.ndarray, faces: list) -> np.ndarray:
    """``depth`` (H, W[, C]) with each face's head set to 0 (the far plane), as FaceChain masks the head
    in its depth map: the depth ControlNet then keeps the pose photo's body and room, and the head's
    shape comes from the face LoRA instead of the stranger in the pose photo. The head is an ellipse
    around the face box, widened for the ears and hair and raised over the forehead (face boxes end at
    the brows). ``faces``: faces detected in the photo the depth map was estimated from (same size)."""
    import cv2

    out = np.array(depth, copy=True)
    mask = np.zeros(depth.shape[:2], np.uint8)
    for f in faces:
        w, h = f.width, f.height
        cx, cy = float(f.center[0]), float(f.center[1]) - 0.25 * h
        cv2.ellipse(mask, (round(cx), round(cy)), (round(0.85 * w), round(1.05 * h)), 0, 0, 360, 1, -1)
    out[mask.astype(bool)] = 0
    return out


def named_poses(folder: Path = POSES_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []


def load_pose(ref: str | os.PathLike, size: tuple[int, int] | None, annotator: str = "lllyasviel/Annotators",
              allow_pickle: bool = False):
    """Return (pose map RGB uint8 at ``size`` (w, h), or as drawn when ``size`` is None; source photo RGB or None).
    A map of another aspect than ``size`` is letterboxed (scaled to fit, padded with black), never stretched.

    ``ref``: a name from ``poses/``, a skeleton map, or a photo. Raises InputError when the map
    shows no person, ModelNotFoundError when a photo needs annotator weights that cannot be had."""
    ref = str(ref)
    path = Path(ref).expanduser()
    if not path.is_file():
        if Path(ref).name != ref or ref in (".", ".."):
            raise InputError(
                f"pose '{ref}' is not an image file, and a pose name may not contain folders or '..'. Shipped poses: "
                f"{named_poses()}; or pass the path of an existing skeleton map or photo."
            )
        named = POSES_DIR / f"{ref}.png"
        if named.is_file():
            path = named
        else:
            raise InputError(
                f"pose '{ref}' is neither an image file nor a pose name. Shipped poses: {named_poses()}; "
                "or pass the path of an OpenPose skeleton map or a photo."
            )
    image = read_image(path, "pose image")
    photo = None
    if is_pose_map(image):
        pose = image
    else:
        photo = image
        pose = openpose_from_photo(image, path, annotator, allow_pickle)
    if skeleton_fraction(pose) < _MIN_SKELETON_FRACTION:
        raise InputError(
            f"pose image {path} shows no person: no OpenPose skeleton {'was detected in the photo' if photo is not None else 'is drawn on the map'}. "
            f"Use a shipped pose ({named_poses()}) or a photo with one clearly visible person."
        )
    if size is not None:
        pose = letterbox(pose, size, "nearest")
    return pose, photo


def openpose_from_photo(image: np.ndarray, path: Path, annotator: str, allow_pickle: bool = False, *,
                        needed_for: str | None = None, instead: str | None = None,
                        flag: str = "--pose-annotator") -> np.ndarray:
    """Photo -> OpenPose map with controlnet_aux (body + hands, as FaceChain).

    controlnet_aux's annotator weights ship only as pickle files (body_pose_model.pth,
    hand_pose_model.pth), so a pose photo needs ``allow_pickle``; skeleton maps need nothing."""
    detector = load_pose_annotator(annotator, allow_pickle=allow_pickle,
                                   needed_for=needed_for or f"pose {path} is a photo; turning it into an OpenPose map",
                                   instead=instead or f"use a ready skeleton map: {named_poses()}", flag=flag)
    # include_hand/include_face, not the deprecated hand_and_face, which overrides both when not None
    out = detector(image, include_body=True, include_hand=True, include_face=False, output_type="np")
    return np.asarray(out, dtype=np.uint8)
