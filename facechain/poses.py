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

logger = logging.getLogger(__name__)

POSES_DIR = Path(__file__).resolve().parent.parent / "poses"

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


def named_poses(folder: Path = POSES_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []


def load_pose(ref: str | os.PathLike, size: tuple[int, int] | None, annotator: str = "lllyasviel/Annotators",
              allow_pickle: bool = False):
    """Return (pose map RGB uint8 at ``size`` (w, h), or as drawn when ``size`` is None; source photo RGB or None).

    ``ref``: a name from ``poses/``, a skeleton map, or a photo. Raises InputError when the map
    shows no person, ModelNotFoundError when a photo needs annotator weights that cannot be had."""
    from PIL import Image

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
        pose = np.asarray(Image.fromarray(pose).resize(size, Image.NEAREST))
    return pose, photo


def openpose_from_photo(image: np.ndarray, path: Path, annotator: str, allow_pickle: bool = False) -> np.ndarray:
    """Photo -> OpenPose map with controlnet_aux (body + hands, as FaceChain).

    controlnet_aux's annotator weights ship only as pickle files (body_pose_model.pth,
    hand_pose_model.pth), so a pose photo needs ``allow_pickle``; skeleton maps need nothing."""
    from facechain.models import load_pose_annotator

    detector = load_pose_annotator(annotator, allow_pickle=allow_pickle,
                                   needed_for=f"pose {path} is a photo; turning it into an OpenPose map",
                                   instead=f"use a ready skeleton map: {named_poses()}")
    # include_hand/include_face, not the deprecated hand_and_face, which overrides both when not None
    out = detector(image, include_body=True, include_hand=True, include_face=False, output_type="np")
    return np.asarray(out, dtype=np.uint8)
