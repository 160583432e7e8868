"""Every stylization method on tiny SD1.5 and SDXL, masks, face LoRA, LCM mode, CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from facechain.errors import InputError
from facechain.stylize import StylizeConfig, available_methods, build_engine, stylize
from facechain.testing import random_lora

STEPS = 4
METHODS = ["portrait-diffusion", "styleid", "masactrl", "diffstyle"]


@pytest.fixture(scope="module")
def images(style_images):
    return style_images


@pytest.fixture(scope="module")
def engines(tiny_sd15, tiny_sdxl):
    made = {}

    def get(family):
        if family not in made:
            model = tiny_sd15 if family == "sd15" else tiny_sdxl
            made[family] = build_engine(_cfg(model))
        return made[family]

    return get


def _cfg(model, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return StylizeConfig(base_model=str(model), resolution=64, device="cpu", **kw)


def _face_mask():
    m = np.zeros((512, 512), np.uint8)
    m[64:320, 128:384] = 255  # the astronaut's head region
    return m


@pytest.mark.unit
def test_registry_lists_methods():
    assert available_methods() == sorted(METHODS)
    from facechain.stylize import get_method, register_method

    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("styleid"))
    with pytest.raises(InputError, match="unknown stylization method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_every_method_runs(engines, images, tiny_sd15, tiny_sdxl, family, method, guidance):
    engine = engines(family)
    model = tiny_sd15 if family == "sd15" else tiny_sdxl
    cfg = _cfg(model, method=method, guidance_scale=guidance)
    res = stylize(images["content"], images["style"], cfg, engine=engine, progress=False)
    assert res.image.shape == (64, 64, 3) and res.image.dtype == np.uint8
    n_layers = 16 if family == "sd15" else 17
    start_layer = round(10 / 16 * n_layers)
    assert res.stats["start_layer"] == start_layer
    rows = {"portrait-diffusion": 3, "styleid": 3, "masactrl": 2, "diffstyle": 3}[method]
    assert res.stats["unet_passes"] <= STEPS * rows * (2 if guidance > 1 else 1) + 2 * STEPS  # + at most 2 inversions
    assert res.stats["unet_calls"] >= STEPS
    if method == "diffstyle":
        # t_edit 400: of timesteps (751, 501, 251, 1) the first two inject
        assert res.modified == {(0, -1), (1, -1)}
        other = _cfg(model, method=method, guidance_scale=guidance, options={"hs_coeff": 0.0})
    else:
        assert res.modified == {(s, layer) for s in range(STEPS) for layer in range(start_layer, n_layers)}
        other = _cfg(model, method=method, guidance_scale=guidance, start_layer=n_layers - 1)
    # the control changes the result: fewer controlled layers (or no injection) -> another image
    ref = stylize(images["content"], images["style"], other, engine=engine, progress=False)
    assert np.abs(res.image.astype(int) - ref.image.astype(int)).mean() > 0.1


def test_guidance_uses_matching_uncond_and_cond_branches(engines, images, tiny_sd15):
    """Under CFG the batch is [uncond x3, cond x3]: the target's uncond half must read the
    style's uncond keys. Check against a manual computation on one layer."""
    from facechain.stylize.attention import AttnCall

    seen = {}
    from facechain.stylize.methods import portrait_diffusion as pd

    orig = pd.StyleAttentionControl.__call__

    def spy(self, call: AttnCall):
        out = orig(self, call)
        if call.layer == 15 and call.step == 0:
            seen["call"], seen["out"] = call, out
        return out

    pd.StyleAttentionControl.__call__ = spy
    try:
        stylize(images["content"], images["style"], _cfg(tiny_sd15, guidance_scale=5.0), engine=engines("sd15"), progress=False)
    finally:
        pd.StyleAttentionControl.__call__ = orig
    call, out = seen["call"], seen["out"]
    assert call.q.shape[:2] == (2, 3)  # (halves, branches)
    for half in (0, 1):
        q_c, k_s, v_s = call.q[half, 1], call.k[half, 0], call.v[half, 0]
        w = torch.softmax(q_c @ k_s.transpose(-1, -2) / q_c.shape[-1] ** 0.5, dim=-1)
        assert torch.allclose(out[half, 2], w @ v_s, atol=1e-5)  # step 0 < sac_step: A_c
        assert torch.equal(out[half, 0], call.plain[half, 0])  # style row untouched


@pytest.mark.parametrize("method", ["portrait-diffusion", "styleid", "masactrl", "diffstyle"])
def test_only_mask_region_keeps_outside_pixels(engines, images, tiny_sd15, method):
    cfg = _cfg(tiny_sd15, method=method, only_mask_region=True)
    res = stylize(images["content"], images["style"], cfg, content_mask=_face_mask(), engine=engines("sd15"), progress=False)
    m = res.content.mask.numpy() > 0.5
    assert m.sum() > 0 and (~m).sum() > 0
    assert np.array_equal(res.image[~m], res.content.array[~m])  # exact outside
    assert np.abs(res.image[m].astype(int) - res.content.array[m].astype(int)).mean() > 1.0  # changed inside


def test_mask_errors_are_clear(engines, images, tiny_sd15):
    eng = engines("sd15")
    with pytest.raises(InputError, match=r"content mask .* is 64x64 pixels but its image is 512x512"):
        stylize(images["content"], images["style"], _cfg(tiny_sd15), content_mask=np.ones((64, 64), np.uint8), engine=eng)
    with pytest.raises(InputError, match="is empty"):
        stylize(images["content"], images["style"], _cfg(tiny_sd15, only_mask_region=True),
                content_mask=np.zeros((512, 512), np.uint8), engine=eng)
    with pytest.raises(InputError, match="only_mask_region needs a content mask"):
        stylize(images["content"], images["style"], _cfg(tiny_sd15, only_mask_region=True), engine=eng)
    with pytest.raises(InputError, match="start_layer 16 is beyond"):
        stylize(images["content"], images["style"], _cfg(tiny_sd15, start_layer=16), engine=eng)
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['gama'\]"):
        stylize(images["content"], images["style"], _cfg(tiny_sd15, method="styleid", options={"gama": 0.5}), engine=eng)


def test_fg_bg_masks_and_styleid_fusion(engines, images, tiny_sd15):
    eng = engines("sd15")
    smask = np.zeros(images["style"].shape[:2], np.uint8)
    smask[50:250, 100:350] = 255
    res = stylize(images["content"], images["style"], _cfg(tiny_sd15), content_mask=_face_mask(), style_mask=smask,
                  engine=eng, progress=False)
    plain = stylize(images["content"], images["style"], _cfg(tiny_sd15), engine=eng, progress=False)
    assert not np.array_equal(res.image, plain.image)
    fused = stylize(images["content"], images["style"], _cfg(tiny_sd15, method="styleid", options={"content_kv_weight": 0.5}),
                    engine=eng, progress=False)
    pure = stylize(images["content"], images["style"], _cfg(tiny_sd15, method="styleid"), engine=eng, progress=False)
    assert not np.array_equal(fused.image, pure.image)


@pytest.mark.slow
def test_ten_styles_invert_content_once(tiny_sd15, images, tmp_path):
    """Ten style images through the library's stylization job: one model load, the content
    inverted once (first style: content + style inversions + sampling; then one inversion fewer
    each), ten results and their manifest."""
    from PIL import Image
    from skimage import data

    from facechain.stylize import run_stylize_job

    names = ["chelsea", "coffee", "rocket", "camera", "coins", "brick", "grass", "gravel", "moon", "clock"]
    paths = []
    for name in names:
        img = getattr(data, name)()
        path = tmp_path / "styles" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(path)
    Image.fromarray(images["content"]).save(tmp_path / "me.png")
    eng = build_engine(_cfg(tiny_sd15))
    result = run_stylize_job(tmp_path / "me.png", paths, _cfg(tiny_sd15), tmp_path / "out", engine=eng, progress=False)
    assert result.ok and result.exit_code == 0 and len(result.outputs) == 10
    passes = [r["unet_passes"] for r in result.manifest["results"]]
    assert passes == [5 * STEPS] + [4 * STEPS] * 9
    assert eng.cache.stats()["misses"] == 11  # the content once, each style once
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(f"me__{n}__portrait-diffusion.png" for n in names)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["failed"] == []


def test_a_failing_style_is_reported_and_the_job_exits_1(tiny_sd15, images, tmp_path, engines):
    from PIL import Image

    from facechain.cli import main
    from facechain.stylize import run_stylize_job

    Image.fromarray(images["content"]).save(tmp_path / "me.png")
    Image.fromarray(images["style"]).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    styles = [tmp_path / "broken.png", tmp_path / "good.png"]
    result = run_stylize_job(tmp_path / "me.png", styles, _cfg(tiny_sd15), tmp_path / "out", engine=engines("sd15"),
                             progress=False)
    assert result.exit_code == 1 and [p.name for p in result.outputs] == ["me__good__portrait-diffusion.png"]
    assert [f.item for f in result.failures] == [str(tmp_path / "broken.png")]
    assert "style image" in result.failures[0].error and "cannot be used" in result.failures[0].error
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [r["image"] for r in manifest["results"]] == ["me__good__portrait-diffusion.png"] and len(manifest["failed"]) == 1
    # the command: the same rule as generate's (non-zero when a requested output failed)
    rc = main(["stylize", "--content", str(tmp_path / "me.png"), "--style", *map(str, styles), "--base-model",
               str(tiny_sd15), "--resolution", "64", "--num-inference-steps", "2", "--device", "cpu",
               "--output-dir", str(tmp_path / "cli")])
    assert rc == 1 and (tmp_path / "cli" / "me__good__portrait-diffusion.png").is_file()


def test_face_lora_loads_and_applies_to_inversion_and_sampling(tiny_sd15, images, tmp_path, engines):
    lora = random_lora(tiny_sd15, tmp_path / "face_lora", seed=1)
    import shutil  # the trainer also writes a kohya copy beside the diffusers file; the diffusers one is taken

    shutil.copy(lora / "pytorch_lora_weights.safetensors", lora / "face_kohya.safetensors")
    cfg = _cfg(tiny_sd15, loras=[str(lora)], lora_scales=[0.8])
    eng = build_engine(cfg)
    assert "lora_0" in eng.pipe.get_active_adapters()
    base = engines("sd15")
    from facechain.stylize.engine import prepare_image

    content = prepare_image(images["content"], None, 64, "content")
    assert eng.inversion_key(content, "head", STEPS) != base.inversion_key(content, "head", STEPS)
    with_lora = stylize(images["content"], images["style"], cfg, engine=eng, progress=False)
    without = stylize(images["content"], images["style"], _cfg(tiny_sd15), engine=base, progress=False)
    assert not np.array_equal(with_lora.image, without.image)
    with pytest.raises(InputError, match="built for another model"):
        stylize(images["content"], images["style"], _cfg(tiny_sd15), engine=eng)


def test_fast_mode_uses_lcm_schedule(tiny_sd15, images, tmp_path):
    stand_in = random_lora(tiny_sd15, tmp_path / "lcm_lora", seed=2)  # stands in for LCM-LoRA weights (offline)
    cfg = StylizeConfig(base_model=str(tiny_sd15), resolution=64, device="cpu", fast=True, lcm_lora=str(stand_in))
    eng = build_engine(cfg)
    assert "lcm" in eng.pipe.get_active_adapters()
    res = stylize(images["content"], images["style"], cfg, engine=eng, progress=False)
    assert res.stats["steps"] == 4 and eng.schedule(4).timesteps == (999, 759, 499, 259)
    assert res.stats["unet_passes"] == 2 * 4 + 3 * 4
    with pytest.raises(InputError, match=r"steps 51 with fast .*original_inference_steps \(50\).*or drop --fast"):
        stylize(images["content"], images["style"], dataclasses.replace(cfg, num_inference_steps=51), engine=eng, progress=False)


def test_fast_mode_without_lcm_lora_offline_says_how(tiny_sd15):
    from facechain.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="LCM-LoRA 'latent-consistency/lcm-lora-sdv1-5'"):
        build_engine(StylizeConfig(base_model=str(tiny_sd15), resolution=64, device="cpu", fast=True))


def test_chain_of_painting_plan(tiny_sd15, images, tmp_path, engines):
    from PIL import Image

    Image.fromarray(_face_mask()).save(tmp_path / "face.png")
    eyes = np.zeros((512, 512), np.uint8)
    eyes[150:220, 170:340] = 255
    Image.fromarray(eyes).save(tmp_path / "eyes.png")
    plan = {"passes": [{}, {"content_mask": "face.png", "only_mask_region": True, "sac_step": 2},
                       {"content_mask": "eyes.png", "only_mask_region": True, "style_guidance": 1.5}]}
    (tmp_path / "plan.yaml").write_text(json.dumps(plan))
    cfg = _cfg(tiny_sd15, options={"plan": str(tmp_path / "plan.yaml")})
    res = stylize(images["content"], images["style"], cfg, engine=engines("sd15"), progress=False)
    assert len(res.passes) == 3 and res.stats["passes"] == 3
    from facechain.stylize.engine import prepare_image

    eyes_small = prepare_image(images["content"], None, 64, "c", eyes).mask.numpy() < 0.5
    assert np.array_equal(res.passes[2][eyes_small], res.passes[1][eyes_small])  # pass 3 only repaints the eyes
    assert not np.array_equal(res.passes[0], res.passes[1])


def test_chain_of_painting_uses_global_content_mask(tiny_sd15, images, engines):
    eng = engines("sd15")
    # (a) --content-mask + --only-mask-region + a pass with no mask of its own
    cfg = _cfg(tiny_sd15, only_mask_region=True, options={"plan": [{}]})
    res = stylize(images["content"], images["style"], cfg, content_mask=_face_mask(), engine=eng, progress=False)
    m = res.content.mask.numpy() > 0.5
    assert np.array_equal(res.image[~m], res.content.array[~m])
    assert np.abs(res.image[m].astype(int) - res.content.array[m].astype(int)).mean() > 1.0
    # (b) fg/bg mode: one pass with both global masks = the single-pass fg/bg result
    smask = np.zeros(images["style"].shape[:2], np.uint8)
    smask[50:250, 100:350] = 255
    chain = stylize(images["content"], images["style"], _cfg(tiny_sd15, options={"plan": [{}]}), content_mask=_face_mask(),
                    style_mask=smask, engine=eng, progress=False)
    single = stylize(images["content"], images["style"], _cfg(tiny_sd15), content_mask=_face_mask(), style_mask=smask,
                     engine=eng, progress=False)
    assert np.array_equal(chain.image, single.image)


def test_cli_same_style_name_in_two_folders(tiny_sd15, images, tmp_path):
    from PIL import Image

    from facechain.cli import main

    Image.fromarray(images["content"]).save(tmp_path / "me.png")
    for folder, img in (("a", images["style"]), ("b", images["coffee"])):
        (tmp_path / folder).mkdir()
        Image.fromarray(img).save(tmp_path / folder / "style.png")
    out = tmp_path / "out"
    rc = main(["stylize", "--content", str(tmp_path / "me.png"), "--style", str(tmp_path / "a" / "style.png"),
               str(tmp_path / "b" / "style.png"), "--method", "diffstyle", "--base-model", str(tiny_sd15),
               "--resolution", "64", "--num-inference-steps", "2", "--device", "cpu", "--output-dir", str(out)])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["image"] for r in manifest["results"]] == ["me__style__diffstyle.png", "me__style__diffstyle__2.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["me__style__diffstyle.png", "me__style__diffstyle__2.png"]


@pytest.mark.slow
def test_cli_two_styles(tiny_sd15, images, tmp_path, capsys):
    from PIL import Image

    from facechain.cli import main

    Image.fromarray(images["content"]).save(tmp_path / "me.png")
    Image.fromarray(images["style"]).save(tmp_path / "cat.png")
    Image.fromarray(images["coffee"]).save(tmp_path / "coffee.png")
    out = tmp_path / "out"
    rc = main(["stylize", "--content", str(tmp_path / "me.png"), "--style", str(tmp_path / "cat.png"),
               str(tmp_path / "coffee.png"), "--method", "portrait-diffusion", "--base-model", str(tiny_sd15),
               "--resolution", "64", "--num-inference-steps", "3", "--sac-step", "2", "--style-guidance", "1.5", "--device", "cpu",
               "--output-dir", str(out)])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["image"] for r in manifest["results"]] == ["me__cat__portrait-diffusion.png", "me__coffee__portrait-diffusion.png"]
    assert manifest["inversion_cache"]["misses"] == 3  # content once, two styles
    saved = json.loads((out / "me__cat__portrait-diffusion.config.json").read_text())
    assert saved["options"] == {"sac_step": 2, "style_guidance": 1.5} and saved["num_inference_steps"] == 3
    assert Image.open(out / "me__coffee__portrait-diffusion.png").size == (64, 64)
    rc = main(["stylize", "--content", str(tmp_path / "me.png"), "--style", str(tmp_path / "cat.png"), "--method", "styleid",
               "--sac-step", "3", "--base-model", str(tiny_sd15), "--output-dir", str(out)])
    assert rc == 1 and "--sac-step applies to portrait-diffusion only" in capsys.readouterr().err
    Image.fromarray(_face_mask()).save(tmp_path / "face.png")
    (tmp_path / "plan.yaml").write_text("passes:\n  - {}\n  - {content_mask: face.png, only_mask_region: true}\n")
    rc = main(["stylize", "--content", str(tmp_path / "me.png"), "--style", str(tmp_path / "cat.png"), "--plan",
               str(tmp_path / "plan.yaml"), "--base-model", str(tiny_sd15), "--resolution", "64", "--num-inference-steps", "3",
               "--device", "cpu", "--output-dir", str(tmp_path / "chain")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "chain").glob("*.png")) == [
        "me__cat__portrait-diffusion.pass1.png", "me__cat__portrait-diffusion.png"]
