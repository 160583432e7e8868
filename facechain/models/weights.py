"""Weight files: which suffixes are safe, reading a checkpoint without unpickling code, which files of a
component or folder load (the variant and format rule, :func:`plan_component`), and the fingerprint of a
model's files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from facechain.errors import InputError, UnsafeCheckpointError
import hashlib
import pickle

if TYPE_CHECKING:
    from facechain.models.pipeline import ResolvedModel

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a checkpoint file (a pickle only after :func:`check_checkpoint_file` allowed it)."""
    if path.suffix.lower() in SAFE_SUFFIXES:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    import torch

    # Only reached with allow_pickle, and even then tensors-only: a checkpoint that carries other
    # pickled objects (old Lightning .ckpt files) is refused rather than unpickled.
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds pickled objects besides tensors ({type(exc).__name__}), which facechain does "
            "not unpickle even with --allow-pickle. Convert it to .safetensors (e.g. with a trusted converter on a "
            "machine you control) and pass that file."
        ) from exc
    sd = sd.get("state_dict", sd)
    return list(sd.keys())


def check_checkpoint_file(path: Path, allow_pickle: bool, what: str = "checkpoint") -> None:
    """Refuse pickle formats unless allowed; refuse unknown suffixes."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{what} {path} is a pickle file ({suffix}); loading a pickle can run arbitrary code, so "
                "facechain refuses it by default. Use a .safetensors version of the file, or pass "
                "--allow-pickle if you trust its source."
            )
    elif suffix not in SAFE_SUFFIXES:
        raise InputError(f"{what} {path}: unknown file type '{suffix}'. Expected a .safetensors file.")


def read_weights_file(path: Path, what: str = "checkpoint", fix: str = ""):
    """The contents of a weights file that :func:`check_checkpoint_file` let through: a .safetensors
    file, or a pickle read with ``torch.load(weights_only=True)`` (tensors and plain containers only).
    A pickle holding other objects raises UnsafeCheckpointError; a damaged file, a TorchScript archive
    or anything unreadable one InputError naming ``what``, the file and ``fix``."""
    import torch

    def first(exc: Exception) -> str:
        return str(exc).splitlines()[0][:160] if str(exc) else ""

    fix = f" {fix}" if fix else ""
    if path.suffix.lower() in SAFE_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise InputError(f"{what} {path} could not be read as a safetensors file ({type(exc).__name__}: "
                             f"{first(exc)}); it is damaged or not a model.{fix}") from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise UnsafeCheckpointError(
                f"{what} {path} holds pickled objects besides tensors, which facechain does not unpickle even "
                "with allow_pickle (tensors-only loading, torch.load(weights_only=True)). Convert it to "
                ".safetensors on a machine you trust and pass that file.") from exc
        raise InputError(f"{what} {path} could not be read as a PyTorch checkpoint ({type(exc).__name__}); it is "
                         f"damaged or not a model.{fix}") from exc
    except RuntimeError as exc:
        if "torchscript" in str(exc).lower():
            raise InputError(f"{what} {path} is a TorchScript archive, which is not read (it can carry code). "
                             "Pass the model's state-dict weights (.pth/.safetensors) instead.") from exc
        raise InputError(f"{what} {path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: "
                         f"{first(exc)}).{fix}") from exc
    except Exception as exc:
        raise InputError(f"{what} {path} could not be read as a PyTorch checkpoint ({type(exc).__name__}); it is "
                         f"damaged or not a model.{fix}") from exc


def safetensors_only(allow_pickle: bool) -> dict:
    """``from_pretrained`` kwargs: only .safetensors weights load unless pickles are allowed."""
    return {} if allow_pickle else {"use_safetensors": True}


# --------------------------------------------------------------------------- weight files, variants, components

Variant = Literal["auto", "fp16", "none"]
VARIANTS = ("auto", "fp16", "none")
VARIANT_HELP = ("weights variant: auto (the fp16 files when running in float16 and they exist; a component saved only "
                "as fp16 files loads those in any dtype), fp16, or none (the full-precision files)")
# File stems diffusers (diffusion_pytorch_model) and transformers (model, pytorch_model) read in from_pretrained.
# Other weight files in a folder (OpenPoseXL2.safetensors, open_clip_model.safetensors) are not loaded by it.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
# Pipeline components generation never loads: FaceChain's and diffusers' safety checker (1.2 GB in SD1.5 repos,
# often pickle-only in 2023 conversions) and its image processor; an identity adapter brings its own image encoder.
SKIPPED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
# Small files a component or model folder needs besides its weights (configs, tokenizer vocabularies).
SIDE_SUFFIXES = (".json", ".txt", ".model")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {list(VARIANTS)}, got {variant!r}. auto picks the fp16 files when "
                         "running in float16 and they exist.")
    return variant


def weight_file_kind(name: str) -> tuple[str, str | None] | None:
    """(``"safetensors"`` | ``"pickle"``, variant) of a weight file ``from_pretrained`` reads, with shard indexes
    (``*.safetensors.index[.fp16].json``); None for any other file. The variant is a dotted part after the stem
    (``diffusion_pytorch_model.fp16.safetensors``), diffusers' and transformers' naming."""
    base = name.rsplit("/", 1)[-1]
    stem = base.split(".", 1)[0].split("-0", 1)[0]
    if stem not in WEIGHT_STEMS:
        return None
    parts = base.split(".")
    if ".safetensors" in base:
        fmt = "safetensors"
    elif any(base.endswith(s) or f"{s}.index" in base for s in PICKLE_SUFFIXES):
        fmt = "pickle"
    else:
        return None
    variant = next((p.split("-", 1)[0] for p in parts[1:-1] if p.startswith("fp16")), None)
    return fmt, variant


@dataclass(frozen=True)
class ComponentPlan:
    """The weight files of one component (a pipeline sub-folder, or a model folder: ``name`` ""), and the variant
    they are loaded as (None: the full-precision files)."""

    name: str
    variant: str | None
    files: tuple[str, ...]

    @property
    def format(self) -> str | None:
        return weight_file_kind(self.files[0])[0] if self.files else None


def plan_component(names, *, where: str, half: bool, variant: str = "auto", allow_pickle: bool = False,
                   component: str = "", needs_weights: bool = True) -> ComponentPlan:
    """Which of ``names`` (a component's file names) load, by one rule for local folders and hub listings:
    safetensors before pickles (pickles only with ``allow_pickle``); variant ``auto`` takes the fp16 files when
    ``half`` and they exist, else the full-precision files, else (a folder saved only as fp16) the fp16 files;
    ``fp16``/``none`` take only those. ``where`` names the model in errors."""
    check_variant(variant)
    found: dict[tuple[str, str | None], list[str]] = {}
    for n in names:
        kind = weight_file_kind(n)
        if kind:
            found.setdefault(kind, []).append(n)
    label = f"{where}" + (f" component '{component}'" if component else "")
    if not found:
        if needs_weights:
            raise InputError(f"{label} has no weight files (diffusion_pytorch_model.* / model.*), so it cannot be "
                             "loaded. Pass a complete diffusers folder or hub id.")
        return ComponentPlan(component, None, ())
    order = {"fp16": ["fp16"], "none": [None]}.get(variant, ["fp16", None] if half else [None, "fp16"])
    formats = ["safetensors", "pickle"] if allow_pickle else ["safetensors"]
    for fmt in formats:  # a safetensors file of any variant before a pickle
        for v in order:
            if (fmt, v) in found:
                return ComponentPlan(component, v, tuple(sorted(found[(fmt, v)])))
    shown = ", ".join(sorted(n.rsplit("/", 1)[-1] for files in found.values() for n in files))
    if not allow_pickle and all(fmt == "pickle" for fmt, _ in found):
        raise UnsafeCheckpointError(
            f"{label} ships its weights only as pickle files ({shown}); loading a pickle can run arbitrary code, so "
            "facechain refuses it by default. Use a copy saved with safetensors, or pass --allow-pickle "
            "(allow_pickle: true) if you trust its source (tensors-only loading).")
    have = sorted({v or "none" for fmt, v in found if fmt in formats})
    raise InputError(f"{label}: variant '{variant}' was asked for, and its weight files ({shown}) are of the "
                     f"variant(s) {have}. Set variant: auto (or one of {have}).")


def _needs_weights(folder: Path) -> bool:
    """A model folder (its config names a diffusers ``_class_name`` or transformers ``architectures``) needs
    weights; a scheduler or tokenizer folder does not."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except ValueError:
        return False
    return isinstance(data, dict) and ("_class_name" in data or "architectures" in data)


def loaded_components(model_index: dict | None, folders) -> list[str]:
    """The pipeline components ``load_pipeline`` loads: those ``model_index.json`` names with a class (not
    ``[null, null]``) and that exist as folders, less :data:`SKIPPED_COMPONENTS`; without a model index, every
    sub-folder but those."""
    folders = set(folders)
    if model_index is None:
        names = folders
    else:
        names = {k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, (list, tuple))
                 and len(v) == 2 and v[0] is not None and v[1] is not None}
    return sorted(n for n in names & folders if n not in SKIPPED_COMPONENTS)


def read_model_index(folder: Path) -> dict | None:
    """A diffusers folder's ``model_index.json``; None when it has none."""
    index = folder / "model_index.json"
    return json.loads(index.read_text()) if index.is_file() else None


def plan_folder(folder: Path, ref: str, *, half: bool, variant: str = "auto", allow_pickle: bool = False,
                ) -> dict[str, ComponentPlan]:
    """:func:`plan_component` for every component of a diffusers pipeline folder that is loaded."""
    folders = [p.name for p in folder.iterdir() if p.is_dir()]
    comps = loaded_components(read_model_index(folder), folders)
    return {c: plan_component([f.name for f in (folder / c).iterdir() if f.is_file()], where=f"base model '{ref}'",
                              half=half, variant=variant, allow_pickle=allow_pickle, component=c,
                              needs_weights=_needs_weights(folder / c))
            for c in comps}


def check_folder_weights(folder: Path, ref: str) -> None:
    """Refuse a diffusers folder when a component that is loaded ships its weights only as pickle files (a
    pickle-only ``safety_checker/``, never loaded, is no reason). Any variant counts."""
    folders = [p.name for p in folder.iterdir() if p.is_dir()]
    for c in loaded_components(read_model_index(folder), folders):
        names = [f.name for f in (folder / c).iterdir() if f.is_file()]
        kinds = {weight_file_kind(n) for n in names} - {None}
        if kinds and all(fmt == "pickle" for fmt, _ in kinds):
            plan_component(names, where=f"base model '{ref}' ({folder})", half=False, component=c)  # raises


# --------------------------------------------------------------------------- identity

# Files up to this size are hashed whole; larger ones by samples (head, tail and evenly spaced
# blocks), so fingerprinting a 7 GB SDXL folder reads a few MB.
_FINGERPRINT_WHOLE = 8 << 20
_FINGERPRINT_BLOCK = 1 << 20
_FINGERPRINT_SAMPLES = 8


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _FINGERPRINT_WHOLE:
            h.update(fh.read())
        else:
            span = size - _FINGERPRINT_BLOCK
            for i in range(_FINGERPRINT_SAMPLES):
                fh.seek(span * i // (_FINGERPRINT_SAMPLES - 1))
                h.update(fh.read(_FINGERPRINT_BLOCK))
    return h.hexdigest()


def files_fingerprint(path: str | os.PathLike) -> str:
    """An identity of a file or folder's files: their relative paths, sizes and (sampled) sha256.
    The same files reached through another path (absolute vs relative, a symlink) have the same
    fingerprint; other files placed behind the same path have a different one."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha256()
    for p in files:
        rel = "" if root.is_file() else p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + _file_digest(p).encode() + b"\n")
    return h.hexdigest()


def model_fingerprint(resolved: ResolvedModel) -> str:
    """:func:`files_fingerprint` of the model's folder or checkpoint file."""
    return files_fingerprint(resolved.path)
