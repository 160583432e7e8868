"""Resumable training checkpoints, written atomically and without pickle.

``OUTPUT_DIR/checkpoints/step-000100/`` holds

* ``lora.safetensors``: the LoRA factors (peft keys, prefixed by component),
* ``optimizer.safetensors``: every AdamW state tensor (``state.<param>.<name>``),
* ``rng.safetensors``: the state of the training random generator (one per process),
* ``state.json``: step, likeness score, optimizer param groups, lr-scheduler state, config.

The files are assembled in ``OUTPUT_DIR/.facechain/tmp/`` and committed into place through the
output folder's record (:class:`facechain.outputs.OutputDir`): a kill while assembling leaves
only temporary files, swept by the next run; a kill during the commit is completed by the next
run before it reads any checkpoint. Pruning deletes only checkpoint files the record lists.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from facechain.io import save_safetensors, write_json
from facechain.errors import InputError
from facechain.outputs import STATE_DIR

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    score: float | None


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / "state.json").is_file():
                try:
                    state = json.loads((p / "state.json").read_text(encoding="utf-8"))
                    score = state.get("score") if isinstance(state, dict) else None
                except ValueError as exc:
                    raise _damaged(p, exc) from exc
                found.append(Checkpoint(p, int(m[1]), score))
    return sorted(found, key=lambda c: c.step)


def staging_dir(output_dir: Path, step: int) -> Path:
    """Where every process writes its part of the checkpoint of ``step`` before the main process commits it."""
    path = Path(output_dir) / STATE_DIR / "tmp" / f"checkpoint-step-{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_rng(staging: Path, gen: torch.Generator, process_index: int) -> None:
    save_safetensors(staging / f"rng-{process_index}.safetensors", {"cpu_generator": gen.get_state()})


def read_rng(ckpt: Path, gen: torch.Generator, process_index: int) -> None:
    from safetensors.torch import load_file

    path = ckpt / f"rng-{process_index}.safetensors"
    if not path.is_file():
        raise InputError(
            f"--resume: checkpoint {ckpt} holds no random state for process {process_index}: it was written by a run "
            "with fewer processes. Resume with the same number of processes (accelerate config) as the original run."
        )
    try:
        gen.set_state(load_file(str(path))["cpu_generator"])
    except Exception as exc:
        raise _damaged(ckpt, exc) from exc


def optimizer_to_safetensors(opt_state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON param groups."""
    tensors = {}
    for pid, st in opt_state["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{pid}.{name}"] = t
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt_state["param_groups"]]
    return tensors, groups


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def finalize(od, staging: Path, step: int, *, lora_flat: dict, opt_state: dict, sched_state: dict,
             score: float | None, extra: dict, weights_name: str = "lora.safetensors") -> Path:
    """Write the main-process files into ``staging`` and commit them as ``checkpoints/step-NNNNNN``.
    ``lora_flat``: the trained tensors, written as ``weights_name`` (another trainer's own name)."""
    save_safetensors(staging / weights_name, lora_flat)
    tensors, groups = optimizer_to_safetensors(opt_state)
    save_safetensors(staging / "optimizer.safetensors", tensors)
    sched = {k: v for k, v in sched_state.items() if _jsonable(v)}
    write_json(staging / "state.json", {"step": step, "score": score, "optimizer_param_groups": groups,
                                        "lr_scheduler": sched, **extra})
    final = checkpoint_dir(od.path, step)
    rel = final.relative_to(od.path).as_posix()
    od.remove(od.owned_under(rel))  # re-reached after a resume from an earlier checkpoint
    od.commit(staging, replace=False, into=rel)
    return final


def read_state(ckpt: Path, weights_name: str = "lora.safetensors") -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(state.json, the trained tensors (``weights_name``), optimizer state dict)."""
    from safetensors.torch import load_file

    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        missing = [k for k in ("step", "config", "lr_scheduler", "optimizer_param_groups") if k not in state]
        if missing:
            raise KeyError(f"state.json lacks {missing}")
        lora = load_file(str(ckpt / weights_name))
        opt = optimizer_from_safetensors(load_file(str(ckpt / "optimizer.safetensors")), state["optimizer_param_groups"])
    except Exception as exc:  # JSON, missing file, truncated safetensors, wrong layout
        raise _damaged(ckpt, exc) from exc
    return state, lora, opt


def _damaged(ckpt: Path, exc: Exception):
    return InputError(
        f"checkpoint {ckpt} is damaged or incomplete ({type(exc).__name__}: {str(exc)[:160]}). Move that folder out of "
        f"{ckpt.parent} to resume from the checkpoint before it, or start a new run in a new output folder."
    )


def prune(od, limit: int | None, keep: set[int]) -> None:
    """Keep at most ``limit`` checkpoints: the latest and the best-scoring (``keep`` is never removed)."""
    if limit is None:
        return
    ckpts = list_checkpoints(od.path)
    if len(ckpts) <= limit:
        return
    latest = ckpts[-1].step
    removable = [c for c in ckpts if c.step != latest and c.step not in keep]
    removable.sort(key=lambda c: (c.score is not None, c.score or 0.0, c.step))  # worst, then oldest first
    for c in removable[: len(ckpts) - limit]:
        od.remove(od.owned_under(c.path.relative_to(od.path).as_posix()))


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False
