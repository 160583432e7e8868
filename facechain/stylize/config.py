"""Stylization configs: one common :class:`StylizeConfig` plus one options dataclass per method.

Step and layer indices follow the seed papers: steps count sampling steps from the noisiest
(0) to the last (``steps - 1``); layers count self-attention layers in UNet call order (SD1.5:
down 0-5, mid 6, up 7-15; SDXL: 70 layers), as in MasaCtrl and Portrait Diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from facechain.errors import InputError
from facechain.models import DEVICE_HELP, DTYPE_HELP
from facechain.prompts import WEIGHTING_HELP, check_weighting

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# LCM-LoRA weights per model family (Luo et al. 2023, "LCM-LoRA"); resolved through facechain.models.
DEFAULT_STEPS = 50  # Portrait Diffusion / StyleID / MasaCtrl all invert and sample with 50 DDIM steps
DEFAULT_FAST_STEPS = 4  # LCM-LoRA's recommended 2-8 steps


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class StylizeConfig:
    """Everything a stylization needs besides the content and style images."""

    RENAMED: ClassVar[dict[str, str]] = {"model": "base_model", "subfolder": "sub_path", "fast_lora": "lcm_lora",
                                         "steps": "num_inference_steps"}

    method: str = field(default="portrait-diffusion", metadata=_help("portrait-diffusion | styleid | masactrl | diffstyle"))
    base_model: str = field(default=DEFAULT_MODEL, metadata=_help("base model: hub id, ModelScope id, diffusers folder or .safetensors"))
    revision: str | None = field(default=None, metadata=_help("hub revision / ModelScope version of the base model"))
    sub_path: str | None = field(default=None, metadata=_help("sub folder inside the base model repo/folder (FaceChain's film/film)"))
    allow_pickle: bool = field(default=False, metadata=_help("allow pickle checkpoints (only for trusted files)"))
    loras: list[str] = field(default_factory=list, metadata={"flags": ("--lora",), "help": ("LoRA files/folders (diffusers format), e.g. the face LoRA from `facechain train`; applied identically in inversion and sampling")})
    lora_scales: list[float] = field(default_factory=list, metadata={"flags": ("--lora-scale",), "help": "one weight per LoRA (default 1.0 each)"})
    fast: bool = field(default=False, metadata=_help("LCM-LoRA: LCM scheduler in inversion and sampling, few steps"))
    lcm_lora: str | None = field(default=None, metadata=_help("LCM-LoRA file/folder/hub id (default: the family's latent-consistency LCM-LoRA)"))
    num_inference_steps: int | None = field(default=None, metadata=_help(f"inversion = sampling steps (default {DEFAULT_STEPS}, {DEFAULT_FAST_STEPS} with fast)"))
    guidance_scale: float = field(default=1.0, metadata=_help("classifier-free guidance of the sampling pass (1 = off)"))
    prompt: str | None = field(default=None, metadata=_help("prompt for inversion and sampling (default: the method's, e.g. 'head' for Portrait Diffusion)"))
    negative_prompt: str = field(default="", metadata=_help("unconditional prompt when guidance_scale > 1"))
    prompt_weighting: Literal["a1111", "compel"] = field(default="a1111", metadata=_help(WEIGHTING_HELP))
    resolution: int | None = field(default=None, metadata=_help("long side in pixels, multiple of 64 (default 512 for SD1.5, 1024 for SDXL); the style image is cropped to the content's aspect"))
    start_step: int | None = field(default=None, metadata=_help("first controlled sampling step (default: the method's)"))
    end_step: int | None = field(default=None, metadata=_help("controlled steps stop before this one (default: all)"))
    start_layer: int | None = field(default=None, metadata=_help("first controlled self-attention layer in call order (default: the method's)"))
    inversion_refine: int = field(default=0, metadata=_help("fixed-point refinements per inversion step (Pan et al. 2023); 0 = plain DDIM inversion as in the papers, 2-3 = near-exact reconstruction for that many extra UNet passes"))
    only_mask_region: bool = field(default=False, metadata=_help("stylize inside the content mask only; pixels outside are the content image's exactly"))
    latent_blend: bool = field(default=True, metadata=_help("with only_mask_region: also keep the latent outside the mask on the content trajectory each step"))
    cache_dir: Path | None = field(default=None, metadata=_help("folder for on-disk inversion cache (safetensors); memory cache is always on"))
    device: str = field(default="auto", metadata=_help(DEVICE_HELP))
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = field(default="float32", metadata=_help(
        DTYPE_HELP + "; default float32: DDIM inversion drifts in half precision"))
    attention: Literal["sdpa", "einsum"] = field(default="sdpa", metadata=_help("sdpa (ours) or einsum (the reference formulation, materialises n x n; for benchmarks)"))
    options: dict = field(default_factory=dict, metadata=_help("method options (see the method's options class)"))
    allow_other_files: bool = field(default=False, metadata=_help("write into an output folder that holds files facechain did not write (they are never touched)"))

    def __post_init__(self):
        check_weighting(self.prompt_weighting)
        if not isinstance(self.method, str) or not self.method:
            raise InputError("method must be a method name such as 'portrait-diffusion'.")
        if self.num_inference_steps is not None and not 1 <= self.num_inference_steps <= 1000:
            raise InputError(f"num_inference_steps must be between 1 and 1000, got {self.num_inference_steps}.")
        if not self.guidance_scale >= 1.0 or self.guidance_scale == float("inf"):  # NaN fails >=
            raise InputError(f"guidance_scale must be a finite number >= 1 (1 turns guidance off), got {self.guidance_scale}.")
        if self.resolution is not None and (self.resolution < 64 or self.resolution % 64):
            raise InputError(f"resolution must be a positive multiple of 64, got {self.resolution}.")
        if self.lora_scales and len(self.lora_scales) != len(self.loras):
            raise InputError(
                f"lora_scales has {len(self.lora_scales)} values for {len(self.loras)} LoRAs; give one weight per LoRA or none."
            )
        if self.inversion_refine < 0:
            raise InputError(f"inversion_refine must be >= 0, got {self.inversion_refine}.")
        for name in ("start_step", "end_step", "start_layer"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"{name} must be >= 0, got {value}.")

    @property
    def num_steps(self) -> int:
        if self.num_inference_steps is not None:
            return self.num_inference_steps
        return DEFAULT_FAST_STEPS if self.fast else DEFAULT_STEPS

    def check_steps(self) -> None:
        """Step indices must lie inside the schedule."""
        n = self.num_steps
        if self.start_step is not None and self.start_step >= n:
            raise InputError(f"start_step {self.start_step} must be below num_inference_steps ({n}); lower --start-step or raise --num-inference-steps.")
        if self.end_step is not None and not (self.start_step or 0) < self.end_step <= n:
            raise InputError(f"end_step {self.end_step} must be in (start_step, num_inference_steps] = ({self.start_step or 0}, {n}].")




def scaled_default(fraction_of_50: int, steps: int) -> int:
    """A step index the papers give for 50 steps, scaled to ``steps`` (e.g. SAC step 35/50 -> 3/4)."""
    return min(steps - 1, round(fraction_of_50 * steps / DEFAULT_STEPS)) if steps != DEFAULT_STEPS else fraction_of_50


@dataclass(frozen=True)
class PortraitDiffusionOptions:
    """Style Attention Control (Portrait Diffusion, arXiv 2312.02212, Sec. 3.2; official main.py)."""

    sac_step: int | None = field(default=None, metadata=_help("from this step on, SAC adds style guidance on the target's own queries (default 35 of 50, scaled)"))
    style_guidance: float = field(default=1.2, metadata=_help("g in A_c + g (Attn(Q_t,K_s,V_s) - A_c); README 1.2, main.py 1.5"))
    plan: list | str = field(default_factory=list, metadata=_help("Chain-of-Painting: a plan YAML file, or its list of passes (mappings of overrides); each output is the next content"))

    def __post_init__(self):
        if self.style_guidance < 0:
            raise InputError(f"style_guidance must be >= 0, got {self.style_guidance}.")
        if self.sac_step is not None and self.sac_step < 0:
            raise InputError(f"sac_step must be >= 0, got {self.sac_step}.")


@dataclass(frozen=True)
class StyleIDOptions:
    """StyleID (Chung et al., CVPR'24, Sec. 4) with MagicStyle-style fusion (arXiv 2409.08156)."""

    gamma: float = field(default=0.75, metadata=_help("query preservation: q = gamma q_c + (1-gamma) q_t (StyleID Eq. 4, 0.75)"))
    temperature: float = field(default=1.5, metadata=_help("attention temperature T: logits scaled by T/sqrt(d) (StyleID Sec. 4.2, 1.5)"))
    adain: bool = field(default=True, metadata=_help("initial latent = AdaIN(z_c^T, z_s^T) (StyleID Sec. 4.3)"))
    content_kv_weight: float = field(default=0.0, metadata=_help("MagicStyle FFA: also attend to content keys/values, K=[K_s; w K_c] (0 = pure StyleID)"))

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise InputError(f"gamma must be in [0, 1], got {self.gamma}.")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}.")
        if self.content_kv_weight < 0:
            raise InputError(f"content_kv_weight must be >= 0, got {self.content_kv_weight}.")


@dataclass(frozen=True)
class MasaCtrlOptions:
    """Mutual self-attention (MasaCtrl, Cao et al., ICCV'23, Sec. 3.2)."""

    union: bool = field(default=False, metadata=_help("attend to [K_style; K_target] instead of K_style only (MasaCtrl 'union' variant)"))


@dataclass(frozen=True)
class DiffStyleOptions:
    """h-space content injection (DiffStyle / InjectFusion, arXiv 2303.15403, Sec. 3)."""

    hs_coeff: float = field(default=0.3, metadata=_help("slerp weight toward the content's h (0.3 photos, 0.4 art, official scripts)"))
    t_edit: int = field(default=400, metadata=_help("inject at timesteps t >= t_edit (of 1000)"))

    def __post_init__(self):
        if not 0.0 <= self.hs_coeff <= 1.0:
            raise InputError(f"hs_coeff must be in [0, 1], got {self.hs_coeff}.")
        if not 0 <= self.t_edit <= 1000:
            raise InputError(f"t_edit must be in [0, 1000], got {self.t_edit}.")
