"""Stylization engine: masks, inversion (+ cache), the attention controller. Tiny real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facechain.errors import InputError
from facechain.stylize import StylizeConfig, build_engine
from facechain.stylize.attention import AttentionController, attend, self_attention_layers
from facechain.stylize.engine import prepare_image
from facechain.inversion import make_schedule
from facechain.stylize.masks import inner_feather, load_mask, to_tokens, token_grid
from facechain.stylize.methods.portrait_diffusion import StyleAttentionControl


@pytest.fixture(scope="module")
def images(style_images):
    return style_images


@pytest.fixture(scope="module")
def engine(tiny_sd15):
    return build_engine(StylizeConfig(base_model=str(tiny_sd15), resolution=64, device="cpu"))


def _rect_mask(h, w, top, bottom, left, right):
    m = np.zeros((h, w), np.uint8)
    m[top:bottom, left:right] = 255
    return m


# --------------------------------------------------------------------------- masks


@pytest.mark.unit
def test_mask_wrong_size_is_refused():
    with pytest.raises(InputError, match=r"is 100x50 pixels but its image is 64x64"):
        load_mask(np.ones((50, 100), np.uint8), (64, 64), "content mask")


@pytest.mark.unit
def test_empty_mask_is_refused(tmp_path):
    from PIL import Image

    path = tmp_path / "m.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    with pytest.raises(InputError, match=r"content mask .*m\.png.* is empty"):
        load_mask(path, (64, 64), "content mask")


@pytest.mark.unit
def test_mask_from_png_is_binary_and_tokenised(tmp_path):
    from PIL import Image

    path = tmp_path / "m.png"
    Image.fromarray(_rect_mask(64, 64, 0, 32, 0, 64)).save(path)
    m = load_mask(path, (64, 64))
    assert set(torch.unique(m).tolist()) == {0.0, 1.0}
    assert token_grid(16, (8, 8)) == (4, 4) and token_grid(1, (8, 8)) == (1, 1)
    assert to_tokens(m, (2, 2), "area").tolist() == [1.0, 1.0, 0.0, 0.0]
    # a tiny region survives a coarse grid as a key mask ("any") but not as area
    dot = torch.zeros(64, 64)
    dot[5, 5] = 1
    assert to_tokens(dot, (1, 1), "any").tolist() == [1.0]
    assert to_tokens(dot, (1, 1), "area").item() == pytest.approx(1 / 4096)


@pytest.mark.unit
def test_inner_feather_is_zero_outside_mask():
    m = torch.zeros(32, 32)
    m[8:24, 8:24] = 1
    a = inner_feather(m, 3)
    assert float(a[m == 0].abs().max()) == 0.0
    assert float(a[16, 16]) == 1.0 and 0.0 <= float(a[8, 16]) < 1.0


@pytest.mark.unit
def test_rgba_mask_uses_colour_not_alpha():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere
    rgba[:32, :, :3] = 255  # white top half
    m = load_mask(rgba, (64, 64))
    assert m[:32].min() == 1 and m[32:].max() == 0


def test_prepare_image_crops_style_and_mask(images):
    content = prepare_image(images["content"], None, 64, "content", _rect_mask(512, 512, 0, 256, 0, 512))
    assert content.size == (64, 64) and content.mask.shape == (64, 64)
    assert content.mask[:32].min() == 1 and content.mask[32:].max() == 0
    style = prepare_image(images["style"], content.size, 64, "style")  # 451x300 -> centre crop -> 64x64
    assert style.array.shape == (64, 64, 3)
    wide = prepare_image(images["style"], None, 128, "content")
    assert wide.size == (128, 64)  # 451x300 keeps its aspect, rounded to multiples of 64


# --------------------------------------------------------------------------- inversion


@pytest.mark.parametrize("kind", ["ddim", "lcm"])
def test_schedule_step_inverts_exactly(engine, kind):
    sched = make_schedule(dict(engine.pipe.scheduler.config), 4, kind)
    if kind == "lcm":
        assert sched.timesteps == (999, 759, 499, 259)  # LCM's own spacing, not uniform
    else:
        assert sched.timesteps == (751, 501, 251, 1)
    torch.manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for i in range(4):
        x_prev = sched.step(eps, i, x)
        assert torch.allclose(sched.invert_step(eps, i, x_prev), x, atol=1e-4), (kind, i)


@pytest.mark.slow
def test_inversion_then_sampling_reconstructs_latent(tiny_sd15, images):
    """Invert, then sample plainly from z_T: back to the input latent.

    The tiny VAE's latents have std ~0.04 where SD's scaled latents have ~1; its scaling factor
    is calibrated to unit std here, as SD's was chosen (Rombach et al. 2022, Sec. 4.3.2). A random
    UNet's eps is far less smooth than a trained one's, so plain inversion is only ~50% exact;
    fixed-point refinement makes it exact, and a broken inversion cannot pass the bound."""
    from diffusers import StableDiffusionPipeline

    from facechain.stylize.engine import Branch, Engine

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15), safety_checker=None, requires_safety_checker=False)
    cfg = StylizeConfig(base_model=str(tiny_sd15), resolution=64, device="cpu", inversion_refine=4)
    image = prepare_image(images["content"], None, 64, "content")
    raw = Engine(cfg, pipe=pipe).encode(image) / pipe.vae.config.scaling_factor
    pipe.vae.register_to_config(scaling_factor=float(1.0 / raw.std()))
    eng = Engine(cfg, pipe=pipe)
    z0 = eng.encode(image)
    assert float(z0.std()) == pytest.approx(1.0, rel=1e-3)
    traj = eng.invert(image, "head", 50, progress=False)
    assert traj.latents.shape == (51, 4, 8, 8) and torch.equal(traj.latents[0], z0)
    assert eng.counters.unet_calls == 50 * 5
    cond = eng.conditioning("head", "", image.size)
    out = eng.sample([Branch("x", traj.z_T)], cond, 50, 1.0, progress=False)["x"]
    err = float((out - z0).abs().mean() / z0.abs().mean())
    assert float((traj.z_T - z0).abs().mean() / z0.abs().mean()) > 0.5  # z_T is far from z0 ...
    assert err < 0.005, f"reconstruction error {err:.4f}"  # ... and sampling walks back to it
    wrong = eng.sample([Branch("x", traj.latents[-2])], cond, 50, 1.0, progress=False)["x"]  # off by one step
    assert float((wrong - z0).abs().mean() / z0.abs().mean()) > 0.05


def test_inversion_cache_memory_and_disk(tiny_sd15, images, tmp_path):
    cfg = StylizeConfig(base_model=str(tiny_sd15), resolution=64, device="cpu", cache_dir=tmp_path / "cache")
    eng = build_engine(cfg)
    image = prepare_image(images["content"], None, 64, "content")
    a = eng.invert(image, "head", 5, progress=False)
    calls = eng.counters.unet_calls
    assert calls == 5
    b = eng.invert(image, "head", 5, progress=False)
    assert b is a and eng.counters.unet_calls == calls and eng.cache.hits == 1
    eng.invert(image, "a painting", 5, progress=False)  # other prompt -> new inversion
    assert eng.counters.unet_calls == calls + 5
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    eng2 = build_engine(cfg)
    c = eng2.invert(image, "head", 5, progress=False)
    assert eng2.counters.unet_calls == 0 and eng2.cache.disk_hits == 1
    assert torch.equal(c.latents, a.latents)


# --------------------------------------------------------------------------- controller


def test_layers_in_call_order(engine):
    names = self_attention_layers(engine.unet)
    assert len(names) == 16
    assert names[0].startswith("down_blocks.0.") and names[6].startswith("mid_block.")
    assert names[7].startswith("up_blocks.1.attentions.0") and names[15].startswith("up_blocks.3.attentions.2")


def test_sdpa_matches_einsum_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 8) for _ in range(3))
    mask = torch.rand(64) > 0.5
    for km, scale in ((None, None), (mask[None, :], 0.3)):
        assert torch.allclose(attend(q, k, v, km, scale, "sdpa"), attend(q, k, v, km, scale, "einsum"), atol=1e-5)


def _layer_outputs(engine, x, t, emb, controller):
    """Run the UNet once; return {layer index: attn1 output} (B, N, C)."""
    outs = {}
    handles = []
    for i, name in enumerate(self_attention_layers(engine.unet)):
        module = engine.unet.get_submodule(name[: -len(".processor")])
        handles.append(module.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.detach().clone())))
    try:
        with controller:
            controller.step = 0
            engine.eps(x, t, emb, None)
    finally:
        for h in handles:
            h.remove()
    return outs


def test_controller_changes_exactly_configured_layers(engine):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8)
    emb, _ = engine.conditioning("head", "", (64, 64)).batch(3, cfg=False)
    branches = ("style", "content", "target")
    policy = StyleAttentionControl(sac_step=0, style_guidance=1.2, only_mask_region=False,
                                   has_content_mask=False, has_style_mask=False)
    plain = _layer_outputs(engine, x, 501, emb, AttentionController(engine.unet, branches, None))
    ctl = AttentionController(engine.unet, branches, policy, layers=frozenset({12}))
    ctrl = _layer_outputs(engine, x, 501, emb, ctl)
    assert ctl.modified == {(0, 12)}
    for layer in range(16):
        same_sources = torch.equal(plain[layer][:2], ctrl[layer][:2])
        assert same_sources, f"layer {layer}: style/content rows must never change"
        target_same = torch.equal(plain[layer][2], ctrl[layer][2])
        assert target_same == (layer < 12), f"layer {layer}: target changed={not target_same}"


def test_controller_changes_exactly_configured_steps(engine, images):
    from facechain.stylize.engine import Branch

    content = prepare_image(images["content"], None, 64, "content")
    style = prepare_image(images["style"], (64, 64), 64, "style")
    tc, ts = engine.invert(content, "head", 6, progress=False), engine.invert(style, "head", 6, progress=False)
    cond = engine.conditioning("head", "", (64, 64))
    branches = [Branch("style", ts.z_T, ts), Branch("content", tc.z_T, tc), Branch("target", tc.z_T)]

    def run(policy, start, end):
        seen = []
        ctl = AttentionController(engine.unet, ("style", "content", "target"), policy, start_step=start, end_step=end,
                                  start_layer=10)
        with ctl:
            engine.sample(branches, cond, 6, 1.0, ctl, after_step=lambda i, lat: seen.append(lat["target"].clone()),
                          progress=False)
        return seen, ctl.modified

    policy = StyleAttentionControl(3, 1.2, False, False, False)
    base, none = run(None, 0, None)
    ctrl, modified = run(policy, 2, 4)
    assert none == set()
    assert modified == {(s, layer) for s in (2, 3) for layer in range(10, 16)}
    assert torch.equal(base[0], ctrl[0]) and torch.equal(base[1], ctrl[1])  # before the window: untouched
    assert not torch.allclose(base[2], ctrl[2])  # inside: changed


# --------------------------------------------------------------------------- model checks


def test_v_prediction_model_is_refused(tiny_sd15, tmp_path):
    import json
    import shutil

    model = shutil.copytree(tiny_sd15, tmp_path / "vpred")
    cfg_file = model / "scheduler" / "scheduler_config.json"
    sched = json.loads(cfg_file.read_text())
    sched["prediction_type"] = "v_prediction"
    cfg_file.write_text(json.dumps(sched))
    with pytest.raises(InputError, match=r"model .*vpred predicts 'v_prediction'.*only epsilon-prediction models"):
        build_engine(StylizeConfig(base_model=str(model), resolution=64, device="cpu"))


def test_float16_vae_upcast_when_config_forces_it(tiny_sdxl, images):
    eng = build_engine(StylizeConfig(base_model=str(tiny_sdxl), resolution=64, device="cpu", dtype="float16"))
    assert eng.vae.config.force_upcast and eng.vae.dtype == torch.float32 and eng.unet.dtype == torch.float16
    z = eng.encode(prepare_image(images["content"], None, 64, "content"))
    assert z.dtype == torch.float16 and torch.isfinite(z).all()
    assert eng.decode(z).shape == (64, 64, 3)


def test_passed_in_pipe_cache_id_is_config_hash(tiny_sd15):
    from diffusers import StableDiffusionPipeline

    from facechain.stylize.engine import Engine

    cfg = StylizeConfig(base_model=str(tiny_sd15), resolution=64, device="cpu")
    a = StableDiffusionPipeline.from_pretrained(str(tiny_sd15))
    b = StableDiffusionPipeline.from_pretrained(str(tiny_sd15))
    ea, eb = Engine(cfg, pipe=a), Engine(cfg, pipe=b)
    assert ea.model_id == eb.model_id and str(id(a)) not in ea.model_id  # same model, other object: same key
    b.scheduler.register_to_config(beta_end=0.0234)  # another schedule: another key
    assert Engine(cfg, pipe=b).model_id != ea.model_id
    a.register_to_config(_name_or_path="elsewhere")  # another source: another key
    assert Engine(cfg, pipe=a).model_id != ea.model_id


def test_lcm_steps_above_original_inference_steps_refused(engine):
    from facechain.stylize.engine import check_lcm_steps

    check_lcm_steps(dict(engine.pipe.scheduler.config), 50)
    with pytest.raises(InputError, match=r"steps 51 .*at most its original_inference_steps \(50\).*lower --num-inference-steps"):
        check_lcm_steps(dict(engine.pipe.scheduler.config), 51)
