"""Face detailer (facechain.generate.detailer): a real face photo pasted small into a larger canvas, the
dlib detector, tiny real-class SD1.5/SDXL pipelines at 64 px. The tiny models draw noise, so these
tests check the mechanics: which faces are re-drawn, that nothing outside the feathered mask
changes, seeds, the cached inpaint pipeline and the settings' checks."""

from __future__ import annotations

import numpy as np
import pytest

from facechain.generate import detailer
from facechain.face.region import face_region, needs_detail
from facechain.generate.detailer import DetailerConfig, detail_faces
from facechain.generate.inpaint import inpaint_pipeline
from facechain.errors import InputError
from facechain.face import Face

# 64 px = the tiny models' native size; 4 steps x strength 0.5 = 2 denoising steps
CFG = DetailerConfig(working_size=64, num_inference_steps=4, strength=0.5)
PROMPT, NEGATIVE = "<fcsks>, a woman, portrait photo", "blurry"


def _canvas(size: int = 512) -> np.ndarray:
    from facechain import samples

    return samples.textured_canvas(size)


def _candidate(paste_px: int, size: int = 512, at: tuple[int, int] = (140, 150)) -> np.ndarray:
    from facechain import samples

    return samples.pasted_head(paste_px, size, at)


@pytest.fixture(scope="module")
def small_face():
    return _candidate(200)


def _check_mechanics(before: np.ndarray, out: np.ndarray, info: list[dict], analyzer, cfg=CFG):
    """One face detailed; bit-identical outside its feathered mask (and outside the crop); changed inside."""
    assert len(info) == 1 and info[0]["detailed"] is True and info[0]["reason"] is None, info
    x1, y1, x2, y2 = info[0]["bbox"]
    assert 150 <= x1 < x2 <= 340 and 150 <= y1 < y2 <= 350  # on the pasted photo
    assert info[0]["face_px"] < cfg.small_face_frac * 512
    face = analyzer.detect(before, embed=False)[0]
    region = face_region(face, before.shape, cfg)
    assert info[0]["crop"] == [region.x0, region.y0, region.side] and info[0]["crop_size"] == region.side
    alpha = region.full_alpha(before.shape)
    outside = alpha == 0
    assert outside.sum() > 0.9 * alpha.size
    np.testing.assert_array_equal(out[outside], before[outside])
    crop = np.zeros(alpha.shape, bool)
    crop[region.y0:region.y0 + region.side, region.x0:region.x0 + region.side] = True
    np.testing.assert_array_equal(out[~crop], before[~crop])
    inner = alpha > 0.99
    assert inner.sum() > 0.5 * face.area  # the mask covers the face
    diff = np.abs(out.astype(np.int16) - before.astype(np.int16)).max(axis=2)
    assert (diff[inner] > 0).mean() > 0.9 and diff[inner].mean() > 10  # the face was re-drawn


def test_small_face_is_detailed_and_nothing_outside_the_mask_changes(sd15_pipe, small_face, dlib_analyzer):
    before = small_face.copy()
    out, info = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=3)
    np.testing.assert_array_equal(small_face, before)  # the input array is not touched
    assert out.dtype == np.uint8 and out.shape == before.shape
    assert info[0]["working_size"] == 64 and info[0]["seed"] == 3
    _check_mechanics(before, out, info, dlib_analyzer)


def test_sdxl_pipeline_runs(sdxl_pipe, small_face, dlib_analyzer):
    from diffusers import StableDiffusionXLInpaintPipeline

    out, info = detail_faces(sdxl_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=3)
    _check_mechanics(small_face, out, info, dlib_analyzer)
    assert isinstance(inpaint_pipeline(sdxl_pipe), StableDiffusionXLInpaintPipeline)


def test_deterministic_for_a_seed(sd15_pipe, small_face, dlib_analyzer):
    a, _ = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=11)
    b, _ = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=11)
    c, info = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=12)
    np.testing.assert_array_equal(a, b)
    assert info[0]["seed"] == 12 and not np.array_equal(a, c)
    # cfg.seed fixes the seed whatever the image's own seed
    fixed = DetailerConfig(working_size=64, num_inference_steps=4, strength=0.5, seed=11)
    d, info = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, fixed, seed=999)
    np.testing.assert_array_equal(a, d)
    assert info[0]["seed"] == 11


@pytest.mark.parametrize("scheduler", ["dpm++", "lcm"])
def test_runs_with_the_generators_schedulers(tiny_sd15, small_face, dlib_analyzer, scheduler):
    """PortraitGenerator's samplers: DPM-Solver++ (2nd order), and LCMScheduler in fast mode."""
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    from facechain.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sd15)))
    if scheduler == "lcm":
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        cfg = DetailerConfig(working_size=64, num_inference_steps=6, guidance_scale=1.5)
    else:
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                                 solver_order=2)
        cfg = DetailerConfig(working_size=64, num_inference_steps=10)
    a, info = detail_faces(pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, cfg, seed=1)
    b, _ = detail_faces(pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, cfg, seed=1)
    assert inpaint_pipeline(pipe).scheduler is pipe.scheduler
    _check_mechanics(small_face, a, info, dlib_analyzer, cfg)
    np.testing.assert_array_equal(a, b)


def test_off_returns_the_input_unchanged(sd15_pipe, small_face, dlib_analyzer, monkeypatch):
    def no_pipeline(pipe):
        raise AssertionError("no inpaint pipeline should be made")

    monkeypatch.setattr(detailer, "inpaint_pipeline", no_pipeline)
    out, info = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE,
                             DetailerConfig(mode="off"), seed=0)
    assert info == [] and out is not small_face
    np.testing.assert_array_equal(out, small_face)


def test_auto_skips_a_large_face_always_details_it(sd15_pipe, dlib_analyzer, monkeypatch):
    large = _candidate(480, at=(16, 16))  # Face.size ~260 px (dlib's box ~210 px): 0.51 of the short side
    out, info = detail_faces(sd15_pipe, large, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=0)
    np.testing.assert_array_equal(out, large)
    assert len(info) == 1 and info[0]["detailed"] is False and info[0]["crop"] is None
    assert info[0]["face_px"] > CFG.small_face_frac * 512 and "mode auto details small faces only" in info[0]["reason"]
    always = DetailerConfig(mode="always", working_size=64, num_inference_steps=4, strength=0.5)
    out, info = detail_faces(sd15_pipe, large, dlib_analyzer, PROMPT, NEGATIVE, always, seed=0)
    assert info[0]["detailed"] is True and not np.array_equal(out, large)
    # a face below min_face_px is skipped with its reason, in any mode
    tiny_rule = DetailerConfig(mode="always", working_size=64, num_inference_steps=4, strength=0.5, min_face_px=300)
    out, info = detail_faces(sd15_pipe, large, dlib_analyzer, PROMPT, NEGATIVE, tiny_rule, seed=0)
    np.testing.assert_array_equal(out, large)
    assert info[0]["detailed"] is False and "min_face_px 300" in info[0]["reason"]


def test_no_face_found_is_reported_with_the_detectors_limit(sd15_pipe, dlib_analyzer):
    img = _canvas()
    out, info = detail_faces(sd15_pipe, img, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=0)
    np.testing.assert_array_equal(out, img)
    assert len(info) == 1 and info[0]["bbox"] is None and info[0]["detailed"] is False
    assert "no face found" in info[0]["reason"] and "80 px" in info[0]["reason"]


@pytest.mark.unit
def test_needs_detail_rule():
    def face(side):
        return Face(bbox=np.array([0, 0, side, side], np.float32), score=1.0, kps=np.zeros((5, 2), np.float32),
                    backend="test")

    assert needs_detail(face(100), (512, 768, 3), 0.2)  # 100 < 0.2 x 512 (the short side)
    assert not needs_detail(face(103), (512, 768, 3), 0.2)
    assert needs_detail(face(150), (1024, 1024, 3), 0.2) and not needs_detail(face(150), (512, 512, 3), 0.2)
    # default: ranking's min_face_frac (0.23); a face without keypoints is measured by its box's side
    assert needs_detail(face(117), (512, 512, 3)) and not needs_detail(face(118), (512, 512, 3))


def test_face_region_holds_the_feathered_mask(small_face, dlib_analyzer):
    face = dlib_analyzer.detect(small_face, embed=False)[0]
    r = face_region(face, small_face.shape, CFG)
    assert r.alpha.shape == (r.side, r.side) and r.alpha.dtype == np.float32
    assert r.side >= CFG.padding * face.size and r.alpha.max() == pytest.approx(1.0, abs=1e-5)
    edge = np.concatenate([r.alpha[0], r.alpha[-1], r.alpha[:, 0], r.alpha[:, -1]])
    assert (edge == 0).all()  # the feathered edge ends inside the crop: no seam at its border
    # feathered: values between 0 and 1 around the face
    assert ((r.alpha > 0.05) & (r.alpha < 0.95)).sum() > 0.2 * face.size * 4
    # a face at the image's corner: the crop is shifted inside the image, still square
    corner = Face(bbox=np.array([2, 2, 90, 90], np.float32), score=1.0, kps=np.zeros((5, 2), np.float32),
                  backend="test")
    r = face_region(corner, (300, 400, 3), CFG)
    assert r.x0 == 0 and r.y0 == 0 and r.side <= 300 and r.alpha.shape == (r.side, r.side)


def test_inpaint_pipeline_is_cached_and_shares_the_modules(tiny_sd15):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionInpaintPipeline

    from facechain.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sd15)))
    first = inpaint_pipeline(pipe)
    assert isinstance(first, StableDiffusionInpaintPipeline) and inpaint_pipeline(pipe) is first
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(first, name) is getattr(pipe, name)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # a new module: made again
    second = inpaint_pipeline(pipe)
    assert second is not first and second.scheduler is pipe.scheduler


def test_half_precision_modules_stay_half(tiny_sd15):
    """from_pipe casts the new pipeline (float32 unless told): the shared modules must keep their dtype."""
    import torch

    from facechain.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sd15)), torch_dtype=torch.bfloat16)
    inpaint = inpaint_pipeline(pipe)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16 and inpaint.unet is pipe.unet


def test_controlnet_pipeline_is_inpainted_without_its_controlnet(sd15_pipe, small_face, dlib_analyzer):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    control = StableDiffusionControlNetPipeline.from_pipe(sd15_pipe, controlnet=ControlNetModel.from_unet(sd15_pipe.unet))
    control.set_progress_bar_config(disable=True)
    inpaint = inpaint_pipeline(control)
    assert getattr(inpaint, "controlnet", None) is None and inpaint.unet is sd15_pipe.unet
    a, info = detail_faces(control, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=5)
    b, _ = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=5)
    assert info[0]["detailed"] is True
    np.testing.assert_array_equal(a, b)  # same modules, no ControlNet: the same face


def test_the_face_lora_adapter_is_used(tiny_sd15, sd15_pipe, small_face, dlib_analyzer, tmp_path):
    """The inpaint pass runs through the base pipeline's UNet with its adapter: weight 0 gives the
    base model's face, weight 1 another one."""
    from facechain import lora as lora_io
    from facechain.models import load_pipeline, resolve_model
    from facechain.testing import random_lora

    folder = random_lora(tiny_sd15, tmp_path / "face_lora", seed=1)
    pipe = load_pipeline(resolve_model(str(tiny_sd15)))
    lora_io.load_adapter(pipe, folder / lora_io.LORA_FILE, "face")
    pipe.set_adapters(["face"], adapter_weights=[1.0])
    with_lora, _ = detail_faces(pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=5)
    pipe.set_adapters(["face"], adapter_weights=[0.0])
    without, _ = detail_faces(pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=5)
    base, _ = detail_faces(sd15_pipe, small_face, dlib_analyzer, PROMPT, NEGATIVE, CFG, seed=5)
    assert not np.array_equal(with_lora, without)
    assert np.abs(without.astype(np.int16) - base.astype(np.int16)).max() <= 1


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, words", [
    ({"strength": 0.0}, "strength must be in (0, 1]"),
    ({"strength": 1.5}, "strength must be in (0, 1]"),
    ({"mode": "sometimes"}, "mode must be one of"),
    ({"num_inference_steps": 2, "strength": 0.4}, "runs no denoising step"),
    ({"padding": 1.0}, "padding"),
    ({"working_size": 100}, "multiple of 8"),
    ({"mask_feather": -0.1}, "mask_feather"),
    ({"small_face_frac": 0.0}, "small_face_frac"),
    ({"min_face_px": 0}, "min_face_px"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(InputError) as err:
        DetailerConfig(**kwargs)
    assert words in str(err.value)


def test_bad_inputs_are_refused(sd15_pipe, dlib_analyzer):
    with pytest.raises(InputError, match="RGB uint8"):
        detail_faces(sd15_pipe, np.zeros((64, 64), np.uint8), dlib_analyzer, PROMPT, NEGATIVE, CFG)
    with pytest.raises(InputError, match="RGB uint8"):
        detail_faces(sd15_pipe, np.zeros((64, 64, 3), np.float32), dlib_analyzer, PROMPT, NEGATIVE, CFG)
    with pytest.raises(InputError, match="UNet and a VAE"):
        detail_faces(object(), _canvas(64), dlib_analyzer, PROMPT, NEGATIVE, CFG)
    with pytest.raises(InputError, match="DetailerConfig"):
        detail_faces(sd15_pipe, _canvas(64), dlib_analyzer, PROMPT, NEGATIVE, {"mode": "auto"})
