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


def test_missing_local_path():
    with pytest.raises(ModelNotFoundError, match="does not exist on disk"):
        resolve_model("./no/such/model")


def test_hub_id_offline_is_one_quick_error():
    t = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as exc:
        resolve_model("someone/some-model", "v1.0")
    msg = str(exc.value)
    assert "someone/some-model" in msg and "huggingface" in msg and "modelscope" in msg and "make-tiny-model" in msg
    assert time.perf_counter() - t < 20


def test_pickle_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not loaded")
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        resolve_model(ckpt)
    with pytest.raises(UnsafeCheckpointError):
        resolve_weights_file(ckpt)


def test_not_a_model_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"in_channels": 3, "addition_embed_type": "image"}))
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(InputError, match="neither an SD1.5-family nor an SDXL"):
        resolve_model(tmp_path)


def test_checkpoint_key_families():
    assert family_of_checkpoint_keys(["model.diffusion_model.x", "conditioner.embedders.1.model.y"], "f") == "sdxl"
    assert family_of_checkpoint_keys(["model.diffusion_model.x", "cond_stage_model.transformer.z"], "f") == "sd15"
    with pytest.raises(InputError, match="LoRA"):
        family_of_checkpoint_keys(["lora_unet_down.lora_up.weight"], "f")


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
