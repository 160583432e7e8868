"""Base models: finding one (:func:`resolve_model`, a :class:`ResolvedModel`) and loading its
text-to-image pipeline (:func:`load_pipeline`), with the components and variant the weights rule picks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facechain.errors import InputError, ModelNotFoundError
from facechain.families import family_of_checkpoint_keys as _family_of_keys
from facechain.families import FAMILIES, family_of_folder, family_of_pipeline, get_family
from facechain.models.device import dtype_kwargs, is_half
from facechain.models.hub import Hub, fetch_first, fetch_from_hub, hub_sources, looks_like_path
from facechain.models.weights import (
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    SKIPPED_COMPONENTS,
    check_checkpoint_file,
    check_folder_weights,
    check_variant,
    checkpoint_keys,
    plan_folder,
    read_model_index,
    safetensors_only,
)
import importlib
import inspect

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    """A base model found on disk."""

    path: Path  # a diffusers folder, or a checkpoint file
    format: Literal["diffusers", "single_file"]
    family: str  # the model family's name (facechain.families)
    reference: str  # what the user asked for, for messages and saved configs
    allow_pickle: bool = False  # pickle weight files in a diffusers folder may load (tensors-only)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "family": self.family, "reference": self.reference}


def native_size(pipe) -> int:
    """A loaded pipeline's native image side (the size its family was trained at), as its family reads it."""
    return family_of_pipeline(pipe).native_size_of(pipe)


def family_of_checkpoint_keys(keys, where: str) -> str:
    """The family name of a single-file checkpoint, from its tensor names (facechain.families decides)."""
    return _family_of_keys(keys, where).name


def resolve_model(
    model: str | os.PathLike,
    revision: str | None = None,
    subfolder: str | None = None,
    *,
    allow_pickle: bool = False,
    hub: Hub = "auto",
    dtype=None,
    variant: str = "auto",
) -> ResolvedModel:
    """Find ``model`` on disk, downloading it from a hub if needed: the Hugging Face hub, then ModelScope.
    A download fetches only what :func:`load_pipeline` loads (the ``subfolder``'s components but the safety
    checker, in the ``variant`` that ``dtype`` picks: see :func:`plan_component`).

    Raises ModelNotFoundError naming every way to provide the model when it cannot be had,
    UnsafeCheckpointError for pickle weights (a checkpoint, or a loaded component's) without ``allow_pickle``.
    """
    ref = str(model)
    if not ref:
        raise InputError("base model is empty. Pass a hub id, a local diffusers folder or a .safetensors file.")
    check_variant(variant)
    revision = revision or None
    subfolder = subfolder or None
    local = Path(ref).expanduser()
    if local.exists():
        return _resolve_local(local, subfolder, allow_pickle, ref)
    if looks_like_path(ref):
        raise ModelNotFoundError(
            f"base model '{ref}' does not exist on disk. Pass an existing diffusers folder, a .safetensors "
            "checkpoint file, or a hub id of the form owner/name."
        )
    where = f"base model '{ref}'" + (f" revision '{revision}'" if revision else "")
    src, path = fetch_first(
        hub_sources(ref, revision, subfolder or "", hub),
        lambda s: fetch_from_hub(s, kind="pipeline", where=where, half=is_half(dtype), variant=variant,
                                 allow_pickle=allow_pickle), where,
        "Provide it one of these ways: (1) download it on a machine with network access and pass the local "
        "folder (diffusers layout) or .safetensors file; (2) check the hub id and revision; (3) log in with "
        "`huggingface-cli login` if the repo is gated. To smoke-test an install with no network at all, build a "
        "tiny model with `facechain make-tiny-model OUT_DIR` and pass OUT_DIR.")
    logger.info("base model %s found on %s at %s", ref, src, path)
    if subfolder and not path.exists():
        raise ModelNotFoundError(f"base model '{ref}': sub path '{subfolder}' does not exist in {src}.")
    return _resolve_local(path, None, allow_pickle, ref)


def _resolve_local(path: Path, subfolder: str | None, allow_pickle: bool, ref: str) -> ResolvedModel:
    if subfolder:
        sub = path / subfolder
        if not sub.exists():
            raise ModelNotFoundError(f"base model '{ref}': sub path '{subfolder}' does not exist inside {path}.")
        path = sub
    if path.is_file():
        check_checkpoint_file(path, allow_pickle, "base model checkpoint")
        family = family_of_checkpoint_keys(checkpoint_keys(path), str(path))
        return ResolvedModel(path=path, format="single_file", family=family, reference=ref)
    if (path / "model_index.json").is_file() or any((path / f.denoiser / "config.json").is_file() for f in FAMILIES):
        family = family_of_folder(path).name
        if not allow_pickle:
            check_folder_weights(path, ref)
        return ResolvedModel(path=path, format="diffusers", family=family, reference=ref, allow_pickle=allow_pickle)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES)
    if len(files) == 1:
        return _resolve_local(files[0], None, allow_pickle, ref)
    raise InputError(
        f"base model folder {path} holds neither a diffusers model (model_index.json) nor exactly one checkpoint "
        f"file (found {len(files)}). Pass the folder's sub path or the checkpoint file itself."
    )


def load_pipeline(
    resolved: ResolvedModel,
    *,
    torch_dtype=None,
    single_file_config: str | os.PathLike | None = None,
    variant: str = "auto",
    **kwargs,
):
    """Load the text-to-image pipeline of ``resolved`` (the class its family names for the task). Other tasks
    derive from it with ``Pipeline.from_pipe``.

    ``single_file_config``: a diffusers folder or hub id whose configs describe a single-file
    checkpoint's architecture (default: the family's reference repo, ``Family.reference_repo``).
    ``variant``: which weight files of a diffusers folder load, per component (:func:`plan_component`);
    the safety checker, feature extractor and image encoder are never loaded.
    """
    import torch

    family = get_family(resolved.family)
    cls = family.pipeline_class("txt2img")
    torch_dtype = torch_dtype or torch.float32
    for key, value in family.load_kwargs().items():
        kwargs.setdefault(key, value)
    try:
        if resolved.format == "diffusers":
            for name in SKIPPED_COMPONENTS:
                if name in inspect.signature(cls.__init__).parameters:
                    kwargs.setdefault(name, None)
            kwargs = {**_components_by_plan(resolved, torch_dtype, variant, kwargs), **kwargs}
            return cls.from_pretrained(str(resolved.path), **dtype_kwargs(torch_dtype),
                                       **safetensors_only(resolved.allow_pickle), **kwargs)
        config = str(single_file_config or family.reference_repo)
        return cls.from_single_file(str(resolved.path), config=config, **dtype_kwargs(torch_dtype), **kwargs)
    except (OSError, EnvironmentError) as exc:
        if resolved.format == "single_file":
            raise ModelNotFoundError(
                f"single-file checkpoint {resolved.path} needs the {resolved.family} architecture configs from "
                f"'{single_file_config or family.reference_repo}', which could not be loaded ({exc}). "
                "Pass --single-file-config with a local diffusers folder of the same architecture."
            ) from exc
        raise ModelNotFoundError(f"base model folder {resolved.path} could not be loaded: {exc}") from exc


def _components_by_plan(resolved: ResolvedModel, dtype, variant: str, passed: dict) -> dict:
    """``variant`` and the components diffusers would load in another variant or format than
    :func:`plan_component` picks, loaded here with their own class (from ``model_index.json``). diffusers
    gives every component that has any fp16 file the fp16 variant once ``variant="fp16"`` is passed."""
    plans = {c: p for c, p in plan_folder(resolved.path, resolved.reference, half=is_half(dtype), variant=variant,
                                          allow_pickle=resolved.allow_pickle).items() if c not in passed}
    common = "fp16" if any(p.variant == "fp16" for p in plans.values()) else None
    index = read_model_index(resolved.path) or {}
    out = {"variant": common} if common else {}
    for comp, plan in plans.items():
        names = [f.name for f in (resolved.path / comp).iterdir() if f.is_file()]
        derived = common if common and any(len(n.split(".")) > 2 and n.split(".")[1].startswith(common)
                                           for n in names) else None
        if not plan.files or derived == plan.variant or comp not in index:
            continue
        library, class_name = index[comp]
        model_cls = getattr(importlib.import_module(library), class_name)
        logger.info("base model %s: %s loaded from %s", resolved.reference, comp, ", ".join(plan.files))
        out[comp] = model_cls.from_pretrained(str(resolved.path / comp), variant=plan.variant,
                                              use_safetensors=plan.format == "safetensors", **dtype_kwargs(dtype))
    return out
