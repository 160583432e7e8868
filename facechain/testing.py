"""Tiny real-class Stable Diffusion models for tests and offline smoke runs.

Every model is built from the real diffusers/transformers classes at tiny sizes, seeded, with a
tokenizer made locally (a byte-level CLIP BPE vocabulary with no merges), and saved as an
ordinary diffusers folder. The SD1.5 build keeps SD1.5's block structure (4 resolution levels,
2 layers per block, 16 transformer blocks in call order), so layer indices mean the same thing as
on the full model. Use ``facechain make-tiny-model OUT_DIR [--family sdxl]`` from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

TINY_RESOLUTION = 64  # pixels; latents are 8x8


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def make_tokenizer(folder: str | Path, model_max_length: int = 77):
    """Write and load a CLIP tokenizer whose vocabulary is the 256 byte symbols (+ end-of-word forms)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        vocab_file=str(folder / "vocab.json"),
        merges_file=str(folder / "merges.txt"),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(str(folder))
    return tok


def _clip_config(vocab_size: int, hidden: int, projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_act="gelu",
    )


def _tiny_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
    )


def build_tiny_sd15(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny SD1.5-architecture pipeline (UNet, VAE, CLIP text encoder, tokenizer, DDIM-compatible scheduler)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(folder / "_tok_build")
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer), hidden=32, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = _tiny_vae(0.18215)
    scheduler = _sd_scheduler()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    _save(pipe, folder)
    return folder


def build_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny SDXL-architecture pipeline (two text encoders, added time ids)."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(folder / "_tok_build")
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer), hidden=32, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer), hidden=32, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        cross_attention_dim=64,  # 32 (text_encoder) + 32 (text_encoder_2), concatenated as in SDXL
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + pooled text (32)
        norm_num_groups=8,
    )
    vae = _tiny_vae(0.13025)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=_sd_scheduler(),
    )
    _save(pipe, folder)
    return folder


def _sd_scheduler():
    """The scheduler config Stable Diffusion checkpoints ship (scaled-linear betas, 1000 steps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def _save(pipe, folder: Path) -> None:
    import shutil

    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(folder / "_tok_build", ignore_errors=True)


def build_tiny_model(folder: str | Path, family: Literal["sd15", "sdxl"] = "sd15", seed: int = 0) -> Path:
    if family == "sd15":
        return build_tiny_sd15(folder, seed)
    if family == "sdxl":
        return build_tiny_sdxl(folder, seed)
    from facechain.errors import InputError

    raise InputError(f"family must be 'sd15' or 'sdxl', got {family!r}")
