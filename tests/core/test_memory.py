"""The memory budget of every default mode on a 24 GiB card, from the published configs of the default
models built on the meta device (no weights), and the settings facechain.memory picks from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CONFIGS = Path(__file__).parents[1] / "fixtures" / "configs"
GiB = 1 << 30
CARD = 24 * GiB
SIZE = {"sd15": 512, "sdxl": 1024}


@pytest.fixture(scope="module")
def parts():
    """facechain.memory.Parts of every (family, mode), built once (meta device: milliseconds)."""
    from facechain.memory import MODES, meta_parts

    return {(f, m): meta_parts(f, CONFIGS, m) for f in SIZE for m in MODES}


# Published parameter counts (model cards / the diffusers and transformers classes' own counts on the
# real checkpoints): SD1.5 UNet 859.52M, SDXL UNet 2.567B, CLIP ViT-L text 123.06M, OpenCLIP ViT-bigG text
# with projection 694.66M, the SD VAE 83.65M, OpenCLIP ViT-H/14 vision tower 632.08M + its 1280x1024
# projection, a SD1.5 ControlNet 361.3M (1.45 GB in float32), a full SDXL ControlNet 1.251B (2.5 GB fp16).
PUBLISHED = {
    ("unet", "sd15/unet"): 859.52e6,
    ("unet", "sdxl/unet"): 2567.46e6,
    ("vae", "sd15/vae"): 83.65e6,
    ("vae", "sdxl/vae"): 83.65e6,
    ("clip_text", "sd15/text_encoder"): 123.06e6,
    ("clip_text", "sdxl/text_encoder"): 123.06e6,
    ("clip_text_projection", "sdxl/text_encoder_2"): 694.66e6,
    ("clip_vision", "image_encoder_vit_h"): 632.08e6 + 1280 * 1024,
    ("controlnet", "controlnet_sd15_openpose"): 361.28e6,
    ("controlnet", "controlnet_sdxl_depth"): 1251.36e6,
}


@pytest.mark.parametrize("kind,folder", list(PUBLISHED))
def test_parameter_counts_match_published_figures(kind, folder):
    from facechain.memory import meta_model, parameter_count

    model = meta_model(kind, CONFIGS / folder)
    assert next(model.parameters()).device.type == "meta"  # no weights were made
    n = parameter_count(model)
    assert abs(n / PUBLISHED[(kind, folder)] - 1) < 0.005, f"{folder}: {n / 1e6:.2f}M"


@pytest.mark.parametrize("family", list(SIZE))
@pytest.mark.parametrize("mode", ["plain", "pose", "pose+depth", "faceid", "plus_v2", "fast"])
def test_every_default_mode_fits_a_24_gib_card(parts, family, mode):
    from facechain.memory import RESERVE_BYTES, plan_memory

    size = SIZE[family]
    plan = plan_memory(parts[(family, mode)], size, size, batch="auto", offload="auto", free_bytes=CARD)
    assert plan.fits and plan.budget_bytes + RESERVE_BYTES <= CARD
    assert plan.offload == "none" and plan.vae_slicing and not plan.vae_tiling  # a 24 GiB card needs no offload
    assert plan.batch_size >= (5 if family == "sd15" else 2), plan.to_dict()


@pytest.mark.parametrize("mode", ["pose", "pose+depth"])
def test_the_old_sdxl_defaults_do_not_fit(parts, mode):
    """batch 5 at 1024 px, the whole batch decoded at once in float32: over a 24 GiB card."""
    from facechain.memory import RESERVE_BYTES, budget

    old = budget(parts[("sdxl", mode)], 1024, 1024, 5, offload="none", slicing=False)
    assert old["total"] + RESERVE_BYTES > CARD, old
    assert old["decode"] >= 5 * 3.7 * GiB  # the measured 3.8 GiB per image, five at once
    new = budget(parts[("sdxl", mode)], 1024, 1024, 5, offload="none", slicing=True)
    assert new["decode"] * 5 == pytest.approx(old["decode"], rel=1e-6)


def test_weights_of_sdxl_with_two_controlnets(parts):
    """The issue's figures: ~7 GB of UNet and text encoders, 2.5 GB per SDXL ControlNet (fp16)."""
    p = {m.name: m.bytes for m in parts[("sdxl", "pose+depth")].models}
    assert 6.7e9 < p["unet"] + p["text_encoder"] + p["text_encoder_2"] < 6.9e9
    assert p["controlnet_openpose"] == p["controlnet_depth"]
    assert 2.45e9 < p["controlnet_openpose"] < 2.55e9


def test_batch_shrinks_with_free_memory(parts):
    from facechain.memory import plan_memory

    sizes = [plan_memory(parts[("sdxl", "pose")], 1024, 1024, free_bytes=free * GiB).batch_size for free in (40, 24, 16, 14)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1], sizes
    assert sizes[0] == 5  # capped at FaceChain's batch
    fixed = plan_memory(parts[("sdxl", "pose")], 1024, 1024, batch=5, free_bytes=14 * GiB)
    assert fixed.batch_size == 5 and not fixed.fits  # a batch given is kept, and the plan says it does not fit


def test_offload_auto_picks_model_offload_on_a_12_gib_card(parts):
    from facechain.memory import plan_memory

    for mode in ("pose", "pose+depth"):
        plan = plan_memory(parts[("sdxl", mode)], 1024, 1024, free_bytes=12 * GiB)
        assert plan.offload == "model" and plan.fits and not plan.vae_tiling and plan.batch_size >= 1, plan.to_dict()
    assert plan_memory(parts[("sd15", "pose")], 512, 512, free_bytes=12 * GiB).offload == "none"
    # 6 GiB: even the denoise stage alone (UNet + two 2.5 GB ControlNets) does not fit: layer by layer
    small = plan_memory(parts[("sdxl", "pose+depth")], 1024, 1024, free_bytes=6 * GiB)
    assert small.offload == "sequential" and small.fits, small.to_dict()


def test_facechain_pipelines_never_pick_sequential_offload_themselves(parts):
    """AUTO_OFFLOAD (what the generator and templates let auto pick) stops at model offload: the plan then
    says it does not fit, and sequential offload stays an explicit choice."""
    from facechain.memory import AUTO_OFFLOAD, plan_memory

    plan = plan_memory(parts[("sdxl", "pose+depth")], 1024, 1024, free_bytes=6 * GiB, auto_modes=AUTO_OFFLOAD)
    assert plan.offload == "model" and not plan.fits and plan.batch_size == 1
    asked = plan_memory(parts[("sdxl", "pose+depth")], 1024, 1024, offload="sequential", free_bytes=6 * GiB,
                        auto_modes=AUTO_OFFLOAD)
    assert asked.offload == "sequential" and asked.fits


def test_tiling_only_when_one_image_does_not_fit(parts):
    from facechain.memory import plan_memory

    assert not plan_memory(parts[("sdxl", "plain")], 2048, 2048, free_bytes=CARD).vae_tiling  # 15 GiB decode fits
    big = plan_memory(parts[("sdxl", "plain")], 2560, 2560, free_bytes=CARD)
    assert big.vae_tiling and big.offload == "none"  # 24 GiB for one 2560 px decode: no offload helps, tiles do


def test_no_gpu_means_nothing_to_fit(parts):
    from facechain.memory import DEFAULT_BATCH, plan_memory

    plan = plan_memory(parts[("sdxl", "pose+depth")], 1024, 1024, free_bytes=None)
    assert (plan.batch_size, plan.offload, plan.vae_tiling) == (DEFAULT_BATCH, "none", False)


def test_pipeline_parts_count_the_loaded_modules(sd15_pipe):
    from facechain.memory import pipeline_parts

    parts = pipeline_parts(sd15_pipe)
    expected = sum(t.numel() * t.element_size() for name in ("unet", "vae", "text_encoder")
                   for t in [*getattr(sd15_pipe, name).parameters(), *getattr(sd15_pipe, name).buffers()])
    assert parts.weights() == expected and parts.family == "sd15" and parts.vae_dtype_bytes == 4


# ------------------------------------------------------------------ the generator on the CPU


def _cfg(tiny, tmp_path, **kw):
    from facechain.generate import GenerateConfig

    base = {"base_model": str(tiny), "output_dir": tmp_path / "out", "num_candidates": 3, "num_images": 1,
                "num_inference_steps": 2, "rank_candidates": False, "fusion": "off", "device": "cpu", "dtype": "float32",
                "height": 64, "width": 64, "styles": ["Business suit"]}
    base.update(kw)
    return GenerateConfig(**base)


def _images(cfg):
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import load_styles

    gen = PortraitGenerator(cfg)
    batch = gen.generate(load_styles().get("Business suit", "sd15"), ("<fcsks>", "a person"))
    return gen, batch, np.stack([np.asarray(c.image) for c in batch.candidates])


def test_generator_on_cpu_auto_is_todays_placement(tiny_sd15, tmp_path):
    """auto on the CPU: no offload, the default batch (capped at the candidates), VAE slicing on. With
    slicing off (offload none) the images are the old code's bit for bit (checked against the code before
    facechain.memory); slicing decodes one image at a time, which moves a few pixels by one level at most
    (batched vs single convolutions on the CPU)."""
    gen, batch, auto = _images(_cfg(tiny_sd15, tmp_path))
    assert gen.batch_size == 3 and gen.memory.offload == "none" and gen.pipe.vae.use_slicing
    assert gen.pipe.unet.device.type == "cpu"
    memory = batch.settings["memory"]
    assert memory["offload"] == "none" and memory["batch_size"] == 3 and memory["free_bytes"] is None
    assert batch.settings["batch_size"] == 3
    gen2, _, plain = _images(_cfg(tiny_sd15, tmp_path, batch_size=3, offload="none", vae_slicing=False))
    assert not gen2.pipe.vae.use_slicing
    diff = np.abs(auto.astype(int) - plain)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001


def test_offload_needs_a_gpu(tiny_sd15, tmp_path):
    from facechain.errors import InputError
    from facechain.generate.pipeline import PortraitGenerator

    with pytest.raises(InputError, match="offload: model .* device is cpu"):
        PortraitGenerator(_cfg(tiny_sd15, tmp_path, offload="model"))


@pytest.mark.unit
def test_batch_size_flag_and_config_values(tmp_path):
    import argparse

    from facechain.config import add_config_arguments, settings_from_args
    from facechain.errors import InputError
    from facechain.generate import GenerateConfig

    p = argparse.ArgumentParser()
    add_config_arguments(p, GenerateConfig)
    assert settings_from_args(GenerateConfig, p.parse_args(["--batch-size", "3"]))["batch_size"] == 3
    assert settings_from_args(GenerateConfig, p.parse_args(["--batch-size", "auto"]))["batch_size"] == "auto"
    base = {"base_model": "x", "output_dir": tmp_path}
    assert GenerateConfig(**base).batch_size == "auto" and GenerateConfig(**base).offload == "auto"
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        GenerateConfig(**base, batch_size=0)


def test_template_places_its_models_by_the_plan(sd15_pipe):
    """The template job's placement: on the CPU the pipeline is moved as before (offload none, batch 1 at
    the working size); an offload that needs a GPU is refused with the fix."""
    from types import SimpleNamespace

    from facechain.errors import InputError
    from facechain.template.editor import place_models

    plan = place_models(sd15_pipe, None, SimpleNamespace(offload="auto"), "cpu")
    assert (plan.offload, plan.batch_size, plan.free_bytes) == ("none", 1, None)
    assert sd15_pipe.unet.device.type == "cpu" and sd15_pipe.vae.use_slicing
    with pytest.raises(InputError, match="offload: sequential .* Use offload: none"):
        place_models(sd15_pipe, None, SimpleNamespace(offload="sequential"), "cpu")


@pytest.mark.slow
def test_model_offload_hooks_give_the_same_images(tiny_sd15, tmp_path, monkeypatch):
    """diffusers' model CPU offload, run for real with the CPU as its 'accelerator' (cpu:0; on a machine
    with no GPU facechain itself refuses it): the hooks move each model in and out around its forward,
    with the face LoRA fused and a pose ControlNet, and the images are those of offload none bit for bit."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from facechain import memory
    from facechain.testing import random_lora

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    net = tmp_path / "cn"
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16)).save_pretrained(net)
    kw = {"lora_dir": random_lora(tiny_sd15, tmp_path / "lora", seed=1), "pose": "upper_body_front",
              "controlnet_openpose": str(net), "batch_size": 3}
    gen, _, plain = _images(_cfg(tiny_sd15, tmp_path, **kw))
    assert gen.memory.offload == "none" and not hasattr(gen.pipe.unet, "_hf_hook")
    monkeypatch.setattr(memory, "offload_for", lambda requested, device, free: "model")
    gen, batch, offloaded = _images(_cfg(tiny_sd15, tmp_path, **kw))
    assert batch.settings["memory"]["offload"] == "model" and batch.settings["fused"]
    assert hasattr(gen.pipe.unet, "_hf_hook") and hasattr(gen.control_pipe.controlnet, "_hf_hook")
    assert np.array_equal(offloaded, plain)
