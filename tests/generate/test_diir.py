"""DIIR restoration (facechain.generate.diir) on tiny real-class SD1.5/SDXL models at 64 px, with a real photo
(the astronaut's head pasted into a canvas) and dlib's detector: the DDIM inversion round trip, the
identity's effect, the landmark ControlNet, and the paste-back that keeps every pixel outside the mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facechain.generate.diir import DIIRConfig, Identity, decode, encode, invert, regenerate, diir_faces
from facechain.errors import InputError

CFG = DIIRConfig(num_inference_steps=10, strength=0.6, working_size=64)


def _photo() -> np.ndarray:
    from facechain import samples

    return samples.pasted_head(200, 256, (30, 30))


@pytest.fixture(scope="module")
def photo():
    return _photo()


def _cond(pipe, prompt="<fcsks>, a woman", negative="blurry"):
    from facechain.prompts import PromptEncoder

    enc = PromptEncoder(pipe)
    return enc(prompt, negative), enc("", "")


def test_inversion_round_trip_keeps_the_image_and_noise_does_not(sd15_pipe, photo):
    """Inverting then regenerating with the same (unconditional, unguided) branch returns close to the
    start; img2img's random noise at the same strength does not - the point of inverting."""
    from PIL import Image

    cond, null = _cond(sd15_pipe)
    img = np.asarray(Image.fromarray(photo).resize((64, 64), Image.LANCZOS))
    lat = encode(sd15_pipe, img)
    cfg = DIIRConfig(num_inference_steps=50, strength=0.5, guidance_scale=1.0, working_size=64)
    noisy = invert(sd15_pipe, lat, null, cfg, size=64)
    back = regenerate(sd15_pipe, noisy, null, cfg, size=64)
    err_inverted = float((back - lat).abs().mean())
    fwd_t = 1000 - int(1000 * 0.5)  # the same noise level, random noise as img2img adds it
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(sd15_pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    rand = sched.add_noise(lat, torch.randn(lat.shape, generator=torch.Generator().manual_seed(0)),
                           torch.tensor([fwd_t]))
    err_noise = float((regenerate(sd15_pipe, rand, null, cfg, size=64) - lat).abs().mean())
    assert float((noisy - lat).abs().mean()) > 3 * err_inverted  # the inversion did move the latent
    assert err_inverted < 0.25 * err_noise, (err_inverted, err_noise)
    assert decode(sd15_pipe, back).shape == (64, 64, 3)


def test_restore_changes_the_face_and_nothing_outside_its_mask(sd15_pipe, photo, dlib_analyzer):
    from facechain.face.region import face_region
    from facechain.generate.detailer import DetailerConfig

    cond, null = _cond(sd15_pipe)
    faces = dlib_analyzer.detect(photo, embed=False)
    before = photo.copy()
    out, report = diir_faces(sd15_pipe, photo, faces, cond, null, CFG)
    np.testing.assert_array_equal(photo, before)
    assert len(report) == 1 and report[0]["steps"] == 6 and report[0]["landmark_control"] is None
    x0, y0, side = report[0]["crop"]
    region = face_region(faces[0], photo.shape, DetailerConfig(padding=CFG.padding, mask_dilation=0.06,
                                                                mask_feather=0.04, working_size=64))
    alpha = region.full_alpha(photo.shape)
    assert (x0, y0, side) == (region.x0, region.y0, region.side)
    np.testing.assert_array_equal(out[alpha == 0], photo[alpha == 0])  # the background stays, bit for bit
    assert (alpha == 0).mean() > 0.3
    diff = np.abs(out.astype(int) - photo.astype(int)).max(axis=2)
    assert diff[alpha > 0.99].mean() > 5  # the face was regenerated
    again, _ = diir_faces(sd15_pipe, photo, faces, cond, null, CFG)
    np.testing.assert_array_equal(out, again)  # deterministic: DDIM both ways, no noise drawn


def test_the_identity_changes_the_result(tiny_sd15, photo, dlib_analyzer, tmp_path):
    """The same face restored under two different face LoRAs (the identity) gives two faces; with the
    LoRA's weight 0 it is the base model's restoration."""
    from facechain import lora as lora_io
    from facechain.models import load_pipeline, resolve_model
    from facechain.testing import random_lora

    p = load_pipeline(resolve_model(str(tiny_sd15)))
    faces = dlib_analyzer.detect(photo, embed=False)
    outs = []
    for seed in (1, 2):
        path = lora_io.resolve(random_lora(tiny_sd15, tmp_path / f"l{seed}", seed=seed))
        lora_io.load_adapter(p, path, f"p{seed}", "face LoRA")
        p.set_adapters([f"p{seed}"], adapter_weights=[1.0])
        cond, null = _cond(p)
        outs.append(diir_faces(p, photo, faces, cond, null, CFG)[0])
        p.delete_adapters(f"p{seed}")
    cond, null = _cond(p)
    base = diir_faces(p, photo, faces, cond, null, CFG)[0]
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).mean() > 0.5
    assert np.abs(outs[0].astype(int) - base.astype(int)).mean() > 0.5


def test_landmark_controlnet_reaches_the_unet(sd15_pipe, photo, dlib_analyzer, tmp_path):
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(sd15_pipe.unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    with torch.no_grad():  # from_unet zero-initialises the outputs: give them weight so the control shows
        for m in list(net.controlnet_down_blocks) + [net.controlnet_mid_block]:
            m.weight.normal_(0, 0.2)
    cond, null = _cond(sd15_pipe)
    faces = dlib_analyzer.detect(photo, embed=False)
    plain = diir_faces(sd15_pipe, photo, faces, cond, null, CFG)[0]
    ctl, report = diir_faces(sd15_pipe, photo, faces, cond, null, CFG, controlnet=net)
    off = diir_faces(sd15_pipe, photo, faces, cond, null, DIIRConfig(num_inference_steps=10, strength=0.6,
                                                                  working_size=64, landmark_weight=0), controlnet=net)[0]
    assert report[0]["landmark_control"] == CFG.landmark_weight
    assert np.abs(ctl.astype(int) - plain.astype(int)).mean() > 0.5
    np.testing.assert_array_equal(off, plain)


def test_ip_adapter_identity_acts_in_regeneration_only(tiny_sd15, photo, dlib_analyzer, tmp_path):
    """IP-Adapter-FaceID's embedding changes the restored face; the inversion runs on its zero (unconditional)
    embedding, so inverting with or without the identity gives the same latent."""
    from facechain.adapters import IdentityConfig, get_identity_adapter
    from facechain.models import load_pipeline, resolve_model
    from facechain.testing import build_tiny_faceid_adapter

    weights = build_tiny_faceid_adapter(tiny_sd15, tmp_path / "faceid.safetensors", embed_dim=128)
    p = load_pipeline(resolve_model(str(tiny_sd15)))
    adapter = get_identity_adapter(IdentityConfig(adapter="ip-adapter-faceid", photos=tmp_path, weights=str(weights)),
                                   "sd15")
    p.set_adapters(list(adapter.attach(p)), adapter_weights=[1.0])
    cond, null = _cond(p)
    faces = dlib_analyzer.detect(photo, embed=False)
    rng = np.random.default_rng(0)
    outs = []
    for _ in range(2):
        v = torch.from_numpy(rng.normal(size=128).astype(np.float32)).reshape(1, 1, 1, -1) * 3
        ident = Identity(adapter, [torch.cat([torch.zeros_like(v), v])])
        outs.append(diir_faces(p, photo, faces, cond, null, CFG, identity=ident)[0])
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).mean() > 0.5
    lat = encode(p, np.zeros((64, 64, 3), np.uint8))
    a = invert(p, lat, null, CFG, size=64, identity=Identity(adapter, [torch.ones(2, 1, 1, 128)]))
    b = invert(p, lat, null, CFG, size=64, identity=Identity(adapter, [torch.zeros(2, 1, 1, 128)]))
    torch.testing.assert_close(a, b)


def test_sdxl_runs(sdxl_pipe, photo, dlib_analyzer):
    cond, null = _cond(sdxl_pipe)
    faces = dlib_analyzer.detect(photo, embed=False)
    out, report = diir_faces(sdxl_pipe, photo, faces, cond, null, CFG)
    assert report[0]["working_size"] == 64 and np.abs(out.astype(int) - photo.astype(int)).max() > 0


def test_small_faces_are_skipped_and_bad_settings_refused(sd15_pipe, photo, dlib_analyzer):
    cond, null = _cond(sd15_pipe)
    faces = dlib_analyzer.detect(photo, embed=False)
    out, report = diir_faces(sd15_pipe, photo, faces, cond, null, DIIRConfig(min_face_px=1000, working_size=64))
    assert "under min_face_px 1000" in report[0]["skipped"]
    np.testing.assert_array_equal(out, photo)
    for kw, words in [({"strength": 0}, "strength must be in"), ({"num_inference_steps": 1, "strength": 0.5}, "runs no step"),
                      ({"landmark_weight": -1}, "landmark_weight"), ({"working_size": 60}, "multiple of 8")]:
        with pytest.raises(InputError, match=words):
            DIIRConfig(**kw)
    with pytest.raises(InputError, match="RGB uint8"):
        diir_faces(sd15_pipe, photo.astype(np.float32), faces, cond, null, CFG)


# ---------------------------------------------------------------------------- in generation and templates


@pytest.fixture(scope="module")
def openpose_net(tiny_sd15, tmp_path_factory):
    """A tiny OpenPose ControlNet (diffusers' from_unet, outputs given weight) saved as a folder."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet"),
                                    conditioning_embedding_out_channels=(8, 16, 16, 16))
    with torch.no_grad():
        for m in list(net.controlnet_down_blocks) + [net.controlnet_mid_block]:
            m.weight.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("cn") / "openpose"
    net.save_pretrained(path)
    return path


@pytest.mark.slow
def test_generation_with_fusion_diir(tiny_sd15, photo, openpose_net, dlib_analyzer, tmp_path):
    """fusion: diir runs inside generation while the face LoRA is active, with the landmark ControlNet; its
    report is in manifest.json; impossible settings are refused before any model loads."""
    import json

    from facechain.generate import GenerateConfig, run_job
    from facechain.generate.job import check_inputs
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.testing import random_lora
    from tests.generate.test_generate_detailer import _PhotoSampler

    lora = random_lora(tiny_sd15, tmp_path / "lora", seed=1)
    cfg = GenerateConfig(base_model=str(tiny_sd15), output_dir=tmp_path / "out", lora_dir=lora, num_candidates=2,
                         num_images=1, batch_size=2, num_inference_steps=2, rank_candidates=False, fusion="diir",
                         detailer="off", device="cpu", dtype="float32", face_backend="dlib",
                         controlnet_openpose=str(openpose_net),
                         diir=DIIRConfig(num_inference_steps=10, strength=0.5, working_size=64))
    gen = PortraitGenerator(cfg, analyzer=dlib_analyzer)
    gen.control_pipe = _PhotoSampler(gen.pipe, [photo])
    result = run_job(cfg, generator=gen)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["fusion"]["method"] == "diir" and manifest["fusion"]["diir"]["strength"] == 0.5
    report = manifest["styles"][0]["candidates"][0]["diir"]
    assert report[0]["steps"] == 5 and report[0]["landmark_control"] == 0.6
    from PIL import Image

    out = np.asarray(Image.open(result.kept[0]).convert("RGB"))
    assert np.abs(out.astype(int) - photo.astype(int)).max() > 0
    x0, y0, side = report[0]["crop"]
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y0 + side, x0:x0 + side] = False
    np.testing.assert_array_equal(out[outside], photo[outside])
    with pytest.raises(InputError, match="fusion: diir does not run with fast: true"):
        GenerateConfig(base_model="m", output_dir=tmp_path / "x", fusion="diir", fast=True)
    with pytest.raises(InputError, match="fusion: diir regenerates each face with the person's identity"):
        check_inputs(GenerateConfig(base_model=str(tiny_sd15), output_dir=tmp_path / "x", fusion="diir",
                                    rank_candidates=False))


@pytest.mark.slow
def test_template_with_fusion_diir(tiny_sd15, openpose_net, dlib_analyzer, sample_photos, tmp_path):
    """A 3-face template with fusion: diir: each edited face is regenerated from its inversion with its
    person's LoRA and the template's OpenPose ControlNet; pixels outside the faces' masks stay."""
    import json

    from PIL import Image

    from facechain.io import save_image
    from facechain.template import PersonSpec, TemplateConfig, run_template
    from facechain.testing import random_lora

    template = save_image(tmp_path / "team.png", sample_photos.three_faces())
    loras = [random_lora(tiny_sd15, tmp_path / f"l{i}", seed=20 + i) for i in range(3)]
    cfg = TemplateConfig(template=template, output_dir=tmp_path / "out", people=[PersonSpec(lora_dir=p) for p in loras],
                         base_model=str(tiny_sd15), num_inference_steps=4, strength=0.65, device="cpu",
                         dtype="float32", face_backend="dlib", fusion="diir", controls=["openpose"],
                         controlnet_openpose=str(openpose_net),
                         diir=DIIRConfig(num_inference_steps=10, strength=0.5, working_size=64))
    result = run_template(cfg, analyzer=dlib_analyzer)
    assert result.exit_code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["fusion"] == "diir" and manifest["settings"]["diir"]["num_inference_steps"] == 10
    for face in manifest["faces"]:
        assert face["fusion"] == "diir" and face["diir"]["steps"] == 5 and face["diir"]["landmark_control"] == 0.6
    before = np.asarray(Image.open(template).convert("RGB"))
    after = np.asarray(Image.open(result.result).convert("RGB"))
    touched = np.zeros(before.shape[:2], bool)
    for face in manifest["faces"]:
        x0, y0, side = face["crop"]
        touched[y0:y0 + side, x0:x0 + side] |= np.asarray(Image.open(tmp_path / "out" / "faces" /
                                                                     f"face_{face['index']}_mask.png")) > 0
    np.testing.assert_array_equal(after[~touched], before[~touched])
