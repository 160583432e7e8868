"""Training that fills the disk: one line naming the disk and the sizes, exit 1, and ``--resume`` goes on from the
last checkpoint once there is room. The full disk is simulated with the error safetensors raises on one (see
tests/core/test_disk_full.py)."""

from pathlib import Path

from safetensors import SafetensorError

from facechain.cli import main

FLAGS = ["--resolution", "64", "--aug-variants", "2", "--max-train-steps", "4", "--checkpointing-steps", "2",
         "--face-backend", "none", "--validation-num-inference-steps", "2", "--num-validation-images", "1",
         "--num-threads", "1", "--no-progress"]


def test_full_disk_at_a_checkpoint_is_one_line_and_resume_goes_on(tiny_sd15, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    from facechain.testing import make_processed_folder

    data = make_processed_folder(tmp_path / "p", 2, 512, "<fcsks>, a person")
    out = tmp_path / "out"
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if "step-000004" in str(filename):  # the disk fills up after the first checkpoint
            Path(filename).write_bytes(b"\0" * 100)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    assert main(["train", str(tiny_sd15), str(data), str(out), *FLAGS]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest: model-loading progress bars
    assert len(errors) == 1 and "Traceback" not in err and "SafetensorError" not in err, err
    assert errors[0].startswith("error: no space left on the disk mounted at ")
    assert "checkpoint-step-000004" in errors[0] and " needs " in errors[0] and "is free there" in errors[0]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert main(["train", str(tiny_sd15), str(data), str(out), *FLAGS, "--resume"]) == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file()
