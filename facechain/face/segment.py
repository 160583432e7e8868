"""Head masks (hair + face), used to turn a portrait's background white.

Two methods behind one function:

* ``parsing``: facexlib's BiSeNet face parsing (CelebAMask-HQ, 19 classes) when its weights file
  is on disk: ``parsing_bisenet.safetensors`` (the same state dict, converted), or facexlib's
  own ``parsing_bisenet.pth`` only with ``allow_pickle`` (then loaded tensors-only,
  ``torch.load(weights_only=True)``), like every other weight file.
* ``landmarks``: offline, no weights: OpenCV GrabCut seeded from the face landmarks (the face
  hull is sure foreground, an ellipse around the head probable foreground, the border and the
  region below the jaw background). Runs on a 256 px copy for speed.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# CelebAMask-HQ labels kept as "head": skin, brows, eyes, glasses, ears, earring, nose, mouth, lips, hair, hat.
HEAD_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18)
PARSING_WEIGHTS = "parsing_bisenet.pth"
PARSING_WEIGHTS_SAFE = "parsing_bisenet.safetensors"


def _weight_folders() -> list[Path]:
    folders = []
    if os.environ.get("FACEXLIB_WEIGHTS"):
        folders.append(Path(os.environ["FACEXLIB_WEIGHTS"]))
    try:
        import importlib.util

        spec = importlib.util.find_spec("facexlib")
        if spec and spec.submodule_search_locations:
            folders.append(Path(list(spec.submodule_search_locations)[0]) / "weights")
    except (ImportError, ValueError):
        pass
    return folders


def parsing_weights_path(allow_pickle: bool = False) -> Path | None:
    """facexlib's BiSeNet weights, if present (``$FACEXLIB_WEIGHTS`` folder or facexlib/weights):
    the .safetensors file, or the .pth pickle when ``allow_pickle``."""
    names = [PARSING_WEIGHTS_SAFE, PARSING_WEIGHTS] if allow_pickle else [PARSING_WEIGHTS_SAFE]
    return next((f / n for n in names for f in _weight_folders() if (f / n).is_file()), None)


def refused_pickle_weights() -> Path | None:
    """The .pth parsing weights when they are present but no .safetensors version is."""
    if parsing_weights_path(False) is not None:
        return None
    return next((f / PARSING_WEIGHTS for f in _weight_folders() if (f / PARSING_WEIGHTS).is_file()), None)


def load_parser(path: Path):
    """facexlib's BiSeNet with the weights at ``path``, loaded once per file version (path, size
    and modification time are the cache key, so other or replaced weights are loaded afresh)."""
    st = Path(path).stat()
    return _load_parser(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_parser(path: str, size: int, mtime_ns: int):
    import torch
    from facexlib.parsing.bisenet import BiSeNet

    model = BiSeNet(num_class=19)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:  # only reached with allow_pickle (parsing_weights_path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def parsing_mask(image: np.ndarray, weights: Path) -> np.ndarray:
    """Head mask (H, W) uint8 {0, 255} from BiSeNet parsing."""
    import torch

    model = load_parser(weights)
    h, w = image.shape[:2]
    x = cv2.resize(image, (512, 512), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x.transpose(2, 0, 1))[None])[0]
    labels = out.argmax(1)[0].numpy().astype(np.uint8)
    mask = np.isin(labels, HEAD_LABELS).astype(np.uint8) * 255
    return _clean(cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST))


def landmark_grabcut_mask(image: np.ndarray, landmarks: np.ndarray, kps: np.ndarray, work: int = 256, iters: int = 3) -> np.ndarray:
    """Head mask (H, W) uint8 {0, 255} by GrabCut seeded from landmarks. ``landmarks`` may be
    68/106 points or just the 5 keypoints."""
    h, w = image.shape[:2]
    s = work / max(h, w)
    small = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    pts = np.asarray(landmarks if landmarks is not None else kps, np.float32) * s
    k = np.asarray(kps, np.float32) * s
    eye_c = (k[0] + k[1]) / 2
    mouth_c = (k[3] + k[4]) / 2
    iod = float(np.linalg.norm(k[1] - k[0])) + 1e-6
    em = float(np.linalg.norm(mouth_c - eye_c)) + 1e-6
    up = (eye_c - mouth_c) / em  # unit vector from mouth to eyes ("up" in the face frame)

    gc = np.full((sh, sw), cv2.GC_BGD, np.uint8)
    # probable foreground: an ellipse covering face, hair and ears
    head_c = eye_c + up * 0.35 * em
    axes = (int(1.55 * iod), int(2.6 * em))
    angle = float(np.degrees(np.arctan2(up[1], up[0]))) + 90
    cv2.ellipse(gc, (int(head_c[0]), int(head_c[1])), axes, angle, 0, 360, int(cv2.GC_PR_FGD), -1)
    # sure foreground: the face hull shrunk towards its centre, plus the forehead above the eyes
    hull = cv2.convexHull(pts.astype(np.float32))
    c = pts.mean(0)
    inner = (hull.reshape(-1, 2) - c) * 0.85 + c
    cv2.fillConvexPoly(gc, inner.astype(np.int32), int(cv2.GC_FGD))
    forehead = np.array([k[0] + up * 0.2 * em, k[1] + up * 0.2 * em, k[1] + up * 1.0 * em, k[0] + up * 1.0 * em])
    cv2.fillConvexPoly(gc, forehead.astype(np.int32), int(cv2.GC_PR_FGD))
    # sure background: the border and everything well below the jaw
    b = max(2, sw // 64)
    gc[:b, :] = cv2.GC_BGD
    gc[:, :b] = cv2.GC_BGD
    gc[:, -b:] = cv2.GC_BGD
    chin = mouth_c - up * 0.9 * em
    yy, xx = np.mgrid[0:sh, 0:sw]
    below = ((xx - chin[0]) * up[0] + (yy - chin[1]) * up[1]) < -0.15 * em
    gc[below & (gc != cv2.GC_FGD)] = cv2.GC_BGD
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:  # degenerate seeds (e.g. no background pixels): keep the seed mask
        logger.debug("grabcut failed (%s); using the landmark seed mask", exc)
    small_mask = np.where((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    mask = cv2.resize(small_mask, (w, h), interpolation=cv2.INTER_LINEAR)
    return _clean((mask > 127).astype(np.uint8) * 255)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with holes filled."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), 8)
    if n <= 1:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (labels == largest).astype(np.uint8) * 255
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, contours, -1, 255, -1)
    return filled


def head_mask(image: np.ndarray, landmarks: np.ndarray | None, kps: np.ndarray, method: str = "auto",
              allow_pickle: bool = False) -> tuple[np.ndarray, str]:
    """Return (mask, method used). ``method``: auto (parsing if its weights exist, else landmarks), parsing, landmarks."""
    if method not in ("auto", "parsing", "landmarks"):
        from facechain.errors import InputError

        raise InputError(f"mask method must be one of ['auto', 'parsing', 'landmarks'], got {method!r}")
    weights = parsing_weights_path(allow_pickle) if method in ("auto", "parsing") else None
    if method == "parsing" and weights is None:
        from facechain.errors import ModelNotFoundError, UnsafeCheckpointError

        refused = refused_pickle_weights()
        if refused is not None:
            raise UnsafeCheckpointError(
                f"face parsing weights {refused} are a pickle file; facechain refuses pickles by default. Convert them to "
                f"{PARSING_WEIGHTS_SAFE} in the same folder, or pass --allow-pickle if you trust the file."
            )
        raise ModelNotFoundError(
            f"face parsing weights ({PARSING_WEIGHTS_SAFE} or {PARSING_WEIGHTS}) not found in $FACEXLIB_WEIGHTS or "
            "facexlib/weights. Download them from facexlib's releases, or use --mask landmarks (offline GrabCut)."
        )
    if weights is not None:
        return parsing_mask(image, weights), "parsing"
    return landmark_grabcut_mask(image, landmarks, kps), "landmarks"


def whiten_background(image: np.ndarray, mask: np.ndarray, feather: int = 3) -> np.ndarray:
    """Composite ``image`` over white using ``mask`` (feathered by ``feather`` px)."""
    alpha = mask.astype(np.float32) / 255.0
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    alpha = alpha[..., None]
    return (image.astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().clip(0, 255).astype(np.uint8)
