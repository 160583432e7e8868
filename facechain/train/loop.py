"""The one training loop every trainer runs on (the face LoRA, FeedFace, RepControlNet): the output
folder rule, resuming, the step loop with its log and divergence check, and atomic checkpoints.

A trainer builds its model and data, then supplies its step as a :class:`Steps` subclass (sd-scripts'
``NetworkTrainer`` style: override what differs) and runs

    existing = check_output_dir(out, cfg.resume, ("model.safetensors",), "model", od)
    run = Run(out, od, accelerator, gen, optimizer, max_steps, every, limit, extra={"config": ...})
    start = resume(run, existing, load_weights)
    steps = run_steps(run, MySteps(...), start, progress=True)

Checkpoints (``checkpoints/step-NNNNNN``, see :mod:`facechain.train.checkpoint`) hold the trained tensors,
the AdamW state, the lr-scheduler state and each process's RNG state, so ``--resume`` continues with the
same result as an uninterrupted run. ``train_log.jsonl`` has one row per step; a resumed run first drops
the rows of the steps it runs again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from facechain.errors import InputError
from facechain.io import append_jsonl, read_jsonl
from facechain.train import checkpoint as ckpt_io
from facechain.train.artifact import LOG_FILE

if TYPE_CHECKING:
    from accelerate import Accelerator

    from facechain.outputs import OutputDir

logger = logging.getLogger(__name__)


class TrainingDivergedError(InputError):
    """The loss became NaN or infinite (a setting to change: the learning rate, the precision)."""


def check_output_dir(out: Path, resume: bool, final_files: tuple[str, ...], final: str,
                     od: OutputDir | None = None) -> list[ckpt_io.Checkpoint]:
    """The output folder rule: a folder holding a run (checkpoints, or ``final_files``, what a finished
    run leaves; ``final`` names them) is continued with ``resume`` or refused; ``resume`` continues
    from a checkpoint and refuses a finished run without one. A ``train_log.jsonl`` facechain did not
    write is refused (``od``: the main process's OutputDir). Returns the checkpoints, oldest first."""
    existing = ckpt_io.list_checkpoints(out)
    finished = any((out / f).exists() for f in final_files)
    if resume:
        if not existing and finished:
            raise InputError(
                f"--resume: output_dir {out} holds a finished run's {final} ({' or '.join(final_files)}) but no checkpoint "
                f"to continue from, so the run cannot be resumed (a new run here would replace that {final}). Choose a new "
                "output folder."
            )
        if not existing:
            logger.info("--resume: no checkpoint in %s yet; starting from step 0", out)
    elif existing or finished:
        raise InputError(
            f"output_dir {out} already holds a training run (checkpoints or a {final}). "
            "Pass --resume to continue it, or choose an empty output folder."
        )
    if od is not None and (out / LOG_FILE).exists() and not od.owns(LOG_FILE):
        raise InputError(f"output_dir {out} holds a {LOG_FILE} that facechain did not write; it is left untouched. "
                         "Move it away or choose another output folder.")
    return existing


@dataclass
class Run:
    """One training run's state, shared by the loop, resuming and checkpoints."""

    out: Path  # the output folder
    od: OutputDir | None  # its OutputDir on the main process, None on the others
    accelerator: Accelerator
    gen: torch.Generator  # the training RNG, saved with each checkpoint (one per process)
    optimizer: torch.optim.Optimizer  # as accelerate prepared it
    max_steps: int
    checkpointing_steps: int
    checkpoints_total_limit: int | None
    extra: dict = field(default_factory=dict)  # saved in each checkpoint's state.json (config, model, ...)
    weights_name: str = "lora.safetensors"  # the trained tensors' file inside a checkpoint
    lr_scheduler: object | None = None  # accelerate's scheduler, stepped after the optimizer
    scores: dict[int, float | None] = field(default_factory=dict)  # each checkpoint's score, by step

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def log_path(self) -> Path:
        return self.out / LOG_FILE


class Steps(ABC):
    """What one trainer supplies to :func:`run_steps`; a subclass overrides what differs."""

    desc = "train"  # the progress bar's label
    divergence_hint = "Lower the learning rate."  # the fix, in the trainer's own flag spelling
    grads_to_none = True  # False when the gradients are views that must stay (the LoRA's flat parameter)

    @abstractmethod
    def loss(self, step: int) -> torch.Tensor:
        """The loss of step ``step + 1``: a tensor to backpropagate."""

    @abstractmethod
    def trainable(self) -> dict[str, torch.Tensor]:
        """The trained tensors, as a checkpoint holds them."""

    def before_optimizer_step(self) -> None:
        """Runs after the backward pass (gradient clipping)."""

    def log_row(self, step: int, loss: float, seconds: float) -> dict:
        """The step's row in ``train_log.jsonl``."""
        return {"step": step, "loss": loss, "seconds": seconds}

    def validate(self, step: int, staging: Path) -> float | None:
        """Main process, before the checkpoint of ``step`` is committed: its score (files written into
        ``staging`` become part of the checkpoint)."""
        return None

    def keep(self) -> set[int]:
        """Checkpoint steps that pruning keeps (besides the latest)."""
        return set()


def resume(run: Run, existing: list[ckpt_io.Checkpoint], load: Callable[[dict], None]) -> int:
    """Continue from the latest of ``existing`` (the trained tensors through ``load``, the optimizer,
    the lr scheduler, the RNG) and drop the log rows of the steps that will run again; with no
    checkpoint, a log an earlier run left is removed. Returns the step to go on from."""
    start = 0
    if existing:
        latest = existing[-1]
        state, weights, opt_state = ckpt_io.read_state(latest.path, run.weights_name)
        load(weights)
        run.optimizer.load_state_dict(opt_state)
        if run.lr_scheduler is not None:
            sched = run.lr_scheduler.scheduler
            sched.load_state_dict({**sched.state_dict(), **state["lr_scheduler"]})
        ckpt_io.read_rng(latest.path, run.gen, run.accelerator.process_index)
        start = int(state["step"])
        run.scores = {c.step: c.score for c in existing}
        logger.info("resuming from %s at step %d of %d", latest.path.name, start, run.max_steps)
    if run.main and run.log_path.exists():
        if existing:  # the rows of steps that will be run again end the log
            rows = [r for r in read_jsonl(run.log_path) if r.get("step", 0) <= start]
            run.od.rewrite_log(LOG_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
        else:  # a fresh run in a folder whose earlier run left only its log
            run.od.remove([LOG_FILE])
    return start


def run_steps(run: Run, steps: Steps, start: int, *, progress: bool) -> int:
    """Steps ``start+1 .. run.max_steps``: backpropagate ``steps.loss``, step the optimizer (and the lr
    scheduler), log each step, and checkpoint every ``checkpointing_steps`` and at the end. A loss
    that is not finite raises :class:`TrainingDivergedError`. Returns the last step."""
    from tqdm.auto import tqdm

    accelerator, optimizer = run.accelerator, run.optimizer
    bar = tqdm(total=run.max_steps, initial=start, desc=steps.desc, unit="step", disable=not (progress and run.main))
    n = start
    while n < run.max_steps:
        t0 = time.perf_counter()
        loss = steps.loss(n)
        accelerator.backward(loss)
        steps.before_optimizer_step()
        optimizer.step()
        if run.lr_scheduler is not None:
            run.lr_scheduler.step()
        optimizer.zero_grad(set_to_none=steps.grads_to_none)
        n += 1
        bar.update(1)
        value = loss.detach().item()
        if not math.isfinite(value):
            raise TrainingDivergedError(f"the training loss became {value} at step {n}. {steps.divergence_hint}")
        if run.main:
            append_jsonl(run.log_path, steps.log_row(n, value, round(time.perf_counter() - t0, 5)))
            if n == start + 1:  # the log is ours from its first row: a run killed before its first checkpoint can rerun
                run.od.record([LOG_FILE], logs=(LOG_FILE,))
            bar.set_postfix(loss=f"{value:.4f}")
        if n % run.checkpointing_steps == 0 or n == run.max_steps:
            run.scores[n] = write_checkpoint(run, steps, n)
    bar.close()
    accelerator.wait_for_everyone()
    return n


def write_checkpoint(run: Run, steps: Steps, step: int) -> float | None:
    """Every process stages its RNG state; the main process scores the checkpoint (``steps.validate``),
    commits it atomically, prunes to ``checkpoints_total_limit`` and records the log. Returns the score
    (None on the other processes)."""
    accelerator = run.accelerator
    staging = ckpt_io.staging_dir(run.out, step)
    ckpt_io.write_rng(staging, run.gen, accelerator.process_index)
    accelerator.wait_for_everyone()
    score = None
    if run.main:
        score = steps.validate(step, staging)
        sched_state = run.lr_scheduler.scheduler.state_dict() if run.lr_scheduler is not None else {}
        final = ckpt_io.finalize(run.od, staging, step, lora_flat=steps.trainable(), opt_state=run.optimizer.state_dict(),
                                 sched_state=sched_state, score=score, extra=run.extra, weights_name=run.weights_name)
        ckpt_io.prune(run.od, run.checkpoints_total_limit, steps.keep())
        run.od.record([LOG_FILE], logs=(LOG_FILE,))
        logger.debug("checkpoint %s written", final)
    accelerator.wait_for_everyone()
    return score
