"""The one training loop (facechain.train.loop) on a small real torch model: resume equals an uninterrupted
run, the log keeps one row per step, divergence is one clear error, and the output folder rule."""

from __future__ import annotations

import json

import pytest
import torch

from facechain.errors import InputError
from facechain.train import loop


class LinearSteps(loop.Steps):
    """A linear model fitted to a fixed target on inputs drawn from the training generator."""

    desc = "test"
    divergence_hint = "Lower --lr."

    def __init__(self, model, gen, blow_up_at: int | None = None, die_at: int | None = None):
        self.model, self.gen, self.blow_up_at, self.die_at = model, gen, blow_up_at, die_at

    def loss(self, step: int) -> torch.Tensor:
        if step + 1 == self.die_at:
            raise KeyboardInterrupt  # the process stopped mid-run
        x = torch.randn(4, 3, generator=self.gen)
        loss = ((self.model(x) - 1.0) ** 2).mean()
        return loss * float("inf") if step + 1 == self.blow_up_at else loss

    def trainable(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}


def _train(out, max_steps=6, resume=False, **steps_kw):
    """One run in ``out``: returns (weights, log rows); ``loop.check_output_dir`` guards the folder."""
    from accelerate import Accelerator

    from facechain.outputs import OutputDir
    from facechain.runtime import restored_after_run

    with restored_after_run():
        od = OutputDir.acquire(out, "train")
        try:
            existing = loop.check_output_dir(out, resume, ("final.safetensors",), "final model", od)
            accelerator = Accelerator(cpu=True)
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
            model, optimizer = accelerator.prepare(model, optimizer)
            gen = torch.Generator().manual_seed(1)
            run = loop.Run(out, od, accelerator, gen, optimizer, max_steps, 2, None, extra={"config": {}})
            start = loop.resume(run, existing, model.load_state_dict)
            loop.run_steps(run, LinearSteps(model, gen, **steps_kw), start, progress=False)
            weights = {k: v.clone() for k, v in model.state_dict().items()}
        finally:
            od.release()
    rows = [json.loads(line) for line in (out / loop.LOG_FILE).read_text().splitlines()]
    return weights, rows


def test_a_resumed_run_equals_an_uninterrupted_one_and_its_log_has_each_step_once(tmp_path):
    import shutil

    full, full_rows = _train(tmp_path / "full")
    assert [r["step"] for r in full_rows] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in sorted((tmp_path / "full" / "checkpoints").iterdir())] == [
        "step-000002", "step-000004", "step-000006"]
    part = tmp_path / "part"
    _train(part)
    shutil.rmtree(part / "checkpoints" / "step-000006")  # as if killed after step 6's row, before its checkpoint
    with pytest.raises(InputError, match="already holds a training run .*Pass --resume"):
        _train(part)
    resumed, rows = _train(part, resume=True)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # the rows of steps 5 and 6 were written again, once
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]
    assert all(torch.equal(resumed[k], full[k]) for k in full)


def test_a_run_stopped_before_its_first_checkpoint_can_run_again(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        _train(out, die_at=2)
    assert len((out / loop.LOG_FILE).read_text().splitlines()) == 1 and not (out / "checkpoints").exists()
    _, rows = _train(out, resume=True)  # the log it left is facechain's: replaced, not refused
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_diverging_loss_is_one_clear_error(tmp_path):
    with pytest.raises(loop.TrainingDivergedError, match=r"loss became inf at step 3\. Lower --lr\.") as err:
        _train(tmp_path / "o", blow_up_at=3)
    assert isinstance(err.value, InputError)  # callers that catch bad input catch it too


def test_the_output_folder_rule(tmp_path):
    from facechain.outputs import OutputDir

    out = tmp_path / "o"
    out.mkdir()
    (out / "final.safetensors").write_bytes(b"x")  # a finished run whose checkpoints were deleted
    with pytest.raises(InputError, match="already holds a training run"):
        loop.check_output_dir(out, False, ("final.safetensors",), "final model")
    with pytest.raises(InputError, match="finished run's final model .final.safetensors. but no checkpoint"):
        loop.check_output_dir(out, True, ("final.safetensors",), "final model")
    other = tmp_path / "other"
    other.mkdir()
    (other / loop.LOG_FILE).write_text("my notes\n")
    od = OutputDir.acquire(other, "train", allow_other_files=True)
    try:
        with pytest.raises(InputError, match="holds a train_log.jsonl that facechain did not write"):
            loop.check_output_dir(other, False, ("final.safetensors",), "final model", od)
    finally:
        od.release()
    assert loop.check_output_dir(tmp_path / "empty", True, ("final.safetensors",), "final model") == []
