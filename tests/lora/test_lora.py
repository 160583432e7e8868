"""facechain.lora: one reader for every LoRA key layout, on a LoRA made with peft on the tiny UNet."""

from __future__ import annotations

import pytest
import torch

from facechain import lora as lora_io
from facechain.errors import InputError
from facechain.io import save_safetensors
from facechain.testing import random_lora


@pytest.fixture(scope="module")
def made(tiny_sd15, tmp_path_factory):
    folder = random_lora(tiny_sd15, tmp_path_factory.mktemp("lora"), seed=3)
    lora, scale = lora_io.read_lora_file(folder / lora_io.LORA_FILE, "sd15")
    return folder, lora, scale


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float())


def test_every_key_layout_is_detected_and_read_back(made, tmp_path):
    folder, lora, scale = made
    from safetensors.torch import load_file

    assert lora_io.key_format(load_file(str(folder / lora_io.LORA_FILE))) == "diffusers" and scale == 1.0
    unet = lora["unet"]
    assert unet and all(".lora_A." in k or ".lora_B." in k for k in unet)
    # kohya keys (A1111, ComfyUI), with alpha = rank
    kohya = lora_io.to_kohya({"unet": unet}, "sd15", alpha=4.0)
    assert lora_io.key_format(kohya) == "kohya"
    save_safetensors(tmp_path / "k.safetensors", kohya)
    back, kscale = lora_io.read_lora_file(tmp_path / "k.safetensors", "sd15")
    _same(back["unet"], unet)
    assert kscale == pytest.approx(1.0)
    # a bare peft state dict of the UNet
    save_safetensors(tmp_path / "p.safetensors", unet)
    assert lora_io.key_format(unet) == "peft"
    _same(lora_io.read_lora_file(tmp_path / "p.safetensors", "sd15")[0]["unet"], unet)
    # diffusers' older attention-processor layout (FaceChain's .bin files)
    legacy = {}
    for k, v in unet.items():
        module, kind = k.rsplit(".lora_", 1)
        module, proj = module.rsplit(".", 1) if not module.endswith("to_out.0") else (module[:-len(".to_out.0")], "to_out")
        legacy[f"{module}.processor.{proj}_lora.{'down' if kind.startswith('A') else 'up'}.weight"] = v
    assert lora_io.key_format(legacy) == "attn_processor"
    save_safetensors(tmp_path / "l.safetensors", legacy)
    _same(lora_io.read_lora_file(tmp_path / "l.safetensors", "sd15")[0]["unet"], unet)


@pytest.mark.unit
def test_an_unknown_layout_is_a_clear_error(tmp_path):
    tensors = {"model.layer.weight": torch.zeros(2, 2)}
    assert lora_io.key_format(tensors) == "unknown"
    save_safetensors(tmp_path / "x.safetensors", tensors)
    with pytest.raises(InputError, match="in no LoRA layout facechain reads"):
        lora_io.read_lora_file(tmp_path / "x.safetensors", "sd15")


@pytest.mark.unit
@pytest.mark.parametrize("path, want", [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.0.resnets.1.conv1.weight", "input_blocks.2.0.in_layers.2.weight"),
    ("down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.0.op.weight"),
    ("mid_block.resnets.1.time_emb_proj.bias", "middle_block.2.emb_layers.1.bias"),
    ("mid_block.attentions.0.proj_in.weight", "middle_block.1.proj_in.weight"),
    ("up_blocks.1.attentions.2.proj_out.weight", "output_blocks.5.1.proj_out.weight"),
    ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),
    ("conv_in.weight", "input_blocks.0.0.weight"),
])
def test_sgm_names_follow_the_original_unet(path, want):
    """SD1.5's layout (layers_per_block 2; up block 0 has no attention): the names kohya files and
    single-file checkpoints use."""
    assert lora_io.sgm_unet_path(path, 2, up_has_attn=[False, True, True, True]) == want
