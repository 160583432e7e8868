"""Generation with tiny real-class models: config file -> images + manifest, LoRA mixing
(fuse/unfuse), seeds, ControlNet pose + depth, SDXL + fast mode, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facechain.errors import InputError, ModelNotFoundError

from facechain.testing import LORA_TARGETS, random_lora


@pytest.fixture(scope="module")
def face_lora(tiny_sd15, tmp_path_factory):
    return random_lora(tiny_sd15, tmp_path_factory.mktemp("face_lora"), seed=1)


@pytest.fixture(scope="module")
def style_dir(tiny_sd15, tmp_path_factory):
    """A user styles folder with one style pointing at a local LoRA file beside it."""
    folder = tmp_path_factory.mktemp("mystyles")
    random_lora(tiny_sd15, folder / "loras", seed=2, weight_name="ink.safetensors")
    (folder / "ink.json").write_text(json.dumps({
        "name": "Ink", "img": "", "model_id": "loras/ink.safetensors", "revision": None, "bin_file": None,
        "multiplier_style": 0.35, "multiplier_human": 0.9, "add_prompt_style": "(ink drawing:1.3), black and white",
    }))
    (folder / "loras" / "broken.safetensors").write_bytes(b"not a safetensors file")
    (folder / "broken.json").write_text(json.dumps({
        "name": "Broken", "img": "", "model_id": "loras/broken.safetensors", "revision": None, "bin_file": None,
        "multiplier_style": 0.5, "multiplier_human": 0.9, "add_prompt_style": "anything",
    }))
    return folder


def _cfg(tiny, tmp_path, **kw):
    from facechain.generate import GenerateConfig

    base = {"base_model": str(tiny), "output_dir": tmp_path / "out", "num_candidates": 3, "num_images": 2, "batch_size": 2,
                "num_inference_steps": 2, "rank_candidates": False, "fusion": "off", "device": "cpu", "dtype": "float32", "styles": ["Business suit"]}
    base.update(kw)
    return GenerateConfig(**base)


def _pixels(batch):
    return np.stack([np.asarray(c.image, dtype=np.int16) for c in batch.candidates])


@pytest.mark.slow
def test_end_to_end_from_config_file(tiny_sd15, face_lora, style_dir, tmp_path):
    from facechain.cli import main

    cfg_path = tmp_path / "conf" / "user.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(
        f"base_model: {tiny_sd15}\nlora_dir: {face_lora}\noutput_dir: ../out\nstyle_dirs: [{style_dir}]\n"
        "styles: [Business suit, Broken, Ink]\nnum_candidates: 3\nnum_images: 2\nbatch_size: 2\nsteps: 2\n"
        "seed: 5\nrank: false\nfusion: 'off'\nupscale: lanczos\ndevice: cpu\ndtype: float32\n"
    )
    # old setting names (steps, rank) still work; one requested style fails, so the exit code is 1
    assert main(["generate", "--config", str(cfg_path)]) == 1
    out = tmp_path / "out"  # resolved against the config file's folder
    kept = sorted(p.name for p in out.glob("*.png"))
    assert kept == ["business_suit_00.png", "business_suit_01.png", "contact_sheet.png", "ink_00.png", "ink_01.png"]
    assert len(list((out / "candidates").glob("*.png"))) == 6
    man = json.loads((out / "manifest.json").read_text())
    suit, broken, ink = man["styles"]  # a broken style is reported; the others still run
    assert broken["style"] == "Broken" and "could not be read as a safetensors file" in broken["error"]
    assert man["failed"] == [{"item": "Broken", "error": broken["error"]}]
    assert suit["prompt"].startswith("<fcsks>, a person, wearing a tailored dark business suit")
    assert ink["prompt"] == "<fcsks>, a person, (ink drawing:1.3), black and white"  # weights kept: the encoder reads them
    assert ink["settings"]["prompt_encoding"]["prompt_weighted"] and not suit["settings"]["prompt_encoding"]["truncated"]
    assert ink["settings"]["prompt_encoding"]["prompt_weighting"] == "a1111"  # the default: AUTOMATIC1111's rule
    assert suit["adapters"] == {"face": 0.95} and ink["adapters"] == {"face": 0.9, "style": 0.35}
    assert ink["multipliers"] == {"human": 0.9, "style": 0.35}
    assert [c["seed"] for c in ink["candidates"]] == [5, 6, 7]
    assert [k["seed"] for k in ink["kept"]] == [5, 6]
    assert suit["settings"]["scheduler"] == "DPMSolverMultistepScheduler" and suit["settings"]["steps"] == 2
    assert "nsfw" in suit["negative_prompt"] and set(man["timings"]) >= {"load_s", "total_s"}
    assert json.loads((out / "generate_config.json").read_text())["_type"] == "GenerateConfig"
    from PIL import Image

    assert Image.open(out / "ink_00.png").size == (128, 128)  # Lanczos x2
    assert Image.open(out / "candidates" / "ink_000.png").size == (64, 64)
    # the same job through run_inference.py's entry point (the shipped demo config, tiny model path overridden)
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, str(repo / "run_inference.py"), "--config", str(repo / "configs" / "demo.yaml"),
                          "--base-model", str(tiny_sd15), "--output-dir", str(tmp_path / "demo"), "--steps", "2",
                          "--num-candidates", "1", "--num-images", "1", "--styles", "Chef"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--steps is now --num-inference-steps" in res.stderr  # the old flag works, with a note
    assert (tmp_path / "demo" / "chef_00.png").is_file() and (tmp_path / "demo" / "manifest.json").is_file()


@pytest.mark.slow
def test_seeds_batches_and_fusing_are_consistent(tiny_sd15, face_lora, tmp_path):
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import load_styles

    style = load_styles().get("Chef", "sd15")
    subject = ("<fcsks>", "a person")
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, lora_dir=face_lora, batch_size=3))
    before = {k: v.clone() for k, v in gen.pipe.unet.state_dict().items() if "lora" not in k}
    fused_batched = _pixels(gen.generate(style, subject))
    after = {k: v for k, v in gen.pipe.unet.state_dict().items() if "lora" not in k}
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # unfused afterwards

    plain = PortraitGenerator(_cfg(tiny_sd15, tmp_path, lora_dir=face_lora, batch_size=1, fuse_loras=False))
    unfused_single = _pixels(plain.generate(style, subject))
    assert np.abs(fused_batched - unfused_single).max() <= 2  # same images, numerics aside
    assert np.abs(fused_batched[0] - fused_batched[1]).mean() > 1  # different seeds, different images

    no_lora = PortraitGenerator(_cfg(tiny_sd15, tmp_path, batch_size=3))
    assert np.abs(_pixels(no_lora.generate(style, subject)) - fused_batched).mean() > 0.5  # the LoRA acts


def test_missing_lora_folder_and_unknown_style(tiny_sd15, tmp_path):
    from facechain.generate.job import check_inputs

    with pytest.raises(ModelNotFoundError, match=r"face LoRA folder .*nope \(lora_dir\) does not exist"):
        check_inputs(_cfg(tiny_sd15, tmp_path, lora_dir=tmp_path / "nope"))
    (tmp_path / "empty_lora").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no pytorch_lora_weights.safetensors"):
        check_inputs(_cfg(tiny_sd15, tmp_path, lora_dir=tmp_path / "empty_lora"))
    with pytest.raises(InputError, match="unknown style 'Nonexistent'"):
        check_inputs(_cfg(tiny_sd15, tmp_path, styles=["Nonexistent"]))
    with pytest.raises(InputError, match="need the template face from processed_dir"):
        check_inputs(_cfg(tiny_sd15, tmp_path, rank_candidates=True))


@pytest.mark.slow
def test_pose_and_depth_controlnets(tiny_sd15, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from facechain.generate.pipeline import PortraitGenerator
    from facechain.io import save_image
    from facechain.generate.styles import load_styles

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    with torch.no_grad():  # from_unet zero-initialises the output convs; give them weight so the pose acts
        for p in cn.controlnet_down_blocks.parameters():
            p.normal_(0, 0.5)
        for p in cn.controlnet_mid_block.parameters():
            p.normal_(0, 0.5)
    cn.save_pretrained(tmp_path / "cn")
    depth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 64, 3))
    save_image(tmp_path / "depth.png", depth)
    style = load_styles().get("Chef", "sd15")
    subject = ("<fcsks>", "a person")
    plain = _pixels(PortraitGenerator(_cfg(tiny_sd15, tmp_path, num_candidates=1, num_images=1)).generate(style, subject))
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, num_candidates=1, num_images=1, pose="upper_body_front",
                                 controlnet_openpose=str(tmp_path / "cn")))
    posed = gen.generate(style, subject)
    assert type(gen.control_pipe).__name__ == "StableDiffusionControlNetPipeline"
    assert posed.settings["controlnets"] == ["openpose"]
    assert np.abs(_pixels(posed) - plain).mean() > 0.5
    both = PortraitGenerator(_cfg(tiny_sd15, tmp_path, num_candidates=1, num_images=1, pose="upper_body_front", depth=True,
                                  depth_image=tmp_path / "depth.png", controlnet_openpose=str(tmp_path / "cn"),
                                  controlnet_depth=str(tmp_path / "cn")))
    out = both.generate(style, subject)
    assert out.settings["controlnets"] == ["openpose", "depth"] and out.settings["controlnet_scales"] == [1.0, 0.5]
    assert np.abs(_pixels(out) - _pixels(posed)).mean() > 0.5
    from facechain.generate.job import check_inputs

    with pytest.raises(InputError, match="skeleton map, which has no depth"):
        check_inputs(_cfg(tiny_sd15, tmp_path, pose="upper_body_front", depth=True))
    save_image(tmp_path / "empty_pose.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InputError, match="shows no person"):
        check_inputs(_cfg(tiny_sd15, tmp_path, pose=str(tmp_path / "empty_pose.png")))
    with pytest.raises(ModelNotFoundError, match="openpose ControlNet"):
        PortraitGenerator(_cfg(tiny_sd15, tmp_path, pose="upper_body_front", controlnet_openpose=str(tmp_path / "x")))


@pytest.mark.slow
def test_sdxl_fast_mode_with_lcm_lora_and_pose(tiny_sdxl, tmp_path):
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import load_styles

    from diffusers import ControlNetModel, UNet2DConditionModel

    lcm = random_lora(tiny_sdxl, tmp_path / "lcm", seed=3, family="sdxl")
    face = random_lora(tiny_sdxl, tmp_path / "face", seed=4, family="sdxl")
    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16)).save_pretrained(tmp_path / "cn")
    gen = PortraitGenerator(_cfg(tiny_sdxl, tmp_path, fast=True, fast_num_inference_steps=2, lcm_lora=str(lcm), lora_dir=face,
                                 pose="upper_body_turn", controlnet_openpose=str(tmp_path / "cn")))
    batch = gen.generate(load_styles().get("Cyberpunk", "sdxl"), ("<fcsks>", "a person"))
    assert type(gen.control_pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    assert batch.settings["scheduler"] == "LCMScheduler" and batch.settings["family"] == "sdxl"
    assert batch.adapters == {"face": 0.9, "lcm": 1.0}
    assert len(batch.candidates) == 3 and batch.candidates[0].image.size == (64, 64)
    gen.adapters["lcm"] = 0.0  # the same job with the LCM adapter switched off: the LCM-LoRA must have acted
    without = gen.generate(load_styles().get("Cyberpunk", "sdxl"), ("<fcsks>", "a person"))
    assert np.abs(_pixels(without) - _pixels(batch)).mean() > 0.5


def test_lora_files_keep_their_alpha_and_trusted_pickles_load(tiny_sd15, tmp_path):
    """A .safetensors LoRA is loaded from the file (its alpha metadata is used); a pickle LoRA
    (allowed by allow_pickle) is read with weights_only=True."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from facechain.lora import load_adapter as _load_lora

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False)
    unet.add_adapter(config)
    layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=layers, weight_name="a.safetensors",
                                              unet_lora_adapter_metadata=config.to_dict())
    torch.save({f"unet.{k}": v for k, v in layers.items()}, tmp_path / "b.bin")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15)
    _load_lora(pipe, tmp_path / "a.safetensors", "a")
    _load_lora(pipe, tmp_path / "b.bin", "b")
    assert pipe.unet.peft_config["a"].lora_alpha == 8  # from the file's metadata (a dict would give alpha = r)
    assert set(pipe.get_list_adapters()["unet"]) == {"a", "b"}


@pytest.mark.slow
def test_style_adapter_removed_when_fusing_fails_and_fp16_weights_restored(tiny_sd15, face_lora, style_dir, tmp_path,
                                                                           monkeypatch):
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import load_styles

    style = load_styles([style_dir]).get("Ink", "sd15")
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, lora_dir=face_lora, dtype="float16"))
    before = {k: v.clone() for k, v in gen.pipe.unet.state_dict().items() if "lora" not in k}
    for _ in range(3):  # fuse + unfuse in half precision, as one job does per style
        gen._deactivate(gen._activate(style))
    after = gen.pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-exact, no fp16 drift

    def fail(*args, **kwargs):
        raise RuntimeError("fuse failed")

    monkeypatch.setattr(gen.pipe, "fuse_lora", fail)
    with pytest.raises(RuntimeError, match="fuse failed"):
        gen._activate(style)
    assert gen.pipe.get_list_adapters()["unet"] == ["face"]  # the style adapter did not stay behind


@pytest.mark.slow
def test_default_style_lora_for_prompt_only_styles(tiny_sd15, face_lora, style_dir, tmp_path):
    """FaceChain merges a default style LoRA into prompt-only styles; a style with its own LoRA keeps it."""
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    default = random_lora(tiny_sd15, tmp_path / "default_style", seed=3)
    styles = load_styles([DEFAULT_STYLES_DIR, style_dir])
    suit, ink = styles.get("Business suit", "sd15"), styles.get("Ink", "sd15")
    assert not suit.has_lora and suit.multiplier_style == 0.0
    plain = PortraitGenerator(_cfg(tiny_sd15, tmp_path, lora_dir=face_lora, num_candidates=1, num_images=1,
                                   batch_size=1, detailer="off"))
    without = plain.generate(suit, ("<fcsks>", "a person"))
    assert without.adapters == {"face": 0.95}
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, lora_dir=face_lora, num_candidates=1, num_images=1, batch_size=1,
                                 detailer="off", default_style_lora=str(default), default_style_lora_weight=0.3))
    batch = gen.generate(suit, ("<fcsks>", "a person"))
    assert batch.adapters == {"face": 0.95, "style": 0.3}
    assert not np.array_equal(_pixels(batch), _pixels(without))  # the default LoRA changed the image
    assert gen.generate(ink, ("<fcsks>", "a person")).adapters == {"face": 0.9, "style": 0.35}  # its own LoRA
    assert "style" not in gen.pipe.get_list_adapters().get("unet", [])  # removed after each style
    # FaceChain's own, by name: offline it is one clear error naming the ModelScope repo and the way out
    with pytest.raises(ModelNotFoundError, match="zjz_mj_jiyi_small_addtxt_fromleo.*leave default_style_lora empty"):
        PortraitGenerator(_cfg(tiny_sd15, tmp_path, default_style_lora="facechain"))


@pytest.mark.unit
def test_default_style_lora_alias_is_not_a_path(tmp_path):
    from facechain.generate.config import load_generate_config

    (tmp_path / "facechain").mkdir()  # a folder of that name beside the config is not the alias
    path = tmp_path / "c.yaml"
    path.write_text("base_model: owner/model\noutput_dir: out\ndefault_style_lora: facechain\n")
    assert load_generate_config(path).default_style_lora == "facechain"
    path.write_text("base_model: owner/model\noutput_dir: out\ndefault_style_lora: ./facechain\n")
    assert load_generate_config(path).default_style_lora == str((tmp_path / "facechain").resolve())


@pytest.mark.unit
def test_style_names_are_unique():
    from types import SimpleNamespace

    from facechain.generate.job import unique_names

    styles = [SimpleNamespace(path=Path(p)) for p in ("a/Chef.json", "b/chef.json", "c/chef.json", "d/Ink.json")]
    assert unique_names(styles) == ["chef", "chef_2", "chef_3", "ink"]


def test_swapper_with_dlib_faces_is_refused_up_front(tiny_sd15, tmp_path):
    from facechain.generate.job import check_inputs

    with pytest.raises(InputError, match="fusion: swapper needs insightface faces .* face_backend is dlib"):
        check_inputs(_cfg(tiny_sd15, tmp_path, fusion="swapper", face_backend="dlib", processed_dir=tmp_path))
