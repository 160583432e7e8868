"""Model families as plug-ins: recognition, pipeline classes per task, conditioning, latents, LoRA key
names, and the structural rule that no code outside facechain/families branches on a family's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from facechain.errors import InputError
from facechain.families import (
    FAMILIES,
    family_of_checkpoint_keys,
    family_of_denoiser_config,
    family_of_folder,
    family_of_pipeline,
    get_family,
)
from facechain.families.sd15 import SD15

PACKAGE = Path(__file__).resolve().parents[2] / "facechain"


def test_the_registry_holds_sd15_and_sdxl_and_names_the_choices_on_a_typo():
    assert FAMILIES.names() == ["sd15", "sdxl"]
    assert get_family("sdxl") is get_family(get_family("sdxl"))
    with pytest.raises(InputError, match=r"unknown model family 'sd3'.*\['sd15', 'sdxl'\]"):
        get_family("sd3")


def test_folders_and_loaded_pipelines_are_recognised_from_the_denoiser_config(tiny_sd15, tiny_sdxl):
    from diffusers import DiffusionPipeline

    for folder, name in ((tiny_sd15, "sd15"), (tiny_sdxl, "sdxl")):
        assert family_of_folder(Path(folder)).name == name
        pipe = DiffusionPipeline.from_pretrained(str(folder))
        assert family_of_pipeline(pipe).name == name
        assert type(pipe) is get_family(name).pipeline_class("txt2img")


def test_denoiser_configs_and_checkpoint_keys_of_each_family():
    assert family_of_denoiser_config({"in_channels": 9}, "x").name == "sd15"  # an inpainting UNet
    assert family_of_denoiser_config({"addition_embed_type": "text_time"}, "x").name == "sdxl"
    with pytest.raises(InputError, match="describes neither an SD1.5-family nor an SDXL UNet"):
        family_of_denoiser_config({"in_channels": 16, "addition_embed_type": None}, "this config")
    assert family_of_checkpoint_keys(["model.diffusion_model.a", "cond_stage_model.b"], "f").name == "sd15"
    assert family_of_checkpoint_keys(["conditioner.embedders.0.a", "conditioner.embedders.1.b"], "f").name == "sdxl"


def test_a_folder_without_a_denoiser_config_is_one_clear_error(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(InputError, match="has no unet/config.json"):
        family_of_folder(tmp_path)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_every_task_has_a_diffusers_class_of_the_family(name):
    import diffusers

    family = get_family(name)
    classes = {task: family.pipeline_class(task) for task in ("txt2img", "img2img", "inpaint", "controlnet",
                                                               "controlnet_inpaint")}
    assert len(set(classes.values())) == 5
    assert all(issubclass(c, diffusers.DiffusionPipeline) for c in classes.values())
    assert ("XL" in classes["inpaint"].__name__) == (name == "sdxl")


def test_a_task_the_family_lacks_is_one_error_naming_what_it_serves():
    class NoControl(SD15):
        name, label = "nocontrol", "No-control"
        pipelines = {"txt2img": "StableDiffusionPipeline", "inpaint": "StableDiffusionInpaintPipeline"}

    with pytest.raises(InputError, match=r"No-control base models have no ControlNet pipeline.*serve: "
                                         r"text-to-image, inpainting"):
        NoControl().pipeline_class("controlnet")
    with pytest.raises(ValueError, match="unknown task"):
        NoControl().pipeline_class("upscale")


def test_sdxl_added_conditioning_is_pooled_text_and_the_six_size_ids():
    pooled = torch.randn(3, 8)
    added = get_family("sdxl").added_conditioning(pooled, 768, 1024, 3, "cpu", torch.float32)
    assert added["text_embeds"] is pooled
    assert added["time_ids"].tolist() == [[768, 1024, 0, 0, 768, 1024]] * 3
    assert get_family("sd15").added_conditioning(None, 512, 512, 3, "cpu", torch.float32) is None


def test_fp16_latents_are_encoded_in_float32_when_the_vae_asks_and_the_vae_is_put_back():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8], norm_num_groups=8, latent_channels=4, force_upcast=True).half()
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    family = get_family("sdxl")
    lat = family.encode_latents(vae, image, "cpu")
    assert vae.dtype == torch.float16 and lat.dtype == torch.float32 and lat.shape[:2] == (1, 4)
    out = family.decode_latents(vae, lat)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and vae.dtype == torch.float16
    vae32 = vae.to(torch.float32)
    assert torch.allclose(family.encode_latents(vae32, image, "cpu"), lat)


def test_kohya_names_follow_the_family():
    lora = {"unet": {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 4)},
            "text_encoder": {"text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 4)}}
    from facechain.lora import to_kohya

    sd15, sdxl = to_kohya(lora, "sd15", 1.0, 1), to_kohya(lora, get_family("sdxl"), 1.0, 1)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd15
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in sd15
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in sdxl
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in sdxl


def test_fast_mode_ref_is_the_family_default_unless_a_config_names_one():
    assert get_family("sd15").fast_lora_ref() == "latent-consistency/lcm-lora-sdv1-5"
    assert get_family("sdxl").fast_lora_ref("my/lcm") == "my/lcm"

    class Slow(SD15):
        name, label, fast = "slow", "Slow", None

    with pytest.raises(InputError, match="Slow base models have no fast mode"):
        Slow().fast_lora_ref()


# A branch on a family's name: a comparison with a family name, or a diffusers SD/SDXL pipeline class named
# in code (the family's pipelines table is where those live). facechain/testing.py builds the tiny models each
# family's build_tiny slot points to.
_BRANCH = re.compile(r"""(==|!=)\s*["'](sd15|sdxl)["']|["'](sd15|sdxl)["']\s*(==|!=)""")
_PIPELINE_CLASS = re.compile(r"\bStableDiffusion(XL)?[A-Za-z]*Pipeline\b")


@pytest.mark.unit
def test_no_code_outside_the_families_package_branches_on_a_family_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("families/") or rel == "testing.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _BRANCH.search(code) or (_PIPELINE_CLASS.search(code) and "import" in code):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_ddpm_objective_draws_noise_then_timesteps_and_targets_the_schedulers_prediction(prediction):
    from diffusers import DDPMScheduler

    config = DDPMScheduler(prediction_type=prediction).config
    objective = get_family("sd15").objective(config)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy, t, target = objective.noised(x0, torch.Generator().manual_seed(7), "cpu")
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(x0.shape, generator=gen)
    want_t = torch.randint(0, 1000, (2,), generator=gen)
    sched = DDPMScheduler.from_config(config)
    assert torch.equal(t, want_t) and torch.equal(noisy, sched.add_noise(x0, noise, want_t))
    assert torch.equal(target, noise if prediction == "epsilon" else sched.get_velocity(x0, noise, want_t))
    with pytest.raises(InputError, match="predicts 'sample'"):
        get_family("sdxl").objective(DDPMScheduler(prediction_type="sample").config)
