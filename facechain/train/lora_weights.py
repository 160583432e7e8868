"""The LoRA being trained: added to the denoiser (and text encoders) with peft, its weights read and
set by component, held in one flat parameter for a fused AdamW, and started from an init LoRA.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from facechain import lora as lora_io
from facechain.errors import FacechainError, InputError
from facechain.train.config import TrainConfig
from facechain.errors import ModelNotFoundError
from facechain.train.config import FACECHAIN_FACE_LORA, FACECHAIN_INIT_LORA

logger = logging.getLogger(__name__)

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP attention, as diffusers' LoRA scripts


def flat_parameter(params: list[torch.nn.Parameter]) -> torch.nn.Parameter:
    """One contiguous parameter holding every LoRA weight; each LoRA parameter becomes a view of
    it, and each gradient a view of its gradient (autograd accumulates into an existing ``.grad``
    in place), so AdamW and gradient clipping touch one tensor instead of hundreds (SD1.5: 256).
    Zero gradients with ``set_to_none=False`` to keep the views."""
    if len({(p.dtype, p.device) for p in params}) != 1:
        raise ValueError(f"LoRA parameters must share dtype and device to be flattened, got {sorted({(str(p.dtype), str(p.device)) for p in params})}")
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))  # (N,)
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset:offset + n].view_as(p)
        p.grad = flat.grad[offset:offset + n].view_as(p)
        offset += n
    return flat


def adamw(params, cfg: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one (CPU, CUDA). A LoRA is hundreds of small
    tensors: per-tensor AdamW costs as much as a tiny UNet's backward (9.6 ms per-tensor, 5.6 ms
    foreach, 1.3 ms fused for SD1.5's 256 LoRA tensors on one CPU thread); the trainer also
    flattens them into one tensor (:func:`flat_parameter`)."""
    kwargs = {"lr": cfg.learning_rate, "weight_decay": cfg.adam_weight_decay}
    if device.type in ("cpu", "cuda"):
        return torch.optim.AdamW(params, fused=True, **kwargs)
    logger.info("AdamW: no fused kernel on %s; using the multi-tensor (foreach) implementation", device.type)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def resolve_init_lora(cfg: TrainConfig) -> Path:
    """The file of ``cfg.init_lora``. ``facechain`` names FaceChain's generic face LoRA on ModelScope:
    a tensor-only pickle from a known publisher, read with ``weights_only=True`` (tensors only, no
    code) without --allow_pickle."""
    from facechain.models import resolve_weights_file

    if cfg.init_lora != FACECHAIN_INIT_LORA:
        return resolve_weights_file(cfg.init_lora, filename=cfg.init_lora_weight_name or None,
                                    allow_pickle=cfg.allow_pickle, what="init LoRA")
    repo, revision, name = FACECHAIN_FACE_LORA
    name = cfg.init_lora_weight_name or name
    try:
        return resolve_weights_file(repo, filename=name, revision=revision, allow_pickle=True,
                                    what="FaceChain's face LoRA (--init_lora facechain)")
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"--init_lora facechain: FaceChain's face LoRA ({repo} revision {revision}, file {name}, on ModelScope) "
            f"could not be had ({exc}). Connect to ModelScope once (it is cached afterwards), or download {name} "
            f"from {repo} (revision {revision}) yourself and pass --init_lora PATH_TO_FILE --allow_pickle, or train "
            "without --init_lora."
        ) from exc


def add_lora(unet, text_encoders: list, cfg: TrainConfig) -> None:
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=list(cfg.target_modules)))
    if cfg.train_text_encoder:
        for enc in text_encoders:
            enc.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=TEXT_ENCODER_TARGETS))


def current_lora(models: dict) -> lora_io.LoraDict:
    """peft state dicts of the models that carry a LoRA, as fp32 CPU tensors."""
    from peft import get_peft_model_state_dict

    return {name: {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(m).items()} for name, m in models.items()}


def load_lora_into(models: dict, lora: lora_io.LoraDict, where: str, strict: bool = True) -> None:
    """Set the adapter weights of ``models`` from ``lora`` (peft keys); refuse shape mismatches."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    for name, model in models.items():
        expected = get_peft_model_state_dict(model)
        given = _align_text_model_prefix(lora.get(name, {}), expected)
        missing = sorted(set(expected) - set(given))
        unused = sorted(set(given) - set(expected))
        for k in set(expected) & set(given):
            if tuple(expected[k].shape) != tuple(given[k].shape):
                raise InputError(
                    f"{where}: {name} weight {k} has shape {tuple(given[k].shape)} but the LoRA being trained has "
                    f"{tuple(expected[k].shape)} (rank {expected[k].shape[0] if 'lora_A' in k else expected[k].shape[1]}). "
                    "Use --rank equal to the file's rank."
                )
        if strict and (missing or unused):
            raise InputError(f"{where}: {name} LoRA keys do not match (missing {missing[:3]}, unexpected {unused[:3]}).")
        if missing or unused:
            logger.info("%s: %s: %d of %d LoRA weights set from the file (%d keys not used)", where, name,
                        len(expected) - len(missing), len(expected), len(unused))
        set_peft_model_state_dict(model, {k: v for k, v in given.items() if k in expected})


def _align_text_model_prefix(given: dict, expected: dict) -> dict:
    """CLIP text encoders name their modules ``text_model.encoder...`` (transformers 4, kohya files)
    or ``encoder...`` (transformers 5); match the file's names to the model's."""
    has = any(k.startswith("text_model.") for k in expected)
    if not has and any(k.startswith("text_model.") for k in given):
        return {k.removeprefix("text_model."): v for k, v in given.items()}
    if has and given and not any(k.startswith("text_model.") for k in given):
        return {f"text_model.{k}": v for k, v in given.items()}
    return given



def load_init_lora(cfg: TrainConfig, init_path: Path, family: str, lora_models: dict) -> None:
    try:
        lora, file_scale = lora_io.read_lora_file(init_path, family, lora_models["unet"].config)
    except FacechainError:
        raise
    except Exception as exc:
        raise InputError(f"init LoRA {init_path} could not be read ({type(exc).__name__}: {str(exc)[:200]}). Check "
                         "that it is a complete LoRA file (diffusers or kohya keys).") from exc
    ratio = file_scale / (cfg.alpha / cfg.rank)
    if abs(ratio - 1.0) > 1e-6:  # keep the file's update: up matrices absorb the alpha/rank difference
        logger.info("init LoRA %s: scale %g differs from alpha/rank %g; its up matrices are rescaled by %g",
                    init_path, file_scale, cfg.alpha / cfg.rank, ratio)
        lora = {c: {k: (v * ratio if ".lora_B." in k else v) for k, v in sd.items()} for c, sd in lora.items()}
    load_lora_into(lora_models, lora, f"init LoRA {init_path}", strict=False)
