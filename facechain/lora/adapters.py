"""Loading a LoRA file of any layout into a pipeline as a named adapter (:func:`load_adapter`), with the
check that every module of the file landed."""

from __future__ import annotations

from pathlib import Path

import torch

from facechain.errors import FacechainError, InputError
from facechain.families import Family, family_of_pipeline
from facechain.lora.files import read_tensors
from facechain.lora.formats import from_attn_processor_format, from_kohya, key_format, pipeline_components


def _file_modules(state: dict[str, torch.Tensor]) -> set[str]:
    """``component.module`` of every LoRA module in a diffusers-layout state dict."""
    out = set()
    for key in state:
        for marker in (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_linear_layer.", ".lora_magnitude_vector"):
            if marker in key:
                out.add(key.split(marker, 1)[0])
                break
    return out


def _loaded_modules(pipe, adapter_name: str) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in pipeline_components(pipe).values() for _, mod in m.named_modules()
               if isinstance(mod, BaseTunerLayer) and adapter_name in getattr(mod, "lora_A", {}))


def loadable_state(path: Path, pipe, family: str | Family, what: str = "LoRA file") -> tuple[dict[str, torch.Tensor] | None, int, str]:
    """What :func:`load_adapter` hands to diffusers for the LoRA file ``path``: (state dict, or None
    when diffusers reads the file itself; the number of modules the file holds; its layout).

    diffusers 0.42 reads its own files (keeping the alpha metadata of their header) but drops
    FaceChain's attention-processor ``.bin`` keys, DoRA magnitudes in kohya files and text-encoder
    kohya keys without ``out_proj`` (each with a warning, the adapter then missing or weaker), so
    every layout but diffusers' own is converted here first, against the pipeline's own modules."""
    keys = _header_keys(path)
    fmt = key_format(keys if keys is not None else read_tensors(path, what))
    if fmt == "diffusers" and keys is not None:  # diffusers reads the file itself: only its header was read here
        return None, len(_file_modules(keys)), fmt
    tensors = read_tensors(path, what)
    if fmt == "unknown":
        sample = sorted(tensors)[:2]
        raise InputError(f"LoRA file {path}: its keys ({sample}...) are in no LoRA layout facechain reads (diffusers, "
                         "peft, kohya / LoCon / LoHa / LoKr / DoRA, or FaceChain's attention-processor files).")
    if fmt == "kohya":
        state, n = from_kohya(tensors, pipe, family, path)
        return state, n, fmt
    if fmt == "attn_processor":  # attention processors applied up @ down unscaled
        state = {f"unet.{k}": v for k, v in from_attn_processor_format(tensors).items()}
    elif fmt == "peft":
        state = {f"unet.{k.removeprefix('base_model.model.')}": v for k, v in tensors.items()}
    else:  # diffusers layout in a pickle: handed over as read (tensors-only)
        state = tensors
    return state, len(_file_modules(state)), fmt


def _header_keys(path: Path) -> list[str] | None:
    """The tensor names of a .safetensors file from its header alone (None for a pickle, or a header that does
    not read: :func:`read_tensors` then says what is wrong with the file)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except Exception:
        return None


def load_adapter(pipe, path: Path, adapter_name: str, what: str = "LoRA") -> None:
    """Load a LoRA file into ``pipe`` as adapter ``adapter_name`` with diffusers' ``load_lora_weights``,
    in any layout :func:`loadable_state` reads. A diffusers .safetensors file is loaded by diffusers
    from the file itself, so the alpha/rank metadata in its header is honoured; a pickle (only reached
    when the caller's ``allow_pickle`` let :func:`resolve` return it) is read with ``weights_only=True``.
    The adapter must then hold every module of the file: anything less (nothing registered, part of
    the file dropped) is one InputError naming the file, its layout and the fix, never a warning."""
    path = Path(path)
    family = family_of_pipeline(pipe, f"pipeline of {what}")
    fmt = "?"
    try:
        state, expected, fmt = loadable_state(path, pipe, family, what)
        if state is None:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
        else:
            pipe.load_lora_weights(state, adapter_name=adapter_name)
    except FacechainError:
        raise
    except Exception as exc:  # a truncated file, keys of another model family, ...
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(
            f"{what} {path} ({adapter_name}, {fmt} layout) could not be loaded ({type(exc).__name__}: {first}). Check "
            "that the file is a complete LoRA made for this base model's family."
        ) from exc
    loaded = _loaded_modules(pipe, adapter_name)
    if loaded < expected:
        if loaded:
            pipe.delete_adapters(adapter_name)
        raise InputError(
            f"{what} {path} ({fmt} layout): {expected - loaded} of its {expected} modules matched no layer of this "
            f"{family} model{' (none did, so no adapter was registered)' if not loaded else ''}. The LoRA was made "
            f"for another model family or architecture; use a LoRA made for {family} models.")
