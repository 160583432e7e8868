"""The preprocessing stage: photos -> processed training set.

``preprocess(inputs, output_dir, cfg)`` runs the steps (one module each) on every photo, never
letting one bad photo stop the run, and writes (the layout
:class:`~facechain.preprocess.artifact.ProcessedSet` reads back):

* ``OUTPUT_DIR/NNN.png``: aligned square crops, background white;
* ``OUTPUT_DIR/metadata.jsonl``: ``{"file_name", "text"}`` per kept photo (Hugging Face imagefolder);
* ``OUTPUT_DIR/report.json``: one entry per input (kept or rejected, reason, scores, timings);
* ``OUTPUT_DIR/preprocess_config.json``: the settings used;
* ``OUTPUT_DIR/masks/NNN.png``: each kept photo's head mask (255 = head), when a mask was made;
* ``OUTPUT_DIR/reference/hires.png``: the best kept photo (:func:`photo_quality`, the photo
  generation takes as the template face) cropped the same way at up to ``reference_size`` px, from
  the source photo's own pixels (never upscaled; not written when the source is no larger than the
  ``size`` crop; in a sub folder, so ``facechain eval --reference`` does not count the photo twice).
  Face fusion warps from it, so a face fused into a 1024 px SDXL portrait is not a 512 px crop enlarged.
  report.json's ``reference`` names the photo and the file.

The new set replaces the previous one only when at least one photo was kept (the files are
staged, then committed through :class:`facechain.outputs.OutputDir`): a run that keeps nothing
leaves the previous set as it was and writes its report to ``OUTPUT_DIR/failed_report.json``.
Only files an earlier preprocessing run recorded are ever deleted or overwritten; the output
folder may not be the input folder, nor inside it, nor contain it.

Raises :class:`NoPhotosKept` (after writing the report) when no photo is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from facechain.config import to_dict
from facechain.errors import InputError
from facechain.face import get_analyzer
from facechain.face.align import portrait_crop_transform, warp_crop
from facechain.face.segment import head_mask, whiten_background
from facechain.face.types import Face, FaceAnalyzer
from facechain.images import IMAGE_SUFFIXES, ImageRejected, check_regular, load_photo, sharpness
from facechain.io import save_image
from facechain.jobs import ItemFailure, exit_code_for
from facechain.preprocess.artifact import (CONFIG_FILE, FAILED_REPORT, METADATA_FILE, REFERENCE_HIRES, REPORT_FILE,
                                           PhotoEntry, PreprocessReport, ProcessedPhoto, ReferenceCrop, mask_file,
                                           photo_file, write_processed_set)
from facechain.preprocess.caption import attribute_phrase, caption
from facechain.preprocess.config import PreprocessConfig
from facechain.preprocess.errors import NoPhotosKept, PhotoRejected
from facechain.preprocess.identity import medoid_outliers
from facechain.preprocess.orient import orient_and_detect, rotate
from facechain.preprocess.quality import check_quality, face_box_mask, photo_quality
from facechain.preprocess.retouch import retouch_skin
from facechain.preprocess.select import select_face
import multiprocessing as mp
import os
from facechain.face.segment import PARSING_WEIGHTS, parsing_weights_path, refused_pickle_weights
from facechain.outputs import same_or_nested, OutputDir

logger = logging.getLogger(__name__)

# Margin above the backend's real-face score that a training photo's face must reach.
QUALITY_SCORE_MARGIN = 0.2


@dataclass(frozen=True)
class PreprocessResult:
    output_dir: Path
    kept: list[Path]
    entries: list[PhotoEntry]
    caption: str
    backend: str

    @property
    def rejected(self) -> list[PhotoEntry]:
        return [e for e in self.entries if e.status != "kept"]

    @property
    def failures(self) -> list[ItemFailure]:
        """Photos that hit an unexpected error (reason "error"). A photo rejected by a rule (no face,
        blurry, another person, unreadable file) is the filter working, reported in report.json."""
        return [ItemFailure(e.input, e.detail or "") for e in self.entries if e.reason == "error"]

    @property
    def exit_code(self) -> int:
        """The rule of every command (facechain.jobs): non-zero when some photo failed unexpectedly."""
        return exit_code_for(self.failures)


@dataclass
class _Candidate:
    entry: PhotoEntry
    image: np.ndarray
    face: Face
    hires: np.ndarray | None = None  # the same crop at up to reference_size px (see reference_crop)
    mask: np.ndarray | None = None  # the head mask (head_mask's uint8 {0, 255}) the background was whitened with


def list_photos(inputs) -> list[Path]:
    """A folder (its non-hidden files, natural order) or an explicit list of files."""
    if isinstance(inputs, (str, Path)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise InputError(f"input folder {folder} does not exist or is not a folder. Pass the folder holding the photos.")
        # every entry is listed (folders, FIFOs, devices, broken links too), so that each shows up in the report
        # with its reason
        files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    else:
        files = [Path(p) for p in inputs]
    key = lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]  # noqa: E731
    files = sorted(files, key=key)
    if not files:
        raise InputError(f"no files found in {inputs}. Put the person's photos (jpg/png/webp) there.")
    return files


def process_photo(path: Path, analyzer: FaceAnalyzer, cfg: PreprocessConfig) -> _Candidate:
    """Steps 1-7 for one photo. Raises ImageRejected (PhotoRejected for face problems)."""
    entry = PhotoEntry(input=path.name)
    t = time.perf_counter()
    timings = entry.timings
    check_regular(path)  # first: a FIFO or a device gets this reason whatever its name
    if not path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise PhotoRejected("not_an_image", f"file type '{path.suffix}' is not a photo format ({', '.join(IMAGE_SUFFIXES)})")
    image = load_photo(path, cfg.max_megapixels)
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    degrees, faces, det, s = orient_and_detect(image, analyzer, cfg.orient_size, cfg.detect_size, cfg.min_face_size)
    image = rotate(image, degrees)
    entry.scores["rotation"] = degrees
    timings["detect"] = time.perf_counter() - t
    face = select_face(faces, cfg.several_faces_ratio)

    t = time.perf_counter()
    embedding = analyzer.embed(det, face)
    timings["embed"] = time.perf_counter() - t
    full = Face(
        bbox=face.bbox / s, score=face.score, kps=face.kps / s, backend=face.backend,
        landmarks=None if face.landmarks is None else face.landmarks / s, embedding=embedding,
        gender=face.gender, age=face.age,
    )
    t = time.perf_counter()
    tf = portrait_crop_transform(full, cfg.size)
    crop = warp_crop(image, tf)
    kps = tf.apply_points(full.kps)
    lms = None if full.landmarks is None else tf.apply_points(full.landmarks)
    timings["crop"] = time.perf_counter() - t
    entry.scores["roll"] = round(tf.roll, 1)

    # quality is measured on the aligned crop before any smoothing or masking
    region = face_box_mask(crop.shape, lms if lms is not None else kps)
    blur = sharpness(crop, region)
    min_score = cfg.min_detector_score if cfg.min_detector_score is not None else analyzer.min_score + QUALITY_SCORE_MARGIN
    entry.scores.update({"face_size": round(full.size, 1), "detector_score": round(face.score, 3), "blur": round(blur, 1)})
    check_quality(full.size, face.score, blur, min_face_size=cfg.min_face_size, min_score=min_score, blur_threshold=cfg.blur_threshold)

    hires = reference_crop(image, full, cfg)
    t = time.perf_counter()
    if cfg.retouch:
        crop = retouch_skin(crop, lms, cfg.retouch_strength)
    mask = None
    if cfg.mask != "none":
        mask, method = head_mask(crop, lms, kps, cfg.mask, cfg.allow_pickle)
        crop = whiten_background(crop, mask)
        entry.scores["mask"] = method
    timings["mask"] = time.perf_counter() - t
    return _Candidate(entry=entry, image=crop, hires=hires, mask=mask, face=Face(
        bbox=tf.apply_points(full.bbox.reshape(2, 2)).reshape(4), score=face.score, kps=kps, backend=face.backend,
        landmarks=lms, embedding=embedding, gender=face.gender, age=face.age))


def reference_crop(image: np.ndarray, face: Face, cfg: PreprocessConfig) -> np.ndarray | None:
    """The photo's portrait crop (the same framing as the ``size`` crop) at its own resolution, capped
    at ``reference_size``; None when that is no larger than ``size`` (nothing sharper to keep).
    Not masked: fusion uses the face inside its landmarks only. Retouched like the training crop
    when ``retouch`` is on, so the fused face is the face the LoRA learned."""
    if not cfg.reference_size:
        return None
    tf = portrait_crop_transform(face, cfg.size)
    native = cfg.size / float(np.sqrt(abs(np.linalg.det(tf.matrix[:, :2]))))  # the crop's side in source pixels
    side = int(min(cfg.reference_size, native)) // 8 * 8
    if side <= cfg.size:
        return None
    tf = portrait_crop_transform(face, side)
    hires = warp_crop(image, tf)
    if cfg.retouch:
        lms = None if face.landmarks is None else tf.apply_points(face.landmarks)
        hires = retouch_skin(hires, lms, cfg.retouch_strength)
    return hires


def _worker_count(requested: int, n: int) -> int:
    if requested > 0:
        return min(requested, n)
    return 1 if n < 4 else min(os.cpu_count() or 1, 4, n)


class _ForkedWorker:
    """What a forked preprocessing worker process holds: its (analyzer, cfg), inherited through
    fork (never pickled) by :func:`_start_worker`. Set only inside worker processes."""

    analyzer: FaceAnalyzer | None = None
    cfg: PreprocessConfig | None = None


def _start_worker(analyzer: FaceAnalyzer, cfg: PreprocessConfig) -> None:
    _ForkedWorker.analyzer, _ForkedWorker.cfg = analyzer, cfg


def _process_in_worker(path: Path) -> tuple[PhotoEntry, _Candidate | None]:
    return _process_one(path, _ForkedWorker.analyzer, _ForkedWorker.cfg)


def _process_one(path: Path, analyzer: FaceAnalyzer, cfg: PreprocessConfig) -> tuple[PhotoEntry, _Candidate | None]:
    """Run steps 1-7 on one photo; every failure becomes a report entry."""
    t0 = time.perf_counter()
    cand = None
    try:
        cand = process_photo(path, analyzer, cfg)
        cand.face = dataclasses.replace(cand.face, extra={})  # backend handles do not cross processes
        entry = cand.entry
    except ImageRejected as rej:
        entry = PhotoEntry(input=path.name, reason=rej.code, detail=rej.detail, scores=rej.scores)
    except Exception as exc:  # an unexpected failure on one photo is reported, not fatal
        logger.exception("preprocess: unexpected error on %s", path)
        entry = PhotoEntry(input=path.name, reason="error", detail=f"{type(exc).__name__}: {exc}")
    entry.timings = {k: round(v, 4) for k, v in entry.timings.items()}
    entry.timings["total"] = round(time.perf_counter() - t0, 4)
    return entry, cand


def check_output_folder(inputs, output_dir: Path, files: list[Path]) -> None:
    """Output = input, or one inside the other: a clear error before any work."""
    if isinstance(inputs, (str, Path)):
        how = same_or_nested(Path(output_dir), Path(inputs))
        if how:
            raise InputError(
                f"output folder {output_dir} is {how} the input folder {inputs}. The processed set must go to a separate "
                "folder, so that your photos are never mixed with or replaced by processed crops. Pass another output folder."
            )
    else:
        inside = [f for f in files if same_or_nested(f.parent, Path(output_dir))]
        if inside:
            raise InputError(f"input photo {inside[0]} is inside the output folder {output_dir}. Keep the photos in another folder.")


def preprocess(inputs, output_dir, cfg: PreprocessConfig | None = None, analyzer: FaceAnalyzer | None = None,
               progress: bool = True) -> PreprocessResult:
    cfg = cfg or PreprocessConfig()
    files = list_photos(inputs)
    out = Path(output_dir)
    check_output_folder(inputs, out, files)
    with OutputDir.open(out, "preprocess", allow_other_files=cfg.allow_other_files) as od:
        return _preprocess(files, od, cfg, analyzer, progress)


def _preprocess(files: list[Path], od, cfg: PreprocessConfig, analyzer: FaceAnalyzer | None, progress: bool) -> PreprocessResult:
    out = od.path
    od.check_free([METADATA_FILE, REPORT_FILE, CONFIG_FILE, FAILED_REPORT, REFERENCE_HIRES]
                  + [photo_file(i) for i in range(len(files))] + [mask_file(photo_file(i)) for i in range(len(files))])
    analyzer = analyzer or get_analyzer(cfg.face_backend)
    if cfg.mask == "auto":
        if parsing_weights_path(cfg.allow_pickle) is None:
            refused = refused_pickle_weights()
            if refused is not None:
                logger.info("head mask: face parsing weights %s are a pickle file, not loaded without --allow-pickle; using "
                            "the offline landmark GrabCut mask", refused)
            else:
                logger.info("head mask: face parsing weights (%s) not found; using the offline landmark GrabCut mask", PARSING_WEIGHTS)

    entries: list[PhotoEntry] = []
    candidates: list[_Candidate] = []
    workers = _worker_count(cfg.workers, len(files))
    if workers > 1 and not getattr(analyzer, "fork_safe", False):
        logger.info("preprocess: one worker, since the %s backend cannot be shared with forked workers", analyzer.name)
        workers = 1
    if workers > 1 and threading.active_count() > 1:
        # a fork copies only the calling thread: a lock another thread held at that instant (logging's, a
        # server's) stays locked in the child forever. Seen: the web app's training job hung in preprocessing.
        logger.info("preprocess: one worker, since this process runs other threads (forked workers could deadlock)")
        workers = 1
    if workers > 1:
        # fork: workers inherit the loaded face models (the initializer's arguments are not pickled)
        pool = mp.get_context("fork").Pool(workers, initializer=_start_worker, initargs=(analyzer, cfg))
        results = pool.imap(_process_in_worker, files)
    else:
        pool, results = None, (_process_one(f, analyzer, cfg) for f in files)
    try:
        for entry, cand in tqdm(results, total=len(files), desc="preprocess", unit="photo", disable=not progress):
            entries.append(entry)
            if cand is not None:
                candidates.append(cand)
    finally:
        if pool is not None:
            pool.terminate()

    # step 8: identity consistency over the photos that passed so far
    if cfg.identity_check and candidates:
        _, sims, outliers = medoid_outliers([c.face.embedding for c in candidates], candidates[0].face.backend)
        for c, sim in zip(candidates, sims):
            c.entry.scores["identity_similarity"] = round(sim, 3)
        for i in outliers:
            e = candidates[i].entry
            e.reason, e.detail = "different_person", (
                f"identity similarity to the set's medoid photo is {sims[i]:.2f}, below the same-person threshold 0.50; "
                "this looks like someone else")
        candidates = [c for i, c in enumerate(candidates) if i not in set(outliers)]

    # step 9: caption by majority over kept photos, then write: staged, committed only when a photo was kept
    phrase = attribute_phrase([c.face.gender for c in candidates], [c.face.age for c in candidates])
    text = caption(cfg.trigger_word, phrase)
    caption_note = None
    if candidates and all(c.face.gender is None and c.face.age is None for c in candidates):
        caption_note = (f"the {analyzer.name} face backend gives no gender or age, so the caption says '{phrase}' where "
                        "FaceChain's would name them (e.g. 'a beautiful woman', 'a mature man'); no offline model for them "
                        "ships in a package. Use --face-backend insightface (its buffalo_l models), or edit the text in "
                        "metadata.jsonl before training.")
        logger.warning("caption: %s", caption_note)
    stage = od.stage()
    kept_paths, photos = [], []
    for i, c in enumerate(candidates):
        name = photo_file(i)
        save_image(stage / name, c.image)
        if c.mask is not None:  # the head mask, for trainers that weight the face region (FeedFace's masked loss)
            save_image(stage / mask_file(name), c.mask)
        c.entry.status, c.entry.output = "kept", name
        kept_paths.append(out / name)
        photos.append(ProcessedPhoto(name, text))
    reference = None
    if candidates:  # the photo generation picks as the template face (the same rule, the same order)
        best = max(candidates, key=lambda c: photo_quality(c.entry.scores))
        reference = ReferenceCrop(output=best.entry.output, input=best.entry.input,
                                  quality=round(photo_quality(best.entry.scores), 4), rule="detector_score x blur")
        if best.hires is not None:
            save_image(stage / REFERENCE_HIRES, best.hires)
            reference = dataclasses.replace(reference, hires=REFERENCE_HIRES, hires_size=int(best.hires.shape[0]))
        else:
            reference = dataclasses.replace(reference, hires_note=(
                f"no crop larger than {cfg.size} px: the photo's face is too small to give more pixels"
                if cfg.reference_size else "reference_size is 0"))
    report = PreprocessReport(backend=analyzer.name, caption=text, caption_note=caption_note, kept=len(kept_paths),
                              rejected=len(entries) - len(kept_paths), reference=reference, config=to_dict(cfg),
                              entries=entries)
    if not kept_paths:
        report.write(stage / FAILED_REPORT)
        od.commit(stage, replace=False)  # the previous set, if any, stays as it was
        lines = "\n".join(f"  {e.input}: {e.reason} ({e.detail})" for e in entries)
        kept_before = (" The previous processed set in this folder was left as it was."
                       if (out / METADATA_FILE).is_file() else "")
        raise NoPhotosKept(
            f"no photo was kept out of {len(entries)}; the training set would be empty. Reasons:\n{lines}\n"
            f"Details are in {out / FAILED_REPORT}.{kept_before} Use clear, well-lit photos with one face each."
        )
    write_processed_set(stage, photos, report, cfg)
    od.commit(stage)
    return PreprocessResult(output_dir=out, kept=kept_paths, entries=entries, caption=text, backend=analyzer.name)


def summary_line(result: PreprocessResult) -> str:
    reasons: dict[str, int] = {}
    for e in result.rejected:
        reasons[e.reason] = reasons.get(e.reason, 0) + 1
    why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    return (f"kept {len(result.kept)} of {len(result.entries)} photos"
            + (f" (rejected {why})" if why else "") + f"; caption '{result.caption}'; output in {result.output_dir}")
