"""Tiny real-class Stable Diffusion models for tests and offline smoke runs.

Every model is built from the real diffusers/transformers classes at tiny sizes, seeded, with a
tokenizer made locally (by default a byte-level CLIP BPE vocabulary with no merges; ``tokenizer="clip"``
builds CLIP's real 49,408-token BPE tokenizer from open-clip-torch's copy of it), and saved as an
ordinary diffusers folder. The SD1.5 build keeps SD1.5's block structure (4 resolution levels,
2 layers per block, 16 transformer blocks in call order), so layer indices mean the same thing as
on the full model. Use ``facechain make-tiny-model OUT_DIR [--family sdxl] [--tokenizer clip]`` from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal
import gzip
import importlib.util
import inspect
import re
import tempfile
from facechain.errors import InputError
from facechain.io import save_safetensors

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
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return _write_tokenizer(Path(folder), vocab, [], model_max_length, "<|endoftext|>")


def _write_tokenizer(folder: Path, vocab: dict, merges: list[tuple[str, str]], model_max_length: int, pad_token: str):
    """Save ``vocab.json`` / ``merges.txt`` (the files CLIP checkpoints ship) and the CLIPTokenizer made from them."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    params = inspect.signature(CLIPTokenizer.__init__).parameters
    if "vocab_file" in params:  # transformers 4.x: slow tokenizer reads files
        tok = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                            model_max_length=model_max_length, pad_token=pad_token)
    else:  # transformers 5.x: tokenizers-backed, takes the vocabulary itself
        tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)
    tok.save_pretrained(str(folder))
    return tok


# CLIP's BPE vocabulary: 256 byte symbols, the same with "</w>", 48,894 merges, <|startoftext|>, <|endoftext|>
# (openai/CLIP clip/simple_tokenizer.py; the vocab.json of openai/clip-vit-large-patch14, SD1.5's and SDXL's tokenizers)
CLIP_VOCAB_SIZE = 49408
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # shipped inside the open-clip-torch package


def clip_bpe_file() -> Path:
    """open-clip-torch's copy of CLIP's BPE file, found without importing open_clip (or torch through it)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / CLIP_BPE_FILE).is_file():
            return Path(folder) / CLIP_BPE_FILE
    raise InputError(f"CLIP's BPE vocabulary ({CLIP_BPE_FILE}) comes with the open-clip-torch package, which is not installed: "
                     "pip install 'open-clip-torch==3.3.0' (or pip install -e '.[test]').")


def clip_vocab(bpe_file: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's ``vocab.json`` (token -> id) and merges, built from the BPE file as OpenAI's tokenizer builds them."""
    lines = gzip.decompress(Path(bpe_file or clip_bpe_file()).read_bytes()).decode("utf-8").split("\n")
    n_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48,894: what is left of the vocabulary after bytes and markers
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]  # line 0 is a "#version" header
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE or len(merges) != n_merges:
        raise ValueError(f"{bpe_file}: expected CLIP's {CLIP_VOCAB_SIZE}-token vocabulary, got {len(vocab)} tokens")
    return vocab, merges


def make_clip_tokenizer(folder: str | Path, pad_token: str = "<|endoftext|>", model_max_length: int = 77,
                        bpe_file: str | Path | None = None):
    """Write and load the real CLIP tokenizer (49,408 tokens). ``pad_token``: ``"<|endoftext|>"`` as SD1.5's
    and SDXL's ``tokenizer``, ``"!"`` (id 0) as SDXL's ``tokenizer_2`` (OpenCLIP's padding)."""
    vocab, merges = clip_vocab(bpe_file)
    return _write_tokenizer(Path(folder), vocab, merges, model_max_length, pad_token)


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


TokenizerKind = Literal["bytes", "clip"]


def build_tiny_sd15(folder: str | Path, seed: int = 0, tokenizer: TokenizerKind = "bytes") -> Path:
    """Save a tiny SD1.5-architecture pipeline (UNet, VAE, CLIP text encoder, tokenizer, DDIM-compatible scheduler).
    ``tokenizer="clip"``: the real CLIP tokenizer and a 49,408-token text encoder (real token counts). The text
    encoder's final LayerNorm gets a small seeded shift (``trained_final_norm``)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer, _ = _tokenizers(tokenizer)
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
    trained_final_norm(text_encoder, seed)  # SD1.5 conditions on the normalized last hidden state
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    _save(pipe, folder)
    return folder


def build_tiny_sdxl(folder: str | Path, seed: int = 0, tokenizer: TokenizerKind = "bytes") -> Path:
    """Save a tiny SDXL-architecture pipeline (two text encoders, added time ids). ``tokenizer="clip"``: the
    real CLIP tokenizers (``tokenizer_2`` pads with ``!`` as SDXL's does) and 49,408-token text encoders."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = _tokenizers(tokenizer)
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
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_sd_scheduler(),
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


def _tokenizer():
    """The tiny tokenizer, built in a temporary folder of its own (loaded into memory, then removed)."""
    with tempfile.TemporaryDirectory(prefix="facechain-tok-") as tmp:
        return make_tokenizer(Path(tmp))


def trained_final_norm(text_encoder, seed: int) -> None:
    """Give the final LayerNorm a small seeded shift (its own generator: no other weight changes), as a trained
    CLIP's has one. At its initial shift 0 every output vector has mean 0, so SD1.5's conditioning (the
    normalized last hidden state) has mean 0 to float rounding, which no real checkpoint's has, and
    AUTOMATIC1111's weighting divides by that mean. The shift is small (0.002: the mean is then ~1e-3 of the
    vectors' size, 1e5 times float rounding's), so the model's pictures stay as they were (the golden slices
    of tests/core/test_golden.py did not move past their tolerance)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm  # transformers 4.x nests it
    with torch.no_grad():
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen) * 0.002)


def _tokenizers(kind: TokenizerKind):
    """(tokenizer, tokenizer_2) of a tiny model: the byte tokenizer twice, or CLIP's with SDXL's two paddings."""
    if kind == "bytes":
        tok = _tokenizer()
        return tok, tok
    if kind != "clip":
        raise InputError(f"tokenizer must be 'bytes' or 'clip', got {kind!r}")
    with tempfile.TemporaryDirectory(prefix="facechain-tok-") as tmp:
        return make_clip_tokenizer(Path(tmp) / "1"), make_clip_tokenizer(Path(tmp) / "2", pad_token="!")


def _save(pipe, folder: Path) -> None:
    pipe.save_pretrained(str(folder), safe_serialization=True)


def build_tiny_model(folder: str | Path, family: str = "sd15", seed: int = 0,
                     tokenizer: TokenizerKind = "bytes") -> Path:
    """A tiny model of ``family`` (a registered model family's name), built by the family's own builder."""
    from facechain.families import get_family

    return get_family(family).build_tiny(folder, seed, tokenizer)


# --------------------------------------------------------------------------- single-file export


def _ldm_vae_key(key: str, num_blocks: int) -> str:
    rename = (("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"), ("group_norm", "norm"),
              ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        key = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        key = f"encoder.down.{m[1]}.downsample.{m[2]}"
    elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        key = f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        key = f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        key = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        key = f"{m[1]}.mid.attn_1.{m[2]}"
    parts = key.split(".")
    for a, b in rename:
        joined = ".".join(parts)
        joined = re.sub(rf"(^|\.){re.escape(a)}\.", lambda mm: f"{mm[1]}{b}.", joined)
        parts = joined.split(".")
    return ".".join(parts)


def export_single_file(diffusers_folder: str | Path, out_file: str | Path) -> Path:
    """Write a tiny SD1.5-family diffusers folder as one original-LDM-layout ``.safetensors``
    checkpoint (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``),
    the layout model sites ship. ``from_single_file(out_file, config=diffusers_folder)`` loads it back."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    from facechain.lora import sgm_unet_path

    folder = Path(diffusers_folder)
    unet_cfg = UNet2DConditionModel.load_config(str(folder / "unet"))
    if unet_cfg.get("addition_embed_type") == "text_time":
        raise InputError("export_single_file writes SD1.5-family models only (SDXL's OpenCLIP encoder layout is not written).")
    vae_cfg = AutoencoderKL.load_config(str(folder / "vae"))
    lpb = unet_cfg["layers_per_block"]
    up_attn = ["CrossAttn" in t for t in unet_cfg["up_block_types"]]
    out: dict = {}
    for k, v in load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")).items():
        out["model.diffusion_model." + sgm_unet_path(k, lpb, up_attn)] = v
    nblocks = len(vae_cfg["block_out_channels"])
    for k, v in load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")).items():
        new = _ldm_vae_key(k, nblocks)
        if ".mid.attn_1." in new and v.ndim == 2:  # LDM VAE attention uses 1x1 convolutions
            v = v[:, :, None, None]
        out["first_stage_model." + new] = v
    for k, v in load_file(str(folder / "text_encoder" / "model.safetensors")).items():
        out["cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k] = v
    return save_safetensors(out_file, out)


def make_processed_folder(folder: str | Path, n: int = 2, size: int = 512, caption: str = "<fcsks>, a beautiful woman") -> Path:
    """A processed training folder (``NNN.png`` + ``metadata.jsonl``, the layout ``facechain preprocess``
    writes) made from scikit-image's astronaut photo (one real face), for offline training smoke runs."""
    from PIL import Image
    from skimage import data

    from facechain.preprocess.artifact import ProcessedPhoto, photo_file, write_metadata

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(data.astronaut())  # 512x512, one face
    photos = []
    for i in range(n):
        crop = photo.crop((8 * i, 0, 512 - 8 * i, 512 - 16 * i)).resize((size, size), Image.Resampling.BICUBIC)
        crop.save(folder / photo_file(i))
        photos.append(ProcessedPhoto(photo_file(i), caption))
    write_metadata(folder, photos)
    return folder


def build_full_sd15(folder: str | Path, dtype=None, seed: int = 0) -> Path:
    """SD1.5's full architecture (860M UNet, CLIP ViT-L/14 text encoder with the 49408-token
    embedding, 84M VAE) with seeded random weights, for benchmarks: same shapes and cost as the
    real model, none of its quality."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = _tokenizer()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                      projection_dim=768, bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1,
                                      pad_token_id=len(tok) - 1))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # v1-inference.yaml
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512, scaling_factor=0.18215)
    trained_final_norm(te, seed)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=_sd_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if dtype is not None:
        pipe.to(dtype=dtype)
    _save(pipe, folder)
    return folder


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora(model_dir: str | Path, out_dir: str | Path, seed: int, weight_name: str | None = None,
                family: str = "sd15", rank: int = 4) -> Path:
    """A rank-``rank`` LoRA on a model's UNet attention projections, made with peft with random
    non-zero up and down matrices (``init_lora_weights=False``), so loading it changes the output;
    saved with the pipeline class's own ``save_lora_weights`` to ``out_dir/weight_name``. Returns ``out_dir``."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from facechain.families import get_family
    from facechain.lora import LORA_FILE

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False))
    cls = get_family(family).pipeline_class("txt2img")
    cls.save_lora_weights(str(out_dir), unet_lora_layers=get_peft_model_state_dict(unet), weight_name=weight_name or LORA_FILE)
    return Path(out_dir)


def build_tiny_image_encoder(folder: str | Path, seed: int = 0, hidden: int = 48) -> Path:
    """A tiny CLIP image encoder (transformers' ``CLIPVisionModelWithProjection``, 32 px, 17 tokens), the
    kind the IP-Adapter Plus variants read, saved as a transformers folder."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=32)
    CLIPVisionModelWithProjection(cfg).save_pretrained(str(folder))
    return Path(folder)


# diffusers name of an IPAdapterFaceIDPlusImageProjection weight -> the name in the published Plus files
# (FacePerceiverResampler's), the inverse of diffusers' loader's renaming
_PLUS_LAYER_NAMES = (("ln0.", "0.norm1."), ("ln1.", "0.norm2."), ("attn.to_q.", "0.to_q."), ("attn.to_out.0.", "0.to_out."),
                     ("ff.0.", "1.0."), ("ff.1.net.0.proj.", "1.1."), ("ff.1.net.2.", "1.3."))


def _plus_original_state(proj) -> dict:
    import torch

    sd = proj.state_dict()
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"layers\.(\d+)\.(.*)", key)
        if key.startswith("proj.net.0.proj."):
            out["proj.0." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("proj.net.2."):
            out["proj.2." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out[key] = value
        elif m is None:  # proj_in, proj_out, norm_out
            out["perceiver_resampler." + key] = value
        elif m.group(2).startswith("attn.to_k."):
            layer = m.group(1)
            out[f"perceiver_resampler.layers.{layer}.0.to_kv.weight"] = torch.cat(
                [value, sd[f"layers.{layer}.attn.to_v.weight"]])
        elif m.group(2).startswith("attn.to_v."):
            continue
        else:
            rest = m.group(2)
            for new, old in _PLUS_LAYER_NAMES:
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            else:
                raise KeyError(key)
            out[f"perceiver_resampler.layers.{m.group(1)}.{rest}"] = value
    return out


def build_tiny_faceid_adapter(model_dir: str | Path, out_file: str | Path, *, embed_dim: int = 128, seed: int = 0,
                              lora_rank: int = 4, with_lora: bool = True, plus_clip_dim: int | None = None) -> Path:
    """An IP-Adapter-FaceID checkpoint for the model in ``model_dir``, in the published files' key
    layout (``image_proj.{proj.0,proj.2,norm}.*``; ``ip_adapter.<k>.to_{k,v}_ip.weight`` on cross-attention
    layer k = 1, 3, 5, ...; ``ip_adapter.<k>.to_{q,k,v,out}_lora.{down,up}.weight`` on every attention
    layer k), with random weights, saved as .safetensors. The projection is diffusers' own
    ``IPAdapterFaceIDImageProjection`` (4 tokens, mult 2) and the IP key/value layers are cut to the
    shapes of diffusers' ``IPAdapterAttnProcessor2_0`` for each layer, so the file loads through
    ``load_ip_adapter`` exactly as the published one does. ``embed_dim``: the face embedding size
    (512 for ArcFace; 128 takes the dlib backend's embedding, for offline tests). ``plus_clip_dim``: build
    a FaceID Plus checkpoint instead (diffusers' ``IPAdapterFaceIDPlusImageProjection``, a perceiver
    resampler reading CLIP image features of that width; its weights renamed to the published files'
    ``perceiver_resampler.*`` layout)."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")
    cross = int(unet.config.cross_attention_dim)
    state = {}
    if plus_clip_dim:
        plus = IPAdapterFaceIDPlusImageProjection(embed_dims=32, output_dims=cross, hidden_dims=plus_clip_dim, heads=1,
                                                  id_embeddings_dim=embed_dim)
        state.update({f"image_proj.{k}": v for k, v in _plus_original_state(plus).items()})
    else:
        proj = IPAdapterFaceIDImageProjection(image_embed_dim=embed_dim, cross_attention_dim=cross, mult=2, num_tokens=4)
        names = {"ff.net.0.proj": "proj.0", "ff.net.2": "proj.2"}
        for key, value in proj.state_dict().items():
            for new, old in ((v, k) for k, v in names.items()):
                key = key.replace(old, new)
            state[f"image_proj.{key}"] = value
    key_id = 1
    for index, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name[: -len(".processor")])
        if not name.endswith("attn1.processor"):
            ip = IPAdapterAttnProcessor2_0(hidden_size=attn.to_k.out_features, cross_attention_dim=cross, num_tokens=(4,))
            state[f"ip_adapter.{key_id}.to_k_ip.weight"] = ip.to_k_ip[0].weight.detach().clone()
            state[f"ip_adapter.{key_id}.to_v_ip.weight"] = ip.to_v_ip[0].weight.detach().clone()
            key_id += 2
        if with_lora:
            for proj_name, layer in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
                state[f"ip_adapter.{index}.{proj_name}_lora.down.weight"] = torch.randn(lora_rank, layer.in_features) / lora_rank
                state[f"ip_adapter.{index}.{proj_name}_lora.up.weight"] = torch.randn(layer.out_features, lora_rank) * 0.05
    return save_safetensors(out_file, state)
