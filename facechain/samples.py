"""Real photos that ship inside installed packages, for the demo and the tests.

* scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain): one person, frontal.
* insightface's sample images (``insightface/data/images``): ``t1.jpg`` (a group of people),
  ``Tom_Hanks_54745.png`` (another person).
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image

from facechain.errors import MissingDependencyError
from facechain.images import read_image


def astronaut() -> np.ndarray:
    """512x512 RGB photo of one person."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def textured_canvas(size: int = 512, seed: int = 7) -> np.ndarray:
    """A background with no face (smooth gradients + seeded noise), RGB uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([60 + 80 * x, 70 + 60 * y, 90 + 40 * (x * y)], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def pasted_head(paste_px: int = 200, size: int = 512, at: tuple[int, int] = (140, 150)) -> np.ndarray:
    """The astronaut's head (a real photo, 200 x 200 around the face) resized to ``paste_px`` and pasted at
    ``at`` = (x, y) into :func:`textured_canvas`. paste_px 200 -> Face.size ~109 px (dlib's box 87 px): 0.21
    of 512, a face under ranking's min_face_frac."""
    head = astronaut()[27:227, 122:322]
    img = textured_canvas(size)
    x, y = at
    img[y:y + paste_px, x:x + paste_px] = np.asarray(Image.fromarray(head).resize((paste_px, paste_px), Image.LANCZOS))
    return img


def insightface_images_dir() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("sample photos need the 'insightface' package: pip install insightface")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images"


def insightface_image(name: str) -> np.ndarray:
    path = insightface_images_dir() / name
    if not path.is_file():
        raise MissingDependencyError(f"insightface sample image {path} is missing; reinstall insightface")
    return read_image(path, "insightface sample image")


def group_photo() -> np.ndarray:
    return insightface_image("t1.jpg")


def other_person() -> np.ndarray:
    return insightface_image("Tom_Hanks_54745.png")


def three_faces() -> np.ndarray:
    """A 768 x 256 group picture of three faces side by side (the astronaut, her mirror image, Tom Hanks),
    for fixed-template runs."""
    a = astronaut()[0:256, 100:356]
    hanks = np.asarray(Image.fromarray(other_person()).resize((256, 256), Image.LANCZOS))
    return np.concatenate([a, np.ascontiguousarray(a[:, ::-1]), hanks], axis=1)


def jpeg_with_exif_orientation(image: np.ndarray, orientation: int = 6) -> bytes:
    """JPEG whose pixels are stored rotated, with the EXIF tag that says how to turn them upright.
    Orientation 6 means "rotate 90 degrees clockwise to display"; stored pixels are the upright
    image turned 90 degrees counter-clockwise."""
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    img = Image.fromarray(image).transpose(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def write_demo_photos(folder: str | Path) -> list[Path]:
    """A small photo folder showing what preprocessing keeps and rejects: the astronaut as an
    upright PNG, an EXIF-rotated JPEG, a sideways PNG, a mirrored crop; a group photo (rejected:
    several faces); another person (rejected: different person); a text file named .jpg
    (rejected: not an image)."""
    from facechain.io import save_image, write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a = astronaut()
    paths = [
        save_image(folder / "01_upright.png", a),
        write_bytes(folder / "02_exif_rotated.jpg", jpeg_with_exif_orientation(a, 6)),
        save_image(folder / "03_sideways.png", np.ascontiguousarray(np.rot90(a, 1))),
        save_image(folder / "04_mirrored.png", np.ascontiguousarray(a[:, ::-1])),
        save_image(folder / "05_group.jpg", group_photo()),
        save_image(folder / "06_someone_else.png", other_person()),
        write_bytes(folder / "07_notes.jpg", b"this is a text file, not a photo\n"),
    ]
    return paths
