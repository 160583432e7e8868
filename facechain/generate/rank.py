"""Post-processing of generated candidates: face fusion, likeness ranking, outputs.

    reference = select_reference_face(processed_dir, analyzer)    # the best-quality processed photo
    scored = fuse_and_rank(images, reference, analyzer, ...) # -> list[Scored], best first, dropped last
    saved = save_style_outputs(out, "chef", "Chef", scored, seeds, num_images)  # PNGs + manifest entries
    contact_sheet(images, captions)                          # one PIL image of every candidate

Ranking follows FaceChain (facechain/inference.py): a candidate is usable when it holds exactly
one face whose size is within [min_face_frac, max_face_frac] of the image's short side (FaceChain:
120-300 px at 512 px); usable candidates are scored by identity similarity to the reference face
and the best are kept. Unlike FaceChain, a dropped candidate is reported with its reason, never
silently discarded. The face size is :attr:`facechain.face.Face.size`: FaceChain's measure
(max(w, h) of the SCRFD box) taken from the keypoints, so the rule means the same with every
backend (dlib's own box is about 0.8 of it: measured by that box, a portrait FaceChain keeps
would be dropped as too small).

The face detailer (mode auto) re-draws exactly the faces this size rule would call too small:
its small_face_frac (0.23) is min_face_frac, measured with the same Face.size. A candidate whose
face the detailer re-drew is therefore not dropped for being small (``detailed``), so full-body
poses still give portraits. The other rules (exactly one face, max_face_frac) still apply.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facechain.errors import FacechainError, InputError
from facechain.face import Face, FaceAnalyzer, similarity
from facechain.face.fusion import FusionMethod
from facechain.images import PHOTO_MAX_MEGAPIXELS, read_image, sharpness
from facechain.io import save_image
from facechain.preprocess.artifact import ReferenceCrop, load_report
import dataclasses
from facechain.preprocess.quality import photo_quality

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """The reference face (manifest key "template", kept for its readers): the best-quality processed photo
    and its detected face (ranking compares candidates with it), and the source face fusion warps from: the
    same photo's high-resolution
    crop (``reference/hires.png``) when preprocessing kept one, else the processed photo."""

    image: np.ndarray  # RGB uint8
    face: Face
    file: str
    reason: str  # how it was chosen
    fusion_image: np.ndarray | None = None  # the high-resolution crop, None: fuse from ``image``
    fusion_face: Face | None = None
    fusion_file: str | None = None

    def fusion_source(self) -> tuple[np.ndarray, Face]:
        if self.fusion_image is not None and self.fusion_face is not None:
            return self.fusion_image, self.fusion_face
        return self.image, self.face


@dataclass(frozen=True)
class Scored:
    """One candidate after post-processing."""

    index: int
    image: np.ndarray  # RGB uint8, fused when fusion ran
    score: float | None  # identity similarity to the reference face, None when dropped/unranked
    dropped: str | None = None  # reason, None when usable
    fused: bool = False
    faces: int | None = None
    face_size: float | None = None
    extra: dict = field(default_factory=dict)
    before: np.ndarray | None = None  # the candidate before fusion (and restoration), when it was fused


def select_reference_face(processed_dir: str | Path, analyzer: FaceAnalyzer) -> Reference:
    """Pick the best-quality processed photo and detect its face.

    Quality = detector score x sharpness (:func:`facechain.preprocess.quality.photo_quality`): from
    report.json's ``scores`` (``detector_score`` and ``blur``, the sharpness preprocessing measured)
    when every kept entry has them, else measured here (detector score x variance of the Laplacian of
    the face crop). When report.json's ``reference`` says preprocessing kept this photo's
    high-resolution crop, it becomes the fusion source (``fusion_image``)."""
    folder = Path(processed_dir)
    if not folder.is_dir():
        raise InputError(f"processed_dir {folder} does not exist. Pass the output folder of `facechain preprocess`.")
    ranked: list[tuple[float, Path]] = []
    how = ""
    report = load_report(folder)
    if report is not None:
        kept = report.kept_entries()
        scored = [(photo_quality(e.scores), folder / e.output) for e in kept
                  if {"detector_score", "blur"} <= set(e.scores)]
        if kept and len(scored) == len(kept):
            ranked = sorted(scored, key=lambda t: -t[0])
            how = "report.json detector_score x blur (sharpness)"
    faces: dict[Path, tuple[np.ndarray, Face]] = {}
    if not ranked:
        files = sorted(p for p in folder.glob("*.png") if p.stem.isdigit() or p.stem[:3].isdigit())
        if not files:
            raise InputError(f"processed_dir {folder} holds no processed photos (NNN.png). Re-run preprocessing.")
        for p in files:
            img = read_image(p, "processed photo", max_megapixels=PHOTO_MAX_MEGAPIXELS)
            found = analyzer.detect(img, max_faces=1)
            if not found:
                continue
            f = found[0]
            x1, y1, x2, y2 = [int(v) for v in np.clip(f.bbox, 0, [img.shape[1], img.shape[0]] * 2)]
            crop = img[y1:y2, x1:x2]
            ranked.append((float(f.score) * sharpness(crop) if crop.size else 0.0, p))
            faces[p] = (img, f)
        ranked.sort(key=lambda t: -t[0])
        how = "detector score x face sharpness, measured"
    for quality, path in ranked:
        if path in faces:
            img, face = faces[path]
        else:
            if not path.is_file():
                continue
            img = read_image(path, "processed photo", max_megapixels=PHOTO_MAX_MEGAPIXELS)
            found = analyzer.detect(img, max_faces=1)
            if not found:
                continue
            face = found[0]
        logger.info("reference face: %s (%s = %.3g)", path.name, how, quality)
        ref = Reference(img, face, path.name, f"{how} = {quality:.4g}")
        return _with_hires(ref, folder, report.reference if report else None, analyzer)
    raise InputError(
        f"no face found in any processed photo in {folder}, so there is no template face for fusion and ranking. "
        "Re-run preprocessing, or set rank: false and fusion: off."
    )


def _with_hires(ref: Reference, folder: Path, info: ReferenceCrop | None, analyzer: FaceAnalyzer) -> Reference:
    """``ref`` with its high-resolution crop as the fusion source, when report.json's ``reference``
    names one for this very photo and a face is found in it; else ``ref`` (fusion uses the
    processed photo), with a log line saying why."""
    hires = info.hires if info is not None else None
    if hires is None or info.output != ref.file:
        if hires is not None:
            logger.info("fusion source: %s is the crop of %s, not of the template photo %s; fusing from %s",
                        hires, info.output, ref.file, ref.file)
        return ref
    path = folder / hires
    if Path(hires).is_absolute() or ".." in Path(hires).parts or not path.is_file():
        logger.warning("fusion source: %s is missing; fusing from the %d px processed photo %s",
                       path, ref.image.shape[0], ref.file)
        return ref
    img = read_image(path, "high-resolution reference crop", max_megapixels=PHOTO_MAX_MEGAPIXELS)
    found = analyzer.detect(img, max_faces=1)
    if not found:
        logger.warning("fusion source: no face found in %s; fusing from the processed photo %s", path, ref.file)
        return ref
    logger.info("fusion source: %s (%d px)", hires, img.shape[0])
    return dataclasses.replace(ref, fusion_image=img, fusion_face=found[0], fusion_file=hires)


def check_face(faces: list[Face], image_shape: tuple[int, ...], min_frac: float, max_frac: float,
               detailed: bool = False) -> str | None:
    """Why a candidate is unusable, or None: exactly one face of usable size (FaceChain's rule, with
    :attr:`Face.size`, the same measure for every backend).
    ``detailed``: the face detailer re-drew the face at full resolution, so a small face is usable."""
    short = min(image_shape[:2])
    if not faces:
        return "no face detected"
    if len(faces) > 1:
        return f"{len(faces)} faces detected (need exactly one)"
    size = faces[0].size
    if size < min_frac * short and not detailed:
        return f"face too small: {size:.0f} px < {min_frac:.2f} x {short} px"
    if size > max_frac * short:
        return f"face too large: {size:.0f} px > {max_frac:.2f} x {short} px"
    return None


def fuse_and_rank(
    images: list[np.ndarray],
    reference: Reference | None,
    analyzer: FaceAnalyzer | None,
    *,
    fusion: FusionMethod | None = None,
    strength: float = 1.0,
    rank: bool = True,
    min_face_frac: float = 0.23,
    max_face_frac: float = 0.59,
    detailed: list[bool] | None = None,
    restorer=None,
) -> list[Scored]:
    """Fuse (optional) then score every image; returns usable candidates best first, then dropped ones.

    With ``rank=False`` nothing is dropped or scored and the order is the input order; faces are
    still detected when fusion runs (a candidate without one usable face is left unfused, with a note).
    ``detailed[i]``: candidate i's face was re-drawn by the face detailer; the min_face_frac rule
    does not drop it (see the module docstring). ``restorer``: a loaded
    :class:`facechain.face.restore.FaceRestorer`, run on each fused face (note ``restored``)."""
    from tqdm.auto import tqdm

    if (rank or fusion is not None) and (reference is None or analyzer is None):
        raise InputError("ranking and fusion need the template face (processed_dir) and a face analyzer.")
    results: list[Scored] = []
    for i, img in enumerate(tqdm(images, desc="fuse + rank", unit="img", disable=len(images) < 2)):
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if not rank and fusion is None:
            results.append(Scored(i, img, None))
            continue
        faces = analyzer.detect(img)
        was_detailed = bool(detailed[i]) if detailed is not None else False
        reason = check_face(faces, img.shape, min_face_frac, max_face_frac, detailed=was_detailed)
        size = faces[0].size if faces else None
        if reason is not None:
            if rank:
                results.append(Scored(i, img, None, dropped=reason, faces=len(faces), face_size=size))
            else:
                results.append(Scored(i, img, None, faces=len(faces), face_size=size, extra={"fusion_skipped": reason}))
            continue
        face = faces[0]
        out, fused, extra = img, False, {}
        if fusion is not None:
            try:
                res = fusion.fuse(img, face, *reference.fusion_source(), strength)
                out, fused = res.image, True
                if res.notes:
                    extra["fusion_notes"] = list(res.notes)
                if restorer is not None:  # the fused face sits at the generated face's keypoints
                    out, info = restorer(out, [face])
                    extra["restored"] = dict(info[0])
            except FacechainError as exc:  # one candidate that cannot be fused never sinks the style:
                # it goes on unfused (ranked as it is), with the reason in the manifest
                logger.warning("candidate %d: fusion skipped: %s", i, exc)
                extra["fusion_failed"] = str(exc)
        score = None
        if rank:
            emb = face.embedding
            if fused:  # fusion moved the inner landmarks: re-detect so the embedding is aligned on the new face
                again = analyzer.detect(out, max_faces=2)
                if len(again) == 1:
                    emb = again[0].embedding
                else:
                    logger.info("candidate %d: %d faces after fusion; embedding at the generated face's landmarks",
                                i, len(again))
                    emb = analyzer.embed(out, face)
            if emb is None:
                emb = analyzer.embed(out, face)
            score = float(similarity(np.asarray(emb), reference.face.embedding, backend=reference.face.backend))
        results.append(Scored(i, out, score, fused=fused, faces=1, face_size=size, extra=extra,
                              before=img if fused else None))
    if rank:
        usable = sorted((r for r in results if r.dropped is None), key=lambda r: -r.score)
        results = usable + [r for r in results if r.dropped is not None]
    return results


def contact_sheet(images: list[np.ndarray], captions: list[str], thumb: int = 192, columns: int = 5):
    """Grid of thumbnails with a caption under each (PIL image)."""
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise InputError("contact sheet: no images")
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    cap_h = 30
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (img, cap) in enumerate(zip(images, captions)):
        r, c = divmod(k, columns)
        x, y = c * thumb, r * (thumb + cap_h)
        sheet.paste(Image.fromarray(img).resize((thumb, thumb), Image.LANCZOS), (x, y))
        for line_no, line in enumerate(cap.split("\n")[:2]):
            _draw_caption_line(draw, (x + 3, y + thumb + 2 + 13 * line_no), line, font, x + thumb - 2)
    return sheet


# Pillow's default font at its default size draws a space 2 px wide, about the gap between two
# letters, so "Business suit" read as "Businesssuit": words are drawn one by one this far apart.
CAPTION_WORD_GAP = 5


def _draw_caption_line(draw, xy: tuple[int, int], line: str, font, right: int) -> None:
    """Draw ``line`` word by word with a gap of at least CAPTION_WORD_GAP px, cut at ``right``."""
    x, y = xy
    gap = max(CAPTION_WORD_GAP, int(round(font.getlength(" "))))
    for word in line.split():
        width = font.getlength(word)
        if x + width > right:
            while word and x + font.getlength(word + "~") > right:
                word = word[:-1]
            if word:
                draw.text((x, y), word + "~", fill="black", font=font)
            return
        draw.text((x, y), word, fill="black", font=font)
        x += int(math.ceil(width)) + gap


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Plain Lanczos resampling by ``factor`` (bigger pixels, no new detail)."""
    from PIL import Image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w * factor, h * factor), Image.LANCZOS))


@dataclass(frozen=True)
class SavedStyle:
    """What :func:`save_style_outputs` wrote for one style (``entries``/``kept`` go into manifest.json)."""

    entries: list[dict]  # every candidate, in generation order
    kept: list[dict]  # kept images, best first
    kept_files: list[Path]
    kept_scored: list[Scored]
    usable: list[Scored]
    sheet_images: list[np.ndarray]
    sheet_captions: list[str]


def save_style_outputs(out: Path, name: str, label: str, scored: list[Scored], seeds: list[int], num_images: int,
                       upscale_factor: int = 1) -> SavedStyle:
    """Write every candidate to ``out/candidates/<name>_<i>.png`` and the best ``num_images``
    usable ones to ``out/<name>_<rank>.png`` (Lanczos-upscaled when ``upscale_factor`` > 1). The
    contact-sheet tiles are every candidate, then a before/after-fusion pair per kept fused image."""
    out = Path(out)
    usable = [s for s in scored if s.dropped is None]
    keep = usable[:num_images]
    keep_idx = {s.index for s in keep}
    entries, images, captions = [], [], []
    for s in sorted(scored, key=lambda s: s.index):
        cand_file = f"candidates/{name}_{s.index:03d}.png"
        save_image(out / cand_file, s.image)
        entries.append({
            "index": s.index, "seed": seeds[s.index], "file": cand_file, "score": s.score, "kept": s.index in keep_idx,
            "dropped": s.dropped, "fused": s.fused, "faces": s.faces, "face_size": s.face_size, **s.extra,
        })
        images.append(s.image)
        tag = f"{s.score:.3f}" if s.score is not None else (s.dropped or "unranked")
        captions.append(f"{label[:16]} #{s.index} s{seeds[s.index]}\n{tag}")
    kept, files = [], []
    for rank_no, s in enumerate(keep):
        path = out / f"{name}_{rank_no:02d}.png"
        save_image(path, upscale(s.image, upscale_factor) if upscale_factor > 1 else s.image)
        files.append(path)
        kept.append({"file": path.name, "index": s.index, "seed": seeds[s.index], "score": s.score})
        if s.fused and s.before is not None:  # a before/after pair per kept image: what fusion did
            images += [s.before, s.image]
            captions += [f"{label[:16]} kept {rank_no}\nbefore fusion", f"{label[:16]} kept {rank_no}\nafter fusion"]
    return SavedStyle(entries, kept, files, keep, usable, images, captions)
