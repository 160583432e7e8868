"""Eval as a stage: read the generated and reference photos, detect, measure, write the report and chart."""

from __future__ import annotations


import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facechain.config import save_config
from facechain.errors import FacechainError, InputError
from facechain.face import SAME_PERSON_THRESHOLD, similarity
from facechain.face.types import Face, FaceAnalyzer
from facechain.generate.manifest import MANIFEST_FILE, GenerationManifest
from facechain.images import ImageRejected, list_images, load_photo
from facechain.io import write_json


from facechain.evaluate.chart import render_chart
from facechain.evaluate.measures import copy_identity, picture_similarity, pixel_diversity, portrait_crop, thumbnail
from facechain.evaluate.report import (
    CHART_FILE,
    CONFIG_FILE,
    GENERATE_SIDE_FILES,
    NOMINAL_REFERENCE_SPREAD,
    REPORT_FILE,
    EvalConfig,
    EvalReport,
    EvalResult,
    EvalSummary,
    ImageEntry,
    ReferenceEntry,
    _r,
)
from facechain.face.registry import AUTO_ORDER
from facechain.io import save_image
from facechain.outputs import OutputDir, check_writable_folder, hold_for_reading, same_or_nested

logger = logging.getLogger(__name__)


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

    Raises InputError when either folder is missing or holds no image, when no generated image can be read,
    or when no reference photo has a face. An unreadable image, or one with no face, is listed with its reason."""
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
    if not readable:
        lines = "\n".join([f"  {e.file}: {e.reason}" for e in entries[:20]]
                          + ([f"  ... and {len(entries) - 20} more"] if len(entries) > 20 else []))
        raise InputError(
            f"no images found in the generated folder {generated_dir}: none of its {len(entries)} file(s) named like an "
            f"image could be read as one:\n{lines}\nPass the folder of generated portraits (the output folder of "
            "`facechain generate`).")
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
    if not idents:
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


