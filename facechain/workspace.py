"""One person's folders, as batch (``output_dir/<name>/``) and the server (``people/<id>/``) lay them out::

    photos/      the uploaded photos (the server; batch reads each person's own photos folder)
    processed/   preprocessing's output (ProcessedSet)
    lora/        training's output (TrainedLora)
    portraits/   generation's output (GenerationManifest + PNGs)
    template/    the template stage's output
    eval/        evaluation's report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facechain.preprocess.artifact import ProcessedSet
from facechain.train.artifact import TrainedLora


@dataclass(frozen=True)
class PersonWorkspace:
    root: Path

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def lora(self) -> Path:
        return self.root / "lora"

    @property
    def portraits(self) -> Path:
        return self.root / "portraits"

    @property
    def template(self) -> Path:
        return self.root / "template"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def is_trained(self) -> bool:
        """Whether training finished here (the LoRA file exists; :meth:`trained_lora` reads it)."""
        return TrainedLora.is_trained(self.lora)

    def trained_lora(self) -> TrainedLora:
        return TrainedLora.read(self.lora, "the person's lora folder")

    def processed_set(self) -> ProcessedSet:
        return ProcessedSet.read(self.processed, "the person's processed folder")
