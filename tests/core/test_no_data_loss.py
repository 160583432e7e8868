"""Every command pointed at a user's folder, killed, failing, run twice at once, or fed bad input:
the user's files survive, the previous results stay consistent with their manifest, and each
problem is one clear error. Real photos + dlib for preprocessing, tiny real-class models for
generation and training."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facechain.errors import FacechainError, InputError, UnsafeCheckpointError
from facechain.jobs import JobFailed
from facechain.outputs import STATE_DIR, OutputConflictError, OutputInUseError

REPO = Path(__file__).resolve().parents[2]
USER = {"holiday_01.png": b"holiday", "wedding_2023_12.png": b"wedding", "img_99.png": b"img",
        "manifest.json": b'{"mine": true}', "000.png": b"zero"}


def _user_files(folder: Path) -> dict[Path, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in USER.items():
        (folder / name).write_bytes(data)
    return {folder / n: d for n, d in USER.items()}


def _intact(files: dict[Path, bytes]) -> None:
    for p, data in files.items():
        assert p.is_file() and p.read_bytes() == data, p


def _snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file outside facechain's state folder."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and STATE_DIR not in p.relative_to(folder).parts}


# --------------------------------------------------------------------------- preprocess

def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def pcfg():
    from facechain.preprocess import PreprocessConfig

    return PreprocessConfig(face_backend="dlib", mask="landmarks", workers=1)


def test_preprocess_refuses_output_equal_to_or_nested_with_input(tmp_path, sample_photos, pcfg):
    from facechain.preprocess import preprocess

    photos = tmp_path / "photos"
    _save(photos / "me.png", sample_photos.astronaut())
    before = _snapshot(photos)
    for out, how in [(photos, "the same folder as"), (photos / "processed", "inside"), (tmp_path, "a parent folder of")]:
        with pytest.raises(InputError, match=f"is {how} the input folder"):
            preprocess(photos, out, pcfg, progress=False)
    assert _snapshot(photos) == before and sorted(p.name for p in photos.iterdir()) == ["me.png"]


def test_preprocess_never_touches_files_it_did_not_write(tmp_path, sample_photos, pcfg):
    from facechain.preprocess import PreprocessConfig, preprocess

    photos = tmp_path / "photos"
    _save(photos / "me.png", sample_photos.astronaut())
    user = _user_files(tmp_path / "out")
    with pytest.raises(InputError, match="did not write .*--allow-other-files"):
        preprocess(photos, tmp_path / "out", pcfg, progress=False)
    # even with the flag, a result named like a user's file (000.png) stops before any work
    cfg = PreprocessConfig(**{**pcfg.__dict__, "allow_other_files": True})
    with pytest.raises(OutputConflictError, match="000.png"):
        preprocess(photos, tmp_path / "out", cfg, progress=False)
    _intact(user)
    assert not (tmp_path / "out" / "metadata.jsonl").exists()


@pytest.mark.slow
def test_preprocess_run_that_keeps_nothing_leaves_the_previous_set(tmp_path, sample_photos, pcfg):
    from facechain.preprocess import NoPhotosKept, preprocess

    good, bad = tmp_path / "good", tmp_path / "bad"
    _save(good / "a.png", sample_photos.astronaut())
    _save(good / "b.png", sample_photos.astronaut()[:, ::-1].copy())
    _save(bad / "group.jpg", sample_photos.group_photo())
    out = tmp_path / "out"
    preprocess(good, out, pcfg, progress=False)
    before = _snapshot(out)
    assert {"000.png", "001.png", "metadata.jsonl", "report.json"} <= set(before)
    with pytest.raises(NoPhotosKept, match="failed_report.json.*previous processed set .* left as it was"):
        preprocess(bad, out, pcfg, progress=False)
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != "failed_report.json"} == before
    assert json.loads((out / "failed_report.json").read_text())["entries"][0]["reason"] == "several_faces"
    # a later good run with one photo replaces the set; the extra 001.png (and its mask) of the earlier run go
    (good / "b.png").unlink()
    preprocess(good, out, pcfg, progress=False)
    assert sorted(_snapshot(out)) == ["000.png", "masks/000.png", "metadata.jsonl", "preprocess_config.json",
                                      "report.json"]


def test_preprocess_output_path_problems_are_clear_and_early(tmp_path, sample_photos, pcfg, monkeypatch):
    import facechain.preprocess.pipeline as pipeline
    from facechain.preprocess import preprocess

    photos = tmp_path / "photos"
    _save(photos / "me.png", sample_photos.astronaut())
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(pipeline, "get_analyzer", lambda *a, **k: pytest.fail("work started before the output check"))
    with pytest.raises(InputError, match="is a file, not a folder"):
        preprocess(photos, tmp_path / "afile", pcfg, progress=False)


def test_preprocess_concurrent_run_is_refused(tmp_path, sample_photos, pcfg, hold_lock):
    from facechain.preprocess import preprocess

    _save(tmp_path / "photos" / "me.png", sample_photos.astronaut())
    holder = hold_lock(tmp_path / "out", "preprocess")
    with pytest.raises(OutputInUseError, match=f"in use by pid {holder.pid}"):
        preprocess(tmp_path / "photos", tmp_path / "out", pcfg, progress=False)


@pytest.mark.slow
def test_folder_named_like_a_photo_and_a_small_face_are_reported(tmp_path, sample_photos, pcfg):
    from facechain.preprocess import preprocess
    from facechain.preprocess.errors import NoPhotosKept

    photos = tmp_path / "photos"
    (photos / "album.jpg").mkdir(parents=True)
    # the astronaut's face (Face.size ~110 px at 512) at 2/3 scale in a 2400 px photo: ~73 px, under the 80 px minimum
    canvas = np.full((2400, 2400, 3), 235, np.uint8)
    small = np.asarray(Image.fromarray(sample_photos.astronaut()).resize((341, 341), Image.Resampling.LANCZOS))
    canvas[900:1241, 1000:1341] = small
    _save(photos / "far.jpg", canvas)
    with pytest.raises(NoPhotosKept):
        preprocess(photos, tmp_path / "out", pcfg, progress=False)
    entries = {e["input"]: e for e in json.loads((tmp_path / "out" / "failed_report.json").read_text())["entries"]}
    assert entries["album.jpg"]["reason"] == "not_a_file" and "folder" in entries["album.jpg"]["detail"]
    assert entries["far.jpg"]["reason"] == "face_too_small", entries["far.jpg"]
    assert 60 < entries["far.jpg"]["scores"]["face_size"] < 80


def test_heic_photos_are_read(tmp_path, sample_photos):
    import pillow_heif

    from facechain.images import load_photo

    heif = pillow_heif.from_pillow(Image.fromarray(sample_photos.astronaut()))
    heif.save(tmp_path / "me.heic", quality=90)
    rgb = load_photo(tmp_path / "me.heic")
    assert rgb.shape == (512, 512, 3)
    assert np.abs(rgb.astype(int) - sample_photos.astronaut()).mean() < 12


# --------------------------------------------------------------------------- generate

def _gcfg(tiny, out, **kw):
    from facechain.generate import GenerateConfig

    base = {"base_model": str(tiny), "output_dir": out, "num_candidates": 2, "num_images": 1, "batch_size": 2,
            "num_inference_steps": 2, "rank_candidates": False, "fusion": "off", "device": "cpu", "dtype": "float32",
            "styles": ["Business suit", "Chef"], "height": 64, "width": 64}
    base.update(kw)
    return GenerateConfig(**base)


def _manifest_consistent(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    files = [k["file"] for s in m["styles"] if "kept" in s for k in s["kept"]]
    files += [c["file"] for s in m["styles"] if "candidates" in s for c in s["candidates"]]
    assert files and all((out / f).is_file() for f in files), files
    on_disk = {k for k in _snapshot(out) if k.endswith(".png") and k != "contact_sheet.png" and k not in USER}
    assert on_disk == set(files), (on_disk, files)  # every image of ours is in the manifest, and only those
    return m


@pytest.mark.slow
def test_generate_keeps_user_files_and_previous_results(tiny_sd15, tmp_path, monkeypatch):
    from facechain.generate import run_job
    from facechain.generate.pipeline import PortraitGenerator

    out = tmp_path / "out"
    user = _user_files(out)
    with pytest.raises(InputError, match="did not write .*--allow-other-files"):
        run_job(_gcfg(tiny_sd15, out))
    # with the flag, a user's manifest.json where ours must go is refused before any model loads
    monkeypatch.setattr(PortraitGenerator, "__init__", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(OutputConflictError, match=r"under names its results need \(manifest.json\)"):
        run_job(_gcfg(tiny_sd15, out, allow_other_files=True))
    monkeypatch.undo()
    (out / "manifest.json").rename(out / "my_manifest.json")
    user = {(p.with_name("my_manifest.json") if p.name == "manifest.json" else p): d for p, d in user.items()}
    out2 = tmp_path / "out2"
    run_job(_gcfg(tiny_sd15, out2))
    first = _snapshot(out2)
    _manifest_consistent(out2)
    # a second job that fails in every style leaves the first job's results and manifest as they were
    real_generate = PortraitGenerator.generate

    def fail(self, style, subject):
        raise FacechainError(f"style {style.name} failed on purpose")

    monkeypatch.setattr(PortraitGenerator, "generate", fail)
    with pytest.raises(JobFailed, match="every style failed; first error: .*failed_manifest.json"):
        run_job(_gcfg(tiny_sd15, out2, seed=7))
    assert {k: v for k, v in _snapshot(out2).items() if k != "failed_manifest.json"} == first
    _manifest_consistent(out2)

    # a job killed half way (after its first style) leaves them too
    calls = []

    def interrupted(self, style, subject):
        calls.append(style.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(self, style, subject)

    monkeypatch.setattr(PortraitGenerator, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(_gcfg(tiny_sd15, out2, seed=9))
    assert {k: v for k, v in _snapshot(out2).items() if k != "failed_manifest.json"} == first

    # a successful job replaces them, into a user's folder only with the flag; the user's files stay
    monkeypatch.setattr(PortraitGenerator, "generate", real_generate)
    res = run_job(_gcfg(tiny_sd15, out2, seed=11, styles=["Chef"]))
    m = _manifest_consistent(out2)
    assert [s["style"] for s in m["styles"]] == ["Chef"] and not (out2 / "failed_manifest.json").exists()
    assert all(p.parent in (out2, out2 / "candidates") and p.is_file() for p in res.kept)
    run_job(_gcfg(tiny_sd15, out, allow_other_files=True, styles=["Chef"]))
    run_job(_gcfg(tiny_sd15, out, allow_other_files=True, styles=["Chef"], seed=3))
    _intact(user)


def test_generate_bad_inputs_are_clear_errors_before_anything_is_written(tiny_sd15, tmp_path):
    from facechain.generate import load_generate_config, run_job
    from facechain.generate.job import check_inputs

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "face.bin").write_bytes(b"pickle")
    with pytest.raises(UnsafeCheckpointError, match="face LoRA .*face.bin is a pickle file"):
        check_inputs(_gcfg(tiny_sd15, tmp_path / "o", lora_dir=lora, lora_file="face.bin"))
    for bad in ("../../../../etc/passwd", "/etc/passwd", "sub/face.safetensors", ".."):
        with pytest.raises(InputError, match="must be a file name inside lora_dir"):
            check_inputs(_gcfg(tiny_sd15, tmp_path / "o", lora_dir=lora, lora_file=bad))
    base = {"base_model": str(tiny_sd15), "output_dir": str(tmp_path / "o")}
    for key, value, message in [("seed", 2**64, "seed must be between 0 and"), ("seed", -1, "seed must be between"),
                                ("guidance_scale", float("nan"), "finite number"),
                                ("guidance_scale", float("inf"), "finite number"),
                                ("num_candidates", 100000, "over the limit of 256")]:
        with pytest.raises(InputError, match=message):
            load_generate_config(None, {**base, key: value, "num_images": 1})
    with pytest.raises(InputError, match="pose .* may not contain folders"):
        check_inputs(_gcfg(tiny_sd15, tmp_path / "o", pose="../poses/upper_body_front"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        run_job(_gcfg(tiny_sd15, tmp_path / "afile"))
    assert not (tmp_path / "o").exists()


def test_pose_image_over_the_megapixel_limit_is_a_clear_error(tmp_path):
    from facechain.images import INPUT_MAX_MEGAPIXELS
    from facechain.generate.poses import load_pose

    side = int((INPUT_MAX_MEGAPIXELS * 1e6) ** 0.5) + 100
    Image.new("RGB", (side, side)).save(tmp_path / "huge.png")
    with pytest.raises(InputError, match="pose image .*huge.png cannot be used: .*megapixel"):
        load_pose(str(tmp_path / "huge.png"), (64, 64))


def test_pose_photo_needs_allow_pickle_for_the_annotator(tmp_path, sample_photos):
    from facechain.generate.poses import load_pose

    _save(tmp_path / "photo.png", sample_photos.astronaut())
    with pytest.raises(UnsafeCheckpointError, match="annotator weights .* pickle .*--allow-pickle"):
        load_pose(str(tmp_path / "photo.png"), (64, 64))


def test_generate_concurrent_job_is_refused(tiny_sd15, tmp_path, hold_lock):
    from facechain.generate import run_job

    holder = hold_lock(tmp_path / "out", "generate")
    with pytest.raises(OutputInUseError, match=f"in use by pid {holder.pid}"):
        run_job(_gcfg(tiny_sd15, tmp_path / "out"))


# --------------------------------------------------------------------------- train

def _tcfg(model, data, out, **kw):
    from facechain.train import TrainConfig

    settings = {"base_model": str(model), "train_data_dir": str(data), "output_dir": str(out), "resolution": 64, "aug_variants": 2,
                    "max_train_steps": 2, "checkpointing_steps": 2, "face_backend": "none", "num_threads": 1}
    settings.update(kw)
    return TrainConfig(**settings)


def test_diffusers_folder_with_only_pickle_weights_needs_allow_pickle(tiny_sd15, tmp_path):
    import torch
    from safetensors.torch import load_file

    from facechain.models import load_pipeline, resolve_model

    model = tmp_path / "model"
    shutil.copytree(tiny_sd15, model)
    st = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(st)), model / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    with pytest.raises(UnsafeCheckpointError, match="component 'unet' ships its weights only as pickle files .*--allow-pickle"):
        resolve_model(str(model))
    pipe = load_pipeline(resolve_model(str(model), allow_pickle=True))
    assert pipe.unet is not None


@pytest.mark.unit
def test_processed_folder_problems_are_clear_errors(tmp_path):
    from facechain.testing import make_processed_folder
    from facechain.train.data import load_processed

    data = make_processed_folder(tmp_path / "p", n=1)
    meta = data / "metadata.jsonl"
    for row, message in [({"file_name": "../p/000.png", "text": "x"}, "no absolute path, no '..'"),
                         ({"file_name": "/etc/hostname", "text": "x"}, "no absolute path"),
                         ({"file_name": "000.png", "text": None}, "caption\\) must be a string, got None"),
                         ({"file_name": "000.png", "text": 3}, "must be a string")]:
        meta.write_text(json.dumps(row) + "\n")
        with pytest.raises(InputError, match=message):
            load_processed(data)
    meta.write_bytes(b'{"file_name": "000.png", "text": "caf\xe9"}\n')  # latin-1, not UTF-8
    with pytest.raises(InputError, match="is not UTF-8 text"):
        load_processed(data)
    (data / "001.png").write_text("not an image")
    meta.write_text(json.dumps({"file_name": "001.png", "text": "x"}) + "\n")
    with pytest.raises(InputError, match="001.png .*is not a usable image"):
        load_processed(data)


def test_nan_learning_rate_is_a_clear_error(tmp_path, capsys):
    from facechain.cli import main

    for flag, value in [("--learning_rate", "nan"), ("--learning_rate", "inf"), ("--seed", str(2**40))]:
        assert main(["train", "m", str(tmp_path / "p"), str(tmp_path / "o"), flag, value]) == 1
        err = capsys.readouterr().err
        assert ("finite number" in err) or ("seed" in err and "between" in err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_resume_checks_the_model_files_not_the_path_string(tiny_sd15, tmp_path, monkeypatch):
    from facechain.testing import build_tiny_sd15, make_processed_folder
    from facechain.train import train

    data = make_processed_folder(tmp_path / "p", n=1)
    model = tmp_path / "model"
    shutil.copytree(tiny_sd15, model)
    out = tmp_path / "o"
    train(_tcfg(model, data, out), progress=False)
    # the same model and folders through relative paths: accepted
    monkeypatch.chdir(tmp_path)
    art = train(_tcfg("model", "p", "o", resume=True), progress=False)
    assert art.steps == 2
    # the output folder moved, resumed from another working directory with absolute paths: accepted
    shutil.move(str(out), str(tmp_path / "moved"))
    monkeypatch.chdir(tiny_sd15)
    assert train(_tcfg(model, data, tmp_path / "moved", resume=True), progress=False).steps == 2
    out = tmp_path / "moved"
    # another model behind the same path: refused
    shutil.rmtree(model)
    build_tiny_sd15(model, seed=5)
    with pytest.raises(InputError, match="base model's files changed"):
        train(_tcfg(model, data, out, resume=True), progress=False)


def test_trainer_refuses_a_locked_folder_and_user_files(tiny_sd15, tmp_path, hold_lock):
    from facechain.testing import make_processed_folder
    from facechain.train import train

    data = make_processed_folder(tmp_path / "p", n=1)
    holder = hold_lock(tmp_path / "o", "train")
    with pytest.raises(OutputInUseError, match=f"in use by pid {holder.pid}"):
        train(_tcfg(tiny_sd15, data, tmp_path / "o", resume=True), progress=False)
    user = _user_files(tmp_path / "u")
    with pytest.raises(InputError, match="did not write"):
        train(_tcfg(tiny_sd15, data, tmp_path / "u"), progress=False)
    _intact(user)


def test_train_output_folder_cases_found_by_review(tiny_sd15, tmp_path):
    from facechain.testing import make_processed_folder
    from facechain.train import train

    data = make_processed_folder(tmp_path / "p", n=1)
    done = tmp_path / "done"
    train(_tcfg(tiny_sd15, data, done), progress=False)
    # a finished run whose checkpoints the user deleted: --resume cannot continue it, and its LoRA stays
    shutil.copytree(done, tmp_path / "nock")
    shutil.rmtree(tmp_path / "nock" / "checkpoints")
    lora = (tmp_path / "nock" / "pytorch_lora_weights.safetensors").read_bytes()
    with pytest.raises(InputError, match="finished run's final LoRA .* but no checkpoint"):
        train(_tcfg(tiny_sd15, data, tmp_path / "nock", resume=True, rank=8), progress=False)
    assert (tmp_path / "nock" / "pytorch_lora_weights.safetensors").read_bytes() == lora
    (tmp_path / "nock" / "pytorch_lora_weights.safetensors").unlink()  # only the kohya file is left
    kohya = (tmp_path / "nock" / "pytorch_lora_weights_kohya.safetensors").read_bytes()
    for resume in (True, False):
        with pytest.raises(InputError, match="final LoRA"):
            train(_tcfg(tiny_sd15, data, tmp_path / "nock", resume=resume), progress=False)
    assert (tmp_path / "nock" / "pytorch_lora_weights_kohya.safetensors").read_bytes() == kohya
    # a damaged checkpoint is named, not a traceback
    shutil.copytree(done, tmp_path / "dmg")
    (tmp_path / "dmg" / "checkpoints" / "step-000002" / "state.json").write_text("{garbage")
    with pytest.raises(InputError, match="checkpoint .*step-000002 is damaged"):
        train(_tcfg(tiny_sd15, data, tmp_path / "dmg", resume=True), progress=False)
    # the user's own log where ours goes: refused, untouched
    shutil.copytree(done, tmp_path / "log")
    for name in ("checkpoints",):
        shutil.rmtree(tmp_path / "log" / name)
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"):
        (tmp_path / "log" / name).unlink()
    (tmp_path / "log" / "train_log.jsonl").write_text("my own file\n")
    with pytest.raises(OutputConflictError, match="train_log.jsonl"):
        train(_tcfg(tiny_sd15, data, tmp_path / "log"), progress=False)
    assert (tmp_path / "log" / "train_log.jsonl").read_text() == "my own file\n"
    # a user's LoRA file in a folder allowed to hold other files: refused before any training
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "pytorch_lora_weights_kohya.safetensors").write_bytes(b"mine")
    with pytest.raises(OutputConflictError, match="kohya"):
        train(_tcfg(tiny_sd15, data, tmp_path / "mine", allow_other_files=True, resume=True), progress=False)
    assert not (tmp_path / "mine" / "train_log.jsonl").exists()
    assert (tmp_path / "mine" / "pytorch_lora_weights_kohya.safetensors").read_bytes() == b"mine"


def test_a_damaged_lora_file_is_a_clear_error(tiny_sd15, tmp_path):
    from facechain.lora import load_adapter as _load_lora
    from facechain.models import load_pipeline, resolve_model

    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{truncated")
    pipe = load_pipeline(resolve_model(str(tiny_sd15)))
    with pytest.raises(InputError, match=r"LoRA .*bad.safetensors could not be read as a safetensors file"):
        _load_lora(pipe, tmp_path / "bad.safetensors", "face")


@pytest.mark.slow
def test_killing_train_lora_sh_stops_the_trainer(tiny_sd15, tmp_path):
    photos = tmp_path / "imgs"
    photos.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable, "PREPROCESS_FLAGS": "--backend dlib --quiet",
           "OMP_NUM_THREADS": "1"}
    from facechain import samples

    _save(photos / "me.png", samples.astronaut())
    out = tmp_path / "o"
    proc = subprocess.Popen(["sh", str(REPO / "train_lora.sh"), str(tiny_sd15), "", "", str(photos), str(tmp_path / "proc"),
                             str(out), "--resolution", "64", "--aug_variants", "2", "--steps_per_image", "100000", "--max_train_steps", "100000",
                             "--checkpointing_steps", "100000", "--validation", "none", "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not (log.is_file() and '"loss"' in log.read_text()):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    trainer_pid = json.loads((out / STATE_DIR / "lock").read_text())["pid"]
    os.kill(trainer_pid, 0)  # training, and holding the folder
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(trainer_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(trainer_pid, signal.SIGKILL)
        pytest.fail("the trainer kept running after train_lora.sh was stopped")
    assert proc.returncode != 0
    # and the folder is free for --resume
    from facechain.outputs import OutputDir

    with OutputDir.open(out, "train"):
        pass


# --------------------------------------------------------------------------- stylize

def test_stylize_out_that_is_a_file_and_style_folder_are_clear_errors(tmp_path, sample_photos, capsys):
    from facechain.cli import main

    _save(tmp_path / "c.png", sample_photos.astronaut())
    (tmp_path / "out.png").write_text("x")
    assert main(["stylize", "--base-model", "none", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "c.png"),
                 "--output-dir", str(tmp_path / "out.png")]) == 1
    assert "output_dir" in (err := capsys.readouterr().err) and "is a file, not a folder" in err
    (tmp_path / "styles").mkdir()
    assert main(["stylize", "--base-model", "none", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "styles"),
                 "--output-dir", str(tmp_path / "o")]) == 1
    assert "is a folder, not an image file" in capsys.readouterr().err
    assert (tmp_path / "out.png").read_text() == "x" and not (tmp_path / "o").exists()
    # an input inside --out (a previous result), or the inversion cache there: refused
    (tmp_path / "o").mkdir()
    _save(tmp_path / "o" / "prev.png", sample_photos.astronaut())
    assert main(["stylize", "--base-model", "none", "--content", str(tmp_path / "o" / "prev.png"), "--style",
                 str(tmp_path / "c.png"), "--output-dir", str(tmp_path / "o")]) == 1
    assert "is inside output_dir" in capsys.readouterr().err
    assert main(["stylize", "--base-model", "none", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "c.png"),
                 "--cache-dir", str(tmp_path / "o" / "cache"), "--output-dir", str(tmp_path / "o")]) == 1
    assert "cache_dir" in capsys.readouterr().err and (tmp_path / "o" / "prev.png").is_file()


@pytest.mark.unit
def test_resume_compares_paths_by_what_they_point_to():
    from pathlib import Path as P

    from facechain.config import to_dict
    from facechain.train import TrainConfig
    from facechain.train.trainer import check_resume_config

    now = TrainConfig(base_model="/abs/m", train_data_dir="/abs/p", output_dir="/abs/o", init_lora="/abs/l.safetensors")
    saved = to_dict(TrainConfig(base_model="m", train_data_dir="p", output_dir="o", init_lora="l.safetensors"))
    check_resume_config(now, saved, P("ckpt"), "model-A", "model-A", saved_init="lora-A", init_now="lora-A")
    with pytest.raises(InputError, match="init_lora"):
        check_resume_config(now, saved, P("ckpt"), "model-A", "model-A", saved_init="lora-A", init_now="lora-B")
    with pytest.raises(InputError, match="base model's files changed"):
        check_resume_config(now, saved, P("ckpt"), "model-A", "model-B", saved_init="lora-A", init_now="lora-A")
    check_resume_config(now, saved, P("train_config.json"), config_only=True)  # nothing trained yet: paths may differ
    with pytest.raises(InputError, match="rank: 8 -> 4"):
        check_resume_config(now, {**saved, "rank": 8}, P("train_config.json"), config_only=True)
