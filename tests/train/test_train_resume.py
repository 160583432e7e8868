"""Resume after kill -9: the run finishes at the same step with the same LoRA as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from facechain.train import TrainConfig, train
from facechain.testing import make_processed_folder as make_processed



STEPS, EVERY = 60, 5


def tiny_cfg(model, data, out, **kw) -> TrainConfig:
    return TrainConfig(base_model=str(model), train_data_dir=str(data), output_dir=str(out), **kw)


@pytest.mark.slow
def test_resume_after_kill(tiny_sd15, tmp_path):
    data = make_processed(tmp_path / "p")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "facechain", "train", str(tiny_sd15), str(data), str(out), "--resolution", "64",
           "--aug_variants", "2", "--max_train_steps", str(STEPS), "--checkpointing_steps", str(EVERY),
           "--validation", "none", "--learning_rate", "1e-3", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "checkpoints" / f"step-{EVERY:06d}" / "state.json"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed:\n{log[-3000:]}"
    assert first.exists(), log[-3000:]
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    killed_at = max(int(json.loads(l)["step"]) for l in (out / "train_log.jsonl").read_text().splitlines()
                    if l.strip().startswith("{") and '"loss"' in l)
    assert killed_at < STEPS

    cfg = {"resolution": 64, "aug_variants": 2, "max_train_steps": STEPS, "checkpointing_steps": EVERY, "face_backend": "none", "learning_rate": 1e-3,
               "num_threads": 1}
    resumed = train(tiny_cfg(tiny_sd15, data, out, resume=True, **cfg), progress=False)
    assert resumed.steps == STEPS and resumed.selected_steps == [STEPS]
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))  # every step exactly once
    assert [r["event"] for r in rows if r.get("event") in ("start", "resume", "final")] == ["start", "resume", "final"]

    straight = train(tiny_cfg(tiny_sd15, data, tmp_path / "straight", **cfg), progress=False)
    a, b = load_file(str(resumed.lora_path)), load_file(str(straight.lora_path))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    # and it is a usable LoRA
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15), safety_checker=None)
    pipe.load_lora_weights(str(out))
    assert pipe.get_active_adapters() == ["default_0"]
