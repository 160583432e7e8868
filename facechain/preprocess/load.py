"""Step 1: load a photo as RGB uint8, whatever its encoding, or reject it with a reason."""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facechain.preprocess.errors import PhotoRejected

logger = logging.getLogger(__name__)
_PIL_LIMIT_LOCK = threading.Lock()

try:  # HEIC/HEIF (iPhone photos): PIL reads them once pillow-heif registers its decoder
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency
    HEIF_SUPPORTED = False
HEIF_SUFFIXES = (".heic", ".heif")

# JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8; Image.draft) that keeps the short
# side at least this long: a 12 MP photo decodes at 2000x1500, 4x faster, and a face still spans
# far more than the 156 px it gets in a 512 crop.
DECODE_SHORT_SIDE = 1400


def load_photo(path: Path, max_megapixels: float = 150.0) -> np.ndarray:
    """EXIF-transposed RGB uint8 array. RGBA/LA/P(transparency) are composited on white; CMYK,
    16-bit and grayscale are converted. Raises PhotoRejected for non-images, truncated files and
    images over ``max_megapixels``."""
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
        raise PhotoRejected(
            "oversized", f"image is over twice the {max_megapixels:.0f} megapixel limit and was not decoded ({exc}); "
            "downscale the photo or raise max_megapixels"
        ) from exc
    except UnidentifiedImageError as exc:
        if path.suffix.lower() in HEIF_SUFFIXES and not HEIF_SUPPORTED:
            raise PhotoRejected("not_an_image", "HEIC/HEIF photos need the pillow-heif package: pip install pillow-heif") from exc
        raise PhotoRejected("not_an_image", "not an image file PIL can read (wrong extension or corrupt header)") from exc
    except OSError as exc:
        raise PhotoRejected("unreadable", f"could not open: {exc}") from exc
    with img:
        w, h = img.size
        mp = w * h / 1e6
        if mp > max_megapixels:
            raise PhotoRejected(
                "oversized", f"{w}x{h} = {mp:.0f} megapixels is over the {max_megapixels:.0f} MP limit "
                "(decompression-bomb guard); downscale the photo or raise max_megapixels"
            )
        if img.format == "JPEG" and min(w, h) >= 2 * DECODE_SHORT_SIDE:
            img.draft("RGB", (DECODE_SHORT_SIDE, DECODE_SHORT_SIDE))
        try:
            img.load()
        except (OSError, SyntaxError) as exc:
            raise PhotoRejected("truncated", f"image data is incomplete or corrupt ({exc})") from exc
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:  # malformed EXIF: keep the pixels as stored; the orientation step still runs
            logger.warning("%s: EXIF orientation unreadable (%s); using the pixels as stored", path.name, exc)
        return to_rgb(img)


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
