"""The generation manifest: what ``facechain generate`` writes beside its portraits (``manifest.json``)
and batch, the server and eval read back, here only.

:class:`GenerationManifest` is the whole file; :class:`StyleRecord` one requested style (made, or
failed with its error) and :class:`KeptImage` one kept portrait. The blocks that only describe a run
(the base model, fusion, upscale, each candidate's report, the config) stay mappings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from facechain.config import from_dict
from facechain.errors import InputError
from facechain.io import write_json

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class KeptImage:
    """One kept portrait: ``file`` (relative to the output folder), the candidate it came from, its seed
    and its identity score (None when unranked)."""

    file: str
    index: int
    seed: int
    score: float | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "index": self.index, "seed": self.seed, "score": self.score}


@dataclass(frozen=True)
class StyleRecord:
    """One requested style: how its candidates were made and what was kept, or the ``error`` it failed
    with (then only ``style`` and ``error`` are written)."""

    style: str
    error: str | None = None
    style_file: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    multipliers: dict = field(default_factory=dict)  # {"human": ..., "style": ...}
    adapters: dict = field(default_factory=dict)  # adapter name -> weight used
    style_lora: str | None = None
    settings: dict = field(default_factory=dict)
    kept: list[KeptImage] = field(default_factory=list)  # best first
    candidates: list[dict] = field(default_factory=list)  # every candidate's report, in generation order
    dropped: list[dict] = field(default_factory=list)  # {"index", "seed", "reason"}
    timings: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict:
        if self.failed:
            return {"style": self.style, "error": self.error}
        return {"style": self.style, "style_file": self.style_file, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt, "multipliers": self.multipliers, "adapters": self.adapters,
                "style_lora": self.style_lora, "settings": self.settings, "kept": [k.to_dict() for k in self.kept],
                "candidates": self.candidates, "dropped": self.dropped, "timings": self.timings}


@dataclass(frozen=True)
class RankingInfo:
    """How candidates were ranked: ``on``, by which face ``backend``, the usable face sizes."""

    on: bool = False
    backend: str | None = None
    usable_face_frac: list[float] | None = None
    small_face_kept_when_detailed: bool | None = None  # a face the detailer re-drew is not dropped as small

    def to_dict(self) -> dict:
        return {"on": self.on, "backend": self.backend, "usable_face_frac": self.usable_face_frac,
                "small_face_kept_when_detailed": self.small_face_kept_when_detailed}


@dataclass(frozen=True)
class GenerationManifest:
    """``manifest.json`` of a generate job (and ``failed_manifest.json`` of one where every style
    failed). Every field may be missing in a manifest written before it existed."""

    base_model: dict | None = None  # the resolved model (ResolvedModel.to_dict)
    face_lora: str | None = None
    identity_adapter: str | None = None
    subject: dict | None = None  # {"trigger", "attribute"}
    reference: dict | None = None  # the ranking/fusion reference face; written under the key "template"
    fusion: dict | None = None
    ranking: RankingInfo | None = None
    upscale: dict | None = None
    styles: list[StyleRecord] = field(default_factory=list)  # one per requested style, in the order asked for
    timings: dict = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)  # {"item", "error"} per failed style
    config: dict = field(default_factory=dict)  # the GenerateConfig

    KEYS: ClassVar[dict[str, str]] = {"reference": "template"}  # field -> its key in the file, where they differ

    def to_dict(self) -> dict:
        return {"base_model": self.base_model, "face_lora": self.face_lora, "identity_adapter": self.identity_adapter,
                "subject": self.subject, "template": self.reference, "fusion": self.fusion,
                "ranking": None if self.ranking is None else self.ranking.to_dict(), "upscale": self.upscale,
                "styles": [s.to_dict() for s in self.styles], "timings": self.timings, "failed": self.failed,
                "config": self.config}

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest") -> GenerationManifest:
        if not isinstance(data, dict):
            raise InputError(f"{where} must hold a mapping, got {type(data).__name__}.")
        data = dict(data)
        for name, key in cls.KEYS.items():
            if key in data:
                data[name] = data.pop(key)
        return from_dict(cls, data, where=where)

    def write(self, folder: str | Path, name: str = MANIFEST_FILE) -> Path:
        return write_json(Path(folder) / name, self.to_dict())

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / MANIFEST_FILE).is_file()

    @classmethod
    def read(cls, folder: str | Path) -> GenerationManifest:
        """The manifest of the generate output folder ``folder``; InputError naming the file when it is
        missing or not one ``facechain generate`` wrote."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise InputError(f"{folder} has no {MANIFEST_FILE}, so it is not the output folder of a finished "
                             "`facechain generate` job. Pass that folder (the job's output_dir).")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
            raise InputError(f"{path} could not be read as JSON ({exc}). Run the generate job again.") from exc
        try:
            return cls.from_dict(data, where=str(path))
        except InputError as exc:
            raise InputError(f"{path} is not a manifest `facechain generate` wrote: {exc}. Run the generate job "
                             "again, or pass the folder it wrote.") from exc

    def kept_images(self) -> list[tuple[StyleRecord, KeptImage]]:
        """Every kept portrait with its style, styles in the order asked for, best first within each."""
        return [(s, k) for s in self.styles if not s.failed for k in s.kept]
