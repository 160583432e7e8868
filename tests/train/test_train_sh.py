"""`sh train_lora.sh` end to end: real photos -> preprocessing -> accelerate launch -> LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "train_lora.sh"


def _env() -> dict:
    return {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PREPROCESS_FLAGS": "--backend dlib --workers 1 --quiet", "PYTHONPATH": str(ROOT)}


def _photos(folder: Path) -> Path:
    """Three photos of one person (skimage's astronaut): as is, mirrored, and zoomed out on grey."""
    from PIL import Image, ImageOps
    from skimage import data

    folder.mkdir(parents=True)
    photo = Image.fromarray(data.astronaut())
    photo.save(folder / "a.jpg", quality=95)
    ImageOps.mirror(photo).save(folder / "b.png")
    canvas = Image.new("RGB", (640, 640), (128, 128, 128))
    canvas.paste(photo, (64, 32))
    canvas.save(folder / "c.png")
    return folder


@pytest.mark.slow
def test_train_lora_sh_end_to_end(tiny_sd15, tmp_path, dlib_analyzer):
    imgs = _photos(tmp_path / "imgs")
    processed, out = tmp_path / "processed", tmp_path / "out"
    cmd = ["sh", str(SCRIPT), str(tiny_sd15), "", "", str(imgs), str(processed), str(out),
           "--resolution", "64", "--max_train_steps", "2", "--checkpointing_steps", "1", "--aug_variants", "2",
           "--face_backend", "dlib", "--num_validation_images", "1", "--validation_num_inference_steps", "2", "--no-progress",
           "--learning_rate", "1e-2"]  # 2 steps at FaceChain's 1.5e-4 barely move a tiny model's output
    env = {k: v for k, v in _env().items() if k != "OMP_NUM_THREADS"}  # as a user's shell: unset
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    meta = [json.loads(l) for l in (processed / "metadata.jsonl").read_text().splitlines() if l.strip()]
    assert len(meta) >= 2 and all(m["text"].startswith("<fcsks>") for m in meta)
    # FaceCrop on a real processed photo: face ~0.35-0.45 of the crop, centre at 0.35-0.5 of its height
    import torch
    from PIL import Image

    from facechain.train.data import augment

    gen = torch.Generator().manual_seed(0)
    with Image.open(processed / meta[0]["file_name"]) as im:
        crops = [augment(im, 256, gen, face_crop=True, flip=False) for _ in range(4)]
    faces = [dlib_analyzer.detect(np.asarray(c))[0] for c in crops]
    assert all(0.3 <= f.size / 256 <= 0.5 and 0.3 <= f.center[1] / 256 <= 0.55 for f in faces), [(f.size, f.center) for f in faces]
    assert {p.name for p in out.iterdir()} >= {"pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors",
                                               "train_config.json", "train_log.jsonl"}
    cfg = json.loads((out / "train_config.json").read_text())
    assert (cfg["resolution"], cfg["max_train_steps"], cfg["revision"], cfg["sub_path"]) == (64, 2, "", "")
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    # run as users run it (accelerate launch sets OMP_NUM_THREADS=1): every usable core, fp32 on a CPU
    from facechain.runtime import usable_cpus

    start = rows[0]
    assert start["event"] == "start" and start["threads"] == usable_cpus() and start["mixed_precision"] == "no", start
    scored = [r for r in rows if r.get("event") == "checkpoint"]
    assert [r["step"] for r in scored] == [1, 2] and all(isinstance(r["score"], float) for r in scored)
    assert all(0.0 <= r["score"] <= 1.0 and len(r["per_image"]) == 1 for r in scored)
    # selection follows the logged scores: the best one (a tie goes to the later step); on the tiny
    # model no validation portrait shows a face, so each score is 0 and the tie rule decides
    expected = max(scored, key=lambda r: (r["score"], r["step"]))["step"]
    final = rows[-1]
    assert final["event"] == "final" and final["selected_steps"] == [expected]

    from facechain.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sd15)))
    pipe.set_progress_bar_config(disable=True)
    import torch

    def img():
        return pipe("<fcsks>", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    base = img()
    pipe.load_lora_weights(str(out))
    change = np.abs(img() - base).max()
    assert change > 1e-3, change  # a loaded LoRA changes the output (as tests/train/test_train.py)


@pytest.mark.slow
def test_train_lora_sh_usage_and_failed_preprocessing(tmp_path):
    proc = subprocess.run(["sh", str(SCRIPT), "model", "", ""], env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: sh train_lora.sh BASE_MODEL REVISION SUB_PATH" in proc.stderr

    from PIL import Image

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "noise.png")
    proc = subprocess.run(["sh", str(SCRIPT), "model", "", "", str(tmp_path / "imgs"), str(tmp_path / "p"), str(tmp_path / "o")],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no training was run" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_lora_sh_trainer_error_is_one_line(tmp_path):
    """A trainer error is one clear line, not followed by the launcher's traceback."""
    from PIL import Image

    from facechain import samples

    (tmp_path / "imgs").mkdir()
    Image.fromarray(samples.astronaut()).save(tmp_path / "imgs" / "me.png")
    proc = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "no_model"), "", "", str(tmp_path / "imgs"), str(tmp_path / "p"),
                           str(tmp_path / "o")], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "error: base model" in proc.stderr and "does not exist on disk" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_two_process_data_parallel_run(tiny_sd15, tmp_path):
    """Two processes (gloo on CPU, launched like accelerate's multi-GPU launcher): one log, one
    LoRA, per-process random state in every checkpoint, and it resumes."""
    from facechain.testing import make_processed_folder

    data = make_processed_folder(tmp_path / "p", n=2)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "facechain", "train",
           str(tiny_sd15), str(data), str(out), "--resolution", "64", "--aug_variants", "2", "--max_train_steps", "4",
           "--checkpointing_steps", "2", "--validation", "none", "--no-progress"]
    env = {**_env(), "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("checkpoints used:") == 1  # printed by the main process only
    assert sorted(p.name for p in (out / "checkpoints" / "step-000004").glob("rng-*")) == ["rng-0.safetensors", "rng-1.safetensors"]
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4] and rows[0]["device"] == "cpu:0"

    import shutil

    shutil.rmtree(out / "checkpoints" / "step-000004")  # as if killed between the checkpoints at 2 and 4
    (out / "pytorch_lora_weights.safetensors").unlink()
    proc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
