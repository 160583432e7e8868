"""Model resolution: folders, families from config, offline errors, pickle refusal."""

import json
import time

import pytest

from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError
from facechain.models import family_of_checkpoint_keys, resolve_model, resolve_weights_file


def test_family_read_from_config(tiny_sd15, tiny_sdxl, tmp_path):
    assert resolve_model(tiny_sd15).family == "sd15"
    assert resolve_model(tiny_sdxl).family == "sdxl"
    # a folder named like SDXL is still read from its config
    import shutil

    named = tmp_path / "stable-diffusion-xl-base-1.0"
    shutil.copytree(tiny_sd15, named)
    r = resolve_model(named)
    assert r.family == "sd15" and r.format == "diffusers"


def test_subfolder(tiny_sd15, tmp_path):
    import shutil

    shutil.copytree(tiny_sd15, tmp_path / "repo" / "film" / "film")
    assert resolve_model(tmp_path / "repo", None, "film/film").path == tmp_path / "repo" / "film" / "film"
    with pytest.raises(ModelNotFoundError, match="sub path 'nope'"):
        resolve_model(tmp_path / "repo", None, "nope")


@pytest.mark.unit
def test_missing_local_path():
    with pytest.raises(ModelNotFoundError, match="does not exist on disk"):
        resolve_model("./no/such/model")


@pytest.mark.unit
def test_hub_id_offline_is_one_quick_error():
    t = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model("someone/some-model", "v1.0")
    msg = str(exc.value)
    assert "someone/some-model" in msg and "huggingface" in msg and "modelscope" in msg and "make-tiny-model" in msg
    assert time.perf_counter() - t < 20


@pytest.mark.unit
def test_pickle_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not loaded")
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        resolve_model(ckpt)
    with pytest.raises(UnsafeCheckpointError):
        resolve_weights_file(ckpt)


@pytest.mark.unit
def test_not_a_model_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"in_channels": 3, "addition_embed_type": "image"}))
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(InputError, match="neither an SD1.5-family nor an SDXL"):
        resolve_model(tmp_path)


@pytest.mark.unit
def test_checkpoint_key_families():
    assert family_of_checkpoint_keys(["model.diffusion_model.x", "conditioner.embedders.1.model.y"], "f") == "sdxl"
    assert family_of_checkpoint_keys(["model.diffusion_model.x", "cond_stage_model.transformer.z"], "f") == "sd15"
    with pytest.raises(InputError, match="LoRA"):
        family_of_checkpoint_keys(["lora_unet_down.lora_up.weight"], "f")


@pytest.mark.unit
def test_unreachable_hubs_take_the_socket_probe_path(monkeypatch):
    """With the offline flags off, the hub clients are not left to their retry loops: one TCP probe
    per hub (here against a closed local port) decides, and the error names both hubs."""
    import socket

    import facechain.models as models

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", f"127.0.0.1:{port}")
    probed = []
    real = socket.create_connection

    def spy(address, *args, **kwargs):
        probed.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"(?s)'nobody/no-such-model' could not be found.*huggingface: .*modelscope: "):
        models.resolve_model("nobody/no-such-model")
    assert time.monotonic() - t0 < 10
    assert probed == [("127.0.0.1", port), ("127.0.0.1", port)]  # one probe per hub, nothing else dialled


# --------------------------------------------------------------------------- real folder layouts (issue 23)


def _unet_weights(model) -> dict:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict, atol=0.0) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k].to(a[k].dtype), atol=atol) for k in a)


def test_fp16_variant_only_folder_loads(tiny_sd15, tmp_path):
    """A folder saved with ``variant="fp16"`` holds only ``*.fp16.safetensors``: it loads in float16 and, being the
    only copy, in float32 too (upcast), with the weights of that save."""
    import torch
    from diffusers import StableDiffusionPipeline

    from facechain.models import load_pipeline

    src = StableDiffusionPipeline.from_pretrained(str(tiny_sd15), safety_checker=None, requires_safety_checker=False)
    src.to(torch.float16).save_pretrained(tmp_path / "fp16", variant="fp16")
    names = sorted(p.name for p in (tmp_path / "fp16" / "unet").iterdir())
    assert names == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    want = _unet_weights(src.unet.to(torch.float16))
    for dtype in (torch.float16, torch.float32):
        pipe = load_pipeline(resolve_model(tmp_path / "fp16"), torch_dtype=dtype)
        assert pipe.unet.dtype == dtype and pipe.text_encoder.dtype == dtype
        assert _same(want, _unet_weights(pipe.unet))
    with pytest.raises(InputError, match=r"(?s)component 'text_encoder'.*variant 'none'.*variant: auto"):
        load_pipeline(resolve_model(tmp_path / "fp16"), variant="none")


def test_variant_picked_per_component(tiny_sd15, tmp_path):
    """A folder whose UNet has an fp16 copy (here: other weights, so the pick is visible) and whose other
    components have only full-precision files: float16 loads the UNet's fp16 files, float32 the full ones."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    from facechain.models import load_pipeline
    from facechain.testing import build_tiny_sd15

    folder = tmp_path / "mixed"
    shutil.copytree(tiny_sd15, folder)
    other = build_tiny_sd15(tmp_path / "seed1", seed=1)
    UNet2DConditionModel.from_pretrained(str(other), subfolder="unet").to(torch.float16).save_pretrained(
        folder / "unet", variant="fp16")
    full = _unet_weights(UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet"))
    half = _unet_weights(UNet2DConditionModel.from_pretrained(str(other), subfolder="unet").to(torch.float16))
    assert not _same(full, half, atol=1e-3)
    assert _same(half, _unet_weights(load_pipeline(resolve_model(folder), torch_dtype=torch.float16).unet))
    assert _same(full, _unet_weights(load_pipeline(resolve_model(folder), torch_dtype=torch.float32).unet))
    # variant none keeps the full-precision UNet in float16; fp16 asks for files the VAE lacks
    assert _same(full, _unet_weights(load_pipeline(resolve_model(folder), torch_dtype=torch.float16, variant="none").unet),
                 atol=1e-2)
    with pytest.raises(InputError, match="component 'text_encoder'.*variant 'fp16'"):
        load_pipeline(resolve_model(folder), torch_dtype=torch.float16, variant="fp16")
    # an fp16 pickle beside the text encoder's full safetensors (diffusers alone, given variant="fp16", would look
    # for model.fp16.safetensors there): the safetensors file loads, the pickle is never read
    from transformers import CLIPTextModel

    text = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder")
    torch.save({k: torch.zeros_like(v) for k, v in text.state_dict().items()}, folder / "text_encoder" / "pytorch_model.fp16.bin")
    pipe = load_pipeline(resolve_model(folder), torch_dtype=torch.float16)
    assert _same(half, _unet_weights(pipe.unet))
    assert _same(_unet_weights(text), _unet_weights(pipe.text_encoder), atol=1e-2)


def test_pickle_only_safety_checker_is_not_a_reason_to_refuse(tiny_sd15, tmp_path):
    """2023 SD1.5 conversions ship ``safety_checker/pytorch_model.bin`` only; generation never loads it, so the
    folder loads without --allow-pickle. A pickle-only component that is loaded is still refused."""
    import shutil

    import torch

    from facechain.models import load_pipeline

    folder = tmp_path / "sd15"
    shutil.copytree(tiny_sd15, folder)
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "config.json").write_text(json.dumps({"architectures": ["StableDiffusionSafetyChecker"]}))
    torch.save({"vision_model.embeddings.class_embedding": torch.zeros(4)}, folder / "safety_checker" / "pytorch_model.bin")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = load_pipeline(resolve_model(folder))
    assert pipe.safety_checker is None and pipe.unet is not None
    for f in (folder / "vae").glob("*.safetensors"):  # now a loaded component is pickle-only
        torch.save({}, folder / "vae" / "diffusion_pytorch_model.bin")
        f.unlink()
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)component 'vae'.*only as pickle files.*--allow-pickle"):
        resolve_model(folder)


def _tiny_controlnet(tiny_sd15):
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))


def test_controlnet_laid_out_as_thibaud_sdxl_openpose(tiny_sd15, tmp_path):
    """thibaud/controlnet-openpose-sdxl-1.0's layout: config.json, the diffusers weights only as a pickle
    (diffusion_pytorch_model.bin) and the safetensors copy as a single file (OpenPoseXL2.safetensors). The folder
    loads the safetensors file without --allow-pickle; so does naming the file; pickle-only says --allow-pickle."""
    import torch
    from safetensors.torch import save_file

    from facechain.models import load_controlnet

    net = _tiny_controlnet(tiny_sd15)
    net.save_pretrained(tmp_path / "ref")
    folder = tmp_path / "thibaud"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save(sd, folder / "diffusion_pytorch_model.bin")
    save_file(sd, str(folder / "OpenPoseXL2.safetensors"))
    want = _unet_weights(net)
    for ref in (folder, folder / "OpenPoseXL2.safetensors"):
        got = load_controlnet(str(ref), dtype=torch.float32, what="openpose")
        assert _same(want, _unet_weights(got))
    assert load_controlnet(str(folder), dtype=torch.float16, what="openpose").dtype == torch.float16
    # a second single file (thibaud's repo also holds control-lora-openposeXL2-rank256.safetensors): name one
    save_file({"lora": torch.zeros(1)}, str(folder / "control-lora-openposeXL2-rank256.safetensors"))
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)only as pickle.*--allow-pickle.*OWNER/NAME/OpenPoseXL2.safetensors"):
        load_controlnet(str(folder), dtype=torch.float32, what="openpose")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(UnsafeCheckpointError, match=r"openpose ControlNet .*diffusion_pytorch_model.bin.*--allow-pickle"):
        load_controlnet(str(folder), dtype=torch.float32, what="openpose")
    assert _same(want, _unet_weights(load_controlnet(str(folder), dtype=torch.float32, what="openpose", allow_pickle=True)))


def test_controlnet_and_image_encoder_take_the_variant(tiny_sd15, tmp_path):
    import torch
    from transformers import CLIPVisionModelWithProjection

    from facechain.models import load_controlnet, load_image_encoder
    from facechain.testing import build_tiny_image_encoder

    _tiny_controlnet(tiny_sd15).to(torch.float16).save_pretrained(tmp_path / "cn", variant="fp16")
    assert load_controlnet(str(tmp_path / "cn"), dtype=torch.float32, what="depth").dtype == torch.float32
    build_tiny_image_encoder(tmp_path / "enc_src")
    CLIPVisionModelWithProjection.from_pretrained(str(tmp_path / "enc_src")).to(torch.float16).save_pretrained(
        tmp_path / "enc", variant="fp16")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.fp16.safetensors"]
    assert load_image_encoder(str(tmp_path / "enc"), dtype=torch.float16).dtype == torch.float16
    with pytest.raises(InputError, match="variant 'none'"):
        load_image_encoder(str(tmp_path / "enc"), dtype=torch.float32, variant="none")


@pytest.mark.unit
def test_original_layout_controlnet_file_without_config_is_one_clear_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    from facechain.models import load_controlnet

    save_file({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}, str(tmp_path / "cn.safetensors"))
    with pytest.raises(ModelNotFoundError, match=r"depth ControlNet .*single-file checkpoint .*cn.safetensors.*config.json"):
        load_controlnet(str(tmp_path / "cn.safetensors"), dtype=torch.float32, what="depth")
    (tmp_path / "cn.ckpt").write_bytes(b"never unpickled")
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        load_controlnet(str(tmp_path / "cn.ckpt"), dtype=torch.float32, what="depth")
