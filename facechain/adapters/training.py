"""The parts every adapter trainer shares (RepControlNet, FeedFace): the output folder rule, resuming,
the step loop with its log, and atomic safetensors checkpoints (``facechain.train.checkpoint``).

An adapter trainer builds its model and data, then hands :func:`run_steps` a ``step(step) -> loss``
function and a ``trainable() -> {name: tensor}`` function; checkpoints hold those tensors, the AdamW
state and the RNG state, and ``--resume`` continues from the latest one with the same result as an
uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facechain.errors import InputError

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


def check_output_dir(cfg, out: Path, final_file: str, same: tuple[str, ...], what: str):
    """Checkpoints to resume from (``cfg.resume``), or a refusal: a folder holding a run needs --resume,
    and a resumed run must keep the settings in ``same``."""
    from facechain.train import checkpoint as ckpt_io

    existing = ckpt_io.list_checkpoints(out)
    if cfg.resume:
        if existing:
            saved = json.loads((existing[-1].path / "state.json").read_text(encoding="utf-8")).get("config", {})
            changed = [k for k in same if str(saved.get(k)) != str(getattr(cfg, k))]
            if changed:
                raise InputError(f"--resume: {', '.join(changed)} differ from the run in {out}. Resume with the same "
                                 "settings (only max_train_steps may grow), or start a new output folder.")
        elif (out / final_file).exists():
            raise InputError(f"--resume: {out} holds a finished {what} and no checkpoint. Choose a new output folder.")
        return existing
    if existing or (out / final_file).exists():
        raise InputError(f"output_dir {out} already holds a {what} run. Pass --resume to continue it, or choose an "
                         "empty output folder.")
    return existing


@dataclass
class Run:
    """One adapter training run's shared state."""

    cfg: object  # needs output_dir, max_train_steps, checkpointing_steps, checkpoints_total_limit
    od: object  # the output folder's OutputDir (None on processes other than the main one)
    accelerator: object
    gen: object  # the training RNG (torch.Generator), saved with each checkpoint
    weights_name: str  # the trained tensors' file inside a checkpoint
    extra: dict  # saved in each checkpoint's state.json (config, model)


def resume(run: Run, existing: list, load: Callable[[dict], None], optimizer) -> int:
    """Load the latest checkpoint (trained tensors through ``load``, AdamW, RNG); the step to go on from."""
    from facechain.train import checkpoint as ckpt_io

    if not existing:
        return 0
    state, weights, opt_state = ckpt_io.read_state(existing[-1].path, run.weights_name)
    load(weights)
    optimizer.load_state_dict(opt_state)
    ckpt_io.read_rng(existing[-1].path, run.gen, run.accelerator.process_index)
    logger.info("resuming from %s (step %d)", existing[-1].path, int(state["step"]))
    return int(state["step"])


def run_steps(run: Run, *, start: int, step: Callable[[int], object], optimizer, trainable: Callable[[], dict],
              progress: bool, desc: str) -> int:
    """Steps ``start+1 .. max_train_steps``: ``step(n)`` returns the loss (a tensor); this backpropagates,
    steps the optimizer, logs, and checkpoints every ``checkpointing_steps`` and at the end."""
    from tqdm.auto import tqdm

    from facechain.io import append_jsonl
    from facechain.train import checkpoint as ckpt_io

    cfg, od, accelerator = run.cfg, run.od, run.accelerator
    main = accelerator.is_main_process
    out = Path(cfg.output_dir)
    log_path = out / LOG_FILE
    n = start
    bar = tqdm(total=cfg.max_train_steps, initial=start, desc=desc, unit="step", disable=not (progress and main))
    while n < cfg.max_train_steps:
        t0 = time.perf_counter()
        loss = step(n)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n += 1
        bar.update(1)
        value = loss.detach().item()
        if not math.isfinite(value):
            raise InputError(f"the training loss became {value} at step {n}. Lower --learning-rate, or use "
                             "--mixed-precision bf16 or no.")
        if main:
            append_jsonl(log_path, {"step": n, "loss": value, "seconds": round(time.perf_counter() - t0, 5)})
        if n % cfg.checkpointing_steps == 0 or n == cfg.max_train_steps:
            staging = ckpt_io.staging_dir(out, n)
            ckpt_io.write_rng(staging, run.gen, accelerator.process_index)
            accelerator.wait_for_everyone()
            if main:
                ckpt_io.finalize(od, staging, n, lora_flat=trainable(), opt_state=optimizer.state_dict(), sched_state={},
                                 score=None, extra=run.extra, weights_name=run.weights_name)
                ckpt_io.prune(od, cfg.checkpoints_total_limit, set())
                od.record([LOG_FILE], logs=(LOG_FILE,))
            accelerator.wait_for_everyone()
    bar.close()
    return n


def square_image(path: Path, size: int, what: str):
    """An image file centre-cropped to a square and resized to ``size`` (RGB uint8, writable)."""
    import numpy as np
    from PIL import Image

    from facechain.images import read_image

    img = Image.fromarray(read_image(path, what))
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return np.array(img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC))


def train_in_output_dir(cfg, data, train: Callable, progress: bool) -> Path:
    """Run ``train(cfg, data, od, accelerator, progress)`` under accelerate (``cfg.mixed_precision``; the
    processes of a multi-GPU launch) with ``cfg.output_dir`` open for this command (locked, its record
    kept) by the main process (``od`` is None on the others), then give back the caller's thread count
    and accelerate's process-wide state."""
    import torch
    from accelerate import Accelerator

    from facechain.outputs import OutputDir, check_writable_folder
    from facechain.train.trainer import _release_accelerator_state, resolve_mixed_precision, set_threads

    check_writable_folder(Path(cfg.output_dir), "output_dir")
    threads = torch.get_num_threads()
    od = None
    try:
        set_threads(0)
        accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision))
        if accelerator.is_main_process:
            od = OutputDir.acquire(cfg.output_dir, "train-adapter", allow_other_files=cfg.allow_other_files)
        accelerator.wait_for_everyone()
        return train(cfg, data, od, accelerator, progress)
    finally:
        if od is not None:
            od.release()
        torch.set_num_threads(threads)
        _release_accelerator_state()


@dataclass
class Base:
    """The frozen base model of an adapter run, on accelerate's device."""

    accelerator: object
    resolved: object  # facechain.models.ResolvedModel
    pipe: object
    text: object  # facechain.train.text.TextConditioner
    noise_scheduler: object

    @property
    def device(self):
        return self.accelerator.device

    @property
    def family(self) -> str:
        return self.resolved.family


def load_base(cfg, accelerator) -> Base:
    """The base pipeline (``cfg.base_model``, fp32 master weights) with its VAE and text encoders frozen."""
    import torch
    from diffusers import DDPMScheduler

    from facechain.models import load_pipeline, resolve_model
    from facechain.train.text import TextConditioner

    resolved = resolve_model(cfg.base_model, cfg.revision, cfg.sub_path, allow_pickle=cfg.allow_pickle)
    pipe = load_pipeline(resolved, torch_dtype=torch.float32, single_file_config=cfg.single_file_config)
    text = TextConditioner.from_pipeline(pipe, resolved.family)
    for m in [pipe.vae, *text.encoders]:
        m.requires_grad_(False)
    return Base(accelerator, resolved, pipe, text, DDPMScheduler.from_config(pipe.scheduler.config))


def encode_images(base: Base, paths: list[Path], resolution: int):
    """The VAE latents (N, 4, h, w) of the images, square-cropped to ``resolution``, on the CPU."""
    import torch

    vae = base.pipe.vae
    vae.to(base.device)
    with torch.no_grad():
        latents = []
        for p in paths:
            px = torch.from_numpy(square_image(p, resolution, "training image")).permute(2, 0, 1)[None]
            px = px.float().div(127.5).sub(1.0).to(base.device)
            latents.append(vae.encode(px).latent_dist.mean * vae.config.scaling_factor)
    vae.to("cpu")
    return torch.cat(latents).cpu()


def encode_captions(base: Base, captions: list[str]):
    """(prompt embeddings, pooled embeddings or None), on the CPU."""
    import torch

    for enc in base.text.encoders:
        enc.to(base.device)
    with torch.no_grad():
        embeds, pooled = base.text.encode(base.text.tokenize(captions))
    for enc in base.text.encoders:
        enc.to("cpu")
    return embeds.cpu(), None if pooled is None else pooled.cpu()


def added_conditions(base: Base, pooled, idx, resolution: int, dtype):
    """The family's added conditions for the samples ``idx`` (SDXL: pooled text + size ids; None for SD1.5)."""
    from facechain.families import get_family

    return get_family(base.family).added_conditioning(None if pooled is None else pooled[idx].to(base.device),
                                                      resolution, resolution, len(idx), base.device, dtype)
