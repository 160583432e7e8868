"""Fixed templates on the tiny SD1.5 model with a real 3-face template composed from sample photos
(dlib finds the faces): each face edited with its person's LoRA, everything else bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facechain.errors import InputError


@pytest.fixture(scope="module")
def template(tmp_path_factory, sample_photos):
    """Three people side by side (the astronaut, her mirror image, Tom Hanks), 768 x 256."""
    from facechain.io import save_image

    return save_image(tmp_path_factory.mktemp("tpl") / "team.png", sample_photos.three_faces())


@pytest.fixture(scope="module")
def people(tiny_sd15, tmp_path_factory, processed_astronaut):
    """Three face LoRAs (random, different) for the tiny model; the first records its base model, and has a
    processed folder (the astronaut) for the prompt, fusion and identity scores."""
    from facechain.config import save_config
    from facechain.testing import random_lora
    from facechain.train import TrainConfig

    root = tmp_path_factory.mktemp("people")
    loras = [random_lora(tiny_sd15, root / f"lora{i}", seed=10 + i) for i in range(3)]
    save_config(TrainConfig(base_model=str(tiny_sd15), train_data_dir=str(root / "processed"),
                            output_dir=str(loras[0])), loras[0] / "train_config.json")
    return {"loras": loras, "processed": processed_astronaut}


@pytest.fixture(scope="module")
def controlnets(tiny_sd15, tmp_path_factory):
    """A tiny ControlNet (diffusers' from_unet), used for both controls."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    path = tmp_path_factory.mktemp("cn") / "cn"
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16)).save_pretrained(path)
    return path


def _cfg(template, folks, out, **kw):
    from facechain.template import PersonSpec, TemplateConfig

    persons = [PersonSpec(lora_dir=folks["loras"][0], processed_dir=folks["processed"]),
               PersonSpec(lora_dir=folks["loras"][1]), PersonSpec(lora_dir=folks["loras"][2])]
    base = {"template": template, "output_dir": out, "people": persons, "num_inference_steps": 4, "strength": 0.65,
                "device": "cpu", "dtype": "float32", "face_backend": "dlib", "fusion": "landmark", "controls": []}
    base.update(kw)
    return TemplateConfig(**base)


def test_faces_are_listed_left_to_right_and_counts_checked(template, dlib_analyzer, tmp_path, people):
    from facechain.cli import main
    from facechain.template import PersonSpec, list_template_faces
    from facechain.template.job import assign

    image, faces, preview = list_template_faces(template, dlib_analyzer)
    assert len(faces) == 3 and [f.center[0] for f in faces] == sorted(f.center[0] for f in faces)
    assert preview.size == (image.shape[1], image.shape[0])
    assert main(["template", str(template), "--list-faces", "--face-backend", "dlib", "--output-dir", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "faces_preview.png").is_file()
    two = _cfg(template, people, tmp_path / "o", people=[PersonSpec(lora_dir=people["loras"][0]),
                                                         PersonSpec(lora_dir=people["loras"][1])])
    with pytest.raises(InputError, match=r"2 people for 3 faces .* 0: box .*1: box .*2: box .*--person LORA_DIR@N"):
        assign(two, faces)
    with pytest.raises(InputError, match="face index 5 does not exist: the template has 3 faces"):
        assign(_cfg(template, people, tmp_path / "o", people=[PersonSpec(lora_dir=people["loras"][0], face=5)]), faces)
    assert assign(_cfg(template, people, tmp_path / "o", people=[PersonSpec(lora_dir=people["loras"][0], face=2)]),
                  faces) == [(0, 2)]
    with pytest.raises(InputError, match="same template face"):
        _cfg(template, people, tmp_path / "o", people=[PersonSpec(lora_dir=people["loras"][0], face=1),
                                                       PersonSpec(lora_dir=people["loras"][1], face=1)])
    with pytest.raises(InputError, match="under min_face_size 500 px: too small to edit"):
        assign(_cfg(template, people, tmp_path / "o", min_face_size=500), faces)
    (tmp_path / "notes.png").write_text("not a photo")
    from facechain.template import run_template

    with pytest.raises(InputError, match="template photo"):
        run_template(_cfg(tmp_path / "notes.png", people, tmp_path / "o"), analyzer=dlib_analyzer)
    from facechain.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="canny ControlNet .* could not be loaded"):  # before any face is edited
        run_template(_cfg(template, people, tmp_path / "o", controls=["canny"], controlnet_canny=str(tmp_path / "no")),
                     analyzer=dlib_analyzer)
    assert not (tmp_path / "o" / "result.png").exists()
    with pytest.raises(InputError, match="controls must be a list of openpose and canny"):
        _cfg(template, people, tmp_path / "o", controls=["depth"])


@pytest.mark.slow
def test_three_face_template_from_a_config_file(template, people, controlnets, tmp_path):
    """run_inference's config with mode: template: each face edited with its person's LoRA, every pixel
    outside the faces' masks the template's, bit for bit; crops, masks, manifest and contact sheet."""
    from PIL import Image

    from facechain.cli import main

    conf = tmp_path / "conf"
    conf.mkdir()
    lines = ["mode: template", f"template: {template}", "output_dir: ../out", "num_inference_steps: 4", "device: cpu",
             "dtype: float32", "face_backend: dlib", "fusion: landmark", "controls: [openpose, canny]",
             f"controlnet_openpose: {controlnets}", f"controlnet_canny: {controlnets}", "people:",
             f"  - {{lora_dir: {people['loras'][0]}, processed_dir: {people['processed']}}}",
             f"  - {{lora_dir: {people['loras'][1]}}}", f"  - {{lora_dir: {people['loras'][2]}}}"]
    (conf / "team.yaml").write_text("\n".join(lines) + "\n")
    assert main(["generate", "--config", str(conf / "team.yaml")]) == 0  # run_inference.py's entry point
    out = tmp_path / "out"
    before = np.asarray(Image.open(template).convert("RGB")).astype(np.int16)
    after = np.asarray(Image.open(out / "result.png").convert("RGB")).astype(np.int16)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["person"] for f in manifest["faces"]] == [0, 1, 2] and manifest["failed"] == []
    assert manifest["base_model"]["path"].endswith("sd15")  # from person 0's train_config.json
    touched = np.zeros(before.shape[:2], bool)
    for face in manifest["faces"]:
        x0, y0, side = face["crop"]
        mask = np.asarray(Image.open(out / "faces" / f"face_{face['index']}_mask.png")) > 0
        region = np.zeros_like(touched)
        region[y0:y0 + side, x0:x0 + side] = mask
        assert np.abs(after[region] - before[region]).mean() > 1.0, face["index"]  # the face was re-drawn
        touched |= region
        assert (out / "faces" / f"face_{face['index']}_before.png").is_file()
    assert np.array_equal(after[~touched], before[~touched])  # nothing else moved
    assert manifest["faces"][0]["prompt"].startswith("<fcsks>") and "identity_before" in manifest["faces"][0]
    assert (out / "contact_sheet.png").is_file()
    # the controls: the template face's landmarks as OpenPose face keypoints, the crop's edges without the face
    assert manifest["faces"][1]["controls"] == {"openpose": 1.0, "canny": 0.2}
    assert manifest["settings"]["memory"]["offload"] == "none"  # on the CPU: the models moved as before
    pose = np.asarray(Image.open(out / "faces" / "face_1_openpose.png"))
    canny = np.asarray(Image.open(out / "faces" / "face_1_canny.png"))
    mask = np.asarray(Image.open(out / "faces" / "face_1_mask.png")) > 0
    assert 60 <= (pose[..., 0] > 0).sum() // 4 and not canny[mask].any() and canny[~mask].any()


@pytest.mark.slow
def test_one_persons_failure_keeps_the_others(template, people, tmp_path, dlib_analyzer):
    from facechain.template import PersonSpec, run_template

    cfg = _cfg(template, people, tmp_path / "out", fusion="off",
               people=[PersonSpec(lora_dir=people["loras"][0]), PersonSpec(lora_dir=tmp_path / "missing"),
                       PersonSpec(lora_dir=people["loras"][2])])
    result = run_template(cfg, analyzer=dlib_analyzer)
    assert result.exit_code == 1 and [f.item for f in result.failures] == ["person 1 -> face 1"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "error" in manifest["faces"][1] and "crop" in manifest["faces"][0] and "crop" in manifest["faces"][2]
    assert not (tmp_path / "out" / "faces" / "face_1_after.png").exists()


@pytest.mark.slow
def test_identity_adapters_as_the_peoples_identity(template, people, tiny_sd15, tmp_path, dlib_analyzer, sample_photos):
    """Each person's own photos through one IP-Adapter-FaceID (no LoRA for one of them): faces edited with
    their identity; mixing adapter and non-adapter people, or two adapters, is refused."""
    from facechain.adapters import IdentityConfig
    from facechain.io import save_image
    from facechain.template import PersonSpec, run_template
    from facechain.testing import build_tiny_faceid_adapter

    weights = build_tiny_faceid_adapter(tiny_sd15, tmp_path / "faceid.safetensors", seed=3)
    save_image(tmp_path / "hanks" / "1.png", sample_photos.other_person())

    def ident(photos, w=weights):
        return IdentityConfig(adapter="ip-adapter-faceid", photos=photos, weights=str(w))

    persons = [PersonSpec(lora_dir=people["loras"][0], processed_dir=people["processed"], face=0,
                          identity=ident(people["processed"])),
               PersonSpec(identity=ident(tmp_path / "hanks"), face=2)]
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    seen = []  # the identity masks every IP attention layer receives in the harmonisation pass
    real_call = IPAdapterAttnProcessor2_0.__call__

    def record(self, attn, hidden_states, *args, ip_adapter_masks=None, **kw):
        if ip_adapter_masks is not None:
            seen.append(ip_adapter_masks[0].detach().clone())
        return real_call(self, attn, hidden_states, *args, ip_adapter_masks=ip_adapter_masks, **kw)

    IPAdapterAttnProcessor2_0.__call__ = record
    try:
        result = run_template(_cfg(template, people, tmp_path / "out", people=persons, base_model=str(tiny_sd15)),
                              analyzer=dlib_analyzer)
    finally:
        IPAdapterAttnProcessor2_0.__call__ = real_call
    assert result.exit_code == 0
    # MGMICA: one pass with both identities, each masked to its own face; the masks are disjoint
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["harmonization"]["ran"] and manifest["harmonization"]["faces"] == [0, 2]
    assert seen and all(m.shape[:2] == (1, 2) for m in seen)
    m = seen[0][0]
    assert float((m[0] * m[1]).max()) == 0.0 and float(m[0].max()) == 1.0 and float(m[1].max()) == 1.0
    from PIL import Image

    a = np.asarray(Image.open(tmp_path / "out" / "faces" / "identity_mask_0.png")) > 0
    b = np.asarray(Image.open(tmp_path / "out" / "faces" / "identity_mask_2.png")) > 0
    cx0, cy0 = (np.array(manifest["faces"][0]["bbox"][:2]) + manifest["faces"][0]["bbox"][2:]) / 2
    cx2, cy2 = (np.array(manifest["faces"][2]["bbox"][:2]) + manifest["faces"][2]["bbox"][2:]) / 2
    assert not (a & b).any() and a[int(cy0), int(cx0)] and b[int(cy2), int(cx2)] and not a[int(cy2), int(cx2)]
    assert manifest["faces"][0]["identity"]["photos"] == ["000.png"] and manifest["faces"][1]["person"] is None
    assert manifest["faces"][2]["identity"]["photos"] == ["1.png"] and manifest["faces"][2]["lora_dir"] is None
    assert not manifest["faces"][2]["prompt"].startswith("<fcsks>")
    with pytest.raises(InputError, match="some people have an identity adapter and some do not"):
        _cfg(template, people, tmp_path / "o", people=[persons[0], PersonSpec(lora_dir=people["loras"][1], face=1)])
    with pytest.raises(InputError, match="different identity adapters"):
        _cfg(template, people, tmp_path / "o", people=[persons[0], PersonSpec(identity=ident(tmp_path / "hanks",
                                                                                            tmp_path / "other.st"), face=2)])
    with pytest.raises(InputError, match="needs a face LoRA .* or an identity adapter"):
        PersonSpec()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_fast_mode_and_sdxl(template, family, tiny_sd15, tiny_sdxl, tmp_path, dlib_analyzer):
    """fast: LCM-LoRA (a local file here) + LCMScheduler in every pass; SDXL runs the same job."""
    from PIL import Image

    from facechain.template import PersonSpec, TemplateConfig, run_template
    from facechain.testing import random_lora

    model = tiny_sd15 if family == "sd15" else tiny_sdxl
    loras = [random_lora(model, tmp_path / f"l{i}", seed=30 + i) for i in range(3)]
    lcm = random_lora(model, tmp_path / "lcm", seed=9)
    cfg = TemplateConfig(template=template, output_dir=tmp_path / "out", people=[PersonSpec(lora_dir=p) for p in loras],
                         base_model=str(model), fast=True, lcm_lora=str(lcm), strength=0.65, device="cpu",
                         dtype="float32", face_backend="dlib", fusion="off", controls=[])
    result = run_template(cfg, analyzer=dlib_analyzer)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert result.exit_code == 0 and manifest["settings"]["scheduler"] == "LCMScheduler"
    assert manifest["settings"]["steps"] == 8 and manifest["settings"]["guidance_scale"] == 1.5
    before = np.asarray(Image.open(template).convert("RGB")).astype(int)
    after = np.asarray(Image.open(result.result).convert("RGB")).astype(int)
    for face in manifest["faces"]:
        x0, y0, side = face["crop"]
        assert np.abs(after[y0:y0 + side, x0:x0 + side] - before[y0:y0 + side, x0:x0 + side]).mean() > 0.5
    with pytest.raises(InputError, match="fusion: diir does not run with fast: true"):
        TemplateConfig(template=template, output_dir=tmp_path / "o", people=cfg.people, fast=True, fusion="diir")
