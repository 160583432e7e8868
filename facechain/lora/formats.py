"""LoRA key layouts: the internal form (peft state dicts per component), the kohya names written for other
tools (with the original SGM UNet names, :func:`sgm_unet_path`), recognising a file's layout
(:func:`key_format`), and converting kohya / LoCon / LoHa / LoKr / DoRA and FaceChain's attention-processor
files into diffusers' peft keys against a loaded pipeline's own modules.

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

import re
from pathlib import Path

import torch

from facechain.errors import InputError
from facechain.families import Family, get_family

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


_LEGACY_KEY = re.compile(r"^(?:unet\.)?(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def from_attn_processor_format(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
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


# --------------------------------------------------------------------------- converting any layout for a pipeline


_LORA_MODULE_TYPES = (torch.nn.Linear, torch.nn.Conv2d)
# kohya / LyCORIS per-module tensors: what each key part means
_KOHYA_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale",
                "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def pipeline_components(pipe) -> dict[str, torch.nn.Module]:
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
    comps = pipeline_components(pipe)
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


def from_kohya(tensors: dict[str, torch.Tensor], pipe, family: str | Family, path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """A kohya-, LoCon-, LoHa-, LoKr- or DoRA-layout file as diffusers' peft keys for ``pipe``, alpha / rank
    folded into the up factors. Returns (state dict, number of modules). Every module must match one
    of ``pipe``'s modules with the right shapes, or the file is refused: a LoRA partly applied would
    give another look with no word."""
    table = kohya_names(pipe, family)
    comps = pipeline_components(pipe)
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
