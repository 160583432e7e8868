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

Kohya naming is the model family's (``Family.kohya_prefixes``, ``Family.kohya_unet_names``): SD1.5-family
UNets keep the diffusers module path (kohya's sd-scripts build SD1.5 LoRAs on a diffusers-layout UNet);
SDXL UNets use the original SGM block names (``input_blocks.N.1``, ``middle_block.1``,
``output_blocks.N.1``; :func:`sgm_unet_path`) as sd-scripts does for SDXL. Text encoders: ``lora_te_``
(SD1.5), ``lora_te1_``/``lora_te2_`` (SDXL).
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
from facechain.families import Family, family_of_pipeline, get_family
from facechain.io import _umask, save_safetensors

logger = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

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


def save_diffusers(folder: str | Path, lora: LoraDict, family: str | Family, rank: int, alpha: float) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` with the pipeline class's own
    ``save_lora_weights`` (keys ``unet.*``/``text_encoder.*`` + the adapter metadata: rank, alpha
    and target modules), atomically: written in a temporary folder, then renamed into place."""
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
            if rest == a or rest.startswith(a + "."):
                return b + rest[len(a):]
        raise InputError(f"UNet path {path!r}: unexpected resnet part {rest!r}")

    for a, b in _SGM_FIXED.items():
        if path == a or path.startswith(a + "."):
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
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path):  # the module itself
        return f"input_blocks.{n * (int(m[1]) + 1)}.0.op"
    raise InputError(f"UNet path {path!r} has no name in the original SGM UNet layout.")


def to_kohya(lora: LoraDict, family: str | Family, alpha: float, layers_per_block: int = 2) -> dict[str, torch.Tensor]:
    """Kohya keys ``<prefix>_<module_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``."""
    family = get_family(family)
    prefixes = {comp: names[0] for comp, names in family.kohya_prefixes.items()}
    out: dict[str, torch.Tensor] = {}
    for comp, sd in lora.items():
        for key, value in sd.items():
            module, kind = key.rsplit(".lora_", 1)  # kind: "A.weight" | "B.weight"
            if comp == "unet" and family.kohya_unet_names == "sgm":
                module = sgm_unet_path(module, layers_per_block)
            elif comp != "unet" and not module.startswith("text_model."):
                module = "text_model." + module  # transformers 5 flattened CLIPTextModel; kohya names keep text_model
            name = f"{prefixes[comp]}_{module.replace('.', '_')}"
            out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def save_kohya(folder: str | Path, lora: LoraDict, family: str | Family, alpha: float, layers_per_block: int = 2) -> Path:
    path = Path(folder) / KOHYA_FILE
    save_safetensors(path, to_kohya(lora, family, alpha, layers_per_block), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha)})
    return path


# --------------------------------------------------------------------------- reading a LoRA file


def read_tensors(path: Path, what: str = "LoRA file") -> dict[str, torch.Tensor]:
    """A safetensors file, or (only reached after the caller allowed pickle) a tensor-only pickle
    loaded with ``weights_only=True``, which refuses anything but tensors and containers."""
    from facechain.models import read_weights_file

    sd = read_weights_file(Path(path), what)
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise InputError(f"{what} {path} does not hold a flat mapping of names to tensors.")
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
                 or ".lora_linear_layer." in k or k.endswith(".lora_magnitude_vector")]
    if len(lora_keys) != len(keys):
        return "unknown"
    if all(k.split(".", 1)[0] in COMPONENTS for k in keys):
        return "diffusers"
    return "peft" if all(".lora_A." in k or ".lora_B." in k or k.endswith(".lora_magnitude_vector") for k in keys) else "unknown"


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


# --------------------------------------------------------------------------- converting any layout for a pipeline


_LORA_MODULE_TYPES = (torch.nn.Linear, torch.nn.Conv2d)
# kohya / LyCORIS per-module tensors: what each key part means
_KOHYA_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale",
                "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _components(pipe) -> dict[str, torch.nn.Module]:
    return {c: m for c in COMPONENTS if (m := getattr(pipe, c, None)) is not None}


def _lora_able(model: torch.nn.Module):
    """(path, layer) of every linear / convolution layer, a layer that already carries adapters (a peft
    tuner layer) under its own path, as the layer it wraps."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = set()
    for path, mod in model.named_modules():
        if any(path.startswith(w + ".") for w in wrapped):
            continue  # the tuner's base_layer and its lora_A / lora_B layers
        if isinstance(mod, BaseTunerLayer):
            wrapped.add(path)
            mod = mod.get_base_layer()
        if isinstance(mod, _LORA_MODULE_TYPES):
            yield path, mod


def kohya_names(pipe, family: str | Family) -> dict[str, tuple[str, str]]:
    """Every module of ``pipe`` a kohya / LyCORIS file can address: kohya name (``lora_unet_...``,
    ``lora_te_...``) -> (component, module path in the loaded model). A UNet module answers to its
    diffusers path (kohya's sd-scripts for SD1.5) and to its original SGM path (sd-scripts for
    SDXL, and SD1.5 files made on the original UNet); text-encoder modules to their classic
    ``text_model.*`` path, whatever transformers' own naming."""
    names: dict[str, tuple[str, str]] = {}
    comps = _components(pipe)
    unet = comps["unet"]
    lpb = unet.config.layers_per_block if isinstance(unet.config.layers_per_block, int) else None
    up_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    for path, _ in _lora_able(unet):
        names["lora_unet_" + path.replace(".", "_")] = ("unet", path)
        if lpb is not None:
            try:
                names.setdefault("lora_unet_" + sgm_unet_path(path, lpb, up_attn).replace(".", "_"), ("unet", path))
            except InputError:
                pass  # a module with no SGM name (none in SD1.5/SDXL UNets)
    prefixes = get_family(family).kohya_prefixes
    for comp, enc in comps.items():
        if comp == "unet":
            continue
        for path, _ in _lora_able(enc):
            classic = path if path.startswith("text_model.") else "text_model." + path
            for prefix in prefixes[comp]:
                names[f"{prefix}_{classic.replace('.', '_')}"] = (comp, path)
    return names


def _khatri_rao_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows ``a[i] * b[j]`` for every (i, j): (r1, n) x (r2, n) -> (r1 * r2, n)."""
    return (a[:, None, :] * b[None, :, :]).reshape(a.shape[0] * b.shape[0], a.shape[1])


def _lycoris_to_lora(module: str, parts: dict[str, torch.Tensor], path: Path) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """A LoHa or LoKr module as an exact LoRA (down, up, rank the alpha refers to), with the down
    factor flattened to (rank, in * kh * kw).

    LoHa: dW = (w1a @ w1b) * (w2a @ w2b) (element-wise) = sum_ij (w1a[:, i] * w2a[:, j]) (w1b[i] * w2b[j])^T,
    a LoRA of rank r1 * r2. LoKr: dW = kron(w1, w2) = sum_ij kron(u_i, p_j) kron(v_i, q_j)^T for
    w1 = sum u_i v_i^T (its SVD when stored whole) and w2 = sum p_j q_j^T, of rank rank(w1) * rank(w2)."""
    if "hada_t1" in parts or "lokr_t2" in parts:
        raise InputError(f"LoRA file {path}: module {module} is a LyCORIS Tucker-decomposed convolution (hada_t1 / "
                         "lokr_t2), which facechain does not read. Re-export the LoRA without CP/Tucker decomposition.")
    if "hada_w1_a" in parts:
        w1a, w1b, w2a, w2b = (parts[k].float() for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        up = _khatri_rao_rows(w1a.T, w2a.T).T  # (out, r1 * r2)
        down = _khatri_rao_rows(w1b.flatten(1), w2b.flatten(1))
        return down, up, w1b.shape[0]

    def factors(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name in parts:
            u, sv, vh = torch.linalg.svd(parts[name].float().flatten(1), full_matrices=False)
            keep = sv > sv.max() * 1e-7 if sv.numel() else sv.bool()
            return u[:, keep] * sv[keep], vh[keep]
        return parts[name + "_a"].float(), parts[name + "_b"].float().flatten(1)

    (u, v), (p, q) = factors("lokr_w1"), factors("lokr_w2")
    # kron(u_i v_i^T, p_j q_j^T) = kron(u_i, p_j) kron(v_i, q_j)^T
    up = torch.einsum("ai,cj->acij", u, p).reshape(u.shape[0] * p.shape[0], u.shape[1] * p.shape[1])
    down = torch.einsum("ib,jd->ijbd", v, q).reshape(v.shape[0] * q.shape[0], v.shape[1] * q.shape[1])
    # the rank alpha refers to: the decomposed factor's; both factors stored whole are applied unscaled (LyCORIS
    # writes alpha = its lora_dim then), so None
    rank = parts["lokr_w2_a"].shape[1] if "lokr_w2_a" in parts else (parts["lokr_w1_a"].shape[1] if "lokr_w1_a" in parts else None)
    return down, up, rank


def _from_kohya(tensors: dict[str, torch.Tensor], pipe, family: str | Family, path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """A kohya-, LoCon-, LoHa-, LoKr- or DoRA-layout file as diffusers' peft keys for ``pipe``, alpha / rank
    folded into the up factors. Returns (state dict, number of modules). Every module must match one
    of ``pipe``'s modules with the right shapes, or the file is refused: a LoRA partly applied would
    give another look with no word."""
    table = kohya_names(pipe, family)
    comps = _components(pipe)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, part = key.partition(".")
        if part not in _KOHYA_PARTS:
            raise InputError(f"LoRA file {path}: key {key!r} has a part ({part!r}) no kohya / LyCORIS layout facechain "
                             f"reads uses (known: {', '.join(_KOHYA_PARTS)}).")
        grouped.setdefault(name, {})[part] = value
    unmatched = sorted(n for n in grouped if n not in table)
    if unmatched:
        raise InputError(
            f"LoRA file {path}: {len(unmatched)} of its {len(grouped)} modules name no layer of this {family} model "
            f"(e.g. {unmatched[:3]}). It was made for another model family or architecture; use a LoRA made for "
            f"{family} models.")
    out: dict[str, torch.Tensor] = {}
    for name, parts in grouped.items():
        comp, mpath = table[name]
        module = comps[comp].get_submodule(mpath)
        module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if "lora_mid.weight" in parts:
            raise InputError(f"LoRA file {path}: module {name} is a LoCon with a Tucker middle factor (lora_mid), which "
                             "facechain does not read. Re-export the LoRA without CP/Tucker decomposition.")
        if "lora_down.weight" in parts and "lora_up.weight" in parts:
            down, up = parts["lora_down.weight"], parts["lora_up.weight"]
            rank = down.shape[0]
        elif any(p.startswith(("hada_", "lokr_")) for p in parts):
            down, up, rank = _lycoris_to_lora(name, parts, path)
        else:
            raise InputError(f"LoRA file {path}: module {name} has {sorted(parts)} but no pair of factors "
                             "(lora_down/lora_up, hada_*, lokr_*).")
        weight = module.weight
        if isinstance(module, torch.nn.Conv2d):
            if down.dim() == 2:  # LyCORIS factors of a flattened (out, in * kh * kw) update
                down = down.reshape(down.shape[0], *weight.shape[1:])
            up = up.reshape(up.shape[0], up.shape[1], 1, 1) if up.dim() == 2 else up
            ok = down.shape[1:] == weight.shape[1:] and up.shape[0] == weight.shape[0] and up.shape[2:] == (1, 1)
        else:
            down, up = down.flatten(1), up.flatten(1)
            ok = tuple(down.shape[1:]) == (weight.shape[1],) and up.shape[0] == weight.shape[0]
        if not ok or up.shape[1] != down.shape[0]:
            raise InputError(
                f"LoRA file {path}: module {name} has factors {tuple(up.shape)} x {tuple(down.shape)} but the model's "
                f"{comp} layer {mpath} has weight {tuple(weight.shape)}. The LoRA was made for another model.")
        scale = float(parts["alpha"]) / rank if rank and "alpha" in parts else 1.0
        out[f"{comp}.{mpath}.lora_A.weight"] = down.contiguous()
        out[f"{comp}.{mpath}.lora_B.weight"] = (up.float() * scale).to(up.dtype).contiguous()
        if "dora_scale" in parts:
            magnitude = parts["dora_scale"]
            if isinstance(module, torch.nn.Conv2d) or magnitude.numel() != weight.shape[0] or (
                    magnitude.dim() == 2 and magnitude.shape[1] != 1):
                raise InputError(
                    f"LoRA file {path}: module {name}'s DoRA magnitude has shape {tuple(magnitude.shape)}; facechain reads "
                    f"DoRA on linear layers with the magnitude per output ({weight.shape[0]}, 1), as kohya's and "
                    "LyCORIS's default (wd_on_out) write it.")
            # diffusers' UNet loader names the magnitude ``lora_magnitude_vector``; transformers' peft
            # integration (the text encoders) ``lora_magnitude_vector.weight``
            suffix = "" if comp == "unet" else ".weight"
            out[f"{comp}.{mpath}.lora_magnitude_vector{suffix}"] = magnitude.reshape(-1).contiguous()
    return out, len(grouped)


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

    return sum(1 for m in _components(pipe).values() for _, mod in m.named_modules()
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
        state, n = _from_kohya(tensors, pipe, family, path)
        return state, n, fmt
    if fmt == "attn_processor":  # attention processors applied up @ down unscaled
        state = {f"unet.{k}": v for k, v in _from_attn_processor_format(tensors).items()}
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
