"""GPU memory budget of a generation pipeline, and the settings that make it fit.

    parts = pipeline_parts(pipe, controlnets=[net], image_encoder=None)   # or meta_parts(...) for configs
    plan = plan_memory(parts, height=1024, width=1024, batch="auto", offload="auto", free_bytes=free)
    plan.batch_size, plan.offload, plan.vae_slicing, plan.vae_tiling     # what to run with
    apply_plan(pipe, plan, device)                                        # replaces pipe.to(device)

The budget is the resident weights (parameter counts x bytes per parameter of each module, as
loaded) plus the largest transient peak: the UNet's (and ControlNets') activations while denoising a
batch, or the VAE decode afterwards. Weights come from the modules themselves, so the same code
counts a loaded pipeline and models built from published ``config.json`` files on the meta device
(:func:`meta_parts`: no weights, instant), which is how the tests check the defaults against a
24 GiB card without any checkpoint.

Offload (diffusers' own methods): ``model`` keeps one model on the GPU at a time
(``enable_model_cpu_offload``: the UNet and its ControlNets together while denoising), ``sequential``
streams layer by layer (``enable_sequential_cpu_offload``: slowest, smallest). ``auto`` picks
``none`` when the budget fits the free memory, else ``model``, else ``sequential`` (facechain's own
pipelines let it go no further than ``model``: :data:`AUTO_OFFLOAD`).

API for other callers (benchmarks/gpu.py): :func:`meta_parts` / :func:`pipeline_parts` -> :class:`Parts`;
:func:`budget` (bytes of one batch under given settings); :func:`plan_memory` -> :class:`Plan`;
:func:`free_memory`; :func:`apply_plan`.

Transient peaks are named constants below, each with where it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from facechain.families import Family, family_of_pipeline, get_family
from facechain.errors import InputError

GiB = 1 << 30

# VAE decode peak, bytes per output pixel, float32 (SDXL's pipeline upcasts its VAE to float32 because
# its config says force_upcast). Issue 23's measurement on the real-size SDXL VAE decoder with random
# weights: +3.8 GiB per 1024 x 1024 image. Scales with the pixel count (the decoder is convolutional;
# its largest live tensors are 128-channel feature maps at full resolution) and with the bytes of the
# dtype the decoder runs in. benchmarks/memory_bench.py measures it again (CPU peak RSS); see
# benchmarks/RESULTS.md.
VAE_DECODE_BYTES_PER_PIXEL_FP32 = 3.8 * GiB / (1024 * 1024)

# The denoiser's activation peak per latent pixel is the family's (Family.unet_activation_bytes_per_latent_pixel,
# measured by benchmarks/memory_bench.py), times ACTIVATION_MARGIN.
# CUDA's kernels are not the CPU's: cuDNN convolution workspaces and the caching allocator's rounding come
# on top. A margin (not measured: no GPU was lent to this task), until benchmarks/gpu.py measures it.
ACTIVATION_MARGIN = 1.5

# A ControlNet is the UNet's down half plus a mid block: its activations at a step are about half of
# the UNet's (its residuals are added to the UNet's skip connections, which are counted there).
CONTROLNET_ACTIVATION_SHARE = 0.5

# Kept free beyond the budget: CUDA context (~0.3-0.5 GiB on current drivers, not counted by
# torch.cuda.mem_get_info's caller), cuBLAS/cuDNN workspaces and allocator fragmentation. A margin,
# not a measurement.
RESERVE_BYTES = 1 * GiB

# The batch the defaults ask for when the memory allows it (FaceChain generates 2 x 5 candidates).
DEFAULT_BATCH = 5

OFFLOAD_MODES = ("none", "model", "sequential")
# What offload: auto may choose for facechain's own pipelines. Sequential offload is left to an explicit
# request: on this project's test machine (torch 2.15, accelerate 1.16, diffusers 0.42.1, CPU) accelerate's
# sequential hooks fail on the first text-encoder call (TypeError in set_module_tensor_to_device), and it
# could not be tried on a GPU; model offload gives the same images as no offload, bit for bit.
AUTO_OFFLOAD = ("none", "model")
Offload = Literal["auto", "none", "model", "sequential"]

# The fast-mode adapter's weights (LCM-LoRA) are held beside the base weights (fuse_lora keeps them): their
# size is the family's (FastMode.lora_bytes).


@dataclass(frozen=True)
class Part:
    """One model of the pipeline: its name, resident bytes, largest single layer's bytes (what
    sequential offload holds at a time) and the stage it runs in (``text``, ``image``, ``denoise``,
    ``decode``: model offload keeps one stage on the GPU; ``resident``: always on the GPU)."""

    name: str
    bytes: int
    largest_layer: int
    stage: str


@dataclass(frozen=True)
class Parts:
    """What :func:`plan_memory` needs to know about a pipeline."""

    family: str  # "sd15" | "sdxl"
    models: tuple[Part, ...]
    controlnets: int = 0
    unet_dtype_bytes: int = 2
    vae_dtype_bytes: int = 4  # the dtype the VAE decodes in (SDXL upcasts float16 to float32)

    def weights(self, stage: str | None = None) -> int:
        return sum(p.bytes for p in self.models if stage is None or p.stage == stage)


@dataclass(frozen=True)
class Plan:
    """Chosen settings and the budget they give (bytes). ``to_dict`` goes into the manifest."""

    batch_size: int
    offload: str
    vae_slicing: bool
    vae_tiling: bool
    budget_bytes: int
    free_bytes: int | None
    weights_bytes: int
    denoise_peak_bytes: int
    decode_peak_bytes: int
    reason: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.free_bytes is None or self.budget_bytes + RESERVE_BYTES <= self.free_bytes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["budget_gib"] = round(self.budget_bytes / GiB, 2)
        out["free_gib"] = None if self.free_bytes is None else round(self.free_bytes / GiB, 2)
        return out


# --------------------------------------------------------------------------- counting weights


def module_part(name: str, module, stage: str) -> Part:
    """A :class:`Part` from a torch module (real, or on the meta device): parameters and buffers at
    their own dtype's size."""
    tensors = list(module.parameters()) + list(module.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors)
    largest = 0
    for m in module.modules():
        own = sum(t.numel() * t.element_size() for t in m.parameters(recurse=False))
        largest = max(largest, own)
    return Part(name, total, largest, stage)


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


STAGE_ORDER = ("text", "image", "denoise", "decode")
STAGES = {"text_encoder": "text", "text_encoder_2": "text", "unet": "denoise", "vae": "decode",
          "image_encoder": "image"}


def pipeline_parts(pipe, controlnets=(), resident=()) -> Parts:
    """The parts of a loaded diffusers pipeline (its text encoders, UNet with any LoRA / IP-Adapter
    layers attached, VAE, image encoder) plus its ``controlnets`` and ``resident`` modules (called
    outside the pipeline, so kept on the GPU whatever the offload)."""
    family = family_of_pipeline(pipe, "the pipeline's UNet config")
    models = [module_part(name, getattr(pipe, name), stage) for name, stage in STAGES.items()
              if getattr(pipe, name, None) is not None]
    models += [module_part(f"controlnet_{i}", net, "denoise") for i, net in enumerate(controlnets)]
    models += [module_part(f"resident_{i}", m, "resident") for i, m in enumerate(resident)]
    upcast = family.vae_upcast and pipe.vae.dtype.itemsize == 2 and pipe.vae.config.get("force_upcast", False)
    return Parts(family.name, tuple(models), len(controlnets), unet_dtype_bytes=pipe.unet.dtype.itemsize,
                 vae_dtype_bytes=4 if upcast else pipe.vae.dtype.itemsize)


# --------------------------------------------------------------------------- models from configs


def _read(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def meta_model(kind: str, folder: str | Path, dtype=None):
    """A model built from the ``config.json`` in ``folder`` on the meta device (no weights, no
    memory). ``kind``: unet, vae, controlnet, clip_text, clip_text_projection, clip_vision."""
    import torch

    dtype = dtype or torch.float16
    cfg = _read(Path(folder))
    with torch.device("meta"):
        if kind in ("unet", "vae", "controlnet"):
            from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
            from diffusers.utils import logging as diffusers_logging

            cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "controlnet": ControlNetModel}[kind]
            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # .to(dtype)'s note on float32 modules: these have none
            try:
                return cls.from_config(cfg).to(dtype)
            finally:
                diffusers_logging.set_verbosity(level)
        else:
            from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                                      CLIPVisionConfig, CLIPVisionModelWithProjection)

            if kind == "clip_vision":
                model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
            else:
                cls = CLIPTextModelWithProjection if kind == "clip_text_projection" else CLIPTextModel
                model = cls(CLIPTextConfig(**cfg))
    return model.to(dtype)


def ip_adapter_modules(unet, plus: bool):
    """IP-Adapter FaceID's modules for ``unet`` (on the meta device when ``unet`` is): diffusers' image
    projection (IPAdapterFaceIDImageProjection, or IPAdapterFaceIDPlusImageProjection for Plus v2) and
    one IPAdapterAttnProcessor2_0 (to_k_ip, to_v_ip) per cross-attention layer, shaped as diffusers'
    loader builds them from h94/IP-Adapter-FaceID's files (512-d face embedding, 4 tokens, MLP x2;
    Plus: 1280-d CLIP ViT-H features, heads = cross_attention_dim / 64)."""
    import torch
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection

    cross = unet.config.cross_attention_dim
    device = next(unet.parameters()).device
    with torch.device(device):
        if plus:
            proj = IPAdapterFaceIDPlusImageProjection(embed_dims=cross, output_dims=cross, hidden_dims=1280,
                                                      heads=cross // 64, id_embeddings_dim=512)
        else:
            proj = IPAdapterFaceIDImageProjection(cross_attention_dim=cross, image_embed_dim=512, mult=2, num_tokens=4)
        procs = torch.nn.ModuleList(
            IPAdapterAttnProcessor2_0(hidden_size=attn.to_q.out_features, cross_attention_dim=cross, num_tokens=(4,))
            for name, attn in unet.named_modules() if name.endswith("attn2"))
    return torch.nn.ModuleList([proj, procs]).to(unet.dtype)


def lora_bytes(unet, rank: int, dtype_bytes: int = 2, targets=("to_q", "to_k", "to_v", "to_out.0")) -> int:
    """Bytes of a LoRA of ``rank`` on the UNet's attention projections: rank x (in + out) per layer."""
    total = 0
    for name, m in unet.named_modules():
        if name.rsplit(".", 1)[-1] in targets or any(name.endswith("." + t) for t in targets):
            if hasattr(m, "in_features"):
                total += rank * (m.in_features + m.out_features)
    return total * dtype_bytes


# The modes FaceChain's generate runs by default, and what each adds to the base pipeline.
MODES = {
    "plain": {},
    "pose": {"controlnets": ("openpose",)},
    "pose+depth": {"controlnets": ("openpose", "depth")},
    "faceid": {"identity": "faceid"},
    "plus_v2": {"identity": "plus_v2"},
    "fast": {"fast": True},
}


def meta_parts(family: "str | Family", configs: str | Path, mode: str = "plain", *, face_lora_rank: int = 32,
               dtype=None) -> Parts:
    """The parts of ``mode`` (a key of :data:`MODES`) for ``family`` built on the meta device from the
    published configs under ``configs``: ``<family>/{unet,vae,text_encoder[,text_encoder_2]}``,
    ``controlnet_<family>_<kind>`` and ``image_encoder_vit_h`` folders, each with its config.json."""
    import torch

    dtype = dtype or torch.float16
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    spec = MODES[mode]
    root = Path(configs)
    family = get_family(family)
    base = root / family.name
    unet = meta_model("unet", base / "unet", dtype)
    vae = meta_model("vae", base / "vae", dtype)
    models = [module_part("unet", unet, "denoise"), module_part("vae", vae, "decode")]
    for i, name in enumerate(family.text_encoders):  # CLIP text encoders; the last of several has the projection
        kind = "clip_text_projection" if i and i == len(family.text_encoders) - 1 else "clip_text"
        models.append(module_part(name, meta_model(kind, base / name, dtype), "text"))
    nets = spec.get("controlnets", ())
    for kind in nets:
        models.append(module_part(f"controlnet_{kind}", meta_model("controlnet", root / f"controlnet_{family.name}_{kind}",
                                                                   dtype), "denoise"))
    identity = spec.get("identity")
    if identity:
        models.append(module_part("ip_adapter", ip_adapter_modules(unet, plus=identity == "plus_v2"), "denoise"))
        models.append(Part("ip_adapter_lora", lora_bytes(unet, 128), 0, "denoise"))  # FaceID's LoRA: rank 128
        if identity == "plus_v2":
            models.append(module_part("image_encoder", meta_model("clip_vision", root / "image_encoder_vit_h", dtype),
                                      "image"))
    if face_lora_rank:
        models.append(Part("face_lora", lora_bytes(unet, face_lora_rank), 0, "denoise"))
    if spec.get("fast"):
        models.append(Part("lcm_lora", family.fast.lora_bytes, 0, "denoise"))
    upcast = family.vae_upcast and bool(vae.config.get("force_upcast", False))
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    return Parts(family.name, tuple(models), len(nets), unet_dtype_bytes=dtype_bytes,
                 vae_dtype_bytes=4 if upcast else dtype_bytes)


# --------------------------------------------------------------------------- the budget


def denoise_peak(parts: Parts, height: int, width: int, batch: int) -> int:
    """Activation peak of one denoising step of ``batch`` images (guidance pair included)."""
    latent_pixels = (height // 8) * (width // 8)
    per_image = (get_family(parts.family).unet_activation_bytes_per_latent_pixel * ACTIVATION_MARGIN * latent_pixels
                 * parts.unet_dtype_bytes / 2)
    return int(per_image * batch * (1 + CONTROLNET_ACTIVATION_SHARE * parts.controlnets))


def decode_peak(parts: Parts, height: int, width: int, batch: int, slicing: bool, tiling: bool) -> int:
    """VAE decode peak: one image at a time with slicing, the whole batch without; tiling decodes
    512 px tiles (diffusers' tile_sample_min_size for these VAEs)."""
    pixels = min(height * width, 512 * 512) if tiling else height * width
    images = 1 if slicing else batch
    return int(VAE_DECODE_BYTES_PER_PIXEL_FP32 * parts.vae_dtype_bytes / 4 * pixels * images)


def budget(parts: Parts, height: int, width: int, batch: int, *, offload: str = "none", slicing: bool = True,
           tiling: bool = False) -> dict:
    """Peak GPU bytes of generating one batch: ``{"total", "weights", "denoise", "decode"}``."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {list(OFFLOAD_MODES)}, got {offload!r}")
    act = denoise_peak(parts, height, width, batch)
    dec = decode_peak(parts, height, width, batch, slicing, tiling)
    resident = parts.weights("resident")
    if offload == "none":
        weights = parts.weights()
        total = weights + max(act, dec)
    elif offload == "model":  # one stage's models on the GPU at a time (the UNet with its ControlNets)
        weights = resident + max(parts.weights(s) for s in STAGE_ORDER)
        total = resident + max(parts.weights("denoise") + act, parts.weights("decode") + dec, parts.weights("text"),
                               parts.weights("image"))
    else:  # sequential: one layer at a time
        weights = resident + max(p.largest_layer for p in parts.models if p.stage != "resident")
        total = weights + max(act, dec)
    return {"total": int(total), "weights": int(weights), "denoise": act, "decode": dec}


def _fits(need: int, free: int | None) -> bool:
    return free is None or need + RESERVE_BYTES <= free


def plan_memory(parts: Parts, height: int, width: int, *, batch: int | str = "auto", offload: Offload = "auto",
                slicing: bool = True, tiling: bool | str = "auto", free_bytes: int | None = None,
                max_batch: int = DEFAULT_BATCH, auto_modes: tuple[str, ...] = OFFLOAD_MODES) -> Plan:
    """The settings for one job. ``free_bytes``: free GPU memory (None: not a GPU, nothing to fit, so
    ``auto`` means no offload, no tiling and the default batch). ``batch="auto"``: the largest batch up
    to ``max_batch`` whose budget fits; ``offload="auto"``: none if the budget at batch 1 fits, else
    model, else sequential (``auto_modes``: the ones auto may pick, in that order); ``tiling="auto"``: on only
    when no offload makes one image's decode fit."""
    modes = auto_modes if offload == "auto" else (offload,)
    tilings = (False, True) if tiling == "auto" else (bool(tiling),)
    reason = ""
    chosen = None
    # offload before tiling: offload changes the speed, tiling the pixels (blended tile seams)
    for tile in tilings:
        for mode in modes:
            if _fits(budget(parts, height, width, 1, offload=mode, slicing=slicing, tiling=tile)["total"], free_bytes):
                chosen = (mode, tile)
                break
        if chosen:
            break
    if chosen is None:  # nothing fits: the smallest setting, and the plan says it does not fit
        chosen = (modes[-1], tilings[-1])
        reason = "no setting fits the free memory; this is the smallest"
    mode, tile = chosen
    if batch == "auto":
        size = 1
        for b in range(max_batch, 0, -1):
            if _fits(budget(parts, height, width, b, offload=mode, slicing=slicing, tiling=tile)["total"], free_bytes):
                size = b
                break
    else:
        size = int(batch)
    b = budget(parts, height, width, size, offload=mode, slicing=slicing, tiling=tile)
    if not reason:
        reason = ("no GPU: nothing to fit" if free_bytes is None else
                  f"largest batch <= {max_batch} with offload {mode} that fits" if batch == "auto" else "as asked")
    plan = Plan(size, mode, slicing, tile, b["total"], free_bytes, b["weights"], b["denoise"], b["decode"], reason,
                {p.name: p.bytes for p in parts.models})
    return plan


def free_memory(device) -> int | None:
    """Free bytes on a CUDA ``device`` (torch.cuda.mem_get_info), or None for any other device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def offload_for(requested: str, device, free_bytes: int | None) -> str:
    """The offload to plan with: ``requested`` on a GPU (``free_bytes`` known); ``none`` for ``auto`` on
    any other device, where model/sequential offload have no GPU to offload from (InputError)."""
    if free_bytes is not None:
        return requested
    if requested in ("model", "sequential"):
        raise InputError(f"offload: {requested} moves models between the CPU and a GPU, and the device is {device}. "
                         "Use offload: none (or auto) on this device.")
    return "none"


def apply_plan(pipe, plan: Plan, device) -> None:
    """Put ``pipe`` on ``device`` the way ``plan`` says: ``pipe.to(device)`` (offload none) or
    diffusers' model / sequential CPU offload (which replace ``.to``), then VAE slicing and tiling."""
    import torch

    device = torch.device(device)
    if plan.offload == "none":
        pipe.to(device)
    elif plan.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"offload must be one of {list(OFFLOAD_MODES)}, got {plan.offload!r}")
    vae = pipe.vae
    (vae.enable_slicing if plan.vae_slicing else vae.disable_slicing)()
    (vae.enable_tiling if plan.vae_tiling else vae.disable_tiling)()
