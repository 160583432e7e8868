"""The one image reader. Every stage reads photos, pose maps, depth maps, masks and processed
crops through here: EXIF orientation applied, every colour mode (16-bit, grey, CMYK, palette,
alpha) turned into RGB uint8, HEIC/HEIF through pillow-heif, and a megapixel guard read from the
header before any pixel is decoded.

Two ways in:

- :func:`load_photo` raises :class:`ImageRejected` with a stable reason code; preprocessing
  records that reason per photo and goes on with the others.
- :func:`read_image` raises :class:`~facechain.errors.InputError` naming what the image was for
  (``"pose image"``, ``"content image"``, ...); for inputs where one bad file stops the command.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facechain.errors import InputError
from facechain.io import not_regular_kind

logger = logging.getLogger(__name__)
_PIL_LIMIT_LOCK = threading.Lock()

try:  # HEIC/HEIF (iPhone photos): PIL reads them once pillow-heif registers its decoder
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency
    HEIF_SUPPORTED = False

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif")
HEIF_SUFFIXES = (".heic", ".heif")

# Photos: phone and camera photos are up to ~100 MP; twice PIL's own 89 MP warning level.
PHOTO_MAX_MEGAPIXELS = 150.0
# Everything else read as an input (pose and depth maps, content/style images, masks): no
# legitimate one is bigger than this.
INPUT_MAX_MEGAPIXELS = 50.0

# JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8; Image.draft) that keeps the short
# side at least this long: a 12 MP photo decodes at 2000x1500, 4x faster, and a face still spans
# far more than the 156 px it gets in a 512 crop.
DECODE_SHORT_SIDE = 1400

ImageLike = str | os.PathLike | np.ndarray


class ImageRejected(Exception):
    """An image is not usable. ``code`` is a stable short reason; ``detail`` says why and the fix."""

    def __init__(self, code: str, detail: str, scores: dict | None = None):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.scores = scores or {}


def load_photo(path: str | os.PathLike, max_megapixels: float = PHOTO_MAX_MEGAPIXELS, *,
               draft: bool = True) -> np.ndarray:
    """EXIF-transposed RGB uint8 array. RGBA/LA/P(transparency) are composited on white; CMYK,
    16-bit and grayscale are converted. Raises :class:`ImageRejected` for folders, non-images,
    truncated files and images over ``max_megapixels``. ``draft``: large JPEGs decode at a reduced
    DCT scale (short side >= DECODE_SHORT_SIDE), for photos whose faces are cropped anyway."""
    return to_rgb(_open(Path(path), max_megapixels, draft))


def read_image(image: ImageLike, what: str = "image", *, max_megapixels: float = INPUT_MAX_MEGAPIXELS,
               gray: bool = False) -> np.ndarray:
    """An input image as RGB uint8 (H, W, 3), or grey uint8 (H, W) with ``gray``; a path or an
    array. Raises InputError naming ``what`` with the reason and the fix."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"{what} {path} does not exist.")
        try:
            if gray:  # masks: the luminance, with alpha ignored (an opaque white mask stays white)
                return np.asarray(_open(path, max_megapixels, draft=False).convert("L"), dtype=np.uint8)
            return load_photo(path, max_megapixels, draft=False)
        except ImageRejected as exc:
            raise InputError(f"{what} {path} cannot be used: {exc.detail}.") from exc
    arr = np.asarray(image)
    if arr.ndim == 2 and not gray:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if gray:
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3].max(axis=-1)
        if arr.ndim != 2:
            raise InputError(f"{what} array must be (H, W) or (H, W, 3), got shape {arr.shape}.")
    elif arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise InputError(f"{what} array must be (H, W, 3) RGB, got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        raise InputError(f"{what} array must be uint8 (0-255), got {arr.dtype}.")
    return np.ascontiguousarray(arr if gray else arr[..., :3])


def describe(image: ImageLike) -> str:
    """How an input is named in logs and manifests: its path, or the array's shape."""
    return str(image) if isinstance(image, (str, os.PathLike)) else f"array{tuple(np.asarray(image).shape)}"


def check_regular(path: Path) -> None:
    """Raise ImageRejected("not_a_file") for a FIFO, a device (``/dev/zero``) or a socket, or a link to one,
    found without opening it (a FIFO blocks the reader until something writes to it)."""
    kind = not_regular_kind(path)
    if kind is not None:
        raise ImageRejected("not_a_file", f"this is {kind}, not a regular file; only image files are read (copy the "
                                          "photo into the folder as a file)")


def _open(path: Path, max_megapixels: float, draft: bool) -> Image.Image:
    """Open, guard and decode: a loaded, EXIF-transposed PIL image."""
    if path.is_dir():
        raise ImageRejected("not_a_file", "this is a folder, not an image; images inside sub-folders are not read (move them up)")
    check_regular(path)
    try:
        # PIL's own decompression-bomb guard (89 MP warning, 179 MP error) is replaced by ours,
        # max_megapixels, checked from the header below before any pixel is decoded.
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1e6)
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            "oversized", f"image is over twice the {max_megapixels:.0f} megapixel limit and was not decoded ({exc}); "
            "downscale the image or raise max_megapixels"
        ) from exc
    except UnidentifiedImageError as exc:
        if path.suffix.lower() in HEIF_SUFFIXES and not HEIF_SUPPORTED:
            raise ImageRejected("not_an_image", "HEIC/HEIF photos need the pillow-heif package: pip install pillow-heif") from exc
        raise ImageRejected("not_an_image", "not an image file PIL can read (wrong extension or corrupt header)") from exc
    except OSError as exc:
        raise ImageRejected("unreadable", f"could not open: {exc}") from exc
    with img:
        w, h = img.size
        mp = w * h / 1e6
        if mp > max_megapixels:
            raise ImageRejected(
                "oversized", f"{w}x{h} = {mp:.0f} megapixels is over the {max_megapixels:.0f} MP limit "
                "(decompression-bomb guard); downscale the image or raise max_megapixels"
            )
        if draft and img.format == "JPEG" and min(w, h) >= 2 * DECODE_SHORT_SIDE:
            img.draft("RGB", (DECODE_SHORT_SIDE, DECODE_SHORT_SIDE))
        try:
            img.load()
        except (OSError, SyntaxError) as exc:
            raise ImageRejected("truncated", f"image data is incomplete or corrupt ({exc})") from exc
        try:
            return ImageOps.exif_transpose(img)  # a new image (a copy when there is nothing to turn)
        except Exception as exc:  # malformed EXIF: keep the pixels as stored; the orientation step still runs
            logger.warning("%s: EXIF orientation unreadable (%s); using the pixels as stored", path.name, exc)
            return img.copy()


def to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, np.float64)
        arr = (arr - arr.min()) / (np.ptp(arr) + 1e-12) * 255
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def sharpness(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the Laplacian of the grey image, inside ``mask`` when given (0 when the mask
    holds 16 pixels or fewer): low = blurry (Pech-Pacheco et al. 2000). ``image``: RGB uint8
    (H, W, 3) or grey (H, W). The one blur measure of every stage."""
    import cv2

    image = np.asarray(image)
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    lap = cv2.Laplacian(gray, cv2.CV_64F)
    if mask is not None:
        vals = lap[np.asarray(mask) > 0]
        return float(vals.var()) if vals.size > 16 else 0.0
    return float(lap.var())


def list_images(folder: Path, what: str, skip: tuple[str, ...] = ()) -> list[Path]:
    """Files directly in ``folder`` with an image suffix, in natural order. An empty folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} {folder} does not exist or is not a folder. Pass the folder holding the images.")
    files = [p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
             and p.name not in skip and not p.is_dir()]
    key = lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]  # noqa: E731
    files.sort(key=key)
    if not files:
        raise InputError(f"{what} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); sub-folders are not read. "
                         "Pass the folder that holds them directly.")
    return files
