"""The evaluation stage: how much generated portraits look like the person, how varied they are,
and whether any of them copies a reference photo.

``evaluate(generated_dir, reference_dir, cfg)`` measures every image directly in
``generated_dir`` against the photos directly in ``reference_dir`` (sub-folders are not read; a
generate output's ``contact_sheet.png`` is skipped) and writes, through
:class:`facechain.outputs.OutputDir` (staged, committed only when the report is complete):

* ``OUTPUT_DIR/report.json``: the run figures, one entry per generated image and per reference
  photo (with the reason for each unreadable or faceless one), the recogniser used and caveats;
* ``OUTPUT_DIR/report.png``: identity similarity per image against the same-person threshold,
  and a table of the run figures;
* ``OUTPUT_DIR/eval_config.json``: the settings used.

``measure(...)`` is the same without writing anything. Figures, all on the calibrated scale of
:func:`facechain.face.similarity` (0..1, :data:`~facechain.face.SAME_PERSON_THRESHOLD` = 0.5
means same person, for every backend):

* **identity** of an image: the mean of its face's similarity to each reference photo's face.
  The mean of pair scores, not the score to a mean embedding: a pair score is what the backend's
  calibration is defined on (an averaged ArcFace embedding is not a face embedding).
* **same_person_frac**: the fraction of readable images whose identity is at least the
  threshold (an image with no face counts as not the person).
* **identity_diversity**: mean pairwise identity distance (1 - similarity) between the outputs'
  faces; **pixel_diversity**: mean pairwise RMS difference (0..1) of the outputs downsized to
  :data:`PIXEL_SIDE` px square.
* **copy check**: see :func:`copy_identity` and :func:`picture_similarity`; an output is
  flagged a copy when both reach their thresholds.

The recogniser is, when possible, not the one that ranked the images (the ranking picked the
images that recogniser likes best, so its own scores are optimistic): the ranking backend is read
from ``generated_dir/manifest.json`` (written by ``facechain generate``), else given as
``ranking_backend``. With ``face_backend="auto"`` another backend is taken when one loads; when
none does, the ranking one is used and the report says so in ``caveats``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facechain.config import save_config, setting
from facechain.errors import FacechainError, InputError
from facechain.face import SAME_PERSON_THRESHOLD, similarity
from facechain.face.types import Face, FaceAnalyzer
from facechain.generate.manifest import MANIFEST_FILE, GenerationManifest
from facechain.images import PHOTO_MAX_MEGAPIXELS, ImageRejected, list_images, load_photo
from facechain.io import write_json

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


# --------------------------------------------------------------------------- measures


def copy_identity(nearest_similarity: float, reference_spread: float) -> float:
    """How much closer an output is to its nearest reference photo than the reference photos are
    to each other: ``1 - (1 - s_nearest) / spread``, clipped to [0, 1]. 1: the same face embedding
    as a reference photo; 0: no closer to one than another photo of the person would be."""
    spread = max(float(reference_spread), MIN_REFERENCE_SPREAD)
    return float(np.clip(1.0 - (1.0 - float(nearest_similarity)) / spread, 0.0, 1.0))


def portrait_crop(image: np.ndarray, face: Face, mirror: bool = False, side: int = COPY_CROP_SIDE) -> np.ndarray:
    """Grey square crop (side x side, float32) of FaceChain's portrait layout around ``face`` (see
    :func:`facechain.face.align.portrait_crop_transform`: about 3.3x the face, de-rolled, face centre
    at x 0.5, y 0.435): the face with its hair, clothes and background. ``mirror``: the crop of the
    mirrored image (the trainer flips its photos, so a memorised output can come out mirrored)."""
    from facechain.face.align import portrait_crop_transform, warp_crop

    if mirror:
        w = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
        x1, y1, x2, y2 = face.bbox
        kps = face.kps.copy()
        kps[:, 0] = w - 1 - kps[:, 0]
        kps = kps[[1, 0, 2, 4, 3]]  # the image-left eye and mouth corner stay first
        face = Face(bbox=np.array([w - 1 - x2, y1, w - 1 - x1, y2], np.float32), score=face.score, kps=kps,
                    backend=face.backend)
    crop = warp_crop(image, portrait_crop_transform(face, size=side))
    return cv2.GaussianBlur(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)


def picture_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel-level likeness of two portrait crops (:func:`portrait_crop`): the Pearson correlation
    of their pixels, so brightness and contrast changes do not count. 1: the same picture."""
    return float(_standardise(a) @ _standardise(b))


def _standardise(x: np.ndarray) -> np.ndarray:
    v = np.asarray(x, np.float64).ravel()
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-9)


def pixel_diversity(thumbs: list[np.ndarray]) -> float | None:
    """Mean pairwise RMS difference (0..1) of images downsized to the same square (see :func:`thumbnail`)."""
    if len(thumbs) < 2:
        return None
    flat = np.stack([t.reshape(-1) for t in thumbs]).astype(np.float32) / 255.0  # (N, side*side*3)
    rms = [np.sqrt(((flat[i + 1:] - flat[i]) ** 2).mean(1)) for i in range(len(flat) - 1)]  # pairs (i, j > i)
    return float(np.concatenate(rms).mean())


def thumbnail(image: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- inputs


def ranking_backend_of(generated_dir: Path, flag: str | None) -> tuple[str | None, str]:
    """(backend that ranked the images, where that came from): ``manifest.json`` of facechain
    generate, else the flag, else unknown. A manifest that says ranking was off gives None."""
    if GenerationManifest.exists(generated_dir):
        path = Path(generated_dir) / MANIFEST_FILE
        try:
            ranking = GenerationManifest.read(generated_dir).ranking
        except InputError as exc:
            ranking = None
            logger.warning("%s; the ranking backend is taken from the flag", exc)
        if ranking is not None:
            if flag and ranking.backend and flag != ranking.backend:
                logger.warning("--ranking-backend %s differs from %s's %s; using the manifest's", flag, path,
                               ranking.backend)
            if not ranking.on:
                return None, "manifest"
            if ranking.backend is not None:
                return ranking.backend, "manifest"
    if flag:
        return flag, "flag"
    return None, "unknown"


def choose_analyzer(face_backend: str, ranking: str | None) -> tuple[FaceAnalyzer, list[str]]:
    """The recogniser to measure with, and why it was chosen when that matters (log lines)."""
    from facechain.face import available_backends, get_analyzer
    from facechain.face.registry import AUTO_ORDER

    names = available_backends()
    if face_backend != "auto":
        if face_backend not in names:
            raise InputError(f"face backend {face_backend!r} is not one of {['auto', *names]}.")
        return get_analyzer(face_backend), []
    order = [n for n in (*AUTO_ORDER, *names) if n != ranking]
    order = list(dict.fromkeys(order)) + ([ranking] if ranking in names else [])
    problems = []
    for name in order:
        try:
            return get_analyzer(name), problems
        except FacechainError as exc:
            problems.append(f"{name}: {exc}")
    raise InputError("no face backend could be loaded for the identity figures:\n  " + "\n  ".join(problems))


@dataclass
class _Seen:
    """One image as read: its face (largest), the face count, the pixels needed later."""

    file: str
    image: np.ndarray | None = None
    face: Face | None = None
    faces: int = 0
    reason: str | None = None


def _read_and_detect(path: Path, analyzer: FaceAnalyzer, cfg: EvalConfig) -> _Seen:
    seen = _Seen(path.name)
    try:
        image = load_photo(path, cfg.max_megapixels)
    except ImageRejected as exc:
        seen.reason = f"{exc.code}: {exc.detail}"
        return seen
    try:
        faces = _detect(analyzer, image, cfg.detect_size)
    except Exception as exc:  # an unexpected error on one image: listed with its reason, the run goes on
        logger.exception("eval: face analysis failed on %s", path)
        seen.reason = f"error: {type(exc).__name__}: {exc}"
        return seen
    seen.image = image
    seen.faces = len(faces)
    seen.face = faces[0] if faces else None
    return seen


def _detect(analyzer: FaceAnalyzer, image: np.ndarray, detect_size: int) -> list[Face]:
    """Faces (largest first, with embeddings) in the image's own pixel coordinates. The image is
    resized so its long side is ``detect_size`` when larger; a small image whose face the detector
    misses is tried once more at twice the size (dlib finds no face under 80 px)."""
    h, w = image.shape[:2]
    scale = min(1.0, detect_size / max(h, w))
    faces = _detect_at(analyzer, image, scale)
    if not faces and max(h, w) * 2 <= detect_size:
        faces = _detect_at(analyzer, image, 2.0)
    return faces


def _detect_at(analyzer: FaceAnalyzer, image: np.ndarray, scale: float) -> list[Face]:
    if scale == 1.0:
        return analyzer.detect(image)
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
    out = []
    for f in analyzer.detect(small):
        out.append(Face(bbox=f.bbox / scale, score=f.score, kps=f.kps / scale, backend=f.backend,
                        landmarks=None if f.landmarks is None else f.landmarks / scale, embedding=f.embedding,
                        gender=f.gender, age=f.age))
    return out


# --------------------------------------------------------------------------- the stage


def measure(generated_dir, reference_dir, cfg: EvalConfig | None = None, analyzer: FaceAnalyzer | None = None) -> EvalReport:
    """Measure the images in ``generated_dir`` against the photos in ``reference_dir`` (see the
    module docstring). ``analyzer``: the recogniser to use (default: chosen by ``cfg.face_backend``).

    Raises InputError when either folder is missing or holds no image, or when no reference photo
    has a face. An unreadable image, or one with no face, is listed with its reason."""
    cfg = cfg or EvalConfig()
    t_start = time.perf_counter()
    generated_dir, reference_dir = Path(generated_dir), Path(reference_dir)
    ref_files = list_images(reference_dir, "reference folder")
    skip = GENERATE_SIDE_FILES if GenerationManifest.exists(generated_dir) else ()
    gen_files = list_images(generated_dir, "generated folder", skip=skip)
    ranking, ranking_source = ranking_backend_of(generated_dir, cfg.ranking_backend)

    if analyzer is None:
        analyzer, problems = choose_analyzer(cfg.face_backend, ranking)
        if problems:
            logger.info("eval: measuring with %s (%s)", analyzer.name, "; ".join(problems))
        why = ("it is the only face backend that loaded" if cfg.face_backend == "auto"
               else f"face_backend {cfg.face_backend} was asked for")
    else:
        why = "it was the analyzer passed in"
    backend = analyzer.name
    caveats = []
    if ranking_source == "unknown":
        independent = None
        caveats.append(f"The backend that ranked these images is not known (no manifest.json from facechain generate in "
                       f"{generated_dir}, no --ranking-backend). If it was {backend}, the identity figures are optimistic: "
                       "the ranking kept the images this recogniser likes best.")
    elif ranking is None:
        independent = True  # the manifest says the images were not ranked
    else:
        independent = ranking != backend
        if not independent:
            caveats.append(f"Identity was measured with {backend}, the recogniser that also ranked these images ({why}). "
                           "The ranking kept the images it scores highest, so these identity figures are optimistic; "
                           "measure with another backend for an independent figure.")

    # reference photos
    t0 = time.perf_counter()
    refs = [_read_and_detect(p, analyzer, cfg) for p in ref_files]
    with_face = [r for r in refs if r.face is not None]
    if not with_face:
        lines = "\n".join(f"  {r.file}: {r.reason or 'no face found'}" for r in refs)
        raise InputError(
            f"no face was found in any reference photo in {reference_dir}, so there is nothing to measure likeness "
            f"against:\n{lines}\nPass the folder of the person's photos (or the output of `facechain preprocess`), with "
            "one clear, frontal face per photo.")
    ref_sims = np.array([[similarity(a.face, b.face) for b in with_face] for a in with_face])  # (R, R)
    ref_nn: list[float | None] = [None] * len(with_face)
    if len(with_face) >= 2:
        off = ref_sims + np.diag(np.full(len(with_face), -np.inf))
        ref_nn = [float(v) for v in off.max(1)]
        spread, measured = float(np.mean([1.0 - v for v in ref_nn])), True
    else:
        spread, measured = NOMINAL_REFERENCE_SPREAD, False
        caveats.append(f"Only one reference photo has a face, so the reference photos' own spread cannot be measured; "
                       f"the copy check assumes a typical one ({NOMINAL_REFERENCE_SPREAD} on the similarity scale).")
    ref_crops = [(portrait_crop(r.image, r.face), portrait_crop(r.image, r.face, mirror=True)) for r in with_face]
    ref_nn_by_file = {r.file: nn for r, nn in zip(with_face, ref_nn)}
    references = [
        ReferenceEntry(r.file, "unreadable" if r.reason else ("ok" if r.face is not None else "no_face"), r.reason, r.faces,
                       _r(r.face.size) if r.face is not None else None, _r(ref_nn_by_file.get(r.file)))
        for r in refs
    ]
    t_refs = time.perf_counter() - t0

    # generated images
    t0 = time.perf_counter()
    entries: list[ImageEntry] = []
    thumbs: list[np.ndarray] = []
    embs: list[Face] = []
    for path in gen_files:
        seen = _read_and_detect(path, analyzer, cfg)
        if seen.image is None:
            entries.append(ImageEntry(seen.file, "unreadable", seen.reason))
            continue
        thumbs.append(thumbnail(seen.image))
        if seen.face is None:
            entries.append(ImageEntry(seen.file, "no_face", "no face found", 0))
            continue
        sims = np.array([similarity(seen.face, r.face) for r in with_face])  # (R,)
        ident = float(sims.mean())
        crop = portrait_crop(seen.image, seen.face)
        pixels = np.array([max(picture_similarity(crop, c) for c in crops) for crops in ref_crops])  # (R,)
        closeness = np.array([copy_identity(float(v), spread) for v in sims])  # (R,)
        # the reference photo with the strongest copy evidence: both parts as fractions of their thresholds,
        # the weaker one counts (a copy must pass both for the same reference photo)
        most = int(np.minimum(closeness / cfg.copy_identity_threshold, pixels / cfg.copy_pixel_threshold).argmax())
        c_id, c_px = float(closeness[most]), float(pixels[most])
        entries.append(ImageEntry(
            seen.file, "ok", None, seen.faces, _r(seen.face.size), _r(ident), _r(float(sims.min())), _r(float(sims.max())),
            ident >= SAME_PERSON_THRESHOLD, with_face[int(sims.argmax())].file, with_face[most].file, _r(c_id), _r(c_px),
            c_id >= cfg.copy_identity_threshold and c_px >= cfg.copy_pixel_threshold,
        ))
        embs.append(seen.face)
        seen.image = None  # the thumbnail is all that is kept
    t_gen = time.perf_counter() - t0

    idents = [e.identity for e in entries if e.identity is not None]
    readable = [e for e in entries if e.status != "unreadable"]
    id_div = None
    if len(embs) >= 2:
        d = [1.0 - similarity(embs[i], embs[j]) for i in range(len(embs)) for j in range(i + 1, len(embs))]
        id_div = float(np.mean(d))
    copies = [e.file for e in entries if e.copy]
    summary = EvalSummary(
        images=len(entries), readable=len(readable), faces_found=len(idents),
        unreadable=len(entries) - len(readable), reference_photos=len(with_face),
        identity_mean=_r(float(np.mean(idents))) if idents else None,
        identity_median=_r(float(statistics.median(idents))) if idents else None,
        same_person_frac=_r(sum(e.same_person for e in readable) / len(readable)) if readable else None,
        identity_diversity=_r(id_div), pixel_diversity=_r(pixel_diversity(thumbs)),
        reference_spread=_r(spread), reference_spread_measured=measured, copies=len(copies), copy_files=copies,
    )
    if not readable:
        caveats.append(f"No image in {generated_dir} could be read; see each file's reason.")
    elif not idents:
        caveats.append(f"No face was found in any image in {generated_dir}.")
    thresholds = {"same_person": SAME_PERSON_THRESHOLD, "copy_identity": cfg.copy_identity_threshold,
                  "copy_pixel": cfg.copy_pixel_threshold}
    timings = {"references_s": _r(t_refs), "generated_s": _r(t_gen), "total_s": _r(time.perf_counter() - t_start)}
    return EvalReport(generated_dir, reference_dir, backend, ranking, ranking_source, independent, caveats, summary,
                      entries, references, thresholds, timings)


def evaluate(generated_dir, reference_dir, cfg: EvalConfig | None = None, analyzer: FaceAnalyzer | None = None) -> EvalResult:
    """:func:`measure`, then write ``report.json``, ``report.png`` and ``eval_config.json`` into
    ``cfg.output_dir`` (default ``generated_dir/eval``), replacing the previous report there only
    when this one is complete."""
    from facechain.outputs import OutputDir, check_writable_folder, hold_for_reading, same_or_nested

    cfg = cfg or EvalConfig()
    generated_dir, reference_dir = Path(generated_dir), Path(reference_dir)
    out = Path(cfg.output_dir) if cfg.output_dir is not None else generated_dir / "eval"
    for folder, what in ((generated_dir, "generated folder"), (reference_dir, "reference folder")):
        if folder.is_dir() and same_or_nested(out, folder) in ("the same folder as", "a parent folder of"):
            raise InputError(f"output folder {out} is {same_or_nested(out, folder)} the {what} {folder}. Pass another "
                             "--output-dir (the default is GENERATED_DIR/eval).")
    check_writable_folder(out, "output folder")
    holds = []
    try:  # no generate/preprocess run may replace the images while they are read
        holds.append(hold_for_reading(generated_dir, "generate", "generated folder") if generated_dir.is_dir() else None)
        holds.append(hold_for_reading(reference_dir, "preprocess", "reference folder") if reference_dir.is_dir() else None)
        with OutputDir.open(out, "eval", allow_other_files=cfg.allow_other_files) as od:
            od.check_free([REPORT_FILE, CHART_FILE, CONFIG_FILE])
            report = measure(generated_dir, reference_dir, cfg, analyzer)
            stage = od.stage()
            save_config(cfg, stage / CONFIG_FILE)
            write_json(stage / REPORT_FILE, report.to_dict())
            from facechain.io import save_image

            save_image(stage / CHART_FILE, render_chart(report))
            od.commit(stage)
    finally:
        for h in holds:
            if h is not None:
                h.close()
    logger.info("eval: %d images against %d reference photos with %s: identity mean %s, same person %s, copies %d",
                report.summary.images, report.summary.reference_photos, report.backend, report.summary.identity_mean,
                report.summary.same_person_frac, report.summary.copies)
    return EvalResult(od.path, report, [od.path / REPORT_FILE, od.path / CHART_FILE, od.path / CONFIG_FILE])


def summary_lines(report: EvalReport) -> list[str]:
    """The run figures as short lines (the CLI prints them; the chart's table shows them)."""
    s = report.summary
    fmt = lambda v, pct=False: "n/a" if v is None else (f"{v:.0%}" if pct else f"{v:.3f}")  # noqa: E731
    ranking = report.ranking_backend or ("not ranked" if report.ranking_backend_source == "manifest" else "unknown")
    return [
        f"images: {s.images} ({s.faces_found} with a face, {s.unreadable} unreadable)",
        f"reference photos with a face: {s.reference_photos}",
        f"recogniser: {report.backend} (ranking: {ranking})",
        f"identity mean / median: {fmt(s.identity_mean)} / {fmt(s.identity_median)}",
        f"same person (>= {SAME_PERSON_THRESHOLD}): {fmt(s.same_person_frac, True)}",
        f"identity diversity: {fmt(s.identity_diversity)}",
        f"pixel diversity: {fmt(s.pixel_diversity)}",
        f"copies of a reference photo: {s.copies}" + (f" ({', '.join(s.copy_files[:3])}{', ...' if s.copies > 3 else ''})"
                                                     if s.copies else ""),
    ]


def render_chart(report: EvalReport) -> np.ndarray:
    """The report as a picture (RGB uint8): a histogram of the images' identity similarity with the
    same-person threshold line, one dot per image below it (copies of a reference photo in red),
    then the run figures as a table and the caveats."""
    import textwrap

    from facechain.errors import require

    require("matplotlib", "the chart of facechain eval")  # drawn on an Agg canvas directly: no pyplot, no global backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [e for e in report.images if e.identity is not None]
    caveats = [textwrap.fill("caveat: " + c, 125) for c in report.caveats]
    caveat_lines = sum(c.count("\n") + 1 for c in caveats)
    caveat_h = 0.18 * caveat_lines + (0.2 if caveats else 0.0)  # inches
    fig = Figure(figsize=(9, 6.6 + caveat_h), dpi=100)
    gs = fig.add_gridspec(4, 1, height_ratios=[2.2, 0.9, 2.3, max(caveat_h, 0.01) * 1.4], hspace=0.35,
                          left=0.07, right=0.97, top=0.93, bottom=0.01)
    fig.suptitle(f"facechain eval: likeness of {report.summary.images} images to {report.summary.reference_photos} "
                 f"reference photos (measured with {report.backend})", fontsize=11)
    hist = fig.add_subplot(gs[0])
    strip = fig.add_subplot(gs[1], sharex=hist)
    if ok:
        hist.hist([e.identity for e in ok], bins=np.linspace(0, 1, 21), color="#4c78a8", edgecolor="white")
    for ax in (hist, strip):
        ax.axvline(SAME_PERSON_THRESHOLD, color="#d62728", linestyle="--", linewidth=1.5,
                   label=f"same-person threshold {SAME_PERSON_THRESHOLD}" if ax is hist else None)
    hist.set_ylabel("images")
    hist.set_title("identity similarity to the reference photos (mean over the photos)", fontsize=10)
    hist.legend(loc="upper left", fontsize=8, frameon=False)
    hist.tick_params(labelbottom=False)
    rng = np.random.default_rng(0)  # vertical jitter only, so that equal scores stay visible
    for copy, colour, label in ((False, "#4c78a8", "an image"), (True, "#d62728", "a copy of a reference photo")):
        pts = [e.identity for e in ok if e.copy == copy]
        if pts:
            strip.scatter(pts, rng.uniform(-0.3, 0.3, len(pts)), s=28, color=colour, alpha=0.85, label=label,
                          edgecolors="black" if copy else "none", linewidths=0.6)
    strip.set_xlim(0, 1)
    strip.set_ylim(-0.5, 0.5)
    strip.set_yticks([])
    missing = len(report.images) - len(ok)
    strip.set_xlabel("identity similarity (calibrated: 0.5 = same person)"
                     + (f"; {missing} image(s) without a face or unreadable, not shown" if missing else ""))
    if ok:
        strip.legend(loc="upper left", bbox_to_anchor=(0, 1.02), fontsize=8, frameon=False, ncol=2)
    table_ax = fig.add_subplot(gs[2])
    table_ax.axis("off")
    rows = [line.split(": ", 1) for line in summary_lines(report)]
    table = table_ax.table(cellText=rows, colWidths=[0.36, 0.64], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    note_ax = fig.add_subplot(gs[3])
    note_ax.axis("off")
    if caveats:
        note_ax.text(0.0, 1.0, "\n".join(caveats), fontsize=8, va="top", ha="left", transform=note_ax.transAxes,
                     color="#8a4b00")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def _jsonable(obj: Any):
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


__all__ = [
    "EvalConfig", "EvalReport", "EvalResult", "EvalSummary", "ImageEntry", "ReferenceEntry", "evaluate", "measure",
    "summary_lines", "render_chart", "copy_identity", "picture_similarity", "pixel_diversity", "portrait_crop",
]
