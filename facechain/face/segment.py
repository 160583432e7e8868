"""Head masks (hair + face), used to turn a portrait's background white.

Two methods behind one function:

* ``parsing``: facexlib's BiSeNet face parsing (CelebAMask-HQ, 19 classes) when its weights file
  is on disk: ``parsing_bisenet.safetensors`` (the same state dict, converted), or facexlib's
  own ``parsing_bisenet.pth`` only with ``allow_pickle`` (then loaded tensors-only,
  ``torch.load(weights_only=True)``), like every other weight file.
* ``landmarks``: offline, no weights: a GrabCut-style segmentation seeded from the face landmarks
  that keeps face, ears and all the hair, long hair included (colour + texture models for skin,
  hair and background, graph cuts with a spatial prior in the face's frame; see
  :func:`landmark_grabcut_mask`), within 8 eye-to-mouth distances around the face. Runs on a
  256 px copy for speed.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import cv2
import numpy as np
from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError

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


# Offline head mask (``landmarks``), in units of the eye-to-mouth distance ("em") in the face's
# own frame (u to the image right of the face, v up). Values measured on hand-labelled photos
# (tests/fixtures/head_masks.json): the skull reaches about 2-2.4 em above the eyes and about
# 0.8 em beyond the jaw's sides; long hair falls beside the neck down to the shoulders.
_SKULL_CENTER_V = 0.45
_SKULL_HALF_HEIGHT = 1.95
_SKULL_SIDE_MARGIN = 0.8
_FALL_PRIOR = 1.0  # log-odds of "head" for hair falling beside the face, within 1 em of its side
_FALL_DECAY = 0.8  # ... dropping by this much per em further out
_NECK_SLOPE = 0.3  # the neck/chest region widens by this many em per em below the chin
_SMOOTHNESS = 25.0  # contrast-sensitive Potts weight between neighbouring pixels
_TEXTURE_WEIGHT = 15.0  # log gradient magnitude as a 4th feature: hair is textured, walls and skin are smooth


# The offline head mask looks at a square of _WINDOW_SIDE em around the face, centred
# _WINDOW_CENTER em below the eyes (towards the mouth); the rest of the image is background. Its
# colour models and priors were measured on crops of about this extent, and a wider view (more
# wall, clothes and cards in the background model) made it lose hair: with FaceChain's crop
# (about 9.2 em) the long-hair fixture kept 89% of its hair on the whole crop, 93% in this window
# (every fixture keeps >= 92% of its hair and removes >= 92% of its background for sides 7.5-8.3
# em and centres 0.8-1.2 em; from 8.6 em on, it drops towards the whole-crop figures).
_WINDOW_SIDE = 8.0
_WINDOW_CENTER = 1.0


def landmark_grabcut_mask(image: np.ndarray, landmarks: np.ndarray | None, kps: np.ndarray, work: int = 256,
                          iters: int = 3) -> np.ndarray:
    """Head mask (H, W) uint8 {0, 255}: face, ears and all the hair, long hair included, found offline
    from the landmarks (68/106 points, or just the 5 keypoints), within a square of _WINDOW_SIDE (8.0)
    eye-to-mouth distances around the face (the head and hair down to the shoulders; everything
    farther is background), so the result does not depend on how much background the crop holds.
    ``work``: the segmentation runs at ``work`` px per long side of the whole image."""
    h, w = image.shape[:2]
    k = np.asarray(kps, np.float64)
    eye_c, mouth_c = (k[0] + k[1]) / 2, (k[3] + k[4]) / 2
    em = float(np.linalg.norm(mouth_c - eye_c))
    c = eye_c + _WINDOW_CENTER * (mouth_c - eye_c)
    half = _WINDOW_SIDE / 2 * em
    x0, y0 = max(0, int(round(c[0] - half))), max(0, int(round(c[1] - half)))
    x1, y1 = min(w, int(round(c[0] + half))), min(h, int(round(c[1] + half)))
    if not np.isfinite(em) or x1 - x0 < 16 or y1 - y0 < 16:
        x0, y0, x1, y1 = 0, 0, w, h
    shift = np.array([x0, y0], np.float32)
    sub = np.ascontiguousarray(image[y0:y1, x0:x1])
    sub_work = max(32, int(round(work * max(y1 - y0, x1 - x0) / max(h, w))))
    m = _grabcut_head(sub, None if landmarks is None else np.asarray(landmarks, np.float32) - shift,
                      np.asarray(kps, np.float32) - shift, sub_work, iters)
    out = np.zeros((h, w), np.uint8)
    out[y0:y1, x0:x1] = m
    return out


def _grabcut_head(image: np.ndarray, landmarks: np.ndarray | None, kps: np.ndarray, work: int,
                  iters: int) -> np.ndarray:
    """The head mask of :func:`landmark_grabcut_mask` over the whole of ``image``.

    GrabCut-style: colour (+ texture) mixture models for skin, hair and background, re-fitted
    ``iters`` times, each followed by a graph cut (max-flow) that also weighs a spatial prior in
    the face's frame: the skull above and beside the face is likely head; hair falling beside
    the neck is plausible up to about 2 em beside the face, at any depth (long hair); far away is
    unlikely. Sure foreground: the face hull and a crown patch above the brows. Sure background:
    the border and white padding (above the chin), the neck/chest cone under the chin between
    the jaw lines, and regions far from the head. The hair model is sampled above the eye line
    outside the face (non-skin pixels), so clothes, shoulders and walls of similar colour below
    the face must look like that hair to be kept. Runs on a ``work`` px copy; largest component,
    holes filled."""
    h, w = image.shape[:2]
    s = work / max(h, w)
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    k = np.asarray(kps, np.float32) * s
    pts = np.asarray(landmarks if landmarks is not None else kps, np.float32) * s
    eye_c = (k[0] + k[1]) / 2
    mouth_c = (k[3] + k[4]) / 2
    em = float(np.linalg.norm(mouth_c - eye_c)) + 1e-6
    up = (eye_c - mouth_c) / em
    right = np.array([-up[1], up[0]], np.float32)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    u = ((xx - eye_c[0]) * right[0] + (yy - eye_c[1]) * right[1]) / em
    v = ((xx - eye_c[0]) * up[0] + (yy - eye_c[1]) * up[1]) / em
    p = np.stack([(pts - eye_c) @ right, (pts - eye_c) @ up], -1) / em
    if len(pts) >= 17:
        u_lo, u_hi, v_chin = float(p[:, 0].min()), float(p[:, 0].max()), float(p[:, 1].min())
    else:  # 5 keypoints: a typical face
        u_lo, u_hi, v_chin = float(p[:, 0].min()) - 0.6, float(p[:, 0].max()) + 0.6, -1.9
    u_chin = float(p[np.argmin(p[:, 1]), 0]) if len(pts) >= 17 else float(mouth_c @ right - eye_c @ right) / em
    u_c, half = (u_lo + u_hi) / 2, (u_hi - u_lo) / 2
    if len(pts) == 68:  # iBUG jaw points 5 and 11 bound the neck
        n_lo, n_hi = sorted((float(p[5, 0]), float(p[11, 0])))
    else:
        n_lo, n_hi = u_chin - 0.6 * half, u_chin + 0.6 * half

    hull = cv2.convexHull(pts).reshape(-1, 2)
    inner = _poly_mask((hull - pts.mean(0)) * 0.85 + pts.mean(0), (sh, sw))
    rad = max(1, int(0.4 * em))
    face = cv2.dilate(_poly_mask(hull, (sh, sw)).astype(np.uint8),
                      cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))) > 0
    crown = (v > 0.9) & (v < 1.5) & (np.abs(u - u_c) < 0.55 * half)
    # sure background: border and white padding (where the crop left the photo) with a ring
    # inside them, above the chin (long hair may reach the lower border); the neck/chest cone;
    # far from the head
    b = max(2, sw // 64)
    edge = np.zeros((sh, sw), bool)
    edge[:b], edge[-b:], edge[:, :b], edge[:, -b:] = True, True, True, True
    white = (small.min(-1) >= 250).astype(np.uint8)
    _, cc = cv2.connectedComponents(white, connectivity=8)
    pad = np.isin(cc, np.unique(cc[edge & (white > 0)])) & (white > 0)
    outside = edge | pad
    ring = (cv2.dilate(outside.astype(np.uint8), np.ones((2 * b + 1, 2 * b + 1), np.uint8)) > 0) & ~outside
    below = (v_chin - 0.1) - v
    cone = (below > 0) & (u > n_lo - _NECK_SLOPE * below) & (u < n_hi + _NECK_SLOPE * below)
    far = ((v > -0.3) & (np.abs(u - u_c) > 2.7)) | (v > 3.0)
    sure_bg = ((outside | ring) & (v > v_chin)) | pad | cone | far
    sure_fg = (inner | crown) & ~pad

    # spatial prior, log-odds of "head"
    r = np.sqrt(((u - u_c) / (half + _SKULL_SIDE_MARGIN)) ** 2 + ((v - _SKULL_CENTER_V) / _SKULL_HALF_HEIGHT) ** 2)
    skull = 3.0 * (1 - r)
    lateral = np.abs(u - u_c) - half  # em beyond the side of the face
    fall = np.where(v < _SKULL_CENTER_V,
                    _FALL_PRIOR - _FALL_DECAY * np.maximum(lateral - 1.0, 0) - 1.5 * np.maximum(-lateral, 0), -10.0)
    prior = np.clip(np.maximum(skull, fall), -4.0, 3.0)
    skin_ok = face | ((v > 0) & (r < 0.85))  # where skin counts as head: face, ears, forehead, scalp

    x = np.concatenate([small.reshape(-1, 3).astype(np.float64), _texture(image, (sw, sh)).reshape(-1, 1)], 1)
    skin = _fit_gmm(x[inner.ravel()], 3)
    nll_skin = _gmm_nll(skin, x).reshape(sh, sw)
    skinlike = nll_skin < np.percentile(nll_skin[inner], 60) if inner.any() else np.zeros((sh, sw), bool)
    fg = ((skull > 1.0) | sure_fg) & ~sure_bg
    for _ in range(max(1, iters)):
        hair_samples = fg & ~face & (v > 0) & ~skinlike
        hair = _fit_gmm(x[hair_samples.ravel()], 3) or skin
        bg = _fit_gmm(x[(~fg & ~pad & ((prior < -1.0) | sure_bg)).ravel()], 5)
        nll_fg = _gmm_nll(hair, x).reshape(sh, sw)
        nll_fg = np.where(skin_ok, np.minimum(nll_fg, nll_skin), nll_fg)
        llr = np.clip(_gmm_nll(bg, x).reshape(sh, sw) - nll_fg, -8.0, 8.0) + prior
        cost_fg, cost_bg = np.maximum(-llr, 0), np.maximum(llr, 0)
        cost_fg[sure_fg], cost_bg[sure_fg] = 0, _HARD
        cost_fg[sure_bg], cost_bg[sure_bg] = _HARD, 0
        new = _graph_cut(cost_fg, cost_bg, small, _SMOOTHNESS)
        if np.array_equal(new, fg):
            break
        fg = new
    mask = cv2.resize(fg.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR)
    return _clean((mask > 127).astype(np.uint8) * 255)


_HARD = 1e3  # unary cost that no smoothness saving can pay for


def _poly_mask(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(m, np.round(poly).astype(np.int32), 1)
    return m > 0


def _texture(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Log gradient magnitude, measured at twice the work size (resolution independent) and
    averaged down to ``size`` (w, h), scaled by ``_TEXTURE_WEIGHT``."""
    g = cv2.cvtColor(cv2.resize(image, (2 * size[0], 2 * size[1]), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = np.sqrt(cv2.Sobel(g, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1) ** 2) / 4
    mag = cv2.blur(cv2.resize(mag, size, interpolation=cv2.INTER_AREA), (3, 3))
    return np.log1p(mag) * _TEXTURE_WEIGHT


def _fit_gmm(x: np.ndarray, k: int) -> list | None:
    """Gaussian mixture (weight, mean, inverse covariance, log normaliser) from k-means clusters,
    as GrabCut fits its models; None with too few samples."""
    if len(x) < 20:
        return None
    k = max(1, min(k, len(x) // 10))
    cv2.setRNGSeed(0)
    crit = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 10, 0.5)
    _, labels, _ = cv2.kmeans(x.astype(np.float32), k, None, crit, 1, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel()
    comps = []
    for i in range(k):
        xi = x[labels == i]
        if len(xi) < 2:
            continue
        cov = np.cov(xi.T) + np.eye(x.shape[1]) * 6.5  # floor: a colour step of ~2.5 levels
        logdet = np.linalg.slogdet(cov)[1]
        comps.append((len(xi) / len(x), xi.mean(0), np.linalg.inv(cov), -0.5 * logdet))
    return comps or None


def _gmm_nll(comps: list | None, x: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each row of x (up to a shared constant); large without a model."""
    if comps is None:
        return np.full(len(x), 50.0)
    acc = np.zeros(len(x))
    for weight, mean, inv, lognorm in comps:
        d = x - mean
        acc += weight * np.exp(lognorm - 0.5 * np.einsum("ni,ij,nj->n", d, inv, d))
    return -np.log(acc + 1e-300)


def _graph_cut(cost_fg: np.ndarray, cost_bg: np.ndarray, image: np.ndarray, gamma: float) -> np.ndarray:
    """Foreground (bool) minimising the unary costs plus GrabCut's contrast-sensitive Potts term on
    8-neighbours (gamma / distance * exp(-beta * colour difference^2)), by max-flow/min-cut.
    Pixels with a hard cost (>= _HARD) keep their label and only the others enter the graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    hh, ww = cost_fg.shape
    n = hh * ww
    cost_fg, cost_bg = cost_fg.ravel().astype(np.float64), cost_bg.ravel().astype(np.float64)
    fixed_fg, fixed_bg = cost_bg >= _HARD, (cost_fg >= _HARD) & (cost_bg < _HARD)
    free = ~(fixed_fg | fixed_bg)
    node = np.cumsum(free) - 1  # graph node of each free pixel
    m = int(free.sum())
    idx = np.arange(n).reshape(hh, ww)
    col = image.reshape(n, -1).astype(np.float64)
    pairs = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = idx[: hh - dy, max(0, -dx): ww - max(0, dx)].ravel()
        b = idx[dy:, max(0, dx): ww + min(0, dx)].ravel()
        pairs.append((a, b, np.hypot(dy, dx), ((col[a] - col[b]) ** 2).sum(1)))
    beta = 1.0 / (2 * np.mean(np.concatenate([p[3] for p in pairs])) + 1e-9)
    rows, cols, caps = [], [], []
    for a, b, dist, d2 in pairs:
        wgt = gamma / dist * np.exp(-beta * d2)
        for i, j in ((a, b), (b, a)):
            # a free pixel next to a fixed one: disagreeing with it is a unary cost
            np.add.at(cost_bg, i[free[i] & fixed_fg[j]], wgt[free[i] & fixed_fg[j]])
            np.add.at(cost_fg, i[free[i] & fixed_bg[j]], wgt[free[i] & fixed_bg[j]])
        both = free[a] & free[b]
        rows += [node[a[both]], node[b[both]]]
        cols += [node[b[both]], node[a[both]]]
        caps += [wgt[both], wgt[both]]
    fg = fixed_fg.copy()
    if m:
        src, snk = m, m + 1
        ids = np.arange(m)
        rows += [np.full(m, src), ids]
        cols += [ids, np.full(m, snk)]
        caps += [cost_bg[free], cost_fg[free]]  # source side = foreground: cutting src->i labels i background
        scale = 16.0  # integer capacities; the total flow stays far below 2**31
        cap = np.round(np.concatenate(caps) * scale).astype(np.int32)
        graph = csr_matrix((cap, (np.concatenate(rows), np.concatenate(cols))), shape=(m + 2, m + 2))
        residual = graph - maximum_flow(graph, src, snk, method="dinic").flow
        residual.data[residual.data < 0] = 0
        residual.eliminate_zeros()
        reached = breadth_first_order(residual, src, directed=True, return_predecessors=False)
        side = np.zeros(m + 2, bool)
        side[reached] = True
        fg[free] = side[:m]
    return fg.reshape(hh, ww)


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
        raise InputError(f"mask method must be one of ['auto', 'parsing', 'landmarks'], got {method!r}")
    weights = parsing_weights_path(allow_pickle) if method in ("auto", "parsing") else None
    if method == "parsing" and weights is None:
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
