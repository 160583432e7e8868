"""The processed set: what preprocessing hands to training, generation, templates and the adapter
trainers, read and written here only.

A processed folder holds::

    NNN.png                 the aligned square crops
    metadata.jsonl          {"file_name", "text"} per photo (Hugging Face imagefolder), the captions
    masks/NNN.png           each photo's head mask (255 = head), when one was made
    reference/hires.png     the best photo's crop at up to reference_size px (report.json's reference)
    report.json             PreprocessReport: one entry per input photo, kept or rejected, with scores
    preprocess_config.json  the settings used

:meth:`ProcessedSet.read` is the one reader; :func:`write_processed_set` and
:meth:`PreprocessReport.write` the writers :func:`facechain.preprocess.preprocess` uses (and
:func:`write_metadata` the one :func:`facechain.testing.make_processed_folder` uses).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from facechain.config import from_dict, save_config
from facechain.errors import InputError
from facechain.images import ImageRejected, load_photo
from facechain.io import write_json, write_jsonl
from facechain.outputs import check_settled

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
REPORT_FILE = "report.json"
FAILED_REPORT = "failed_report.json"  # the report of a run that kept no photo
CONFIG_FILE = "preprocess_config.json"
MASKS_DIR = "masks"
REFERENCE_HIRES = "reference/hires.png"  # the best photo's high-resolution crop, face fusion's source; in a
# sub folder, so tools that read the photos directly in the folder (eval, training) never count it twice


def photo_file(index: int) -> str:
    """The name of the ``index``-th kept photo (``000.png``)."""
    return f"{index:03d}.png"


def mask_file(photo: str) -> str:
    """Where the head mask of ``photo`` goes (``masks/000.png``)."""
    return f"{MASKS_DIR}/{photo}"


@dataclass
class PhotoEntry:
    """One input photo in report.json: kept (``output`` names its crop) or rejected (``reason``, ``detail``)."""

    input: str
    status: str = "rejected"  # "kept" | "rejected"
    reason: str | None = None
    detail: str | None = None
    output: str | None = None
    scores: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ReferenceCrop:
    """report.json's ``reference``: the best kept photo (the template face generation picks, by the
    same rule) and its high-resolution crop, or why there is none (``hires_note``)."""

    output: str
    input: str
    quality: float
    rule: str
    hires: str | None = None  # REFERENCE_HIRES when written
    hires_size: int | None = None
    hires_note: str | None = None  # written only when there is no high-resolution crop

    def to_dict(self) -> dict:
        out = {"output": self.output, "input": self.input, "quality": self.quality, "rule": self.rule,
               "hires": self.hires, "hires_size": self.hires_size}
        if self.hires_note is not None:
            out["hires_note"] = self.hires_note
        return out


@dataclass(frozen=True)
class PreprocessReport:
    """report.json (and failed_report.json). Every field but ``entries`` may be missing in a report
    written before it existed."""

    entries: list[PhotoEntry]
    backend: str | None = None
    caption: str | None = None
    caption_note: str | None = None
    kept: int | None = None
    rejected: int | None = None
    reference: ReferenceCrop | None = None
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "caption": self.caption, "caption_note": self.caption_note, "kept": self.kept,
                "rejected": self.rejected, "reference": None if self.reference is None else self.reference.to_dict(),
                "config": self.config, "entries": [e.to_dict() for e in self.entries]}

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> PreprocessReport:
        """The report at ``path``; InputError naming the file when it is not one preprocessing wrote."""
        path = Path(path)
        fix = "Run `facechain preprocess` into this folder again."
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # missing, not UTF-8, not JSON
            raise InputError(f"{path} could not be read as JSON ({exc}). {fix}") from exc
        if not isinstance(data, dict):
            raise InputError(f"{path} must hold a mapping with the photos' 'entries', got {type(data).__name__}. "
                             f"{fix}")
        try:
            return from_dict(cls, data, where=str(path))
        except InputError as exc:
            raise InputError(f"{path} is not a report `facechain preprocess` wrote: {exc}. {fix}") from exc

    def kept_entries(self) -> list[PhotoEntry]:
        """The kept photos whose ``output`` is a file name inside the folder."""
        return [e for e in self.entries if e.status == "kept" and e.output and _inside(e.output)]


def load_report(folder: str | Path) -> PreprocessReport | None:
    """The report.json of ``folder``; None when there is none. One that cannot be read is logged and
    taken as none: every reader of a report can do without it (a hand-made folder has none)."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        return PreprocessReport.read(path)
    except InputError as exc:
        logger.warning("%s; reading the processed folder without it", exc)
        return None


@dataclass(frozen=True)
class ProcessedPhoto:
    """One photo of the set: its file and caption (metadata.jsonl), its head mask and scores (when the
    folder has them)."""

    file: str  # relative to the folder, e.g. "000.png"
    caption: str
    mask: str | None = None  # relative to the folder, e.g. "masks/000.png"
    scores: dict = field(default_factory=dict)  # report.json's scores of this photo
    line: int = field(default=0, compare=False)  # its line in metadata.jsonl (for error messages)

    def to_row(self) -> dict:
        return {"file_name": self.file, "text": self.caption}


def _inside(name: str) -> bool:
    return not Path(name).is_absolute() and ".." not in Path(name).parts


def read_metadata(path: str | Path) -> list[ProcessedPhoto]:
    """The ``{"file_name": ..., "text": ...}`` records of a metadata.jsonl file (any file names inside
    its folder, sub folders allowed); InputError naming the file and line for a bad record."""
    meta = Path(path)
    try:
        text_lines = meta.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{meta} is not UTF-8 text ({exc}). Re-run preprocessing, or save the file as "
                         "UTF-8.") from exc
    photos = []
    for lineno, line in enumerate(text_lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{meta} line {lineno} is not a {{\"file_name\": ..., \"text\": ...}} record "
                             f"({exc}).") from exc
        if not isinstance(name, str) or not name or not _inside(name):
            raise InputError(f"{meta} line {lineno}: file_name {name!r} must be a file name inside {meta.parent} (no "
                             "absolute path, no '..'). Re-run preprocessing, or fix that line.")
        if not isinstance(text, str):
            raise InputError(f"{meta} line {lineno}: text (the caption) must be a string, got {text!r}. Re-run "
                             "preprocessing, or write the caption in quotes.")
        photos.append(ProcessedPhoto(name, text, line=lineno))
    return photos


@dataclass(frozen=True)
class ProcessedSet:
    """A processed folder, read by :meth:`read`."""

    folder: Path
    photos: list[ProcessedPhoto]
    report: PreprocessReport | None = None

    @staticmethod
    def exists(folder: str | Path) -> bool:
        """Whether ``folder`` holds a processed set (its metadata.jsonl)."""
        return (Path(folder) / METADATA_FILE).is_file()

    @classmethod
    def read(cls, folder: str | Path, what: str = "processed folder") -> ProcessedSet:
        """The set in ``folder`` (``what`` names it in errors: "processed_dir", "data" ...). One clear
        error when the folder is missing, being written, has no or a bad metadata.jsonl, or holds no
        photo. The photos' files are not opened here (see :meth:`check_photos`)."""
        folder = Path(folder)
        run = f"Run `facechain preprocess IMGS_DIR {folder}` on the person's photos first"
        if not folder.is_dir():
            raise InputError(f"{what} {folder} does not exist, so it has no {METADATA_FILE}. {run}.")
        check_settled(folder, "preprocess", what)
        meta = folder / METADATA_FILE
        if not meta.is_file():
            raise InputError(f"{what} {folder} has no {METADATA_FILE}, so it holds no processed photos. {run}.")
        photos = read_metadata(meta)
        if not photos:
            raise InputError(
                f"{what} {folder} holds no training photos ({METADATA_FILE} is empty): preprocessing kept none "
                f"of the input photos. See its {REPORT_FILE} for why each photo was rejected, and add clear, "
                "front-facing photos with one face each."
            )
        report = load_report(folder)
        scores = {e.output: e.scores for e in report.kept_entries()} if report else {}
        photos = [replace(p, mask=mask_file(p.file) if (folder / mask_file(p.file)).is_file() else None,
                          scores=scores.get(p.file, {})) for p in photos]
        return cls(folder, photos, report)

    @property
    def metadata_path(self) -> Path:
        return self.folder / METADATA_FILE

    @property
    def has_masks(self) -> bool:
        """Whether preprocessing saved head masks here (folders made before it did have no masks/)."""
        return (self.folder / MASKS_DIR).is_dir()

    @property
    def reference(self) -> ReferenceCrop | None:
        return None if self.report is None else self.report.reference

    def path(self, photo: ProcessedPhoto) -> Path:
        return self.folder / photo.file

    def check_photos(self) -> None:
        """Every photo is a file in the folder that decodes as an image (header and data), or a clear
        error naming it."""
        meta = self.metadata_path
        for photo in self.photos:
            path = self.path(photo)
            if not path.is_file():
                raise InputError(f"{meta} line {photo.line} names {photo.file}, which is not in {self.folder}. "
                                 "Re-run preprocessing.")
            try:
                load_photo(path, draft=False)
            except ImageRejected as exc:
                raise InputError(f"{path} (named on {meta} line {photo.line}) is not a usable image ({exc.detail}). "
                                 "Re-run preprocessing, or remove that line and the file.") from exc

    def caption_majority(self) -> str:
        """The caption most photos have (FaceChain's preprocessing writes one label per person)."""
        texts = [p.caption.strip() for p in self.photos if p.caption.strip()]
        if not texts:
            raise InputError(f"{self.metadata_path} holds no captions ('text' fields). Re-run preprocessing on "
                             "this folder.")
        return Counter(texts).most_common(1)[0][0]


def write_metadata(folder: str | Path, photos: list[ProcessedPhoto]) -> Path:
    """The set's metadata.jsonl: one ``{"file_name", "text"}`` line per photo."""
    return write_jsonl(Path(folder) / METADATA_FILE, [p.to_row() for p in photos])


def write_processed_set(folder: str | Path, photos: list[ProcessedPhoto], report: PreprocessReport, config) -> None:
    """metadata.jsonl, preprocess_config.json and report.json of a set whose photos (and masks, and
    reference crop) are already in ``folder`` (preprocessing's staging folder)."""
    folder = Path(folder)
    write_metadata(folder, photos)
    save_config(config, folder / CONFIG_FILE)
    report.write(folder / REPORT_FILE)
