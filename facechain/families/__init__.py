"""Base-model families as plug-ins (see :mod:`facechain.families.base`).

    from facechain.families import get_family, family_of_pipeline
    family = get_family("sdxl")                        # or family_of_pipeline(pipe)
    cls = family.pipeline_class("inpaint")             # StableDiffusionXLInpaintPipeline
    added = family.added_conditioning(pooled, 1024, 1024, batch, device, dtype)

A new family is one module with a :class:`~facechain.families.base.Family` subclass, registered in
:data:`FAMILIES` (``_builtins`` below). Recognition asks every registered family in turn, so the order of
registration never matters: exactly one family must claim a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from facechain.errors import InputError
from facechain.families.base import TASKS, Family, FastMode, Sampling, Task, Training
from facechain.registry import Registry

__all__ = ["FAMILIES", "TASKS", "Family", "FastMode", "Sampling", "Task", "Training", "get_family",
           "family_of_checkpoint_keys", "family_of_denoiser_config", "family_of_folder", "family_of_pipeline"]


def _builtins(registry: "Registry[Family]") -> None:
    from facechain.families.sd15 import SD15
    from facechain.families.sdxl import SDXL

    for family in (SD15(), SDXL()):
        registry.register(family.name, family)


FAMILIES: Registry[Family] = Registry("model family", builtins=_builtins)


def get_family(family: "str | Family") -> Family:
    """The registered family called ``family`` (a Family is returned as it is)."""
    return family if isinstance(family, Family) else FAMILIES.get(str(family))


def _one(matches: list[Family], where: str, what: str) -> Family:
    if len(matches) > 1:  # pragma: no cover - guards two families claiming the same model
        raise InputError(f"{where} matches several model families ({[f.name for f in matches]}); {what}")
    return matches[0]


def family_of_denoiser_config(config, where: str) -> Family:
    """The family whose denoiser config this is (a UNet's or transformer's ``config.json`` as a mapping)."""
    config = dict(config)
    matches = [f for f in FAMILIES if f.matches_denoiser_config(config)]
    if not matches:
        raise InputError(f"{where} describes neither {' nor '.join(f.a_label for f in FAMILIES)} "
                         f"{'UNet' if 'in_channels' in config or 'addition_embed_type' in config else 'denoiser'}.")
    return _one(matches, where, "report this model")


def family_of_folder(folder: Path) -> Family:
    """The family of a diffusers folder, read from its denoiser's config."""
    folder = Path(folder)
    for family in FAMILIES:
        cfg = folder / family.denoiser / "config.json"
        if cfg.is_file():
            return family_of_denoiser_config(json.loads(cfg.read_text()), f"model folder {folder}: UNet config {cfg}")
    raise InputError(
        f"model folder {folder} has no unet/config.json, so it is not a diffusers Stable Diffusion "
        "folder. Pass a folder saved with `pipeline.save_pretrained()`, a single .safetensors "
        "checkpoint, or a hub id."
    )


def family_of_checkpoint_keys(keys, where: str) -> Family:
    """The family of a single-file checkpoint, from its tensor names."""
    keys = list(keys)
    matches = [f for f in FAMILIES if f.matches_checkpoint_keys(keys)]
    if matches:
        return _one(matches, f"checkpoint {where}", "pass a diffusers folder instead")
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise InputError(f"checkpoint {where} has a UNet but no text encoder keys; it cannot be used as a base model.")
    raise InputError(
        f"checkpoint {where} is not a Stable Diffusion checkpoint (no `model.diffusion_model.*` keys). "
        "A LoRA file is passed as a LoRA, not as a base model."
    )


def family_of_pipeline(pipe, what: str | None = None) -> Family:
    """The family of a loaded pipeline (or one made from it with ``from_pipe``), from its denoiser's config."""
    for family in FAMILIES:
        denoiser = getattr(pipe, family.denoiser, None)
        if denoiser is not None:
            return family_of_denoiser_config(denoiser.config, what or f"{type(pipe).__name__}'s UNet")
    raise InputError(f"{what or type(pipe).__name__} has no denoiser (UNet) that facechain knows; pass a diffusers "
                     "pipeline of a supported base model.")


# ------------------------------------------------------------------ the families' defaults, as tables
def fast_loras() -> dict[str, str]:
    """Family name -> its fast-mode adapter (LCM-LoRA) hub id."""
    return {f.name: f.fast.lora for f in FAMILIES if f.fast is not None}


def reference_repos() -> dict[str, str]:
    """Family name -> the hub repo whose configs describe its single-file checkpoints."""
    return {f.name: f.reference_repo for f in FAMILIES}


def default_controlnets(kind: str) -> dict[str, str]:
    """Family name -> its default ControlNet of ``kind`` ("openpose", "canny", "depth")."""
    return {f.name: f.controlnets[kind] for f in FAMILIES if kind in f.controlnets}
