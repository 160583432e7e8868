"""What the adapter trainers (RepControlNet, FeedFace) share on top of the one training loop
(:mod:`facechain.train.loop`: the output folder rule, resuming, the step loop with its log, atomic
safetensors checkpoints): accelerate and the output folder set up around a run, their resume check,
the frozen base model, and the cached latents and text embeddings.

An adapter trainer builds its model and data, then hands the loop an :class:`AdapterSteps` made of a
``step(step) -> loss`` function and a ``trainable() -> {name: tensor}`` function; checkpoints hold those
tensors, the AdamW state and the RNG state, and ``--resume`` continues from the latest one with the
same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facechain.errors import InputError
from facechain.runtime import resolve_mixed_precision, restored_after_run, set_threads
from facechain.train import loop
import numpy as np
from facechain.models import load_pipeline, resolve_model
from facechain.outputs import OutputDir, check_writable_folder

logger = logging.getLogger(__name__)


def check_output_dir(cfg, out: Path, final_file: str, same: tuple[str, ...], what: str, od=None):
    """Checkpoints to resume from (``cfg.resume``), or a refusal: the loop's output folder rule
    (:func:`facechain.train.loop.check_output_dir`), and a resumed run must keep the settings in ``same``."""
    existing = loop.check_output_dir(out, cfg.resume, (final_file,), what, od)
    if existing:
        saved = json.loads((existing[-1].path / "state.json").read_text(encoding="utf-8")).get("config", {})
        changed = [k for k in same if str(saved.get(k)) != str(getattr(cfg, k))]
        if changed:
            raise InputError(f"--resume: {', '.join(changed)} differ from the run in {out}. Resume with the same "
                             "settings (only max_train_steps may grow), or start a new output folder.")
    return existing


class AdapterSteps(loop.Steps):
    """An adapter trainer's step (``loss(step) -> tensor``) and trained tensors (``trainable()``)."""

    divergence_hint = "Lower --learning-rate, or use --mixed-precision bf16 or no."

    def __init__(self, desc: str, loss: Callable[[int], object], trainable: Callable[[], dict]):
        self.desc, self._loss, self._trainable = desc, loss, trainable

    def loss(self, step: int):
        return self._loss(step)

    def trainable(self) -> dict:
        return self._trainable()


def new_run(cfg, od, accelerator, gen, optimizer, weights_name: str, extra: dict) -> loop.Run:
    """The loop's state for an adapter config (``output_dir``, ``max_train_steps``, ``checkpointing_steps``,
    ``checkpoints_total_limit``); ``optimizer`` as accelerate prepared it."""
    return loop.Run(Path(cfg.output_dir), od, accelerator, gen, optimizer, cfg.max_train_steps, cfg.checkpointing_steps,
                    cfg.checkpoints_total_limit, extra=extra, weights_name=weights_name)


def square_image(path: Path, size: int, what: str):
    """An image file centre-cropped to a square and resized to ``size`` (RGB uint8, writable)."""
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
    from accelerate import Accelerator

    check_writable_folder(Path(cfg.output_dir), "output_dir")
    od = None
    with restored_after_run():
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


@dataclass
class Base:
    """The frozen base model of an adapter run, on accelerate's device."""

    accelerator: object
    resolved: object  # facechain.models.ResolvedModel
    pipe: object
    text: object  # facechain.train.text.TextConditioner
    objective: object  # the family's training objective (noised(x0, generator, device) -> noisy, timesteps, target)

    @property
    def device(self):
        return self.accelerator.device

    @property
    def family(self) -> str:
        return self.resolved.family


def load_base(cfg, accelerator) -> Base:
    """The base pipeline (``cfg.base_model``, fp32 master weights) with its VAE and text encoders frozen."""
    import torch

    from facechain.families import get_family
    from facechain.train.text import TextConditioner

    resolved = resolve_model(cfg.base_model, cfg.revision, cfg.sub_path, allow_pickle=cfg.allow_pickle)
    pipe = load_pipeline(resolved, torch_dtype=torch.float32, single_file_config=cfg.single_file_config)
    text = TextConditioner.from_pipeline(pipe, resolved.family)
    for m in [pipe.vae, *text.encoders]:
        m.requires_grad_(False)
    return Base(accelerator, resolved, pipe, text, get_family(resolved.family).objective(pipe.scheduler.config))


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
