"""SDXL-architecture UNets (SDXL base 1.0 and its fine-tunes: Juggernaut, RealVis, ...).

Recognised by a UNet that takes the pooled text embedding and size ids (``addition_embed_type``
"text_time"), or a single-file checkpoint with two text conditioners (``conditioner.embedders.1``).
"""

from __future__ import annotations

from facechain.families.base import FastMode, Sampling, Training
from facechain.families.unet import UNetFamily


class SDXL(UNetFamily):
    name = "sdxl"
    label = "SDXL"
    a_label = "an SDXL"
    licence = ("CreativeML Open RAIL++-M (stabilityai/stable-diffusion-xl-base-1.0); fine-tunes carry their own "
               "licence, which inherits its use restrictions")
    reference_repo = "stabilityai/stable-diffusion-xl-base-1.0"
    native_size = 1024
    text_encoders = ("text_encoder", "text_encoder_2")
    pipelines = {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
                 "inpaint": "StableDiffusionXLInpaintPipeline", "controlnet": "StableDiffusionXLControlNetPipeline",
                 "controlnet_inpaint": "StableDiffusionXLControlNetInpaintPipeline"}
    sampling = Sampling("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, 40, 7.0)
    # latent-consistency/lcm-lora-sdxl (Luo et al. 2023): 393.9 MB on the device once loaded
    fast = FastMode("latent-consistency/lcm-lora-sdxl", "LCMScheduler", 393_854_592)
    training = Training("epsilon", ("to_q", "to_k", "to_v", "to_out.0"), ("q_proj", "k_proj", "v_proj", "out_proj"))
    # SDXL openpose: xinsir's repo (config.json + diffusion_pytorch_model.safetensors);
    # thibaud/controlnet-openpose-sdxl-1.0 ships its diffusers weights only as a pickle: name its
    # safetensors file as thibaud/controlnet-openpose-sdxl-1.0/OpenPoseXL2.safetensors to use it.
    controlnets = {"openpose": "xinsir/controlnet-openpose-sdxl-1.0", "canny": "diffusers/controlnet-canny-sdxl-1.0",
                   "depth": "diffusers/controlnet-depth-sdxl-1.0"}
    # real-size UNet, random weights: 0.478 GiB for one of the guidance pair at 128 x 128 latents
    unet_activation_bytes_per_latent_pixel = 31_355
    # sd-scripts names SDXL UNet modules by the original SGM blocks; text encoders lora_te1/lora_te2
    kohya_prefixes = {"unet": ("lora_unet",), "text_encoder": ("lora_te1",), "text_encoder_2": ("lora_te2",)}
    kohya_unet_names = "sgm"
    validates_at_native_size = True  # SDXL makes poor faces below its native size
    vae_upcast = True  # StableDiffusionXLPipeline.upcast_vae: the SDXL VAE overflows in float16
    penultimate = True  # both encoders' penultimate hidden states, side by side
    pooled_text = True  # the pooled embedding of the second encoder

    def matches_denoiser_config(self, config: dict) -> bool:
        return config.get("addition_embed_type") == "text_time"

    def matches_checkpoint_keys(self, keys: list[str]) -> bool:
        return any(k.startswith("conditioner.embedders.1.") for k in keys)

    def added_conditioning(self, pooled, height: int, width: int, batch: int, device, dtype) -> dict:
        """SDXL micro-conditioning (Podell et al. 2023, Sec. 2.2): the pooled text embedding and the six
        size ids: original size, crop top-left (0, 0), target size, each (height, width)."""
        import torch

        ids = torch.tensor([height, width, 0, 0, height, width], dtype=dtype, device=device)
        return {"text_embeds": pooled, "time_ids": ids.expand(batch, 6)}

    def text_conditioning(self, encoder_outputs: list, *, training: bool = False):
        import torch

        hidden = [out.hidden_states[-2] for out in encoder_outputs]  # (C, L, D_i), penultimate layer
        return torch.cat(hidden, dim=-1), encoder_outputs[-1][0]  # text_embeds of the projection encoder

    def build_tiny(self, folder, seed: int = 0, tokenizer: str = "bytes"):
        from facechain.testing import build_tiny_sdxl

        return build_tiny_sdxl(folder, seed, tokenizer)
