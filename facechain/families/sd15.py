"""Stable Diffusion 1.x/2.x-architecture UNets (SD1.5 and its fine-tunes: FaceChain's base, majicmix, ...).

Recognised by a UNet that takes 4 latent channels (9: inpainting) and no added embedding, or a
single-file checkpoint with one text conditioner (``cond_stage_model.*``).
"""

from __future__ import annotations

from facechain.families.base import FastMode, Sampling, Training
from facechain.families.unet import UNetFamily


class SD15(UNetFamily):
    name = "sd15"
    label = "SD1.5-family"
    a_label = "an SD1.5-family"
    licence = ("CreativeML OpenRAIL-M (stable-diffusion-v1-5/stable-diffusion-v1-5); fine-tunes carry their own "
               "licence, which inherits its use restrictions")
    reference_repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    native_size = 512
    text_encoders = ("text_encoder",)
    pipelines = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
                 "inpaint": "StableDiffusionInpaintPipeline", "controlnet": "StableDiffusionControlNetPipeline",
                 "controlnet_inpaint": "StableDiffusionControlNetInpaintPipeline"}
    sampling = Sampling("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, 40, 7.0)
    # latent-consistency/lcm-lora-sdv1-5 (Luo et al. 2023): 134.6 MB on the device once loaded
    fast = FastMode("latent-consistency/lcm-lora-sdv1-5", "LCMScheduler", 134_621_556)
    training = Training("epsilon", ("to_q", "to_k", "to_v", "to_out.0"), ("q_proj", "k_proj", "v_proj", "out_proj"))
    # each falls back to FaceChain's ModelScope copy (facechain.models.MODELSCOPE_COPIES)
    controlnets = {"openpose": "lllyasviel/control_v11p_sd15_openpose", "canny": "lllyasviel/control_v11p_sd15_canny",
                   "depth": "lllyasviel/control_v11f1p_sd15_depth"}
    # real-size UNet, random weights: 0.453 GiB for the guidance pair at 64 x 64 latents (growth of the CPU peak
    # RSS over one float32 forward, halved for float16)
    unet_activation_bytes_per_latent_pixel = 59_366
    # kohya's sd-scripts build SD1.5 LoRAs on a diffusers-layout UNet; files made on the original UNet
    # (SGM names) are read too
    kohya_prefixes = {"unet": ("lora_unet",), "text_encoder": ("lora_te", "lora_te1")}
    kohya_unet_names = "diffusers"

    def matches_denoiser_config(self, config: dict) -> bool:
        return config.get("addition_embed_type") in (None, "text") and config.get("in_channels", 4) in (4, 9)

    def matches_checkpoint_keys(self, keys: list[str]) -> bool:
        return any(k.startswith("cond_stage_model.") for k in keys) and not any(
            k.startswith("conditioner.embedders.1.") for k in keys)

    def load_kwargs(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False}

    def text_conditioning(self, encoder_outputs: list, *, training: bool = False):
        return encoder_outputs[0][0], None

    def build_tiny(self, folder, seed: int = 0, tokenizer: str = "bytes"):
        from facechain.testing import build_tiny_sd15

        return build_tiny_sd15(folder, seed, tokenizer)
