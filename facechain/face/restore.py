"""Optional face restoration after fusion: GFPGAN, RestoreFormer or any image-to-image model spandrel reads.

A fused face can be soft (the swapper outputs 128 px faces; landmark fusion warps a reference photo); with a
restoration model's weights, each fused face is restored as face restorers expect and pasted back feathered.

Interface (the whole of it; everything else here is private)::

    from facechain.face.restore import RestoreConfig, load_restorer

    restorer = load_restorer(RestoreConfig(model=Path("GFPGANv1.4.safetensors")))  # loads once
    out, infos = restorer(image, faces)          # image: (H, W, 3) RGB uint8; faces: list[Face]
    out, infos = restorer(image, faces, strength=0.8)   # per-call override of cfg.strength

* ``RestoreConfig(model, strength=0.5, device="auto", dtype="auto", allow_pickle=False, input_size=512)``
  (frozen dataclass; bad values raise :class:`~facechain.errors.InputError` when it is built).
* ``load_restorer(cfg) -> FaceRestorer``; ``FaceRestorer(cfg)`` does the same.
* ``FaceRestorer.__call__(image, faces, *, strength=None) -> tuple[np.ndarray, list[FaceRestoreInfo]]``:
  a new array (the input is never written to) and one :class:`FaceRestoreInfo` dict per face, in
  the order given: ``{"index", "restored", "reason", "region", "crop_scale"}``. A face whose
  keypoints are missing, not finite or collapsed (both eyes at one point), or which lies wholly
  outside the image, is skipped with ``restored=False`` and a ``reason``; it never raises.
* ``FaceRestorer.restore_aligned(crop) -> np.ndarray``: the model alone on an aligned ``input_size`` crop (RGB uint8).
* ``FaceRestorer.blend_weights(image_shape, face, strength=None)``: the per-pixel blend weight a
  face gets (``(H, W)`` float32, 0 where the image is left bit-identical), and its region.
* Attributes: ``descriptor`` (spandrel's), ``architecture`` (``"GFPGAN"``...), ``device``, ``dtype``,
  ``input_size``, ``strength``.

Per face: the five keypoints (:attr:`Face.kps`, insightface order) are mapped onto the FFHQ
five-point template that GFPGAN/RestoreFormer were trained on (:data:`FFHQ_TEMPLATE_512`, scaled
to ``input_size``) by a similarity transform (``cv2.estimateAffinePartial2D``, LMEDS); the image
is warped into that square crop (reflected where the crop leaves the image, so a face cut by the
border works); the model runs on it (RGB float in [0, 1], NCHW, on ``device``/``dtype``, under
``torch.inference_mode``); an upscaling model's output (``descriptor.scale > 1``) is resized back
to the crop with INTER_AREA; the result is warped back with the inverse transform and blended in
with weight ``strength * mask``, the mask being a square inset by 1/16 of the crop side and
Gaussian-blurred, shifted so it is exactly 0 on the crop's outer ring (no seam: the weight rises
smoothly from 0). Pixels where the weight is 0 are copied from the input bit for bit. Faces are
cropped from the input and pasted one after the other. ``strength`` 0 returns a copy of the input
without running the model; 1 replaces the face square's centre entirely; GFPGAN users commonly
blend about 0.5, the default.

Weights and safety. ``.safetensors`` files always load. Pickle files (``.pth``, ``.pt``,
``.ckpt``, ``.bin``, ``.pkl``) load only with ``allow_pickle=True`` (the project's
:func:`facechain.models.check_checkpoint_file` refuses them otherwise, with its usual message), and
then with ``torch.load(path, map_location="cpu", weights_only=True)``: PyTorch's allow-list
unpickler (tensors and plain containers only; anything else, TorchScript too, is refused with
:class:`~facechain.errors.UnsafeCheckpointError`). Spandrel's own file loader is not used: in spandrel
0.4.2 its restricted unpickler, given to torch as ``pickle_module``, turns torch's weights-only
unpickler off; it tries TorchScript first for ``.pt`` and does not read ``.bin``. The file is unwrapped
with ``spandrel.canonicalize_state_dict`` (``params_ema``, ``state_dict``, ``module.`` ...), and only the
tensors go to spandrel's architecture registry (``MAIN_REGISTRY``), which detects the architecture from the keys and shapes. A missing file raises
:class:`~facechain.errors.ModelNotFoundError`; an unreadable file, an unknown architecture, weights that
do not fit it, or a model that is not RGB image-to-image raise :class:`~facechain.errors.InputError`,
naming the file and the fix.

GFPGAN. spandrel 0.4.2's GFPGAN descriptor passes its [0, 1] input straight to the network and
clamps the output to [0, 1], while GFPGAN's network is trained on [-1, 1] (its own inference code
normalises with mean 0.5 / std 0.5 and reads the output as [-1, 1]). For the architectures in
:data:`MINUS_ONE_TO_ONE` this module calls the network itself with ``2x - 1`` and maps its output
back with ``(y + 1) / 2``. RestoreFormer's descriptor normalises itself and is called as is.
GFPGAN draws StyleGAN noise on every call (as GFPGAN's own inference does); the model runs under a
fixed seed in a forked RNG, so restoring the same image twice gives the same result and the
caller's RNG state (CPU; CUDA on the model's GPU) is left as it was.
Only models with random weights were run while this was written (see docs/restore.md).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypedDict

import numpy as np

from facechain.errors import InputError, ModelNotFoundError
from facechain.face.types import Face
from facechain.errors import require
from facechain.models import check_checkpoint_file, read_weights_file, resolve_device

logger = logging.getLogger(__name__)

# FFHQ five-point template in a 512 crop (insightface order: left eye, right eye, nose tip, left
# mouth corner, right mouth corner): where GFPGAN's and RestoreFormer's training faces have them.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.19366], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]], np.float64)
TEMPLATE_SIZE = 512

# Architectures whose spandrel descriptor feeds a [-1, 1]-trained network with [0, 1] (see module doc).
MINUS_ONE_TO_ONE = frozenset({"GFPGAN"})
# Keyword arguments for the direct network call of those architectures (GFPGAN's inference skips its side outputs).
NET_KWARGS = {"GFPGAN": {"return_rgb": False}}
# Architectures whose network only takes one input size (GFPGAN's encoder ends in a fixed Linear).
FIXED_INPUT_SIZE = {"GFPGAN": 512}

FEATHER_INSET = 1 / 16  # the mask's square is inset by this fraction of the crop side, then blurred
MIN_EYE_DISTANCE = 1.0  # px; closer eyes count as collapsed keypoints
NOISE_SEED = 0  # seed for models that draw noise (GFPGAN), so a call is reproducible

WHAT = "face restoration model"


@dataclass(frozen=True)
class RestoreConfig:
    """What :func:`load_restorer` loads and how faces are restored.

    model: weights file (``.safetensors``; pickles only with ``allow_pickle``).
    strength: blend weight of the restored face, 0 (input unchanged) to 1 (fully restored).
    device: ``"auto"`` (CUDA, else MPS, else CPU; :func:`facechain.models.resolve_device`) or a torch device.
    dtype: ``"auto"`` (float16 on a GPU when the architecture supports it, else float32) or a torch dtype name.
    allow_pickle: let pickle files load (tensors only, ``torch.load(weights_only=True)``).
    input_size: side of the aligned square crop the model sees (512 for GFPGAN/RestoreFormer).
    """

    model: Path
    strength: float = 0.5
    device: str = "auto"
    dtype: str = "auto"
    allow_pickle: bool = False
    input_size: int = 512

    def __post_init__(self):
        object.__setattr__(self, "model", Path(self.model).expanduser())
        _check_strength(self.strength)
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, (int, np.integer)) \
                or not 16 <= int(self.input_size) <= 4096:
            raise InputError(f"face restoration input_size must be an integer in [16, 4096], got {self.input_size!r}. "
                             "Use 512 for GFPGAN and RestoreFormer.")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise InputError(f"face restoration dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}.")


class FaceRestoreInfo(TypedDict):
    """What happened to one face. ``region``: (x0, y0, x1, y1) of the pixels that may have changed
    (the weight is 0 outside it); ``crop_scale``: crop pixels per image pixel."""

    index: int
    restored: bool
    reason: str | None
    region: tuple[int, int, int, int] | None
    crop_scale: float | None


def _check_strength(strength) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        s = float("nan")
    if not 0.0 <= s <= 1.0:
        raise InputError(f"face restoration strength must be in [0, 1] (0 = unchanged, 1 = fully restored), "
                         f"got {strength!r}.")
    return s


# --------------------------------------------------------------------------- geometry


def keypoints_problem(kps) -> str | None:
    """Why five keypoints cannot align a face (None when they can)."""
    if kps is None:
        return "the face has no keypoints"
    k = np.asarray(kps, np.float64)
    if k.shape != (5, 2):
        return f"the face's keypoints have shape {k.shape}, expected (5, 2)"
    if not np.isfinite(k).all():
        return "the face's keypoints are not finite (NaN or infinity)"
    if np.linalg.norm(k[1] - k[0]) < MIN_EYE_DISTANCE:
        return "the face's eye keypoints are at the same point (degenerate keypoints)"
    return None


def alignment_matrix(kps, input_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """(2, 3) similarity transform, image pixels -> ``input_size`` crop, that puts the five
    keypoints on the FFHQ template. Raises InputError for keypoints that cannot align a face."""
    import cv2

    problem = keypoints_problem(kps)
    if problem:
        raise InputError(f"face restoration: {problem}.")
    dst = FFHQ_TEMPLATE_512 * (input_size / TEMPLATE_SIZE)
    m, _ = cv2.estimateAffinePartial2D(np.asarray(kps, np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    if m is None or not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-12:
        raise InputError("face restoration: no similarity transform maps the face's keypoints onto the template.")
    return m.astype(np.float64)


def paste_mask(size: int) -> np.ndarray:
    """(size, size) float32 blend mask in crop space: a square inset by ``FEATHER_INSET`` of the side,
    Gaussian-blurred, shifted and rescaled so its outer ring is exactly 0 and its centre 1."""
    import cv2

    inset = max(1, round(size * FEATHER_INSET))
    mask = np.zeros((size, size), np.float32)
    mask[inset:size - inset, inset:size - inset] = 1.0
    mask = cv2.GaussianBlur(mask, (2 * inset + 1, 2 * inset + 1), inset / 2, borderType=cv2.BORDER_CONSTANT)
    ring = max(mask[0].max(), mask[-1].max(), mask[:, 0].max(), mask[:, -1].max())
    mask = np.clip((mask - ring) / max(float(mask.max()) - ring, 1e-6), 0.0, 1.0)
    return mask.astype(np.float32)


def _scale_of(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def _warp(src: np.ndarray, m: np.ndarray, dsize: tuple[int, int], border: int, value=0.0) -> np.ndarray:
    """warpAffine, pre-shrinking ``src`` with INTER_AREA when the warp shrinks by more than 2x
    (bilinear sampling alone would alias)."""
    import cv2

    m = m.astype(np.float64).copy()
    scale = _scale_of(m)
    if scale < 0.5:
        f = 2 * scale
        h, w = src.shape[:2]
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        src = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA)
        m[:, 0] *= w / nw
        m[:, 1] *= h / nh
    return cv2.warpAffine(src, m, dsize, flags=cv2.INTER_LINEAR, borderMode=border, borderValue=value)


def _region(inv: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) in the image of the crop square mapped back, clipped; None if empty."""
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inv[:, :2].T + inv[:, 2]
    h, w = shape
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


# --------------------------------------------------------------------------- loading


def _read_state_dict(path: Path, allow_pickle: bool) -> dict:
    """The file's tensors (safetensors, or tensors-only torch.load), unwrapped by spandrel's canonicalizer."""
    import torch

    fix = ("Pass a restoration model's weights file (e.g. GFPGANv1.4.pth with allow_pickle, or a .safetensors "
           "file); see docs/restore.md.")
    check_checkpoint_file(path, allow_pickle, WHAT)
    sd = read_weights_file(path, WHAT, fix)
    if not isinstance(sd, dict):
        raise InputError(f"{WHAT} {path} holds a {type(sd).__name__}, not a state dict of weights. " + fix)
    from spandrel import canonicalize_state_dict

    sd = canonicalize_state_dict(sd)
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"{WHAT} {path} holds no weight tensors. " + fix)
    return tensors


def _load_descriptor(path: Path, allow_pickle: bool):
    """spandrel ImageModelDescriptor for the file, or InputError/ModelNotFoundError saying why not."""
    spandrel = require("spandrel", "face restoration (GFPGAN, RestoreFormer, ...)")

    if not path.exists():
        raise ModelNotFoundError(
            f"{WHAT} {path} does not exist. Download the weights (e.g. GFPGANv1.4.pth from "
            "https://github.com/TencentARC/GFPGAN/releases) and pass the file's path; see docs/restore.md.")
    if not path.is_file():
        raise InputError(f"{WHAT} {path} is not a file. Pass the weights file itself (e.g. GFPGANv1.4.pth).")
    sd = _read_state_dict(path, allow_pickle)
    support = next((a for a in spandrel.MAIN_REGISTRY.architectures("detection") if a.detect(sd)), None)
    if support is None:
        raise InputError(
            f"{WHAT} {path} is not a model architecture spandrel {spandrel.__version__} knows (GFPGAN, RestoreFormer, "
            "ESRGAN, Compact, SwinIR, ... ; its keys start with "
            f"{', '.join(sorted(sd)[:3])}). Pass a supported face restoration or image-to-image model's weights.")
    arch = support.architecture
    try:
        desc = arch.load(sd)
    except Exception as exc:
        raise InputError(
            f"{WHAT} {path} looks like spandrel's {arch.name} architecture but its weights do not fit it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). The file is damaged or an "
            "unsupported variant; pass another model file.") from exc
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise InputError(
            f"{WHAT} {path} is a {desc.purpose} model ({arch.name}), not an image-to-image model; face restoration "
            "needs one that takes an image and returns an image (GFPGAN, RestoreFormer, an upscaler...).")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise InputError(
            f"{WHAT} {path} ({arch.name}) takes {desc.input_channels} and returns {desc.output_channels} channels; "
            "face restoration needs an RGB model (3 in, 3 out).")
    return desc


def _pick_dtype(name: str, device, desc):
    import torch

    if name == "auto":
        gpu = torch.device(device).type in ("cuda", "mps")
        return torch.float16 if gpu and desc.supports_half else torch.float32
    dtype = getattr(torch, name)
    if dtype == torch.float16 and not desc.supports_half:
        raise InputError(f"{WHAT} ({desc.architecture.name}) does not run in float16; use dtype 'auto' or 'float32'.")
    if dtype == torch.bfloat16 and not desc.supports_bfloat16:
        raise InputError(f"{WHAT} ({desc.architecture.name}) does not run in bfloat16; use dtype 'auto' or 'float32'.")
    return dtype


# --------------------------------------------------------------------------- restorer


class FaceRestorer:
    """A loaded restoration model; call it on an image and its faces (see module docstring)."""

    def __init__(self, cfg: RestoreConfig):
        import torch

        self.cfg = cfg
        desc = _load_descriptor(cfg.model, cfg.allow_pickle)
        self.architecture: str = str(desc.architecture.id)
        self.input_size = int(cfg.input_size)
        fixed = FIXED_INPUT_SIZE.get(self.architecture)
        if fixed and self.input_size != fixed:
            raise InputError(f"{WHAT} {cfg.model} ({self.architecture}) only takes {fixed} px faces; set input_size to "
                             f"{fixed} (got {self.input_size}).")
        req = desc.size_requirements
        if not req.check(self.input_size, self.input_size):
            raise InputError(
                f"{WHAT} {cfg.model} ({self.architecture}) needs inputs of at least {req.minimum} px and a multiple of "
                f"{req.multiple_of}; input_size {self.input_size} is not. Set input_size to 512.")
        try:
            self.device = resolve_device(cfg.device)
        except RuntimeError as exc:
            raise InputError(f"face restoration device {cfg.device!r} is not a torch device ({exc}). "
                             "Use auto, cpu, cuda or cuda:N.") from exc
        self.dtype = _pick_dtype(cfg.dtype, self.device, desc)
        try:
            desc.to(self.device, self.dtype)
        except (RuntimeError, AssertionError) as exc:
            raise InputError(f"face restoration device {cfg.device!r} ({self.device}) cannot be used "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}). "
                             "Use device 'auto' or 'cpu'.") from exc
        desc.eval()
        self.descriptor = desc
        self.strength = cfg.strength
        self._mask = paste_mask(self.input_size)
        self._torch = torch
        logger.info("%s %s: spandrel %s (%s, scale %d) on %s, %s", WHAT, cfg.model, self.architecture,
                    desc.purpose, desc.scale, self.device, str(self.dtype).replace("torch.", ""))

    # -- the model alone

    @contextmanager
    def _fixed_noise(self):
        """Seed the RNGs the model draws noise from (GFPGAN's StyleGAN noise) and restore the caller's
        state afterwards: the CPU generator and, on CUDA, the model's GPU."""
        torch = self._torch
        if self.device.type == "cuda":
            idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
            with torch.random.fork_rng(devices=[idx], device_type="cuda"):
                torch.random.default_generator.manual_seed(NOISE_SEED)
                with torch.cuda.device(idx):
                    torch.cuda.manual_seed(NOISE_SEED)
                yield
        else:
            with torch.random.fork_rng(devices=[]):
                if self.device.type == "cpu":
                    torch.random.default_generator.manual_seed(NOISE_SEED)
                else:  # MPS and others: their generator is reseeded, not restored afterwards
                    torch.manual_seed(NOISE_SEED)
                yield

    def _run(self, crop: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 RGB crop -> (S, S, 3) float32 in [0, 1]."""
        import cv2

        torch = self._torch
        s = self.input_size
        x = torch.from_numpy(np.ascontiguousarray(crop, np.float32) / 255.0).permute(2, 0, 1)[None]
        x = x.to(self.device, self.dtype)
        with self._fixed_noise(), torch.inference_mode():
            if self.architecture in MINUS_ONE_TO_ONE:
                net = self.descriptor.model
                net.eval()
                y = net(x * 2 - 1, **NET_KWARGS.get(self.architecture, {}))
                y = y[0] if isinstance(y, (tuple, list)) else y
                y = ((y + 1) / 2).clamp_(0, 1)
            else:
                y = self.descriptor(x)
        out = y[0].float().permute(1, 2, 0).cpu().numpy()
        if out.shape[:2] != (s, s):  # an upscaler (descriptor.scale > 1): back to the crop's size
            out = cv2.resize(out, (s, s), interpolation=cv2.INTER_AREA if out.shape[0] > s else cv2.INTER_LINEAR)
        return np.clip(out, 0.0, 1.0)

    def restore_aligned(self, crop: np.ndarray) -> np.ndarray:
        """Run the model on an already aligned (input_size, input_size, 3) RGB uint8 crop; same size back."""
        crop = np.asarray(crop)
        if crop.shape != (self.input_size, self.input_size, 3) or crop.dtype != np.uint8:
            raise InputError(f"restore_aligned takes a ({self.input_size}, {self.input_size}, 3) uint8 RGB crop, "
                             f"got {crop.shape} {crop.dtype}.")
        return np.clip(np.rint(self._run(crop) * 255.0), 0, 255).astype(np.uint8)

    # -- geometry per face

    def _placement(self, face: Face, shape: tuple[int, int]):
        """(matrix, inverse, region) for a face, or a reason string why it cannot be restored."""
        import cv2

        kps = getattr(face, "kps", None)
        problem = keypoints_problem(kps)
        if problem:
            return problem
        try:
            m = alignment_matrix(kps, self.input_size)
        except InputError as exc:
            return str(exc).removeprefix("face restoration: ").rstrip(".")
        inv = cv2.invertAffineTransform(m)
        region = _region(inv, self.input_size, shape)
        if region is None:
            return "the face lies outside the image"
        return m, inv, region

    def _paste_layers(self, restored: np.ndarray, inv: np.ndarray, region) -> np.ndarray:
        """Restored crop (float 0..255) and its mask, warped back onto ``region``: (h, w, 4) float32."""
        import cv2

        x0, y0, x1, y1 = region
        inv_roi = inv.copy()
        inv_roi[:, 2] -= (x0, y0)
        layers = np.dstack([restored.astype(np.float32), self._mask])
        return _warp(layers, inv_roi, (x1 - x0, y1 - y0), cv2.BORDER_CONSTANT, 0.0)

    def blend_weights(self, image_shape: Sequence[int], face: Face, strength: float | None = None
                      ) -> tuple[np.ndarray | None, tuple[int, int, int, int] | str]:
        """(weights, region): the (H, W) float32 blend weight ``face`` gets in an image of ``image_shape``
        (0 where pixels stay bit-identical) and the region it can be non-zero in; (None, reason) when skipped."""
        strength = self.strength if strength is None else _check_strength(strength)
        h, w = int(image_shape[0]), int(image_shape[1])
        placed = self._placement(face, (h, w))
        if isinstance(placed, str):
            return None, placed
        _, inv, region = placed
        x0, y0, x1, y1 = region
        weights = np.zeros((h, w), np.float32)
        zeros = np.zeros((self.input_size, self.input_size, 3), np.float32)
        weights[y0:y1, x0:x1] = strength * self._paste_layers(zeros, inv, region)[..., 3]
        return weights, region

    # -- the whole step

    def __call__(self, image: np.ndarray, faces: Sequence[Face], *, strength: float | None = None
                 ) -> tuple[np.ndarray, list[FaceRestoreInfo]]:
        """Restore each face of ``image`` (RGB uint8 (H, W, 3)); returns (new image, list of FaceRestoreInfo)."""
        import cv2

        strength = self.strength if strength is None else _check_strength(strength)
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise InputError(f"face restoration takes an RGB uint8 image of shape (H, W, 3), got {desc}.")
        faces = list(faces or [])
        out = image.copy()
        infos: list[FaceRestoreInfo] = []
        h, w = image.shape[:2]
        for i, face in enumerate(faces):
            info: FaceRestoreInfo = {"index": i, "restored": False, "reason": None, "region": None, "crop_scale": None}
            infos.append(info)
            placed = self._placement(face, (h, w))
            if isinstance(placed, str):
                info["reason"] = placed
                logger.info("face restoration: face %d skipped: %s", i, placed)
                continue
            m, inv, region = placed
            info["region"] = region
            info["crop_scale"] = round(_scale_of(m), 4)
            if strength <= 0.0:
                info["reason"] = "strength is 0"
                continue
            crop = _warp(image, m, (self.input_size, self.input_size), cv2.BORDER_REFLECT_101)
            restored = self._run(crop) * 255.0
            layers = self._paste_layers(restored, inv, region)
            x0, y0, x1, y1 = region
            weight = strength * layers[..., 3:4]
            base = out[y0:y1, x0:x1]
            blended = base.astype(np.float32) + weight * (layers[..., :3] - base.astype(np.float32))
            new = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
            keep = weight[..., 0] <= 0.0
            new[keep] = base[keep]
            out[y0:y1, x0:x1] = new
            info["restored"] = True
        return out, infos


def load_restorer(cfg: RestoreConfig) -> FaceRestorer:
    """Load ``cfg.model`` once (see module docstring for formats, safety and errors)."""
    return FaceRestorer(cfg)


__all__ = [
    "RestoreConfig", "FaceRestorer", "FaceRestoreInfo", "load_restorer", "alignment_matrix", "paste_mask",
    "keypoints_problem", "FFHQ_TEMPLATE_512", "MINUS_ONE_TO_ONE",
]
