"""Face-LoRA trainer on tiny real-class models (64 px, a few steps, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError
from facechain.train import TrainConfig, train
from facechain import lora as lora_io
from facechain.train.data import augment, face_crop_box, load_processed
from facechain.train.validate import select_checkpoints

CAPTION = "<fcsks>, a beautiful woman"


def make_processed(folder: Path, n: int = 2, size: int = 512) -> Path:
    from facechain.testing import make_processed_folder

    return make_processed_folder(folder, n, size, CAPTION)


def tiny_cfg(model, data, out, **kw) -> TrainConfig:
    settings = {"base_model": str(model), "train_data_dir": str(data), "output_dir": str(out), "resolution": 64, "aug_variants": 2,
                    "max_train_steps": 4, "checkpointing_steps": 2, "face_backend": "none", "validation_num_inference_steps": 2,
                    "num_validation_images": 1, "num_threads": 1}
    settings.update(kw)
    return TrainConfig(**settings)


def generate(pipe, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    return pipe(CAPTION, num_inference_steps=2, height=64, width=64, generator=gen, output_type="np").images[0]


def load_pipe(folder):
    from facechain.models import load_pipeline, resolve_model

    return load_pipeline(resolve_model(str(folder)))




@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return make_processed(tmp_path_factory.mktemp("processed") / "p")


@pytest.fixture(scope="module")
def trained_sd15(tiny_sd15, processed, tmp_path_factory):
    """4 steps with a text-encoder LoRA, checkpoints at 2 and 4 scored by dlib, ensemble of both."""
    out = tmp_path_factory.mktemp("lora") / "out"
    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_sd15, processed, out, face_backend="dlib", train_text_encoder=True, ensemble_top_k=2,
                   learning_rate=1e-2)
    return train(cfg, progress=False)


# --------------------------------------------------------------------------- units


@pytest.mark.unit
def test_face_crop_box_reproduces_facechain_range():
    # ratio 0.35 -> the largest crop, 0.45 -> the smallest: (0.35/1.15) * 512 / ratio
    big = face_crop_box(512, 512, 0.35, 0.35)
    small = face_crop_box(512, 512, 0.45, 0.5)
    assert big[2] - big[0] == 445 and small[2] - small[0] == 346
    assert big[1] == round(0.435 * 512 - 0.35 * 445)  # face centre lands at 35% of the crop height
    assert small[0] == 83  # centred horizontally


@pytest.mark.unit
def test_augment_is_seeded_and_flips():
    from PIL import Image

    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    a = augment(img, 32, torch.Generator().manual_seed(1), face_crop=True, flip=True)
    b = augment(img, 32, torch.Generator().manual_seed(1), face_crop=True, flip=True)
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    flips = {np.array_equal(np.asarray(augment(img, 32, torch.Generator().manual_seed(s), False, True)),
                            np.asarray(img.resize((32, 32), 3))) for s in range(8)}
    assert flips == {True, False}  # some seeds flip, some do not


@pytest.mark.unit
def test_select_checkpoints_ties_go_to_later_step():
    assert select_checkpoints({100: 0.6, 200: 0.7, 300: 0.7}, 1) == [300]
    assert select_checkpoints({100: 0.9, 200: 0.0, 300: 0.0}, 2) == [100, 300]
    assert select_checkpoints({100: None, 200: None}, 1) == [200]


@pytest.mark.unit
def test_num_steps_is_facechain_rule():
    cfg = TrainConfig(base_model="m", train_data_dir="d", output_dir="o")
    assert (cfg.rank, cfg.learning_rate, cfg.lr_scheduler, cfg.train_batch_size, cfg.resolution, cfg.seed) == (4, 1.5e-4, "cosine", 1, 512, 42)
    # FaceChain's default path has no cap (its min(..., 800) is dead code): 200 steps per kept photo
    assert cfg.max_train_steps is None and cfg.num_steps(3) == 600 and cfg.num_steps(10) == 2000
    assert TrainConfig(base_model="m", train_data_dir="d", output_dir="o", max_train_steps=800).num_steps(10) == 800
    with pytest.raises(InputError, match="max_train_steps"):
        TrainConfig(base_model="m", train_data_dir="d", output_dir="o", max_train_steps=0)


@pytest.mark.unit
def test_mixed_precision_auto_and_threads(monkeypatch):
    import torch

    from facechain.runtime import resolve_mixed_precision, set_threads, usable_cpus

    assert TrainConfig(base_model="m", train_data_dir="d", output_dir="o").mixed_precision == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == "no" and resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100 or T4
    assert resolve_mixed_precision("auto") == "fp16"
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
        assert set_threads(0) == 1  # without a launcher, a set OMP_NUM_THREADS is the user's
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # under accelerate launch: its default 1 is not used
        assert set_threads(0) == usable_cpus() == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(usable_cpus() * 2))  # more processes than cores: one each
        assert set_threads(0) == 1
        assert set_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_validation_vae_decodes_outside_autocast_and_sdxl_at_native_size(tiny_sdxl):
    import torch

    from facechain.models import load_pipeline, resolve_model
    from facechain.train.validate import generate_validation_images, validation_resolution

    pipe = load_pipeline(resolve_model(str(tiny_sdxl)))
    seen = []
    pipe.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append((torch.is_autocast_enabled("cpu"), a[0].dtype)))
    native = validation_resolution(pipe, "sdxl", 64 // 2)
    assert native == pipe.unet.config.sample_size * pipe.vae_scale_factor and validation_resolution(pipe, "sd15", 48) == 48
    images = generate_validation_images(pipe, "a photo", 1, 2, native, seed=0,
                                        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert images[0].size == (native, native)
    assert seen == [(False, torch.float32)]  # the VAE never runs under (fp16/bf16) autocast


def test_init_lora_facechain_is_one_flag_and_one_clear_error(tmp_path, processed, tiny_sd15):
    with pytest.raises(ModelNotFoundError, match=r"(?s)--init_lora facechain.*damo/face_frombase_c4.*ModelScope"):
        train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", init_lora="facechain"))
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- clear errors


@pytest.mark.unit
def test_resolution_not_divisible_by_8():
    with pytest.raises(InputError, match=r"`resolution` has to be a positive multiple of 8 .* 100. Use e.g. 96"):
        TrainConfig(base_model="m", train_data_dir="d", output_dir="o", resolution=100)


def test_cli_reports_bad_resolution(capsys, tmp_path):
    from facechain.cli import main

    assert main(["train", "m", str(tmp_path), str(tmp_path / "o"), "--resolution", "100"]) == 1
    assert "multiple of 8" in capsys.readouterr().err


def test_empty_processed_folder(tmp_path, tiny_sd15):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "metadata.jsonl").write_text("")
    with pytest.raises(InputError, match="holds no training photos.*report.json"):
        train(tiny_cfg(tiny_sd15, tmp_path / "p", tmp_path / "o"))
    with pytest.raises(InputError, match="has no metadata.jsonl"):
        load_processed(tmp_path)


def test_unknown_model_path(tmp_path, processed):
    with pytest.raises(ModelNotFoundError, match="does not exist on disk"):
        train(tiny_cfg(tmp_path / "no_such_model", processed, tmp_path / "o"))


def test_pickle_checkpoint_needs_flag(tmp_path, processed):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not loaded")
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        train(tiny_cfg(ckpt, processed, tmp_path / "o"))


def test_init_lora_rank_mismatch(tmp_path, tiny_sd15, processed, trained_sd15):
    cfg = tiny_cfg(tiny_sd15, processed, tmp_path / "o", rank=8, init_lora=str(trained_sd15.lora_path), max_train_steps=1)
    with pytest.raises(InputError, match="Use --rank equal to the file's rank"):
        train(cfg, progress=False)


# --------------------------------------------------------------------------- a real run


def test_outputs_log_and_scores(trained_sd15):
    out = trained_sd15.output_dir
    assert {p.name for p in out.iterdir()} >= {lora_io.LORA_FILE, lora_io.KOHYA_FILE, "train_config.json", "train_log.jsonl", "checkpoints"}
    assert trained_sd15.steps == 4 and trained_sd15.selected_steps == [4, 2]  # noise images: no face -> 0, ties -> later
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    ckpts = [r for r in rows if r.get("event") == "checkpoint"]
    assert [(r["step"], r["score"], r["faces_found"]) for r in ckpts] == [(2, 0.0, 0), (4, 0.0, 0)]
    assert rows[-1]["event"] == "final" and rows[-1]["selected_steps"] == [4, 2]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["_type"] == "TrainConfig" and saved["rank"] == 4 and saved["train_text_encoder"] is True
    assert (out / "checkpoints" / "step-000002" / "validation_0.png").is_file()
    import os

    mask = os.umask(0)
    os.umask(mask)
    for p in [*out.iterdir(), *(out / "checkpoints" / "step-000002").iterdir()]:  # no 0600 temporary-file modes
        if p.is_file():
            assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
    # everything the run wrote is recorded as its output, with checksums
    from facechain.outputs import OutputDir

    with OutputDir.open(out, "train") as od:
        assert not od.other_files()
        assert od.owns(lora_io.LORA_FILE) and od.owns("checkpoints/step-000004/lora.safetensors")


def test_saved_key_set(trained_sd15, tiny_sd15):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15), subfolder="unet")
    modules = {n for n, _ in unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")) and "attn" in n}
    assert len(modules) == 16 * 2 * 4  # 16 transformer blocks x (self, cross) attention x 4 projections
    sd = load_file(str(trained_sd15.lora_path))
    unet_keys = {k for k in sd if k.startswith("unet.")}
    assert unet_keys == {f"unet.{m}.lora.{d}.weight" for m in modules for d in ("down", "up")}
    te_keys = {k for k in sd if k.startswith("text_encoder.")}
    assert len(te_keys) == 2 * 4 * 2  # 2 layers x q/k/v/out x down/up
    assert sd[next(iter(unet_keys))].dtype == torch.float32

    kohya = load_file(str(trained_sd15.kohya_path))
    names = {m.replace(".", "_") for m in modules}
    assert {k for k in kohya if k.startswith("lora_unet_")} == {f"lora_unet_{n}.{s}" for n in names for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in kohya
    assert float(kohya["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]) == 4.0


def test_ensemble_is_mean_of_selected_checkpoints(trained_sd15):
    from safetensors.torch import load_file

    c2 = load_file(str(trained_sd15.output_dir / "checkpoints/step-000002/lora.safetensors"))
    c4 = load_file(str(trained_sd15.output_dir / "checkpoints/step-000004/lora.safetensors"))
    kohya = load_file(str(trained_sd15.kohya_path))
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"
    assert not torch.equal(c2[key], c4[key])
    torch.testing.assert_close(kohya["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"], (c2[key] + c4[key]) / 2)


def outputs_base_lora_kohya(model, art) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images from the base model, with the diffusers LoRA, and with the kohya export (same seed)."""
    pipe = load_pipe(model)
    base = generate(pipe)
    pipe.load_lora_weights(str(art.output_dir))
    with_lora = generate(pipe)
    pipe2 = load_pipe(model)
    pipe2.load_lora_weights(str(art.kohya_path))
    return base, with_lora, generate(pipe2)


def test_lora_changes_output_and_kohya_matches(trained_sd15, tiny_sd15):
    base, with_lora, with_kohya = outputs_base_lora_kohya(tiny_sd15, trained_sd15)
    change = np.abs(with_lora - base).max()
    assert change > 1e-3, change
    np.testing.assert_allclose(with_kohya, with_lora, atol=1e-5)


def test_init_lora_loads_diffusers_and_kohya_files(trained_sd15, tiny_sd15):
    from safetensors.torch import load_file

    from facechain.train.lora_weights import add_lora, current_lora, load_lora_into

    sd = lora_io.unflatten(load_file(str(trained_sd15.output_dir / "checkpoints/step-000004/lora.safetensors")))
    sd2 = lora_io.unflatten(load_file(str(trained_sd15.output_dir / "checkpoints/step-000002/lora.safetensors")))
    want = lora_io.average([sd, sd2])
    for path in (trained_sd15.lora_path, trained_sd15.kohya_path):
        pipe = load_pipe(tiny_sd15)
        cfg = TrainConfig(base_model="m", train_data_dir="d", output_dir="o", train_text_encoder=True)
        add_lora(pipe.unet, [pipe.text_encoder], cfg)
        lora, scale = lora_io.read_lora_file(path, "sd15", pipe.unet.config)
        assert scale == 1.0
        load_lora_into({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, lora, str(path))
        got = current_lora({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
        assert set(got["unet"]) == set(want["unet"]) and set(got["text_encoder"]) == set(want["text_encoder"])
        for comp in ("unet", "text_encoder"):
            for k in want[comp]:
                torch.testing.assert_close(got[comp][k], want[comp][k])


def test_output_dir_in_use_needs_resume(trained_sd15, tiny_sd15, processed):
    with pytest.raises(InputError, match="Pass --resume"):
        train(tiny_cfg(tiny_sd15, processed, trained_sd15.output_dir))
    with pytest.raises(InputError, match="settings differ.*rank"):
        train(tiny_cfg(tiny_sd15, processed, trained_sd15.output_dir, resume=True, rank=8, face_backend="dlib",
                       train_text_encoder=True, ensemble_top_k=2, learning_rate=1e-2))


@pytest.mark.slow
def test_single_file_checkpoint_loads_and_trains(tiny_sd15, processed, tmp_path):
    from diffusers import StableDiffusionPipeline

    from facechain.testing import export_single_file

    ckpt = export_single_file(tiny_sd15, tmp_path / "tiny-sd15.safetensors")
    pipe = StableDiffusionPipeline.from_single_file(str(ckpt), config=str(tiny_sd15), safety_checker=None)
    ref = load_pipe(tiny_sd15)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(ref, name).state_dict()
        assert set(a) >= set(b) - {"text_model.embeddings.position_ids"}
        assert all(torch.equal(a[k], b[k]) for k in b if k in a), name
    art = train(tiny_cfg(ckpt, processed, tmp_path / "o", single_file_config=str(tiny_sd15), max_train_steps=2), progress=False)
    assert art.family == "sd15" and art.lora_path.is_file() and art.selected_steps == [2]


@pytest.mark.slow
def test_sdxl_two_steps_and_kohya_matches(tiny_sdxl, processed, tmp_path):
    from safetensors.torch import load_file

    art = train(tiny_cfg(tiny_sdxl, processed, tmp_path / "o", max_train_steps=2, learning_rate=1e-2), progress=False)
    assert art.family == "sdxl" and art.steps == 2
    kohya = load_file(str(art.kohya_path))
    blocks = {k.split("_transformer_blocks")[0] for k in kohya}
    assert blocks == {"lora_unet_input_blocks_4_1", "lora_unet_input_blocks_5_1", "lora_unet_input_blocks_7_1",
                      "lora_unet_input_blocks_8_1", "lora_unet_middle_block_1", "lora_unet_output_blocks_0_1",
                      "lora_unet_output_blocks_1_1", "lora_unet_output_blocks_2_1", "lora_unet_output_blocks_3_1",
                      "lora_unet_output_blocks_4_1", "lora_unet_output_blocks_5_1"}
    base, with_lora, with_kohya = outputs_base_lora_kohya(tiny_sdxl, art)
    assert np.abs(with_lora - base).max() > 1e-4
    np.testing.assert_allclose(with_kohya, with_lora, atol=1e-5)


# --------------------------------------------------------------------------- more mechanics


def test_likeness_scorer_on_real_faces(processed, dlib_analyzer):
    from PIL import Image
    from skimage import data

    from facechain.train.validate import LikenessScorer

    scorer = LikenessScorer.from_photos(dlib_analyzer, sorted(processed.glob("*.png")))
    assert len(scorer.reference) == 2
    same = Image.fromarray(data.astronaut())
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    result = scorer.score([same, noise])
    assert result.faces_found == 1 and result.per_image[1] == 0.0
    assert result.per_image[0] > 0.8  # the same photo: well above the 0.5 same-person threshold
    assert result.score == pytest.approx(result.per_image[0] / 2)


def test_init_lora_is_not_rounded_under_bf16(tiny_sd15, processed, trained_sd15, tmp_path, monkeypatch, caplog):
    """bf16 frozen weights: the init LoRA lands in the fp32 LoRA weights unrounded (bf16 keeps 8
    bits of mantissa: rounding shows at rtol 1e-5), and accelerate's differing setting is named."""
    import logging

    from safetensors.torch import load_file

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with caplog.at_level(logging.WARNING, logger="facechain.train.trainer"):
        art = train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", init_lora=str(trained_sd15.lora_path), max_train_steps=1,
                             learning_rate=1e-12, train_text_encoder=True, mixed_precision="bf16"), progress=False)
    notes = [r.getMessage() for r in caplog.records if "ACCELERATE_MIXED_PRECISION" in r.getMessage()]
    assert len(notes) == 1 and "'fp16'" in notes[0] and "'bf16'" in notes[0], notes
    got, want = load_file(str(art.lora_path)), load_file(str(trained_sd15.lora_path))
    assert set(got) == set(want)
    rounded = {k: want[k].to(torch.bfloat16).float() for k in want}
    assert any(not torch.equal(rounded[k], want[k]) for k in want)  # the file's values are not bf16-exact
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_final_lora_follows_likeness_scores(tiny_sd15, processed, tmp_path, monkeypatch):
    """Known scores per checkpoint (steps 1, 2, 3 -> 0.2, 0.9, 0.5): the final LoRA is step 2's,
    and with ensemble_top_k=2 the mean of steps 2 and 3."""
    from safetensors.torch import load_file

    from facechain.train.validate import LikenessScorer, Validation

    for top_k, want_steps in ((1, [2]), (2, [2, 3])):
        scores = iter([0.2, 0.9, 0.5])
        monkeypatch.setattr(LikenessScorer, "score", lambda self, images: (lambda s: Validation(s, [s], 1))(next(scores)))
        out = tmp_path / f"top{top_k}"
        art = train(tiny_cfg(tiny_sd15, processed, out, face_backend="dlib", max_train_steps=3, checkpointing_steps=1,
                             ensemble_top_k=top_k, learning_rate=1e-2), progress=False)
        assert art.selected_steps == want_steps and art.scores == {1: 0.2, 2: 0.9, 3: 0.5}
        ckpts = {s: lora_io.unflatten(load_file(str(out / f"checkpoints/step-{s:06d}/lora.safetensors")))["unet"] for s in (1, 2, 3)}
        final = lora_io.read_lora_file(art.lora_path, "sd15")[0]["unet"]
        assert set(final) == set(ckpts[2])
        want = {k: torch.stack([ckpts[s][k] for s in want_steps]).mean(0) for k in final}
        for k in final:
            torch.testing.assert_close(final[k], want[k], rtol=0, atol=1e-7)
        key = next(k for k in final if ".lora_B." in k)  # the checkpoints differ, so the choice is visible
        others = [s for s in (1, 2, 3) if s not in want_steps]
        assert all((final[key] - ckpts[s][key]).abs().max() > 1e-4 for s in others)


@pytest.mark.slow
def test_sdpa_bf16_gradient_checkpointing_and_pruning(tiny_sd15, processed, tmp_path):
    """bf16 frozen weights with fp32 LoRA, gradient checkpointing, and at most 2 checkpoints kept."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from facechain.models import load_pipeline, resolve_model
    from facechain.train.lora_weights import add_lora

    pipe = load_pipeline(resolve_model(str(tiny_sd15)))
    add_lora(pipe.unet, [], TrainConfig(base_model="m", train_data_dir="d", output_dir="o"))
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}  # PyTorch SDPA

    art = train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", mixed_precision="bf16", gradient_checkpointing=True,
                         max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2), progress=False)
    steps = sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir())
    assert steps == ["step-000002", "step-000003"]  # unscored: the oldest goes first
    from safetensors.torch import load_file

    sd = load_file(str(art.lora_path))
    assert {v.dtype for v in sd.values()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_init_lora_seeds_the_run(tiny_sd15, processed, trained_sd15, tmp_path):
    """Starting from a LoRA file: with a negligible learning rate the result is that LoRA."""
    from safetensors.torch import load_file

    art = train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", init_lora=str(trained_sd15.kohya_path), max_train_steps=1,
                         learning_rate=1e-12, train_text_encoder=True), progress=False)
    got, want = load_file(str(art.lora_path)), load_file(str(trained_sd15.lora_path))
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_resume_refuses_changed_photos(tiny_sd15, processed, tmp_path):
    import shutil

    data = tmp_path / "p"
    shutil.copytree(processed, data)
    out = tmp_path / "o"
    train(tiny_cfg(tiny_sd15, data, out, max_train_steps=1), progress=False)
    (data / "metadata.jsonl").write_text((data / "metadata.jsonl").read_text().replace("woman", "person"))
    with pytest.raises(InputError, match="photos or captions .* changed"):
        train(tiny_cfg(tiny_sd15, data, out, max_train_steps=1, resume=True), progress=False)


@pytest.mark.slow
def test_alpha_survives_export(tiny_sd15, processed, tmp_path):
    """alpha != rank: both files, loaded by diffusers, reproduce the trained model's own output."""
    from safetensors.torch import load_file

    from facechain.train.lora_weights import add_lora, load_lora_into

    cfg = tiny_cfg(tiny_sd15, processed, tmp_path / "o", rank=4, lora_alpha=16.0, max_train_steps=2, learning_rate=2e-2)
    art = train(cfg, progress=False)
    trained = load_pipe(tiny_sd15)  # the model as trained: peft adapter with alpha 16, weights of the last step
    add_lora(trained.unet, [], cfg)
    load_lora_into({"unet": trained.unet}, lora_io.unflatten(load_file(str(tmp_path / "o/checkpoints/step-000002/lora.safetensors"))), "ckpt")
    want = generate(trained)
    for source in (str(art.output_dir), str(art.kohya_path), load_file(str(art.lora_path))):  # the last: no metadata
        pipe = load_pipe(tiny_sd15)
        pipe.load_lora_weights(source)
        np.testing.assert_allclose(generate(pipe), want, atol=1e-5, err_msg=str(type(source)))
    assert np.abs(want - generate(load_pipe(tiny_sd15))).max() > 1e-3
    # starting a run with another alpha from either file keeps the trained update
    for i, source in enumerate((art.lora_path, art.kohya_path)):
        seeded = train(tiny_cfg(tiny_sd15, processed, tmp_path / f"init{i}", rank=4, lora_alpha=2.0, init_lora=str(source),
                                max_train_steps=1, learning_rate=1e-12), progress=False)
        pipe = load_pipe(tiny_sd15)
        pipe.load_lora_weights(str(seeded.output_dir))
        np.testing.assert_allclose(generate(pipe), want, atol=1e-5, err_msg=str(source))


def test_fp16_on_cpu_is_refused(tiny_sd15, processed, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="fp16' needs a CUDA GPU"):
        train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", mixed_precision="fp16"))


@pytest.mark.unit
def test_cli_config_file_and_flags(tmp_path):
    import argparse

    from facechain.cli import train as cli_train

    (tmp_path / "t.yaml").write_text("rank: 8\nlearning_rate: 0.0001\nvalidation: none\n")
    p = argparse.ArgumentParser()
    cli_train.add_arguments(p)
    args = p.parse_args(["model", "data", "out", "--config", str(tmp_path / "t.yaml"), "--rank", "16", "--allow-pickle",
                         "--no-random_flip", "--target_modules", "to_q", "to_v", "--sub_path", ""])
    cfg = cli_train.config_from_args(args)
    assert (cfg.rank, cfg.learning_rate, cfg.face_backend, cfg.allow_pickle, cfg.random_flip, cfg.target_modules, cfg.sub_path) == \
        (16, 1e-4, "none", True, False, ["to_q", "to_v"], "")
    (tmp_path / "bad.yaml").write_text("rnak: 8\n")
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['rnak'\]"):
        cli_train.config_from_args(p.parse_args(["m", "d", "o", "--config", str(tmp_path / "bad.yaml")]))


def test_init_lora_pickle_needs_flag_and_loads_facechain_bin(trained_sd15, tiny_sd15, processed, tmp_path):
    """FaceChain's LoRAs are pickles in the attention-processor layout: refused by default, read
    with weights_only=True when allowed."""
    from safetensors.torch import load_file

    flat = load_file(str(trained_sd15.output_dir / "checkpoints/step-000004/lora.safetensors"))
    legacy = {}
    for k, v in flat.items():
        if k.startswith("unet."):
            module, kind = k[len("unet."):].rsplit(".lora_", 1)
            mod, proj = module.rsplit(".", 1) if not module.endswith("to_out.0") else (module[: -len(".to_out.0")], "to_out")
            legacy[f"{mod}.processor.{proj}_lora.{'down' if kind.startswith('A') else 'up'}.weight"] = v
    (tmp_path / "face").mkdir()
    torch.save(legacy, tmp_path / "face" / "pytorch_lora_weights.bin")
    cfg = {"init_lora": str(tmp_path / "face"), "init_lora_weight_name": "pytorch_lora_weights.bin", "max_train_steps": 1,
               "learning_rate": 1e-12}
    with pytest.raises(UnsafeCheckpointError, match="init LoRA .* pickle"):
        train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", **cfg))
    art = train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", allow_pickle=True, **cfg), progress=False)
    got = lora_io.unflatten(load_file(str(art.output_dir / "checkpoints/step-000001/lora.safetensors")))["unet"]
    want = lora_io.unflatten(flat)["unet"]
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_unreachable_hub_model_is_one_clear_error(tmp_path, processed):
    import time

    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"(?s)'nobody/no-such-model' revision 'v2.0' could not be found.*Provide it"):
        train(tiny_cfg("nobody/no-such-model", processed, tmp_path / "o", revision="v2.0", sub_path="film/film"))
    assert time.monotonic() - t0 < 30  # no retry loop
    assert not (tmp_path / "o").exists()  # nothing written before the inputs check out


def test_divergence_is_a_clear_error(tiny_sd15, processed, tmp_path):
    from facechain.train.loop import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match=r"loss became (nan|inf) at step [23].*Lower --learning_rate"):
        train(tiny_cfg(tiny_sd15, processed, tmp_path / "o", learning_rate=1e30, max_train_steps=3, checkpointing_steps=10),
              progress=False)


@pytest.mark.unit
def test_flat_parameter_views_weights_and_gradients():
    from facechain.train.lora_weights import flat_parameter

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    before = [p.detach().clone() for p in net.parameters()]
    flat = flat_parameter(list(net.parameters()))
    assert flat.shape == (4 * 3 + 3 + 3 * 2 + 2,)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # same values, now views
    net(torch.randn(5, 4)).sum().backward()
    assert torch.equal(flat.grad, torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    opt = torch.optim.AdamW([flat], lr=0.1)
    opt.step()
    assert not torch.equal(next(net.parameters()), before[0])  # stepping the flat tensor moves the layers
    opt.zero_grad(set_to_none=False)
    assert next(net.parameters()).grad.abs().sum() == 0 and flat.grad.data_ptr() == next(net.parameters()).grad.data_ptr()


@pytest.mark.unit
def test_init_lora_facechain_asks_for_the_file_facechain_publishes(monkeypatch, tmp_path):
    """`--init_lora facechain` (README quickstart) is damo/face_frombase_c4 at revision v1.0.0, file
    face_frombase_c4.bin, as every FaceChain version loads it; offline, the error names that file and revision."""
    import facechain.models as models
    from facechain.errors import ModelNotFoundError
    from facechain.train.config import TrainConfig
    from facechain.train.lora_weights import resolve_init_lora

    cfg = TrainConfig(base_model="m", train_data_dir=str(tmp_path), output_dir=str(tmp_path / "o"), init_lora="facechain")
    asked = []
    real = models.resolve_weights_file

    def recording(ref, **kw):
        asked.append((ref, kw.get("revision"), kw.get("filename"), kw.get("allow_pickle")))
        return real(ref, **kw)

    monkeypatch.setattr(models, "resolve_weights_file", recording)
    with pytest.raises(ModelNotFoundError, match=r"damo/face_frombase_c4 revision v1\.0\.0, file face_frombase_c4\.bin"):
        resolve_init_lora(cfg)
    assert asked == [("damo/face_frombase_c4", "v1.0.0", "face_frombase_c4.bin", True)]
