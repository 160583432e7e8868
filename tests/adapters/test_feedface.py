"""FeedFace on the tiny SD1.5 model, trained on a real processed photo folder (dlib), with a tiny
CLIP image encoder: zero-initialised adapters leave the base output bit for bit, training lowers
the loss, resume equals an uninterrupted run, and the trained adapter is an identity source."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facechain.errors import InputError, ModelNotFoundError


@pytest.fixture(scope="module")
def processed(processed_person):
    """Three processed photos of one person (preprocessing writes NNN.png, captions and masks/)."""
    return processed_person


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from facechain.testing import build_tiny_image_encoder

    return build_tiny_image_encoder(tmp_path_factory.mktemp("ffenc") / "clip", hidden=48)


def _cfg(tiny, data, encoder, out, **kw):
    from facechain.adapters.feedface.train import FeedFaceConfig

    base = {"base_model": str(tiny), "data": data, "output_dir": out, "image_encoder": str(encoder), "resolution": 64,
                "max_train_steps": 4, "checkpointing_steps": 2, "learning_rate": 1e-3, "mixed_precision": "no", "seed": 5,
                "face_backend": "dlib"}
    base.update(kw)
    return FeedFaceConfig(**base)


def test_preprocessing_writes_the_head_masks(processed):
    from PIL import Image

    masks = sorted((processed / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["000.png", "001.png", "002.png"]
    m = np.asarray(Image.open(masks[0]))
    assert set(np.unique(m)) <= {0, 255} and 0.1 < (m > 0).mean() < 0.9


def test_an_untrained_adapter_leaves_the_base_output_bit_for_bit(tiny_sd15):
    from diffusers import UNet2DConditionModel

    from facechain.adapters.feedface.model import FeedFace, FeedFaceHooks, transformer_blocks

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    emb = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([5, 500])
    with torch.no_grad():
        base = unet(x, t, emb).sample
        adapter = FeedFace.for_unet(unet, 48)
        assert len(adapter.blocks) == len(transformer_blocks(unet)) == 16  # one per transformer block
        hooks = FeedFaceHooks(unet, adapter, multiplier=0.8)
        hooks.context = adapter.context(torch.randn(2, 34, 48, generator=g))  # two faces' tokens
        assert torch.equal(unet(x, t, emb).sample, base)
        for block in adapter.blocks.values():  # as after training: the output layers moved
            block.out.weight.normal_(0, 0.05, generator=g)
        assert (unet(x, t, emb).sample - base).abs().mean() > 1e-4
        hooks.context = None
        assert torch.equal(unet(x, t, emb).sample, base)  # no condition: the hooks pass through


def _fixed_loss(tiny, processed, encoder, dlib_analyzer, out=None) -> float:
    """Noise-prediction loss on a fixed set (each photo, 6 timesteps, its own face as condition)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    from facechain.adapters.feedface.model import FeedFace, FeedFaceHooks, encode_faces
    from facechain.adapters.feedface.train import face_crops, load_samples
    from facechain.adapters.training import square_image
    from facechain.models import load_image_encoder

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny), safety_checker=None)
    samples = load_samples(processed)
    tokens = encode_faces(load_image_encoder(str(encoder), dtype=torch.float32), face_crops(samples, dlib_analyzer))
    adapter = FeedFace.for_unet(pipe.unet, 48)
    if out is not None:
        adapter.load_state_dict(load_file(str(out / "feedface.safetensors")))
    hooks = FeedFaceHooks(pipe.unet, adapter, multiplier=1.0)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad():
        for i, s in enumerate(samples):
            px = torch.from_numpy(square_image(s.image, 64, "x")).permute(2, 0, 1)[None].float() / 127.5 - 1
            x0 = pipe.vae.encode(px).latent_dist.mean * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer([s.caption], padding="max_length", max_length=77, return_tensors="pt").input_ids
            emb = pipe.text_encoder(ids)[0]
            hooks.context = adapter.context(tokens[i:i + 1])
            for t in (50, 200, 400, 600, 800, 950):
                noise = torch.randn(x0.shape, generator=g)
                pred = pipe.unet(sched.add_noise(x0, noise, torch.tensor([t])), torch.tensor([t]), emb).sample
                losses.append(torch.mean((pred - noise) ** 2).item())
    return float(np.mean(losses))


@pytest.mark.slow
def test_training_lowers_the_loss_resumes_and_gives_an_identity(tiny_sd15, processed, encoder, dlib_analyzer, tmp_path):
    from safetensors.torch import load_file

    from facechain.adapters import IdentityConfig
    from facechain.adapters.feedface.train import train_feedface
    from facechain.cli import main
    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    out = train_feedface(_cfg(tiny_sd15, processed, encoder, tmp_path / "a", max_train_steps=40, checkpointing_steps=40,
                              learning_rate=5e-3, masked_fraction=0.0, condition_dropout=0.0), progress=False)
    record = json.loads((out / "feedface.json").read_text())
    assert record["clip_dim"] == 48 and record["tokens_per_face"] == 17 and len(record["blocks"]) == 16
    before = _fixed_loss(tiny_sd15, processed, encoder, dlib_analyzer)
    after = _fixed_loss(tiny_sd15, processed, encoder, dlib_analyzer, out)
    assert after < 0.9 * before, (before, after)

    # resume: 2 steps, then on to 4 (through the command), equals 4 steps in one run
    full = train_feedface(_cfg(tiny_sd15, processed, encoder, tmp_path / "full"), progress=False)
    part = tmp_path / "part"
    train_feedface(_cfg(tiny_sd15, processed, encoder, part, max_train_steps=2), progress=False)
    assert main(["train-adapter", "feedface", "--base-model", str(tiny_sd15), "--data", str(processed),
                 "--output-dir", str(part), "--image-encoder", str(encoder), "--resolution", "64",
                 "--max-train-steps", "4", "--checkpointing-steps", "2", "--learning-rate", "1e-3",
                 "--mixed-precision", "no", "--seed", "5", "--face-backend", "dlib", "--resume"]) == 0
    a, b = load_file(str(full / "feedface.safetensors")), load_file(str(part / "feedface.safetensors"))
    assert set(a) == set(b) and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6

    # the trained adapter as generation's identity source; more faces, another condition
    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")

    def images(**kw):
        cfg = GenerateConfig(base_model=str(tiny_sd15), output_dir=tmp_path / "o", num_candidates=2, num_images=1,
                             batch_size=2, num_inference_steps=2, guidance_scale=5.0, rank_candidates=False, fusion="off",
                             device="cpu", dtype="float32", detailer="off", face_backend="dlib", **kw)
        gen = PortraitGenerator(cfg, analyzer=dlib_analyzer)
        batch = gen.generate(style, ("", "a person"))
        return np.stack([np.asarray(c.image, np.int16) for c in batch.candidates]), batch

    plain, _ = images()
    ident = IdentityConfig(adapter="feedface", photos=processed, weights=str(out), scale=0.8)
    three, batch = images(identity=ident)
    info = batch.settings["identity"]
    assert info["adapter"] == "feedface" and info["faces"] == 3 and info["image_encoder"] == str(encoder)
    assert np.abs(three - plain).mean() > 0.5
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    (one_dir / "000.png").write_bytes((processed / "000.png").read_bytes())
    one, _ = images(identity=IdentityConfig(adapter="feedface", photos=one_dir, weights=str(out), scale=0.8))
    assert np.abs(one - three).mean() > 0.05


def test_feedface_errors(tiny_sd15, tiny_sdxl, processed, encoder, tmp_path):
    from facechain.adapters import IdentityConfig, get_identity_adapter
    from facechain.adapters.feedface.train import load_samples

    assert len(load_samples(processed)) == 3 and load_samples(processed)[0].caption.startswith("<fcsks>")
    old = tmp_path / "old"
    old.mkdir()
    (old / "metadata.jsonl").write_text('{"file_name": "000.png", "text": "x"}\n')
    with pytest.raises(InputError, match="no masks/ folder"):
        load_samples(old)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no processed photos"):
        load_samples(tmp_path / "empty")
    with pytest.raises(InputError, match="identity.weights is empty"):
        get_identity_adapter(IdentityConfig(adapter="feedface", photos=processed), "sd15")
    with pytest.raises(ModelNotFoundError, match="not a finished FeedFace"):
        get_identity_adapter(IdentityConfig(adapter="feedface", photos=processed, weights=str(tmp_path)), "sd15")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "feedface.safetensors").write_bytes(b"")
    (fake / "feedface.json").write_text(json.dumps({"family": "sd15", "image_encoder": str(encoder)}))
    with pytest.raises(InputError, match="trained on a sd15 model and the base model is sdxl"):
        get_identity_adapter(IdentityConfig(adapter="feedface", photos=processed, weights=str(fake)), "sdxl")


@pytest.mark.slow
def test_two_process_data_parallel_training(tiny_sd15, processed, encoder, tmp_path):
    """Two processes (gloo on CPU, launched like accelerate's multi-GPU launcher): the main process alone
    owns the output folder and writes the log; every checkpoint has each process's random state; it resumes."""
    import os
    import shutil
    import subprocess
    import sys

    out = tmp_path / "dp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "facechain",
           "train-adapter", "feedface", "--base-model", str(tiny_sd15), "--data", str(processed), "--output-dir", str(out),
           "--image-encoder", str(encoder), "--resolution", "64", "--max-train-steps", "4", "--checkpointing-steps", "2",
           "--mixed-precision", "no", "--face-backend", "dlib", "--quiet"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "FeedFace adapter trained" in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints" / "step-000004").glob("rng-*")) == ["rng-0.safetensors",
                                                                                          "rng-1.safetensors"]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    shutil.rmtree(out / "checkpoints" / "step-000004")  # as if killed between the checkpoints at 2 and 4
    proc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [3, 4] and (out / "checkpoints" / "step-000004").is_dir()


@pytest.mark.slow
def test_sdxl_trains_and_gives_an_identity(tiny_sdxl, processed, encoder, dlib_analyzer, tmp_path):
    """FeedFace on the SDXL architecture (added conditions in training, its transformer blocks hooked)."""
    from facechain.adapters import IdentityConfig
    from facechain.adapters.feedface.train import train_feedface
    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    out = train_feedface(_cfg(tiny_sdxl, processed, encoder, tmp_path / "a", max_train_steps=4, learning_rate=1e-2),
                         progress=False)
    record = json.loads((out / "feedface.json").read_text())
    assert record["family"] == "sdxl" and len(record["blocks"]) > 0
    style = next(s for s in load_styles([DEFAULT_STYLES_DIR]) if s.family == "sdxl" and not s.has_lora)
    cfg = {"base_model": str(tiny_sdxl), "output_dir": tmp_path / "o", "num_candidates": 1, "num_images": 1, "num_inference_steps": 2,
               "rank_candidates": False, "fusion": "off", "device": "cpu", "dtype": "float32", "detailer": "off", "face_backend": "dlib",
               "guidance_scale": 5.0}
    ident = IdentityConfig(adapter="feedface", photos=processed, weights=str(out), scale=0.8)
    a = PortraitGenerator(GenerateConfig(identity=ident, **cfg), analyzer=dlib_analyzer).generate(style, ("", "a person"))
    b = PortraitGenerator(GenerateConfig(**cfg), analyzer=dlib_analyzer).generate(style, ("", "a person"))
    assert a.settings["identity"]["faces"] == 3
    diff = np.abs(np.asarray(a.candidates[0].image, np.int16) - np.asarray(b.candidates[0].image, np.int16))
    assert diff.mean() > 0.1
