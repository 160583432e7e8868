"""RepControlNet on the tiny SD1.5 model: the two-branch layers start at the base model, merge
exactly, train, resume, and merge into a plain diffusers model of the base's shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facechain.errors import InputError, ModelNotFoundError

REPO = Path(__file__).resolve().parents[2]


def _unet(model_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")


def _inputs(unet, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    size = 8
    x = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    t = torch.tensor([10, 700][:batch])
    emb = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    cond = torch.rand(1, 3, size * 8, size * 8, generator=g)
    return x, t, emb, cond


def _perturb(module, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def test_two_branch_layers_start_at_the_base_and_merge_exactly(tiny_sd15):
    from facechain.adapters.repcontrolnet.model import (
        ConditionInjection, make_condition_adapter, merge_unet, parameter_count, rep_layers, wrap_unet,
    )

    base = _unet(tiny_sd15)
    x, t, emb, cond = _inputs(base)
    with torch.no_grad():
        y_base = base(x, t, emb).sample
    shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
    count = parameter_count(base)

    unet = _unet(tiny_sd15)
    names = wrap_unet(unet, 0.5)
    assert len(names) == len(rep_layers(unet)) > 50  # every conv and linear layer
    adapter = make_condition_adapter(unet)
    inj = ConditionInjection(unet)
    with torch.no_grad():
        inj.features = adapter(cond)
        y0 = unet(x, t, emb).sample
    assert torch.allclose(y0, y_base, atol=1e-5)  # the copy at c x W and the zero-initialised adapter: the base model
    # as after training: the modal weights and the adapter moved
    _perturb(unet, 1)
    _perturb(adapter, 2, 0.2)
    with torch.no_grad():
        inj.features = adapter(cond)
        y_fused = unet(x, t, emb).sample
        for layer in rep_layers(unet).values():
            layer.two_branch = True
        y_two = unet(x, t, emb).sample
    assert (y_two - y_base).abs().mean() > 1e-3  # training changed the function
    assert torch.allclose(y_fused, y_two, atol=1e-5)  # the one-product forward is the two-branch function
    merged = merge_unet(unet)
    assert {n: tuple(p.shape) for n, p in merged.named_parameters()} == shapes  # a plain UNet of the base's layout
    assert parameter_count(merged) == count and not rep_layers(merged)
    inj.remove()  # the hook sat on the wrapped conv_in; the merged UNet's conv_in is the plain layer again
    inj = ConditionInjection(merged)
    with torch.no_grad():
        inj.features = adapter(cond)
        y_merged = merged(x, t, emb).sample
    assert torch.allclose(y_merged, y_two, atol=1e-4), (y_merged - y_two).abs().max()
    inj.features = None
    with torch.no_grad():
        assert (merged(x, t, emb).sample - y_two).abs().mean() > 1e-4  # the condition's features matter


@pytest.fixture(scope="module")
def rep_data(tmp_path_factory):
    """Two real photos with OpenPose skeleton maps from poses/ (images/, conditions/, captions)."""
    from facechain import samples
    from facechain.images import read_image
    from facechain.io import save_image, write_jsonl

    root = tmp_path_factory.mktemp("repdata")
    a = samples.astronaut()
    save_image(root / "images" / "a.png", a)
    save_image(root / "images" / "b.png", np.ascontiguousarray(a[:, ::-1]))
    save_image(root / "images" / "lonely.png", a)  # no condition map: left out with a note
    save_image(root / "conditions" / "a.png", read_image(REPO / "poses" / "upper_body_front.png"))
    save_image(root / "conditions" / "b.png", read_image(REPO / "poses" / "upper_body_turn.png"))
    write_jsonl(root / "metadata.jsonl", [{"file_name": "a.png", "text": "a person, upper body"},
                                          {"file_name": "b.png", "text": "a person, turned"}])
    return root


def _cfg(tiny, data, out, **kw):
    from facechain.adapters.repcontrolnet.train import RepControlNetConfig

    base = {"base_model": str(tiny), "data": data, "output_dir": out, "resolution": 64, "max_train_steps": 4, "checkpointing_steps": 2,
                "learning_rate": 1e-3, "mixed_precision": "no", "seed": 3}
    base.update(kw)
    return RepControlNetConfig(**base)


def _fixed_loss(tiny, data, adapter_dir=None) -> float:
    """The loss on a fixed batch (both pairs, 6 timesteps, fixed noise) of the base (None) or a trained adapter."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    from facechain.adapters.repcontrolnet.model import load_modal_state
    from facechain.adapters.repcontrolnet.model import ConditionedUNet
    from facechain.adapters.repcontrolnet.train import ADAPTER_FILE, MODAL_FILE, load_pairs
    from facechain.adapters.training import square_image as _square

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny), safety_checker=None)
    model = ConditionedUNet(pipe.unet, 0.5)
    if adapter_dir is not None:
        load_modal_state(model.unet, load_file(str(Path(adapter_dir) / MODAL_FILE)))
        model.adapter.load_state_dict(load_file(str(Path(adapter_dir) / ADAPTER_FILE)))
    pairs = load_pairs(data)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad():
        for p in pairs:
            px = torch.from_numpy(_square(p.image, 64, "image")).permute(2, 0, 1)[None].float() / 127.5 - 1
            x0 = pipe.vae.encode(px).latent_dist.mean * pipe.vae.config.scaling_factor
            cond = torch.from_numpy(_square(p.condition, 64, "cond")).permute(2, 0, 1)[None].float() / 255
            ids = pipe.tokenizer([p.caption], padding="max_length", max_length=77, return_tensors="pt").input_ids
            emb = pipe.text_encoder(ids)[0]
            for t in (50, 200, 400, 600, 800, 950):
                noise = torch.randn(x0.shape, generator=g)
                noisy = sched.add_noise(x0, noise, torch.tensor([t]))
                pred = model(noisy, torch.tensor([t]), emb, cond)
                losses.append(torch.mean((pred - noise) ** 2).item())
    return float(np.mean(losses))


@pytest.mark.slow
def test_training_reduces_the_loss_resumes_and_merges(tiny_sd15, rep_data, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from facechain.adapters.repcontrolnet.train import ADAPTER_FILE, MODAL_FILE, train_repcontrolnet
    from facechain.cli import main

    out = train_repcontrolnet(_cfg(tiny_sd15, rep_data, tmp_path / "a", max_train_steps=12, checkpointing_steps=6),
                              progress=False)
    record = json.loads((out / "repcontrolnet.json").read_text())
    assert record["condition"] == "openpose" and record["steps"] == 12 and record["family"] == "sd15"
    before, after = _fixed_loss(tiny_sd15, rep_data), _fixed_loss(tiny_sd15, rep_data, out)
    assert after < 0.9 * before, (before, after)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))

    # resume: 2 steps, then on to 4, equals 4 steps in one run
    full = train_repcontrolnet(_cfg(tiny_sd15, rep_data, tmp_path / "full"), progress=False)
    part = tmp_path / "part"
    train_repcontrolnet(_cfg(tiny_sd15, rep_data, part, max_train_steps=2), progress=False)
    with pytest.raises(InputError, match="--resume"):
        train_repcontrolnet(_cfg(tiny_sd15, rep_data, part), progress=False)
    assert main(["train-adapter", "repcontrolnet", "--base-model", str(tiny_sd15), "--data", str(rep_data),
                 "--output-dir", str(part), "--resolution", "64", "--max-train-steps", "4", "--checkpointing-steps", "2",
                 "--learning-rate", "1e-3", "--mixed-precision", "no", "--seed", "3", "--resume"]) == 0
    for name in (MODAL_FILE, ADAPTER_FILE):
        a, b = load_file(str(full / name)), load_file(str(part / name))
        assert set(a) == set(b), name
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst < 1e-6, (name, worst)

    # merge: a plain diffusers model folder with the base UNet's parameter names and shapes
    merged = tmp_path / "merged"
    assert main(["merge-repcontrolnet", str(out), "--base-model", str(tiny_sd15), "--out", str(merged)]) == 0
    base_unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    unet = UNet2DConditionModel.from_pretrained(str(merged), subfolder="unet")
    assert {n: p.shape for n, p in unet.named_parameters()} == {n: p.shape for n, p in base_unet.named_parameters()}
    info = json.loads((merged / "repcontrolnet" / "merge.json").read_text())
    assert info["unet_parameters"] == info["base_unet_parameters"] == sum(p.numel() for p in base_unet.parameters())
    assert (merged / "repcontrolnet" / ADAPTER_FILE).is_file() and not list(merged.rglob("*.bin"))
    # and it is the trained two-branch model: same output for the condition
    from facechain.adapters.repcontrolnet.model import ConditionInjection, load_modal_state, make_condition_adapter, wrap_unet

    two = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    wrap_unet(two, 0.5)
    load_modal_state(two, load_file(str(out / MODAL_FILE)))
    adapter = make_condition_adapter(two)
    adapter.load_state_dict(load_file(str(out / ADAPTER_FILE)))
    x, t, emb, cond = _inputs(unet)
    with torch.no_grad():
        feats = adapter(cond)
        i1, i2 = ConditionInjection(two), ConditionInjection(unet)
        i1.features = i2.features = feats
        assert torch.allclose(unet(x, t, emb).sample, two(x, t, emb).sample, atol=1e-4)


def test_bad_data_and_merges_are_refused(tiny_sd15, tiny_sdxl, rep_data, tmp_path):
    from facechain.adapters.repcontrolnet.merge import merge_repcontrolnet
    from facechain.adapters.repcontrolnet.train import RepControlNetConfig, load_pairs

    pairs = load_pairs(rep_data)
    assert [p.image.name for p in pairs] == ["a.png", "b.png"] and pairs[0].caption == "a person, upper body"
    from facechain.errors import UnsafeCheckpointError
    from facechain.io import save_image

    save_image(tmp_path / "nocond" / "images" / "a.png", np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(InputError, match="no conditions/ folder.*only openpose maps are computed"):
        load_pairs(tmp_path / "nocond", "depth")
    computed = load_pairs(tmp_path / "nocond", "openpose")
    assert [(p.image.name, p.condition) for p in computed] == [("a.png", None)]  # maps to compute from the photos
    # the annotator's weights are pickles: refused without allow_pickle, before any model loads
    from facechain.adapters.repcontrolnet.train import train_repcontrolnet

    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        train_repcontrolnet(RepControlNetConfig(base_model=str(tiny_sd15), data=tmp_path / "nocond",
                                                output_dir=tmp_path / "o1", resolution=64), progress=False)
    with pytest.raises(ModelNotFoundError):  # offline: the weights cannot be had
        train_repcontrolnet(RepControlNetConfig(base_model=str(tiny_sd15), data=tmp_path / "nocond",
                                                output_dir=tmp_path / "o2", resolution=64, allow_pickle=True),
                            progress=False)
    with pytest.raises(InputError, match="no images/ folder"):
        load_pairs(tmp_path)
    with pytest.raises(InputError, match="condition must be one of"):
        RepControlNetConfig(base_model="m", data=tmp_path, output_dir=tmp_path / "o", condition="scribble")
    with pytest.raises(ModelNotFoundError, match="not a finished RepControlNet"):
        merge_repcontrolnet(tmp_path, str(tiny_sd15), tmp_path / "m")
    # an adapter trained on SD1.5 merged into SDXL
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("repcontrolnet_modal.safetensors", "condition_adapter.safetensors"):
        (fake / name).write_bytes(b"")
    (fake / "repcontrolnet.json").write_text(json.dumps({"family": "sd15", "coefficient": 0.5, "condition": "openpose"}))
    with pytest.raises(InputError, match="trained on a sd15 model"):
        merge_repcontrolnet(fake, str(tiny_sdxl), tmp_path / "m2")


@pytest.fixture(scope="module")
def merged_model(tiny_sd15, rep_data, tmp_path_factory):
    from facechain.adapters.repcontrolnet.merge import merge_repcontrolnet
    from facechain.adapters.repcontrolnet.train import train_repcontrolnet

    root = tmp_path_factory.mktemp("merged")
    out = train_repcontrolnet(_cfg(tiny_sd15, rep_data, root / "adapter", learning_rate=1e-2), progress=False)
    return merge_repcontrolnet(out, str(tiny_sd15), root / "model")


@pytest.mark.slow
def test_generation_with_a_merged_model_steers_the_pose_without_a_controlnet(merged_model, tmp_path):
    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles
    from tests.generate.test_generate_detailer import _PhotoSampler, _small_face_photo

    def cfg(**kw):
        base = {"base_model": str(merged_model), "output_dir": tmp_path / "out", "num_candidates": 2, "num_images": 1,
                    "batch_size": 2, "num_inference_steps": 2, "rank_candidates": False, "fusion": "off", "device": "cpu",
                    "dtype": "float32", "detailer": "off", "face_backend": "dlib"}
        base.update(kw)
        return GenerateConfig(**base)

    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")

    def images(gen):
        batch = gen.generate(style, ("", "a person"))
        return np.stack([np.asarray(c.image, np.int16) for c in batch.candidates]), batch

    plain, _ = images(PortraitGenerator(cfg()))  # the merged model used like any base model
    posed_gen = PortraitGenerator(cfg(pose="upper_body_front"))  # auto: the model's own condition encoder
    assert posed_gen.control_pipe is None
    posed, batch = images(posed_gen)
    assert batch.settings["pose_control"] == "repcontrolnet" and batch.settings["controlnets"] == []
    assert np.abs(posed - plain).mean() > 0.5
    turned, _ = images(PortraitGenerator(cfg(pose="upper_body_turn")))
    assert np.abs(turned - posed).mean() > 0.1  # another pose, another picture
    again, _ = images(posed_gen)  # the features are set per style, and removed after it
    assert np.array_equal(again, posed)
    # the face detailer's crops never get the whole picture's pose features
    gen = PortraitGenerator(cfg(pose="upper_body_front", detailer="always", num_candidates=1, batch_size=1, height=128,
                                width=128))  # 16x16 pose features; the detailer redraws at 64 px (8x8)
    gen.control_pipe = _PhotoSampler(gen.pipe, [_small_face_photo()])  # the tiny model draws no face: a photo instead
    detailed = gen.generate(style, ("", "a person"))  # the pose's 8x8 features on a 64 px face crop would raise
    assert detailed.candidates[0].detailer[0]["detailed"] is True
    with pytest.raises(InputError, match="depth needs a ControlNet"):
        cfg(pose="upper_body_front", pose_control="repcontrolnet", depth=True, depth_image=tmp_path / "d.png")


def test_pose_control_repcontrolnet_needs_a_merged_model(tiny_sd15, tmp_path):
    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator

    with pytest.raises(InputError, match="not a model merged with an openpose RepControlNet"):
        PortraitGenerator(GenerateConfig(base_model=str(tiny_sd15), output_dir=tmp_path / "o", pose="upper_body_front",
                                         pose_control="repcontrolnet", num_inference_steps=2, device="cpu",
                                         dtype="float32", rank_candidates=False, fusion="off"))


@pytest.mark.slow
def test_sdxl_trains_merges_and_generates(tiny_sdxl, rep_data, tmp_path):
    """The same on the SDXL architecture: its added conditions (pooled text, time ids) in training, a
    merged folder of the base's shapes, and pose control in generation."""
    from diffusers import UNet2DConditionModel

    from facechain.adapters.repcontrolnet.merge import merge_repcontrolnet
    from facechain.adapters.repcontrolnet.train import train_repcontrolnet
    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    out = train_repcontrolnet(_cfg(tiny_sdxl, rep_data, tmp_path / "a", max_train_steps=2, learning_rate=1e-2),
                              progress=False)
    assert json.loads((out / "repcontrolnet.json").read_text())["family"] == "sdxl"
    merged = merge_repcontrolnet(out, str(tiny_sdxl), tmp_path / "model")
    base = UNet2DConditionModel.from_pretrained(str(tiny_sdxl), subfolder="unet")
    unet = UNet2DConditionModel.from_pretrained(str(merged), subfolder="unet")
    assert {n: p.shape for n, p in unet.named_parameters()} == {n: p.shape for n, p in base.named_parameters()}
    cfg = {"base_model": str(merged), "output_dir": tmp_path / "o", "num_candidates": 1, "num_images": 1, "num_inference_steps": 2,
               "rank_candidates": False, "fusion": "off", "device": "cpu", "dtype": "float32", "detailer": "off"}
    style = next(s for s in load_styles([DEFAULT_STYLES_DIR]) if s.family == "sdxl" and not s.has_lora)
    posed = PortraitGenerator(GenerateConfig(pose="upper_body_front", **cfg)).generate(style, ("", "a person"))
    plain = PortraitGenerator(GenerateConfig(**cfg)).generate(style, ("", "a person"))
    assert posed.settings["pose_control"] == "repcontrolnet"
    diff = np.abs(np.asarray(posed.candidates[0].image, np.int16) - np.asarray(plain.candidates[0].image, np.int16))
    assert diff.mean() > 0.5
