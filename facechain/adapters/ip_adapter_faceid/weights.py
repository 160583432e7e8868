"""IP-Adapter-FaceID's weights: the published checkpoints, converting a trusted pickle to .safetensors once
(:func:`convert_checkpoint`), finding the converted file (:func:`resolve_weights`), and checking before any
sampling that a file is a FaceID checkpoint made for this UNet (:func:`read_shape`, :func:`check_state`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from facechain.errors import InputError, ModelNotFoundError
from facechain.io import save_safetensors

logger = logging.getLogger(__name__)

FACEID_REPO = "h94/IP-Adapter-FaceID"
# (adapter, family) -> the published pickle in FACEID_REPO; its converted copy is <stem>.safetensors
CHECKPOINTS = {
    ("ip-adapter-faceid", "sd15"): "ip-adapter-faceid_sd15.bin",
    ("ip-adapter-faceid", "sdxl"): "ip-adapter-faceid_sdxl.bin",
    ("ip-adapter-faceid-plusv2", "sd15"): "ip-adapter-faceid-plusv2_sd15.bin",
    ("ip-adapter-faceid-plusv2", "sdxl"): "ip-adapter-faceid-plusv2_sdxl.bin",
}
FAMILY_CROSS_DIM = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


def adapters_home() -> Path:
    """Where converted adapter weights live: $FACECHAIN_HOME/adapters (default ~/.cache/facechain/adapters)."""
    root = os.environ.get("FACECHAIN_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "facechain")
    return Path(root) / "adapters"


def convert_command(filename: str) -> str:
    return f"facechain convert {FACEID_REPO} --file {filename}"


def resolve_weights(adapter: str, family: str, weights: str = "") -> Path:
    """The adapter's .safetensors file: ``weights`` when given, else the converted default for
    ``family`` in :func:`adapters_home`. A pickle, or a default not converted yet, is one error
    saying which ``facechain convert`` command makes the file."""
    from facechain.models import resolve_weights_file

    if weights:
        suffix = Path(weights).suffix.lower()
        if suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
            raise InputError(
                f"identity.weights {weights} is a pickle file, which facechain does not load (it can run code). "
                f"Convert it once: `facechain convert {weights}` (reads tensors only) writes a .safetensors file; set "
                "identity.weights to that file.")
        return resolve_weights_file(weights, allow_pickle=False, what=f"{adapter} weights")
    name = CHECKPOINTS.get((adapter, family))
    if name is None:
        raise InputError(f"{adapter} has no published checkpoint for {family} base models. Use an SD1.5 or SDXL base "
                         "model, or set identity.weights to a checkpoint made for this one.")
    path = adapters_home() / (Path(name).stem + ".safetensors")
    if not path.is_file():
        raise ModelNotFoundError(
            f"{adapter} weights for {family} are not on this machine ({path}). Run once, with network access: "
            f"`{convert_command(name)}` (downloads {FACEID_REPO}/{name} and writes {path.name} there), or set "
            "identity.weights to a converted .safetensors file.")
    return path


def convert_checkpoint(src: str, out: str | os.PathLike | None = None, *, filename: str | None = None,
                       revision: str | None = None) -> Path:
    """Read a trusted pickle checkpoint tensors-only (``torch.load(weights_only=True)``) and write its
    tensors as one .safetensors file; nested dicts become dotted keys (``image_proj.norm.weight``, the
    layout diffusers' ``load_ip_adapter`` reads). ``src``: a local file, or a hub / ModelScope repo id
    with ``filename``. ``out``: default :func:`adapters_home` / <stem>.safetensors. An existing ``out``
    is never overwritten."""
    import torch

    from facechain.models import read_weights_file, resolve_weights_file

    path = resolve_weights_file(src, filename=filename, revision=revision, allow_pickle=True,
                                what="checkpoint to convert")
    dest = Path(out) if out is not None else adapters_home() / (path.stem + ".safetensors")
    if dest.suffix.lower() != ".safetensors":
        raise InputError(f"convert: the output {dest} must end in .safetensors.")
    if dest.exists():
        raise InputError(f"convert: {dest} already exists and is not overwritten. Remove it, or pass another --out.")
    state = read_weights_file(path, "checkpoint to convert")
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            logger.info("convert: %s is a %s, not a tensor; not kept", prefix or "<root>", type(value).__name__)

    walk("", state)
    if not flat:
        raise InputError(f"convert: {path} holds no tensors; nothing to convert.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(dest, flat, metadata={"converted_from": path.name})
    logger.info("convert: %d tensors from %s -> %s", len(flat), path, dest)
    return dest


@dataclass(frozen=True)
class FaceIDShape:
    embed_dim: int  # the face embedding size the projection takes
    cross_dim: int  # the cross-attention size it was made for
    layers: int  # IP attention layers (one per UNet cross-attention layer)
    has_lora: bool
    clip_dim: int | None = None  # Plus: the CLIP image encoder's hidden size it reads


PLUS_IN, PLUS_OUT = "image_proj.perceiver_resampler.proj_in.weight", "image_proj.perceiver_resampler.proj_out.weight"


def read_shape(path: Path, adapter: str = "ip-adapter-faceid") -> FaceIDShape:
    """What an IP-Adapter-FaceID (``plus``: FaceID Plus) .safetensors file was made for, from its tensor
    shapes (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys
                      if k in ("image_proj.proj.0.weight", "image_proj.norm.weight", PLUS_IN, PLUS_OUT)}
    except Exception as exc:
        raise InputError(f"{adapter} weights {path} could not be read as safetensors ({type(exc).__name__}); "
                         "the file is damaged or not an adapter.") from exc
    is_plus = PLUS_IN in shapes and PLUS_OUT in shapes
    is_plain = "image_proj.norm.weight" in shapes and not is_plus
    own = sorted(v for (a, _), v in CHECKPOINTS.items() if a == adapter)
    if "image_proj.proj.0.weight" not in shapes or not (is_plus or is_plain):
        raise InputError(f"{path} is not an IP-Adapter-FaceID checkpoint: it lacks the FaceID projection "
                         f"(image_proj.proj.0, and image_proj.norm or a perceiver resampler). Use {adapter}'s own file "
                         f"({', '.join(own)}, converted).")
    if is_plus != adapter.endswith("plusv2"):
        kind = "an IP-Adapter-FaceID Plus checkpoint" if is_plus else "a plain IP-Adapter-FaceID checkpoint"
        raise InputError(f"{path} is {kind}, and identity.adapter is {adapter}. Set identity.adapter to "
                         f"{'ip-adapter-faceid-plusv2' if is_plus else 'ip-adapter-faceid'}, or use {adapter}'s own "
                         f"file ({', '.join(own)}, converted).")
    layers = sum(1 for k in keys if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight"))
    cross = int(shapes[PLUS_OUT][0] if is_plus else shapes["image_proj.norm.weight"][0])
    return FaceIDShape(embed_dim=int(shapes["image_proj.proj.0.weight"][1]), cross_dim=cross, layers=layers,
                       has_lora=any(".to_q_lora." in k for k in keys),
                       clip_dim=int(shapes[PLUS_IN][1]) if is_plus else None)


def check_state(shape: FaceIDShape, unet, path: Path, family: str, adapter: str = "ip-adapter-faceid") -> None:
    """Refuse an adapter made for another UNet, before diffusers changes the pipeline."""
    want = int(unet.config.cross_attention_dim)
    if shape.cross_dim != want:
        made = FAMILY_CROSS_DIM.get(shape.cross_dim, f"a {shape.cross_dim}-wide model")
        raise InputError(
            f"IP-Adapter-FaceID weights {path} were made for {made} (cross-attention size {shape.cross_dim}), and the "
            f"base model is {family} (cross-attention size {want}). Use the adapter of the base model's family "
            f"({CHECKPOINTS.get((adapter, family), 'none published')}).")
    cross_layers = sum(1 for name in unet.attn_processors if not name.endswith("attn1.processor"))
    if shape.layers != cross_layers:
        raise InputError(
            f"IP-Adapter-FaceID weights {path} have {shape.layers} attention layers and the base model's UNet has "
            f"{cross_layers} cross-attention layers: the file was made for another UNet. Use the adapter made for this "
            "base model's family.")
