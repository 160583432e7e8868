"""The trained LoRA: what training hands to generation, templates, batch and the server, read here only.

A trainer's output folder holds::

    pytorch_lora_weights.safetensors        the LoRA in diffusers' layout (pipe.load_lora_weights)
    pytorch_lora_weights_kohya.safetensors  the same LoRA under the kohya names A1111/ComfyUI read
    train_config.json                       the TrainConfig of the run (its base model among it)
    train_log.jsonl                         one line per logged step
    checkpoints/                            the resumable checkpoints

:meth:`TrainedLora.read` is the one reader of a finished run, :meth:`TrainProgress.read` of a run's log
(one still going too); the trainer writes the folder
(:func:`facechain.train.train`, its config with :func:`facechain.config.save_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facechain.config import from_dict, load_mapping, upgrade_names
from facechain.errors import InputError
from facechain.io import read_jsonl
from facechain.outputs import check_settled
from facechain.train.config import TrainConfig

CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.jsonl"


def _weight_files() -> tuple[str, str]:
    # facechain.lora names the files (it imports torch, so it is imported when a folder is read)
    from facechain import lora as lora_io

    return lora_io.LORA_FILE, lora_io.KOHYA_FILE


def read_train_config(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` saved at ``path`` (a train_config.json), through the config bridge (old
    setting names read as their new ones); InputError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist: the folder holds no finished or started `facechain train` run. "
                         "Point it at the trainer's output folder.")
    try:
        data = load_mapping(path)  # drops save_config's "_type"
        return from_dict(TrainConfig, upgrade_names(TrainConfig, data, str(path), warn=False), where=str(path))
    except InputError as exc:
        raise InputError(f"{path} is not a train_config.json facechain can read: {exc}. Train the LoRA again, or "
                         "point at the output folder of `facechain train`.") from exc


@dataclass(frozen=True)
class TrainedLora:
    """A finished training run's folder, read by :meth:`read`."""

    folder: Path
    weights: Path  # the diffusers-layout file
    kohya: Path | None  # the kohya-layout copy (None when absent)
    config: TrainConfig

    @staticmethod
    def is_trained(folder: str | Path) -> bool:
        """Whether ``folder`` holds a finished run's LoRA (its diffusers-layout file)."""
        return (Path(folder) / _weight_files()[0]).is_file()

    @classmethod
    def read(cls, folder: str | Path, what: str = "lora_dir") -> TrainedLora:
        """The run in ``folder`` (``what`` names it in errors). One clear error when the folder is
        missing, being written, holds no finished LoRA, or its train_config.json cannot be read."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{what} {folder} does not exist. Train a face LoRA with `facechain train` (or "
                             "`sh train_lora.sh`) and pass its output folder.")
        check_settled(folder, "train", what)
        lora_file, kohya_file = _weight_files()
        weights = folder / lora_file
        if not weights.is_file():
            raise InputError(f"{what} {folder} has no {lora_file}: training has not finished there. Run (or resume, "
                             "--resume) `facechain train` into it, or pass the output folder of a finished run.")
        kohya = folder / kohya_file
        return cls(folder, weights, kohya if kohya.is_file() else None, read_train_config(folder / CONFIG_FILE))

    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return self.folder / LOG_FILE

    def base_model_ref(self) -> tuple[str, str | None, str | None]:
        """(base_model, revision, sub_path) the LoRA was trained on; None for an unset revision or sub_path."""
        return self.config.base_model, self.config.revision or None, self.config.sub_path or None


@dataclass(frozen=True)
class TrainProgress:
    """How far the run in a trainer's output folder got, from its train_log.jsonl (a run still going too)."""

    total: int | None  # the run's steps (its last start or resume line); None before it started
    losses: list[tuple[int, float]]  # (step, loss) of every logged step

    @property
    def step(self) -> int:
        """The last logged step (0 before the first)."""
        return self.losses[-1][0] if self.losses else 0

    @classmethod
    def read(cls, folder: str | Path) -> TrainProgress:
        path = Path(folder) / LOG_FILE
        rows = [r for r in read_jsonl(path) if isinstance(r, dict)] if path.is_file() else []
        total = next((r.get("max_train_steps") for r in reversed(rows) if r.get("event") in ("start", "resume")), None)
        return cls(total, [(r["step"], r["loss"]) for r in rows if "loss" in r])
