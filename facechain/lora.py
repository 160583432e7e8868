"""LoRA files, in one place: reading (diffusers, kohya, peft and the old attention-processor
format; alpha from the keys or the file's metadata), finding one (a local file, a trainer's output
folder, a hub id), loading it into a pipeline as a named adapter, and writing the two files the
trainer exports.

Written files: the diffusers file (``pytorch_lora_weights.safetensors``, loadable with
``pipe.load_lora_weights``) and the kohya file (``*_kohya.safetensors``, the
``lora_unet_*.lora_down/lora_up/alpha`` keys that A1111, ComfyUI and kohya's sd-scripts use).

Internally a LoRA is ``{"unet": peft_sd, "text_encoder": peft_sd, "text_encoder_2": peft_sd}``
where ``peft_sd`` is :func:`peft.get_peft_model_state_dict` of that model (keys
``<module>.lora_A.weight`` / ``<module>.lora_B.weight``).

Kohya naming: SD1.5-family UNets keep the diffusers module path (kohya's sd-scripts build SD1.5
LoRAs on a diffusers-layout UNet); SDXL UNets use the original SGM block names
(``input_blocks.N.1``, ``middle_block.1``, ``output_blocks.N.1``; :func:`sgm_unet_path`) as
sd-scripts does for SDXL. Text encoders: ``lora_te_`` (SD1.5), ``lora_te1_``/``lora_te2_`` (SDXL).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from facechain.errors import FacechainError, InputError
from facechain.io import _umask, save_safetensors

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# LCM-LoRA (Luo et al. 2023) per model family: fast mode of generate and stylize
LCM_LORAS = {"sd15": "latent-consistency/lcm-lora-sdv1-5", "sdxl": "latent-consistency/lcm-lora-sdxl"}

LoraDict = dict[str, dict[str, torch.Tensor]]


# --------------------------------------------------------------------------- flat <-> nested


def flatten(lora: LoraDict) -> dict[str, torch.Tensor]:
    return {f"{comp}.{k}": v for comp, sd in lora.items() for k, v in sd.items()}


def unflatten(flat: dict[str, torch.Tensor]) -> LoraDict:
    out: LoraDict = {}
    for key, value in flat.items():
        comp, rest = key.split(".", 1)
        if comp not in COMPONENTS:
            raise InputError(f"LoRA key {key!r} does not start with one of {list(COMPONENTS)}")
        out.setdefault(comp, {})[rest] = value
    return out


def average(loras: list[LoraDict]) -> LoraDict:
    """Element-wise mean of LoRA factors (FaceChain's checkpoint "ensemble": averaged state dicts).

    The up (B) and down (A) matrices are averaged separately, as FaceChain's ensemble averaged
    the checkpoints' state dicts, so the result's update mean(B) @ mean(A) is in general not the
    mean of the checkpoints' updates mean(B @ A). Kept on purpose: it is FaceChain's rule, and the
    result stays a LoRA of the same rank."""
    if not loras:
        raise InputError("no LoRA checkpoints to average")
    return {
        comp: {k: torch.stack([l[comp][k].float() for l in loras]).mean(0) for k in sd}
        for comp, sd in loras[0].items()
    }


# --------------------------------------------------------------------------- diffusers format


def save_diffusers(folder: str | Path, lora: LoraDict, family: str, rank: int, alpha: float) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` with the pipeline class's own
    ``save_lora_weights`` (keys ``unet.*``/``text_encoder.*`` + the adapter metadata: rank, alpha
    and target modules), atomically: written in a temporary folder, then renamed into place."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
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
        kwargs[f"{comp}_lora_layers"] = convert_state_dict_to_diffusers({k: v.contiguous() for k, v in sd.items()})
        kwargs[f"{comp}_lora_adapter_metadata"] = {**meta, "target_modules": sorted(_modules(sd))}
    tmp = Path(tempfile.mkdtemp(prefix=".lora.", dir=folder))
    try:
        cls.save_lora_weights(str(tmp), safe_serialization=True, weight_name=LORA_FILE, **kwargs)
        with open(tmp / LORA_FILE, "rb+") as fh:  # on disk before it replaces the previous file
            os.fsync(fh.fileno())
        os.chmod(tmp / LORA_FILE, 0o666 & ~_umask())  # the usual mode, not the 0600 of the temporary file
        os.replace(tmp / LORA_FILE, folder / LORA_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / LORA_FILE


def _modules(peft_sd: dict[str, torch.Tensor]) -> set[str]:
    return {k.rsplit(".lora_", 1)[0] for k in peft_sd if ".lora_" in k}


# --------------------------------------------------------------------------- kohya format


_SGM_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
               ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_SGM_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def sgm_unet_path(path: str, layers_per_block: int, up_has_attn: list[bool] | None = None) -> str:
    """A diffusers ``UNet2DConditionModel`` module or weight path -> its name in the original
    SGM/LDM UNet (``model.diffusion_model.*`` without that prefix). The one diffusers -> SGM map:
    kohya SDXL LoRA names use it, and so do the single-file checkpoints the tests build.
    ``up_has_attn`` (per up block) is needed only for upsampler paths."""
    n = layers_per_block + 1

    def res(rest: str) -> str:
        for a, b in _SGM_RESNET:
            if rest.startswith(a + "."):
                return b + rest[len(a):]
        raise InputError(f"UNet path {path!r}: unexpected resnet part {rest!r}")

    for a, b in _SGM_FIXED.items():
        if path.startswith(a + "."):
            return b + path[len(a):]
    # (diffusers pattern, SGM name from its groups); block b, layer l, rest r
    rules = (
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda b, l, r: f"input_blocks.{n * b + l + 1}.0.{res(r)}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda b, l, r: f"input_blocks.{n * b + l + 1}.1.{r}"),
        (r"down_blocks\.(\d+)\.downsamplers\.(0)\.conv\.(.*)", lambda b, l, r: f"input_blocks.{n * (b + 1)}.0.op.{r}"),
        (r"mid_block\.(resnets)\.(\d+)\.(.*)", lambda b, l, r: f"middle_block.{2 * l}.{res(r)}"),
        (r"mid_block\.(attentions)\.(0)\.(.*)", lambda b, l, r: f"middle_block.1.{r}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda b, l, r: f"output_blocks.{n * b + l}.0.{res(r)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda b, l, r: f"output_blocks.{n * b + l}.1.{r}"),
    )
    for pattern, name in rules:
        if m := re.fullmatch(pattern, path):
            b, l = (int(g) if g.isdigit() else 0 for g in m.groups()[:2])
            return name(b, l, m[3])
    if up_has_attn is not None and (m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", path)):
        b = int(m[1])
        return f"output_blocks.{n * b + n - 1}.{2 if up_has_attn[b] else 1}.{m[2]}"
    raise InputError(f"UNet path {path!r} has no name in the original SGM UNet layout.")


def to_kohya(lora: LoraDict, family: str, alpha: float, layers_per_block: int = 2) -> dict[str, torch.Tensor]:
    """Kohya keys ``<prefix>_<module_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``."""
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1" if family == "sdxl" else "lora_te", "text_encoder_2": "lora_te2"}
    out: dict[str, torch.Tensor] = {}
    for comp, sd in lora.items():
        for key, value in sd.items():
            module, kind = key.rsplit(".lora_", 1)  # kind: "A.weight" | "B.weight"
            if comp == "unet" and family == "sdxl":
                module = sgm_unet_path(module, layers_per_block)
            elif comp != "unet" and not module.startswith("text_model."):
                module = "text_model." + module  # transformers 5 flattened CLIPTextModel; kohya names keep text_model
            name = f"{prefixes[comp]}_{module.replace('.', '_')}"
            out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def save_kohya(folder: str | Path, lora: LoraDict, family: str, alpha: float, layers_per_block: int = 2) -> Path:
    path = Path(folder) / KOHYA_FILE
    save_safetensors(path, to_kohya(lora, family, alpha, layers_per_block), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha)})
    return path


# --------------------------------------------------------------------------- reading a LoRA file


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or (only reached after the caller allowed pickle) a tensor-only pickle
    loaded with ``weights_only=True``, which refuses anything but tensors and containers."""
    from facechain.models import read_weights_file

    sd = read_weights_file(Path(path), "LoRA file")
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise InputError(f"LoRA file {path} does not hold a flat mapping of names to tensors.")
    return sd


_LEGACY_KEY = re.compile(r"^(?:unet\.)?(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def _from_attn_processor_format(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """UNet LoRAs saved by diffusers < 0.21 attention processors (``...attn1.processor.to_q_lora.down.weight``),
    the format of FaceChain's ``pytorch_lora_weights.bin`` files, as peft keys; None for other formats."""
    if not tensors or not all(_LEGACY_KEY.match(k) for k in tensors):
        return None
    out = {}
    for key, value in tensors.items():
        module, proj, kind = _LEGACY_KEY.match(key).groups()
        proj = "to_out.0" if proj == "to_out" else proj
        out[f"{module}.{proj}.lora_{'A' if kind == 'down' else 'B'}.weight"] = value
    return out


KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")


def key_format(tensors: dict) -> str:
    """Which LoRA key layout a state dict uses: ``kohya`` (``lora_unet_*.lora_down.weight``, A1111 /
    ComfyUI / sd-scripts), ``attn_processor`` (diffusers < 0.21, FaceChain's ``.bin`` files),
    ``diffusers`` (``unet.*`` / ``text_encoder.*`` keys, peft or old ``.lora.down`` naming),
    ``peft`` (one model's ``*.lora_A.weight`` keys without a component prefix), or ``unknown``."""
    keys = list(tensors)
    if not keys:
        return "unknown"
    if all(k.startswith(KOHYA_PREFIXES) for k in keys):
        return "kohya"
    if all(_LEGACY_KEY.match(k) for k in keys):
        return "attn_processor"
    lora_keys = [k for k in keys if ".lora_A." in k or ".lora_B." in k or ".lora.down." in k or ".lora.up." in k
                 or ".lora_linear_layer." in k]
    if len(lora_keys) != len(keys):
        return "unknown"
    if all(k.split(".", 1)[0] in COMPONENTS for k in keys):
        return "diffusers"
    return "peft" if all(".lora_A." in k or ".lora_B." in k for k in keys) else "unknown"


def read_lora_file(path: str | Path, family: str, unet_config=None) -> tuple[LoraDict, float]:
    """Read a diffusers-, kohya- or attention-processor-format LoRA file into peft state dicts per
    component, using diffusers' own key conversion (``lora_state_dict``). Returns (lora, scale)
    where ``scale`` = alpha / rank is the factor the file's update is applied with."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_unet_state_dict_to_peft

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = {"unet_config": unet_config} if unet_config is not None else {}
    path = Path(path)
    tensors = read_tensors(path)
    fmt = key_format(tensors)
    if fmt == "unknown":
        raise InputError(f"LoRA file {path}: its keys ({sorted(tensors)[:2]}...) are in no LoRA layout facechain reads "
                         "(diffusers, kohya, peft, or diffusers' older attention-processor files).")
    if fmt == "attn_processor":
        return {"unet": _from_attn_processor_format(tensors)}, 1.0  # attention processors applied up @ down unscaled
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
    import json

    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = (fh.metadata() or {}).get("lora_adapter_metadata")
    if not meta:
        return None
    values = {float(v) for k, v in json.loads(meta).items() if k.endswith("lora_alpha")}
    return values.pop() if len(values) == 1 else None


# --------------------------------------------------------------------------- finding and loading into a pipeline


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


def load_adapter(pipe, path: Path, adapter_name: str, what: str = "LoRA") -> None:
    """Load a LoRA file into ``pipe`` as adapter ``adapter_name`` with diffusers'
    ``load_lora_weights``. A .safetensors file is loaded by diffusers from the file itself, so the
    alpha/rank metadata stored in its header is honoured; a pickle (only reached when the caller's
    ``allow_pickle`` let :func:`resolve` return it) is read with ``weights_only=True``. Any failure
    is one InputError naming the file, the adapter and the fix."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
        else:
            pipe.load_lora_weights(read_tensors(path), adapter_name=adapter_name)
    except FacechainError:
        raise
    except Exception as exc:  # a truncated file, keys of another model family, ...
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(
            f"{what} {path} ({adapter_name}) could not be loaded ({type(exc).__name__}: {first}). Check that the file "
            "is a complete LoRA (diffusers, kohya or peft keys) made for this base model's family."
        ) from exc
