"""Stylization configs: one common :class:`StylizeConfig` plus one options dataclass per method.

Step and layer indices follow the seed papers: steps count sampling steps from the noisiest
(0) to the last (``steps - 1``); layers count self-attention layers in UNet call order (SD1.5:
down 0-5, mid 6, up 7-15; SDXL: 70 layers), as in MasaCtrl and Portrait Diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from facechain.config import model_ref, setting
from facechain.errors import InputError
from facechain.models import DEVICE_HELP, DTYPE_HELP
from facechain.prompts import WEIGHTING_HELP, check_weighting

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# LCM-LoRA weights per model family (Luo et al. 2023, "LCM-LoRA"); resolved through facechain.models.
DEFAULT_STEPS = 50  # Portrait Diffusion / StyleID / MasaCtrl all invert and sample with 50 DDIM steps
DEFAULT_FAST_STEPS = 4  # LCM-LoRA's recommended 2-8 steps


@dataclass(frozen=True)
class StylizeConfig(model_ref("base_model", "revision", "sub_path", "allow_pickle", base_model=DEFAULT_MODEL)):
    """Everything a stylization needs besides the content and style images."""

    RENAMED: ClassVar[dict[str, str]] = {"model": "base_model", "subfolder": "sub_path", "fast_lora": "lcm_lora",
                                         "steps": "num_inference_steps"}

    method: str = setting("portrait-diffusion | styleid | masactrl | diffstyle", default="portrait-diffusion")
    loras: list[str] = setting(
        "LoRA files/folders (diffusers format), e.g. the face LoRA from `facechain train`; applied "
        "identically in inversion and sampling", default_factory=list, flags=("--lora",))
    lora_scales: list[float] = setting("one weight per LoRA (default 1.0 each)", default_factory=list, flags=("--lora-scale",))
    fast: bool = setting("LCM-LoRA: LCM scheduler in inversion and sampling, few steps", default=False)
    lcm_lora: str | None = setting("LCM-LoRA file/folder/hub id (default: the family's latent-consistency LCM-LoRA)", default=None)
    num_inference_steps: int | None = setting(f"inversion = sampling steps (default {DEFAULT_STEPS}, {DEFAULT_FAST_STEPS} with fast)", default=None)
    guidance_scale: float = setting("classifier-free guidance of the sampling pass (1 = off)", default=1.0)
    prompt: str | None = setting("prompt for inversion and sampling (default: the method's, e.g. 'head' for Portrait Diffusion)", default=None)
    negative_prompt: str = setting("unconditional prompt when guidance_scale > 1", default="")
    prompt_weighting: Literal["a1111", "compel"] = setting(WEIGHTING_HELP, default="a1111")
    resolution: int | None = setting(
        "long side in pixels, multiple of 64 (default 512 for SD1.5, 1024 for SDXL); the style image is "
        "cropped to the content's aspect", default=None)
    start_step: int | None = setting("first controlled sampling step (default: the method's)", default=None)
    end_step: int | None = setting("controlled steps stop before this one (default: all)", default=None)
    start_layer: int | None = setting("first controlled self-attention layer in call order (default: the method's)", default=None)
    inversion_refine: int = setting(
        "fixed-point refinements per inversion step (Pan et al. 2023); 0 = plain DDIM inversion as in the "
        "papers, 2-3 = near-exact reconstruction for that many extra UNet passes", default=0)
    only_mask_region: bool = setting("stylize inside the content mask only; pixels outside are the content image's exactly", default=False)
    latent_blend: bool = setting("with only_mask_region: also keep the latent outside the mask on the content trajectory each step", default=True)
    cache_dir: Path | None = setting("folder for on-disk inversion cache (safetensors); memory cache is always on", default=None)
    device: str = setting(DEVICE_HELP, default="auto")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = setting(
        DTYPE_HELP + "; default float32: DDIM inversion drifts in half precision", default="float32")
    attention: Literal["sdpa", "einsum"] = setting("sdpa (ours) or einsum (the reference formulation, materialises n x n; for benchmarks)", default="sdpa")
    options: dict = setting("method options (see the method's options class)", default_factory=dict)
    allow_other_files: bool = setting("write into an output folder that holds files facechain did not write (they are never touched)", default=False)

    def __post_init__(self):
        super().__post_init__()
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

    sac_step: int | None = setting("from this step on, SAC adds style guidance on the target's own queries (default 35 of 50, scaled)", default=None)
    style_guidance: float = setting("g in A_c + g (Attn(Q_t,K_s,V_s) - A_c); README 1.2, main.py 1.5", default=1.2)
    plan: list | str = setting(
        "Chain-of-Painting: a plan YAML file, or its list of passes (mappings of overrides); each output is "
        "the next content", default_factory=list)

    def __post_init__(self):
        if self.style_guidance < 0:
            raise InputError(f"style_guidance must be >= 0, got {self.style_guidance}.")
        if self.sac_step is not None and self.sac_step < 0:
            raise InputError(f"sac_step must be >= 0, got {self.sac_step}.")


@dataclass(frozen=True)
class StyleIDOptions:
    """StyleID (Chung et al., CVPR'24, Sec. 4) with MagicStyle-style fusion (arXiv 2409.08156)."""

    gamma: float = setting("query preservation: q = gamma q_c + (1-gamma) q_t (StyleID Eq. 4, 0.75)", default=0.75)
    temperature: float = setting("attention temperature T: logits scaled by T/sqrt(d) (StyleID Sec. 4.2, 1.5)", default=1.5)
    adain: bool = setting("initial latent = AdaIN(z_c^T, z_s^T) (StyleID Sec. 4.3)", default=True)
    content_kv_weight: float = setting("MagicStyle FFA: also attend to content keys/values, K=[K_s; w K_c] (0 = pure StyleID)", default=0.0)

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

    union: bool = setting("attend to [K_style; K_target] instead of K_style only (MasaCtrl 'union' variant)", default=False)


@dataclass(frozen=True)
class DiffStyleOptions:
    """h-space content injection (DiffStyle / InjectFusion, arXiv 2303.15403, Sec. 3)."""

    hs_coeff: float = setting("slerp weight toward the content's h (0.3 photos, 0.4 art, official scripts)", default=0.3)
    t_edit: int = setting("inject at timesteps t >= t_edit (of 1000)", default=400)

    def __post_init__(self):
        if not 0.0 <= self.hs_coeff <= 1.0:
            raise InputError(f"hs_coeff must be in [0, 1], got {self.hs_coeff}.")
        if not 0 <= self.t_edit <= 1000:
            raise InputError(f"t_edit must be in [0, 1000], got {self.t_edit}.")
