"""Eval's settings, its typed report (written as report.json) and the report's number formatting."""

from __future__ import annotations


import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facechain.config import setting
from facechain.errors import InputError
from facechain.images import PHOTO_MAX_MEGAPIXELS
import dataclasses

logger = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CHART_FILE = "report.png"
CONFIG_FILE = "eval_config.json"
# generate's own files that sit beside its portraits (skipped when the folder has its manifest.json)
GENERATE_SIDE_FILES = ("contact_sheet.png",)

# Side of the square every output is downsized to for pixel diversity: coarse layout and colour
# (pose, framing, background, palette), not texture or noise.
PIXEL_SIDE = 64
# The pixel-level copy check compares FaceChain's portrait crop around the face (face, hair, clothes,
# background) at this side, blurred a little, so that resampling and JPEG noise do not count. Not
# the face alone: face fusion pastes the reference face into every generated portrait by design.
COPY_CROP_SIDE = 64
# The reference photos' spread (their mean distance to their nearest other reference, 1 - similarity)
# when it cannot be measured (one reference photo with a face): the distance of two different photos
# of one person is typically 0.25-0.4 on the calibrated scale of both backends (dlib distance
# 0.3-0.5; ArcFace cosine 0.45-0.7).
NOMINAL_REFERENCE_SPREAD = 0.3
# Floor on the measured spread. Reference photos closer than this are views of one photo (a burst,
# re-framed or re-coloured copies: measured 0.04-0.16 with dlib on the astronaut photo), not separate
# photos, and their spread would make every output look far from them.
MIN_REFERENCE_SPREAD = 0.15


@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``facechain eval``."""

    face_backend: str = setting("recogniser for the identity figures: auto (another backend than the ranking one when one loads), "
                "dlib or insightface", default="auto", flags=("--backend",))
    ranking_backend: str | None = setting("backend that ranked the images, when GENERATED_DIR has no manifest.json from facechain generate", default=None)
    output_dir: Path | None = setting("folder for the report; none: GENERATED_DIR/eval", default=None)
    copy_identity_threshold: float = setting("copy check, identity part: 1 - (distance to the nearest reference) / (the references' own spread) "
                "must reach this (0.3: the output is within 0.7x the references' spread of one reference)", default=0.3)
    copy_pixel_threshold: float = setting("copy check, pixel part: correlation of the grey portrait crops (face, hair, clothes, background) "
                "with the nearest reference or its mirror image must reach this", default=0.8)
    detect_size: int = setting("long side images are resized to for face detection", default=1024)
    max_megapixels: float = setting("skip images larger than this (decompression bombs)", default=PHOTO_MAX_MEGAPIXELS)
    allow_other_files: bool = setting("write into an output folder that holds files facechain did not write (they are never touched)", default=False)

    def __post_init__(self):
        if not 0 < self.copy_identity_threshold <= 1:
            raise InputError(f"copy_identity_threshold must be in (0, 1], got {self.copy_identity_threshold}")
        if not -1 < self.copy_pixel_threshold <= 1:
            raise InputError(f"copy_pixel_threshold must be in (-1, 1], got {self.copy_pixel_threshold}")
        if self.detect_size < 128:
            raise InputError(f"detect_size must be at least 128 px, got {self.detect_size}")
        if self.max_megapixels <= 0:
            raise InputError(f"max_megapixels must be positive, got {self.max_megapixels}")


# --------------------------------------------------------------------------- report types


@dataclass(frozen=True)
class ReferenceEntry:
    """One file of the reference folder. ``status``: "ok", "no_face" or "unreadable" (then ``reason``)."""

    file: str
    status: str
    reason: str | None = None
    faces: int = 0
    face_px: float | None = None  # Face.size of the largest face, in the photo's own pixels
    nearest_reference_similarity: float | None = None  # to the most similar other reference photo


@dataclass(frozen=True)
class ImageEntry:
    """One generated image. ``status``: "ok", "no_face" or "unreadable" (then ``reason``: the image
    reader's code and detail, or ``error: ...`` when face analysis failed on it)."""

    file: str
    status: str
    reason: str | None = None
    faces: int = 0
    face_px: float | None = None
    identity: float | None = None  # mean similarity to the reference photos' faces
    identity_min: float | None = None
    identity_max: float | None = None
    same_person: bool = False  # identity >= SAME_PERSON_THRESHOLD
    nearest_reference: str | None = None  # the reference photo most similar in identity
    copy_reference: str | None = None  # the reference photo with the strongest copy evidence (see measure())
    copy_identity: float | None = None  # copy_identity() of the similarity to copy_reference
    copy_pixel: float | None = None  # picture_similarity() to copy_reference or its mirror image, the larger
    copy: bool = False


@dataclass(frozen=True)
class EvalSummary:
    """The run figures (None where there is nothing to measure)."""

    images: int
    readable: int
    faces_found: int
    unreadable: int
    reference_photos: int  # reference photos with a face, the ones measured against
    identity_mean: float | None
    identity_median: float | None
    same_person_frac: float | None  # over readable images; no face counts as not the person
    identity_diversity: float | None  # mean pairwise 1 - similarity between outputs' faces
    pixel_diversity: float | None  # mean pairwise RMS difference of downsized outputs, 0..1
    reference_spread: float  # the references' mean distance to their nearest other reference (or nominal)
    reference_spread_measured: bool
    copies: int
    copy_files: list[str]


@dataclass(frozen=True)
class EvalReport:
    generated_dir: Path
    reference_dir: Path
    backend: str  # the recogniser that measured identity
    ranking_backend: str | None
    ranking_backend_source: str  # "manifest", "flag" or "unknown"
    independent: bool | None  # the recogniser is not the ranking one (None: ranking backend unknown)
    caveats: list[str]
    summary: EvalSummary
    images: list[ImageEntry]
    references: list[ReferenceEntry]
    thresholds: dict[str, float]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps({
            "generated_dir": str(self.generated_dir), "reference_dir": str(self.reference_dir),
            "backend": {"used": self.backend, "ranking": self.ranking_backend, "ranking_source": self.ranking_backend_source,
                        "independent_of_ranking": self.independent},
            "caveats": self.caveats, "thresholds": self.thresholds, "summary": self.summary,
            "images": self.images, "references": self.references, "timings": self.timings,
        }, default=_jsonable))


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` wrote: the folder, the report and its files."""

    output_dir: Path
    report: EvalReport
    files: list[Path]

    @property
    def exit_code(self) -> int:
        return 0  # the report was written; unreadable images are listed in it, not failures of the run


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def _jsonable(obj: Any):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
