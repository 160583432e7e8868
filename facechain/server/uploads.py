"""An uploaded image, checked and cleaned before the server stores it.

Checked: its size (the server's ``max_upload_mb``), its name (reduced to a safe last component, never a path),
that it is an image PIL decodes, and its pixel count (the megapixel guard of ``facechain.images``). Cleaned:
the orientation its EXIF names is applied to the pixels, then it is encoded again without any metadata
(EXIF with its GPS position and camera serial, XMP, comments, PNG text); the colour profile is kept. What is
stored is our own encoding of the pixels, so an upload that was also an HTML or script file is not anymore.
JPEG and WebP stay in their format (quality 95); every other kind is stored as PNG.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from facechain.errors import InputError
from facechain.images import IMAGE_SUFFIXES, PHOTO_MAX_MEGAPIXELS
from facechain.server.workdir import safe_name

KEEP_FORMAT = {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clean_image(fname: str, data: bytes, what: str, max_mb: float) -> tuple[str, bytes]:
    """(a safe file name, the re-encoded image without metadata) of an upload, or InputError naming it."""
    import warnings

    from PIL import Image, ImageOps

    name = safe_name(fname, "photo.png")
    if len(data) > max_mb * 1e6:
        raise InputError(f"{what} ({name}) is {len(data) / 1e6:.1f} MB; the limit is {max_mb:g} MB.")
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{what} ({name}) is not an image file ({', '.join(IMAGE_SUFFIXES)}).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                if img.width * img.height > PHOTO_MAX_MEGAPIXELS * 1e6:
                    raise InputError(f"{what} ({name}) is {img.width}x{img.height}; the most is "
                                     f"{PHOTO_MAX_MEGAPIXELS:g} megapixels. Downscale it first.")
                icc = img.info.get("icc_profile")
                img.load()
                upright = ImageOps.exif_transpose(img)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{what} ({name}) is not an image PIL can read ({type(exc).__name__}).") from None
    suffix = KEEP_FORMAT.get(fmt, ".png")
    out_fmt = {".jpg": "JPEG", ".webp": "WEBP", ".png": "PNG"}[suffix]
    if out_fmt == "JPEG" and upright.mode not in ("RGB", "L", "CMYK"):
        upright = upright.convert("RGB")
    elif upright.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16", "I"):
        upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
    kwargs = {"quality": 95} if out_fmt in ("JPEG", "WEBP") else {}
    if icc:
        kwargs["icc_profile"] = icc
    buf = io.BytesIO()
    upright.save(buf, format=out_fmt, **kwargs)  # no exif=, no pnginfo=: nothing but the pixels and the profile
    given = Path(name).suffix.lower()
    keep_suffix = given if given == ".jpeg" and suffix == ".jpg" else suffix  # photo.jpeg stays photo.jpeg
    return f"{Path(name).stem}{keep_suffix}", buf.getvalue()
