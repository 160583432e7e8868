"""IP-Adapter-FaceID through diffusers' own loader, on tiny real-class models, with face
embeddings from real photos (dlib). The adapter checkpoints are built in the published files' key
layout (facechain.testing.build_tiny_faceid_adapter) and loaded through the same code path as a
user's converted file. They take dlib's 128-d embedding, since ArcFace weights cannot be had here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError


@pytest.fixture(scope="module")
def faceid(tiny_sd15, tmp_path_factory):
    from facechain.testing import build_tiny_faceid_adapter

    return build_tiny_faceid_adapter(tiny_sd15, tmp_path_factory.mktemp("faceid") / "faceid_tiny.safetensors", seed=3)


@pytest.fixture(scope="module")
def photo_dirs(tmp_path_factory, sample_photos):
    """Two people's photo folders (one face each) and folders with bad photos."""
    from facechain.io import save_image

    root = tmp_path_factory.mktemp("people")
    a = sample_photos.astronaut()
    save_image(root / "astronaut" / "1.png", a)
    save_image(root / "astronaut" / "2.png", np.ascontiguousarray(a[:, ::-1]))
    save_image(root / "hanks" / "1.png", sample_photos.other_person())
    save_image(root / "bad" / "ok.png", a)
    save_image(root / "bad" / "group.png", sample_photos.group_photo())
    save_image(root / "bad" / "blank.png", np.full((256, 256, 3), 200, np.uint8))
    return root


class Payload:
    """An object a pickle can carry besides tensors (unpickling it could run code)."""


def _cfg(tiny, tmp_path, **kw):
    from facechain.generate import GenerateConfig

    base = {"base_model": str(tiny), "output_dir": tmp_path / "out", "num_candidates": 2, "num_images": 2, "batch_size": 2,
                "num_inference_steps": 2, "rank_candidates": False, "fusion": "off", "device": "cpu", "dtype": "float32",
                "styles": ["Business suit"], "face_backend": "dlib", "detailer": "off"}
    base.update(kw)
    return GenerateConfig(**base)


def _identity(photos, weights, **kw):
    from facechain.adapters import IdentityConfig

    return IdentityConfig(adapter="ip-adapter-faceid", photos=photos, weights=str(weights), **kw)


def _images(gen, style):
    batch = gen.generate(style, ("", "a person"))
    return np.stack([np.asarray(c.image, dtype=np.int16) for c in batch.candidates]), batch


@pytest.mark.slow
def test_identity_changes_the_output_and_scale_zero_restores_it(tiny_sd15, faceid, photo_dirs, dlib_analyzer, tmp_path):
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")
    plain, _ = _images(PortraitGenerator(_cfg(tiny_sd15, tmp_path), analyzer=dlib_analyzer), style)
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=_identity(photo_dirs / "astronaut", faceid)),
                            analyzer=dlib_analyzer)
    assert "faceid_0" in gen.adapters  # the checkpoint's LoRA, mixed with set_adapters like the others
    assert type(gen.pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "IPAdapterFaceIDImageProjection"
    astro, batch = _images(gen, style)
    assert np.abs(astro - plain).mean() > 1.0
    info = batch.settings["identity"]
    assert info["adapter"] == "ip-adapter-faceid" and info["photos"] == ["1.png", "2.png"]
    assert info["embedding"] == {"backend": "dlib", "dim": 128} and batch.adapters["faceid_0"] == 1.0
    # another person's photos give another image
    gen_h = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=_identity(photo_dirs / "hanks", faceid)),
                              analyzer=dlib_analyzer)
    hanks, _ = _images(gen_h, style)
    assert np.abs(hanks - astro).mean() > 0.5
    # the embedding reaches the image: the same adapter with the IP attention off but its LoRA on differs
    gen0 = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=_identity(photo_dirs / "astronaut", faceid, scale=0.0)),
                             analyzer=dlib_analyzer)
    lora_only, _ = _images(gen0, style)
    assert np.abs(lora_only - astro).mean() > 0.5
    # scale 0 and lora_scale 0: the base model's output, to float precision
    off = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=_identity(photo_dirs / "astronaut", faceid, scale=0.0,
                                                                          lora_scale=0.0)), analyzer=dlib_analyzer)
    restored, _ = _images(off, style)
    assert np.abs(restored - plain).max() <= 1


def test_embedding_is_the_mean_of_unit_embeddings(photo_dirs, dlib_analyzer):
    from facechain.adapters.ip_adapter_faceid import identity_embedding
    from facechain.images import read_image

    emb = identity_embedding(photo_dirs / "astronaut", dlib_analyzer)
    vs = []
    for name in ("1.png", "2.png"):
        f = dlib_analyzer.detect(read_image(photo_dirs / "astronaut" / name))[0]
        vs.append(np.asarray(f.embedding, np.float64) / np.linalg.norm(f.embedding))
    want = np.mean(vs, 0)
    assert np.allclose(emb.vector, want / np.linalg.norm(want), atol=1e-5)
    assert abs(np.linalg.norm(emb.vector) - 1) < 1e-5 and emb.photos == ["1.png", "2.png"]


def test_bad_identity_photos_are_named_before_any_model_loads(tiny_sd15, faceid, photo_dirs, dlib_analyzer, tmp_path):
    from facechain.adapters.ip_adapter_faceid import identity_embedding

    with pytest.raises(InputError) as err:
        identity_embedding(photo_dirs / "bad", dlib_analyzer)
    text = str(err.value)
    assert "blank.png: no face found" in text and "group.png:" in text and "faces" in text and "ok.png" not in text
    with pytest.raises(InputError, match="does not exist"):
        identity_embedding(tmp_path / "nowhere", dlib_analyzer)


def test_adapter_only_job_from_a_config_file(tiny_sd15, faceid, photo_dirs, tmp_path):
    """No face LoRA: the adapter alone, from run_inference's config file (identity: block, relative paths)."""
    from facechain.cli import main

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "weights").mkdir()
    (conf / "weights" / faceid.name).write_bytes(faceid.read_bytes())
    (conf / "user.yaml").write_text(
        f"base_model: {tiny_sd15}\noutput_dir: ../out\nnum_candidates: 2\nnum_images: 1\nbatch_size: 2\n"
        "num_inference_steps: 2\nrank_candidates: false\nfusion: \"off\"\ndevice: cpu\ndtype: float32\nface_backend: dlib\n"
        f"identity: {{adapter: ip-adapter-faceid, photos: {photo_dirs / 'astronaut'}, weights: ./weights/{faceid.name}}}\n")
    assert main(["generate", "--config", str(conf / "user.yaml"), "--identity-scale", "0.8"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    style = manifest["styles"][0]
    assert manifest["identity_adapter"] == "ip-adapter-faceid" and manifest["face_lora"] is None
    assert style["settings"]["identity"]["scale"] == 0.8  # the flag overrides the block's default, keeps the rest
    assert style["settings"]["identity"]["weights"] == str(conf / "weights" / faceid.name)
    assert not style["prompt"].startswith("<fcsks>")  # no LoRA learned the trigger word
    saved = json.loads((tmp_path / "out" / "generate_config.json").read_text())
    assert saved["identity"]["adapter"] == "ip-adapter-faceid"


def test_pickles_are_refused_and_convert_makes_a_loadable_file(tiny_sd15, faceid, photo_dirs, dlib_analyzer,
                                                              tmp_path, monkeypatch):
    """The published checkpoints are nested pickles ({"image_proj": ..., "ip_adapter": ...}); convert
    reads one tensors-only and writes the flat safetensors layout load_ip_adapter reads."""
    from safetensors.torch import load_file

    from facechain.adapters import IdentityConfig, get_identity_adapter
    from facechain.cli import main

    monkeypatch.setenv("FACECHAIN_HOME", str(tmp_path / "home"))
    flat = load_file(str(faceid))
    nested = {"image_proj": {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")},
              "ip_adapter": {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}}
    torch.save(nested, tmp_path / "ip-adapter-faceid_sd15.bin")
    spec = IdentityConfig(adapter="ip-adapter-faceid", photos=photo_dirs / "astronaut",
                          weights=str(tmp_path / "ip-adapter-faceid_sd15.bin"))
    with pytest.raises(InputError, match="facechain convert"):
        get_identity_adapter(spec, "sd15")
    # the default weights, not converted yet: one error with the command that makes them
    with pytest.raises(ModelNotFoundError, match="facechain convert h94/IP-Adapter-FaceID --file ip-adapter-faceid_sd15.bin"):
        get_identity_adapter(IdentityConfig(adapter="ip-adapter-faceid", photos=photo_dirs / "astronaut"), "sd15")
    assert main(["convert", str(tmp_path / "ip-adapter-faceid_sd15.bin")]) == 0
    out = tmp_path / "home" / "adapters" / "ip-adapter-faceid_sd15.safetensors"
    again = load_file(str(out))
    assert set(again) == set(flat) and all(torch.equal(again[k], flat[k]) for k in flat)
    assert main(["convert", str(tmp_path / "ip-adapter-faceid_sd15.bin")]) == 1  # never overwrites
    # now the default resolves to the converted file
    adapter = get_identity_adapter(IdentityConfig(adapter="ip-adapter-faceid", photos=photo_dirs / "astronaut"), "sd15")
    assert adapter.path == out
    # a pickle holding objects besides tensors is not unpickled, even by convert
    torch.save({"x": Payload()}, tmp_path / "evil.bin")
    with pytest.raises(UnsafeCheckpointError):
        from facechain.adapters.ip_adapter_faceid import convert_checkpoint

        convert_checkpoint(str(tmp_path / "evil.bin"), tmp_path / "evil.safetensors")


def test_an_adapter_for_another_family_or_embedding_is_refused(tiny_sd15, tiny_sdxl, faceid, photo_dirs, dlib_analyzer,
                                                               tmp_path):
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.testing import build_tiny_faceid_adapter

    # an SDXL adapter on the SD1.5 model: refused before diffusers touches the pipeline
    xl = build_tiny_faceid_adapter(tiny_sdxl, tmp_path / "xl.safetensors", with_lora=False)
    from facechain.adapters import get_identity_adapter
    from facechain.adapters.ip_adapter_faceid import check_state, read_shape
    from diffusers import UNet2DConditionModel

    unet15 = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    unetxl = UNet2DConditionModel.from_pretrained(str(tiny_sdxl), subfolder="unet")
    assert unet15.config.cross_attention_dim != unetxl.config.cross_attention_dim
    with pytest.raises(InputError, match="cross-attention size 64"):
        check_state(read_shape(xl), unet15, xl, "sd15")
    with pytest.raises(InputError, match="cross-attention size 32"):
        check_state(read_shape(faceid), unetxl, faceid, "sdxl")
    # the right width but another UNet's layer count (a layer's keys missing)
    from safetensors.torch import load_file

    from facechain.io import save_safetensors

    cut = {k: v for k, v in load_file(str(faceid)).items() if not k.startswith("ip_adapter.31.")}
    save_safetensors(tmp_path / "cut.safetensors", cut)
    with pytest.raises(InputError, match="15 attention layers and the base model's UNet has 16 cross-attention layers"):
        check_state(read_shape(tmp_path / "cut.safetensors"), unet15, tmp_path / "cut.safetensors", "sd15")
    with pytest.raises(InputError, match="made for another|cross-attention"):
        PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=_identity(photo_dirs / "astronaut", xl)), analyzer=dlib_analyzer)
    # an adapter that takes ArcFace's 512-d embedding, with the dlib backend's 128-d ones
    arc = build_tiny_faceid_adapter(tiny_sd15, tmp_path / "arc.safetensors", embed_dim=512)
    with pytest.raises(InputError, match="512-d face embeddings and the dlib face backend gives 128-d"):
        PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=_identity(photo_dirs / "astronaut", arc)), analyzer=dlib_analyzer)
    # not a FaceID checkpoint at all
    save_safetensors(tmp_path / "other.safetensors", {"image_proj.proj.weight": torch.zeros(4, 4)})
    with pytest.raises(InputError, match="not an IP-Adapter-FaceID checkpoint"):
        get_identity_adapter(_identity(photo_dirs / "astronaut", tmp_path / "other.safetensors"), "sd15")


@pytest.mark.unit
def test_identity_settings_are_checked():
    from facechain.adapters import IdentityConfig
    from facechain.generate import GenerateConfig

    with pytest.raises(InputError, match="unknown identity adapter 'photomaker'"):
        IdentityConfig(adapter="photomaker", photos=Path("x"))
    with pytest.raises(InputError, match="identity.photos is empty"):
        IdentityConfig(adapter="ip-adapter-faceid")
    with pytest.raises(InputError, match="adapter is empty"):
        IdentityConfig(photos=Path("x"))
    with pytest.raises(InputError, match="identity.scale"):
        IdentityConfig(adapter="ip-adapter-faceid", photos=Path("x"), scale=3.0)
    assert not GenerateConfig(base_model="m", output_dir=Path("o")).identity.enabled


@pytest.mark.slow
def test_sdxl_with_face_lora_and_adapter_together(tiny_sdxl, photo_dirs, dlib_analyzer, tmp_path):
    """Both identity sources at once on SDXL: the face LoRA and the adapter (with its own LoRA) mixed by set_adapters."""
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles
    from facechain.testing import build_tiny_faceid_adapter, random_lora

    lora = random_lora(tiny_sdxl, tmp_path / "lora", seed=1, family="sdxl")
    xl = build_tiny_faceid_adapter(tiny_sdxl, tmp_path / "xl.safetensors", seed=4)
    style = next(s for s in load_styles([DEFAULT_STYLES_DIR]) if s.family == "sdxl" and not s.has_lora)
    both = PortraitGenerator(_cfg(tiny_sdxl, tmp_path, lora_dir=lora, identity=_identity(photo_dirs / "astronaut", xl)),
                             analyzer=dlib_analyzer)
    a, batch = _images(both, style)
    assert set(batch.adapters) == {"face", "faceid_0"}
    lora_only, _ = _images(PortraitGenerator(_cfg(tiny_sdxl, tmp_path, lora_dir=lora), analyzer=dlib_analyzer), style)
    assert np.abs(a - lora_only).mean() > 0.5


@pytest.mark.slow
def test_identity_with_pose_controlnet_and_the_face_detailer(tiny_sd15, faceid, photo_dirs, dlib_analyzer, tmp_path):
    """The adapter's UNet is shared by the ControlNet pipeline and the detailer's inpaint pipeline
    (both made with from_pipe); each call gets the identity embedding."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from PIL import Image

    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16)).save_pretrained(tmp_path / "cn")
    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")
    ident = _identity(photo_dirs / "astronaut", faceid)
    posed = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=ident, pose="upper_body_front",
                                   controlnet_openpose=str(tmp_path / "cn")), analyzer=dlib_analyzer)
    a, batch = _images(posed, style)
    assert batch.settings["controlnets"] == ["openpose"] and batch.settings["identity"]["adapter"] == "ip-adapter-faceid"
    plain_pose = PortraitGenerator(_cfg(tiny_sd15, tmp_path, pose="upper_body_front", controlnet_openpose=str(tmp_path / "cn")),
                                   analyzer=dlib_analyzer)
    b, _ = _images(plain_pose, style)
    assert np.abs(a - b).mean() > 0.5

    # the detailer on a real face (the tiny model draws none: the sampler returns a photo)
    from tests.generate.test_generate_detailer import _PhotoSampler, _small_face_photo

    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=ident, detailer="always", num_candidates=1, num_images=1),
                            analyzer=dlib_analyzer)
    gen.control_pipe = _PhotoSampler(gen.pipe, [_small_face_photo()])
    batch = gen.generate(style, ("", "a person"))
    assert batch.candidates[0].detailer[0]["detailed"] is True
    assert isinstance(batch.candidates[0].image, Image.Image)


def test_embedding_is_cached_by_the_photos_bytes(photo_dirs, dlib_analyzer, tmp_path, monkeypatch):
    from facechain.adapters.ip_adapter_faceid import identity_embedding
    from facechain.io import save_image

    monkeypatch.setenv("FACECHAIN_HOME", str(tmp_path / "home"))
    first = identity_embedding(photo_dirs / "astronaut", dlib_analyzer)
    assert len(list((tmp_path / "home" / "identity").glob("*.safetensors"))) == 1

    class NoDetect:
        name = dlib_analyzer.name

        def detect(self, *a, **k):
            raise AssertionError("the cached embedding should be used")

    again = identity_embedding(photo_dirs / "astronaut", NoDetect())
    assert np.array_equal(again.vector, first.vector) and again.photos == first.photos and again.backend == "dlib"
    # other bytes, another key: measured again
    folder = tmp_path / "edited"
    from facechain import samples

    save_image(folder / "1.png", samples.astronaut()[:, ::-1])
    with pytest.raises(AssertionError, match="cached embedding"):
        identity_embedding(folder, NoDetect())
    # a damaged cache file is measured again, not trusted
    (cache,) = (tmp_path / "home" / "identity").glob("*.safetensors")
    cache.write_bytes(b"junk")
    assert np.allclose(identity_embedding(photo_dirs / "astronaut", dlib_analyzer).vector, first.vector)


@pytest.fixture(scope="module")
def plus(tiny_sd15, tmp_path_factory):
    """A FaceID Plus v2 checkpoint (published key layout) and the tiny CLIP image encoder it reads."""
    from facechain.testing import build_tiny_faceid_adapter, build_tiny_image_encoder

    root = tmp_path_factory.mktemp("plus")
    return {"weights": build_tiny_faceid_adapter(tiny_sd15, root / "plus.safetensors", seed=5, plus_clip_dim=48),
            "encoder": build_tiny_image_encoder(root / "encoder", hidden=48)}


@pytest.mark.slow
def test_plusv2_reads_the_faces_clip_features_and_keeps_seeds_per_candidate(tiny_sd15, plus, photo_dirs, dlib_analyzer,
                                                                             tmp_path):
    import dataclasses

    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")
    ident = _identity(photo_dirs / "astronaut", plus["weights"], image_encoder=str(plus["encoder"]))
    ident = dataclasses.replace(ident, adapter="ip-adapter-faceid-plusv2")
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=ident, num_candidates=3, num_images=1, batch_size=2),
                            analyzer=dlib_analyzer)
    layer = gen.pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(layer).__name__ == "IPAdapterFaceIDPlusImageProjection" and layer.shortcut is True
    a, batch = _images(gen, style)
    assert batch.settings["identity"]["image_encoder"] == str(plus["encoder"])
    assert layer.clip_embeds.shape[:2] == (2, 1)  # the last call drew one image: its unconditional + conditional rows
    plain, _ = _images(PortraitGenerator(_cfg(tiny_sd15, tmp_path, num_candidates=3, num_images=1, batch_size=2),
                                         analyzer=dlib_analyzer), style)
    assert np.abs(a - plain).mean() > 1.0
    # candidate i is the same image whatever the batch size (the CLIP rows follow each call's size)
    one = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=ident, num_candidates=3, num_images=1, batch_size=1),
                            analyzer=dlib_analyzer)
    b, _ = _images(one, style)
    assert np.abs(a - b).max() <= 2
    # the CLIP features reach the image: other face crops, same ArcFace-side embedding, another image
    emb = gen.identity_embedding
    gen.identity.prepare(dataclasses.replace(emb, crops=np.ascontiguousarray(emb.crops[:, ::-1, :])))
    c, _ = _images(gen, style)
    assert np.abs(a - c).mean() > 0.1


def test_plusv2_errors(tiny_sd15, faceid, plus, photo_dirs, dlib_analyzer, tmp_path):
    from facechain.adapters import IdentityConfig, get_identity_adapter
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.testing import build_tiny_image_encoder

    as_plain = IdentityConfig(adapter="ip-adapter-faceid", photos=photo_dirs / "astronaut", weights=str(plus["weights"]))
    with pytest.raises(InputError, match="is an IP-Adapter-FaceID Plus checkpoint, and identity.adapter is ip-adapter-faceid"):
        get_identity_adapter(as_plain, "sd15")
    as_plus = IdentityConfig(adapter="ip-adapter-faceid-plusv2", photos=photo_dirs / "astronaut", weights=str(faceid))
    with pytest.raises(InputError, match="is a plain IP-Adapter-FaceID checkpoint"):
        get_identity_adapter(as_plus, "sd15")
    wide = build_tiny_image_encoder(tmp_path / "wide", hidden=64)
    cfg = IdentityConfig(adapter="ip-adapter-faceid-plusv2", photos=photo_dirs / "astronaut", weights=str(plus["weights"]),
                         image_encoder=str(wide))
    with pytest.raises(InputError, match="reads 48-wide CLIP image features"):
        PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=cfg), analyzer=dlib_analyzer)
    missing = IdentityConfig(adapter="ip-adapter-faceid-plusv2", photos=photo_dirs / "astronaut",
                             weights=str(plus["weights"]), image_encoder=str(tmp_path / "no-encoder"))
    with pytest.raises(ModelNotFoundError, match="identity.image_encoder"):
        PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=missing), analyzer=dlib_analyzer)


@pytest.mark.slow
def test_identity_with_fast_mode_and_a_style_lora(tiny_sd15, faceid, photo_dirs, dlib_analyzer, tmp_path):
    """Fast mode (LCM-LoRA + LCMScheduler, guidance 1.5) and a style with its own LoRA: the adapter's LoRA
    is mixed with face, style and LCM adapters, and its identity still reaches the image."""
    import json as _json

    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles
    from facechain.testing import random_lora

    lcm = random_lora(tiny_sd15, tmp_path / "lcm", seed=7)
    face = random_lora(tiny_sd15, tmp_path / "face", seed=8)
    styles = tmp_path / "styles"
    random_lora(tiny_sd15, styles, seed=9, weight_name="ink.safetensors")
    (styles / "ink.json").write_text(_json.dumps({
        "name": "Ink", "img": "", "model_id": "ink.safetensors", "revision": None, "bin_file": None,
        "multiplier_style": 0.35, "multiplier_human": 0.9, "add_prompt_style": "ink drawing"}))
    style = load_styles([DEFAULT_STYLES_DIR, styles]).get("Ink", "sd15")
    common = {"fast": True, "fast_num_inference_steps": 2, "lcm_lora": str(lcm), "lora_dir": face, "style_dirs": [styles]}
    gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=_identity(photo_dirs / "astronaut", faceid), **common),
                            analyzer=dlib_analyzer)
    a, batch = _images(gen, style)
    assert batch.adapters == {"face": 0.9, "faceid_0": 1.0, "lcm": 1.0, "style": 0.35}
    assert batch.settings["scheduler"] == "LCMScheduler"
    plain, _ = _images(PortraitGenerator(_cfg(tiny_sd15, tmp_path, **common), analyzer=dlib_analyzer), style)
    assert np.abs(a - plain).mean() > 0.5


@pytest.mark.slow
def test_plusv2_identity_in_diir_restoration(tiny_sd15, plus, photo_dirs, dlib_analyzer, tmp_path):
    """fusion: diir with a Plus v2 identity: the inversion runs on the unconditional CLIP rows, the regeneration
    on both; the face's CLIP features reach the restored face."""
    import dataclasses

    from facechain.generate.diir import DIIRConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles
    from tests.generate.test_generate_detailer import _PhotoSampler, _small_face_photo

    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")
    ident = dataclasses.replace(_identity(photo_dirs / "astronaut", plus["weights"], image_encoder=str(plus["encoder"])),
                                adapter="ip-adapter-faceid-plusv2")
    cfg = _cfg(tiny_sd15, tmp_path, identity=ident, num_candidates=1, num_images=1, batch_size=1, fusion="diir",
               diir=DIIRConfig(num_inference_steps=10, strength=0.5, working_size=64, landmark_weight=0))
    gen = PortraitGenerator(cfg, analyzer=dlib_analyzer)
    photo = _small_face_photo()
    gen.control_pipe = _PhotoSampler(gen.pipe, [photo])
    a, batch = _images(gen, style)
    assert batch.candidates[0].diir[0]["steps"] == 5
    assert np.abs(a[0] - photo.astype(np.int16)).max() > 0  # restored
    layer = gen.pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert layer.clip_embeds.shape[0] == 2  # the regeneration's unconditional + conditional rows came last
    emb = gen.identity_embedding
    gen.identity.prepare(dataclasses.replace(emb, crops=np.ascontiguousarray(emb.crops[:, ::-1, :])))
    b, _ = _images(gen, style)
    assert np.abs(a - b).mean() > 0.2  # other CLIP features, another restored face (measured: 0.67)


# ---------------------------------------------------------------------------- Plus v2's CLIP features: order, device, cache


@pytest.fixture(scope="module")
def plus_repo(tmp_path_factory):
    """The tiny CLIP image encoder in the published repo's layout: <repo>/models/image_encoder (h94/IP-Adapter's)."""
    from facechain.testing import build_tiny_image_encoder

    root = tmp_path_factory.mktemp("plus_repo") / "IP-Adapter"
    build_tiny_image_encoder(root / "models" / "image_encoder", hidden=48)
    return root


class _EncoderCalls:
    """Counts forward calls of every real CLIPVisionModelWithProjection (a global module forward hook) and
    the device of their input."""

    def __enter__(self):
        from transformers import CLIPVisionModelWithProjection

        self.calls, self.devices = 0, set()

        def hook(module, args, kwargs, output):
            if isinstance(module, CLIPVisionModelWithProjection):
                self.calls += 1
                self.devices.add((kwargs.get("pixel_values") if "pixel_values" in kwargs else args[0]).device.type)

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def _attached_plus(tiny, weights, photos, repo):
    """A Plus v2 adapter attached to a freshly loaded tiny pipeline, its encoder read from ``repo``'s subfolder."""
    from diffusers import StableDiffusionPipeline

    from facechain.adapters import IdentityConfig, get_identity_adapter

    spec = IdentityConfig(adapter="ip-adapter-faceid-plusv2", photos=photos, weights=str(weights), image_encoder=str(repo),
                          image_encoder_subfolder="models/image_encoder")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny), torch_dtype=torch.float32)
    adapter = get_identity_adapter(spec, "sd15")
    adapter.attach(pipe)
    return adapter


def test_plusv2_clip_features_are_cached_and_read_in_bgr(tiny_sd15, plus, plus_repo, photo_dirs, dlib_analyzer,
                                                         tmp_path, monkeypatch):
    """The encoder runs once per set of face crops: a second job with the same photos neither loads nor runs it
    and gets the same features; other photos miss. The crops reach CLIP in BGR order (the published usage)."""
    from transformers import CLIPImageProcessor

    from facechain.adapters.ip_adapter_faceid import identity_embedding
    from facechain.models import load_image_encoder

    monkeypatch.setenv("FACECHAIN_HOME", str(tmp_path / "home"))
    emb = identity_embedding(photo_dirs / "astronaut", dlib_analyzer)
    first = _attached_plus(tiny_sd15, plus["weights"], photo_dirs / "astronaut", plus_repo)
    with _EncoderCalls() as seen:
        first.prepare(emb)
        assert seen.calls == 2 and first.cache_hit is False  # the crops and the zero image
        assert len(list((tmp_path / "home" / "identity").glob("clip-*.safetensors"))) == 1
        second = _attached_plus(tiny_sd15, plus["weights"], photo_dirs / "astronaut", plus_repo)
        second.prepare(emb)
        assert seen.calls == 2 and second.cache_hit is True and second.encoder is None  # neither run nor loaded
        for cached, fresh in zip(second._features, first._features):
            assert torch.equal(cached, fresh)
        again = second.clip_features(emb.crops, torch.device("cpu"), torch.float32)  # a fresh computation
        assert all(torch.equal(a, b) for a, b in zip(again, second._features))
        calls = seen.calls
        other = identity_embedding(photo_dirs / "hanks", dlib_analyzer)
        second.prepare(other)  # other photos, other crops: computed
        assert second.cache_hit is False and seen.calls == calls + 2
        assert (second._features[1] - first._features[1]).abs().mean() > 1e-3
    assert second.describe(emb)["clip_channels"] == "bgr"
    # by hand: the published order (BGR) is what the adapter passes, and it differs from RGB
    enc = load_image_encoder(str(plus_repo), dtype=torch.float32, subfolder="models/image_encoder")
    proc = CLIPImageProcessor(size=enc.config.image_size, crop_size=enc.config.image_size)

    def mean_features(crops):
        with torch.inference_mode():
            return enc(proc(images=list(crops), return_tensors="pt").pixel_values,
                       output_hidden_states=True).hidden_states[-2].mean(0, keepdim=True)

    bgr, rgb = mean_features(np.ascontiguousarray(emb.crops[..., ::-1])), mean_features(emb.crops)
    torch.testing.assert_close(first._features[1], bgr)
    assert (bgr - rgb).abs().mean() > 1e-3


def test_plusv2_default_image_encoder_is_h94_models_image_encoder(plus, photo_dirs):
    from facechain.adapters import IdentityConfig, get_identity_adapter

    spec = IdentityConfig(adapter="ip-adapter-faceid-plusv2", photos=photo_dirs / "astronaut", weights=str(plus["weights"]))
    adapter = get_identity_adapter(spec, "sd15")
    assert (adapter.encoder_ref, adapter.encoder_subfolder) == ("h94/IP-Adapter", "models/image_encoder")
    with pytest.raises(InputError, match="image_encoder_subfolder is 'models/image_encoder' but identity.image_encoder is empty"):
        IdentityConfig(adapter="ip-adapter-faceid-plusv2", photos=photo_dirs / "astronaut",
                       image_encoder_subfolder="models/image_encoder")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_plusv2_clip_encoder_runs_on_the_pipelines_device(tiny_sd15, plus, plus_repo, photo_dirs, dlib_analyzer,
                                                          tmp_path, monkeypatch):
    import dataclasses

    from facechain.generate.pipeline import PortraitGenerator

    monkeypatch.setenv("FACECHAIN_HOME", str(tmp_path / "home"))
    ident = dataclasses.replace(_identity(photo_dirs / "astronaut", plus["weights"], image_encoder=str(plus_repo),
                                          image_encoder_subfolder="models/image_encoder"),
                                adapter="ip-adapter-faceid-plusv2")
    with _EncoderCalls() as seen:
        gen = PortraitGenerator(_cfg(tiny_sd15, tmp_path, identity=ident, device="cuda", dtype="float16"),
                                analyzer=dlib_analyzer)
    assert seen.calls == 2 and seen.devices == {"cuda"}
    assert all(f.device.type == "cuda" and f.dtype == torch.float16 for f in gen.identity._features)


def test_plusv2_default_encoder_from_the_hub_cache_is_cached_by_commit(tiny_sd15, plus, photo_dirs, dlib_analyzer,
                                                                       tmp_path, monkeypatch):
    """The default encoder (h94/IP-Adapter, subfolder models/image_encoder), found offline in huggingface_hub's
    cache layout, loads as CLIPVisionModelWithProjection; its features are keyed by the snapshot's commit."""
    import huggingface_hub.constants
    from diffusers import StableDiffusionPipeline

    from facechain.adapters import IdentityConfig, get_identity_adapter
    from facechain.adapters.ip_adapter_faceid import encoder_identity, identity_embedding
    from facechain.testing import build_tiny_image_encoder

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--h94--IP-Adapter"
    build_tiny_image_encoder(repo / "snapshots" / commit / "models" / "image_encoder", hidden=48)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("FACECHAIN_HOME", str(tmp_path / "home"))
    assert encoder_identity("h94/IP-Adapter", "models/image_encoder") == f"hub:h94/IP-Adapter:models/image_encoder@{commit}"
    emb = identity_embedding(photo_dirs / "astronaut", dlib_analyzer)
    spec = IdentityConfig(adapter="ip-adapter-faceid-plusv2", photos=photo_dirs / "astronaut", weights=str(plus["weights"]))
    hits = []
    for _ in range(2):
        adapter = get_identity_adapter(spec, "sd15")
        adapter.attach(StableDiffusionPipeline.from_pretrained(str(tiny_sd15), dtype=torch.float32))
        adapter.prepare(emb)
        hits.append((adapter.cache_hit, type(adapter.encoder).__name__))
    assert hits == [(False, "CLIPVisionModelWithProjection"), (True, "NoneType")]  # the second job loads no encoder


@pytest.mark.unit
def test_config_file_image_encoder_is_relative_to_the_config_and_a_hub_id_is_kept(tmp_path):
    from facechain.generate.config import load_generate_config

    (tmp_path / "conf" / "enc").mkdir(parents=True)
    for encoder, want in (("./enc", str(tmp_path / "conf" / "enc")), ("h94/IP-Adapter", "h94/IP-Adapter")):
        (tmp_path / "conf" / "user.yaml").write_text(
            f"base_model: m\noutput_dir: out\nidentity: {{adapter: ip-adapter-faceid-plusv2, photos: p, "
            f"image_encoder: {encoder}, image_encoder_subfolder: models/image_encoder}}\n")
        ident = load_generate_config(tmp_path / "conf" / "user.yaml").identity
        assert (ident.image_encoder, ident.image_encoder_subfolder) == (want, "models/image_encoder")


def test_feedface_reads_its_image_encoder_from_the_subfolder(tiny_sd15, plus_repo, photo_dirs, tmp_path):
    """identity.image_encoder_subfolder reaches FeedFace's encoder too (an untrained adapter: only the loading)."""
    from diffusers import StableDiffusionPipeline

    from facechain.adapters import IdentityConfig, get_identity_adapter
    from facechain.adapters.feedface.model import FeedFace
    from facechain.adapters.feedface.train import RECORD_FILE, WEIGHTS_FILE
    from facechain.io import save_safetensors

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15), dtype=torch.float32)
    adapter = FeedFace.for_unet(pipe.unet, 48)
    save_safetensors(tmp_path / "ff" / WEIGHTS_FILE, adapter.state_dict())
    (tmp_path / "ff" / RECORD_FILE).write_text(json.dumps({"family": "sd15", "image_encoder": "elsewhere", "clip_dim": 48,
                                                           "blocks": adapter.block_names}))
    spec = IdentityConfig(adapter="feedface", photos=photo_dirs / "astronaut", weights=str(tmp_path / "ff"),
                          image_encoder=str(plus_repo), image_encoder_subfolder="models/image_encoder")
    ff = get_identity_adapter(spec, "sd15")
    ff.attach(pipe)
    assert type(ff.encoder).__name__ == "CLIPVisionModelWithProjection" and ff.encoder.config.hidden_size == 48
