"""LoRA files: writing the two files the trainer exports (atomically), reading one into peft state dicts
with its scale, and finding one (a local file, a trainer's output folder, a hub id).

Written files: the diffusers file (``pytorch_lora_weights.safetensors``, loadable with
``pipe.load_lora_weights``) and the kohya file (``*_kohya.safetensors``, the
``lora_unet_*.lora_down/lora_up/alpha`` keys that A1111, ComfyUI and kohya's sd-scripts use).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from facechain.errors import InputError
from facechain.families import Family, get_family
from facechain.io import atomic_path, safetensors_size, save_safetensors
from facechain.lora.formats import (
    COMPONENTS,
    KOHYA_FILE,
    LORA_FILE,
    LoraDict,
    from_attn_processor_format,
    key_format,
    to_kohya,
)
import json
from facechain.models import read_weights_file

# --------------------------------------------------------------------------- diffusers format


def save_diffusers(folder: str | Path, lora: LoraDict, family: str | Family, rank: int, alpha: float) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` with the pipeline class's own
    ``save_lora_weights`` (keys ``unet.*``/``text_encoder.*`` + the adapter metadata: rank, alpha
    and target modules), atomically (:func:`facechain.io.atomic_path`): a temporary file beside it, renamed into place."""
    from diffusers.utils import convert_state_dict_to_diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls = get_family(family).pipeline_class("txt2img")
    # The scale alpha/rank is folded into the up matrices and the file records alpha = rank, so a
    # loader that drops the safetensors metadata (``load_lora_weights(load_file(...))``) still
    # applies the trained update.
    scale = alpha / rank
    meta = {"r": rank, "lora_alpha": float(rank)}
    kwargs = {}
    for comp in COMPONENTS:
        sd = lora.get(comp)
        if not sd:
            continue
        if scale != 1.0:
            sd = {k: (v * scale if ".lora_B." in k else v) for k, v in sd.items()}
        # target modules by the model's own paths: peft matches them as suffixes, so they fit a text encoder
        # with or without transformers 4's ``text_model.`` level
        kwargs[f"{comp}_lora_adapter_metadata"] = {**meta, "target_modules": sorted(
            m.removeprefix("text_model.") for m in _modules(sd))}
        if comp != "unet":  # the classic CLIP names other tools read (transformers 5 dropped ``text_model.``)
            sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
        kwargs[f"{comp}_lora_layers"] = convert_state_dict_to_diffusers({k: v.contiguous() for k, v in sd.items()})
    size = sum(safetensors_size(sd) for key, sd in kwargs.items() if key.endswith("_lora_layers"))
    with atomic_path(folder / LORA_FILE, size) as tmp:  # diffusers writes the temporary file beside the old one
        cls.save_lora_weights(str(tmp.parent), safe_serialization=True, weight_name=tmp.name, **kwargs)
    return folder / LORA_FILE


def _modules(peft_sd: dict[str, torch.Tensor]) -> set[str]:
    return {k.rsplit(".lora_", 1)[0] for k in peft_sd if ".lora_" in k}


def save_kohya(folder: str | Path, lora: LoraDict, family: str | Family, alpha: float, layers_per_block: int = 2) -> Path:
    path = Path(folder) / KOHYA_FILE
    save_safetensors(path, to_kohya(lora, family, alpha, layers_per_block), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha)})
    return path


# --------------------------------------------------------------------------- reading a LoRA file


def read_tensors(path: Path, what: str = "LoRA file") -> dict[str, torch.Tensor]:
    """A safetensors file, or (only reached after the caller allowed pickle) a tensor-only pickle
    loaded with ``weights_only=True``, which refuses anything but tensors and containers."""
    sd = read_weights_file(Path(path), what)
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise InputError(f"{what} {path} does not hold a flat mapping of names to tensors.")
    return sd


def read_lora_file(path: str | Path, family: str | Family, unet_config=None) -> tuple[LoraDict, float]:
    """Read a diffusers-, kohya- or attention-processor-format LoRA file into peft state dicts per
    component, using diffusers' own key conversion (``lora_state_dict``). Returns (lora, scale)
    where ``scale`` = alpha / rank is the factor the file's update is applied with."""
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_unet_state_dict_to_peft

    cls = get_family(family).pipeline_class("txt2img")
    kwargs = {"unet_config": unet_config} if unet_config is not None else {}
    path = Path(path)
    tensors = read_tensors(path)
    fmt = key_format(tensors)
    if fmt == "unknown":
        raise InputError(f"LoRA file {path}: its keys ({sorted(tensors)[:2]}...) are in no LoRA layout facechain reads "
                         "(diffusers, kohya, peft, or diffusers' older attention-processor files).")
    if fmt == "attn_processor":
        return {"unet": from_attn_processor_format(tensors)}, 1.0  # attention processors applied up @ down unscaled
    if fmt == "peft":
        tensors = {f"unet.{k}": v for k, v in tensors.items()}  # a bare peft state dict of a UNet
    out = cls.lora_state_dict(tensors, **kwargs)
    state_dict, network_alphas = out[0], out[1]
    lora: LoraDict = {}
    for key, value in state_dict.items():
        comp, rest = key.split(".", 1)
        lora.setdefault(comp, {})[rest] = value
    lora = {comp: (convert_unet_state_dict_to_peft if comp == "unet" else convert_all_state_dict_to_peft)(sd)
            for comp, sd in lora.items()}
    rank = next((v.shape[0] for sd in lora.values() for k, v in sd.items() if ".lora_A." in k), None)
    alphas = {float(v) for v in (network_alphas or {}).values()}
    if len(alphas) > 1:
        raise InputError(f"LoRA file {path} uses several alphas {sorted(alphas)}; only one alpha per file is supported as an init LoRA.")
    alpha = alphas.pop() if alphas else _metadata_alpha(path)
    return lora, (alpha / rank if alpha is not None and rank else 1.0)


def _metadata_alpha(path: Path) -> float | None:
    """``lora_alpha`` recorded by diffusers' ``save_lora_weights`` (None: alpha = rank)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = (fh.metadata() or {}).get("lora_adapter_metadata")
    if not meta:
        return None
    values = {float(v) for k, v in json.loads(meta).items() if k.endswith("lora_alpha")}
    return values.pop() if len(values) == 1 else None


def resolve(ref: str | os.PathLike, *, allow_pickle: bool = False, what: str = "LoRA",
            revision: str | None = None, filename: str | None = None) -> Path:
    """The LoRA file ``ref`` names: a file; a folder (a trainer's output folder holds the
    diffusers file and a kohya copy: the diffusers one is taken; another folder must hold exactly
    one .safetensors file); or a hub / ModelScope repo id (``filename`` defaults to the diffusers
    file name). Pickle files need ``allow_pickle``."""
    from facechain.models import resolve_weights_file

    if filename is None:
        local = Path(ref).expanduser()
        if not local.is_file() and not (local.is_dir() and not (local / LORA_FILE).is_file()):
            filename = LORA_FILE
    return resolve_weights_file(ref, filename=filename, revision=revision, allow_pickle=allow_pickle, what=what)
