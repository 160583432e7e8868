"""A write that finds the disk full is one line naming the disk, the size being written and the space free, never
a traceback. The full disk is simulated with the errors the writers raise on one: safetensors' Rust writer raises
``SafetensorError("... I/O error: No space left on device (os error 28)")`` (seen on a 512 KB tmpfs with
safetensors 0.8), Python's own writes ``OSError(ENOSPC)``."""

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from facechain.cli import main
from facechain.errors import DiskFullError
from facechain.io import filesystem_of, save_safetensors, write_json

pytestmark = pytest.mark.unit  # model-free

FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def full_disk_writer(monkeypatch, message: str = FULL):
    """safetensors' save_file as it behaves on a full disk: part of the file written, then the error."""
    import safetensors.torch

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise SafetensorError(message)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_full_disk_while_saving_tensors_is_one_clear_error(tmp_path, monkeypatch):
    target = tmp_path / "ckpt" / "lora.safetensors"
    save_safetensors(target, {"w": torch.ones(2)})
    before = target.read_bytes()
    full_disk_writer(monkeypatch)
    with pytest.raises(DiskFullError) as exc:
        save_safetensors(target, {"w": torch.zeros(1000, 1000)})
    msg = str(exc.value)
    assert msg.startswith(f"no space left on {filesystem_of(tmp_path)}: writing {target} needs 4.0 MB, and ")
    assert "is free there" in msg and "--resume" in msg and "\n" not in msg
    assert isinstance(exc.value, OSError)
    assert target.read_bytes() == before and os.listdir(target.parent) == ["lora.safetensors"]  # no temporary file left


def test_other_safetensors_errors_pass_through(tmp_path, monkeypatch):
    full_disk_writer(monkeypatch, "Error while serializing: I/O error: Permission denied (os error 13)")
    with pytest.raises(SafetensorError, match="Permission denied"):
        save_safetensors(tmp_path / "x.safetensors", {"w": torch.zeros(2)})


def test_full_disk_or_quota_on_a_plain_write(tmp_path, monkeypatch):
    def no_space(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", no_space)
    with pytest.raises(DiskFullError, match=r"no space left on the disk mounted at .*: writing .*state\.json needs 2\.0 KB"):
        write_json(tmp_path / "state.json", {"a": "x" * 2000})

    def no_quota(self, data):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(Path, "write_bytes", no_quota)
    with pytest.raises(DiskFullError, match=r"your disk quota is used up on the disk mounted at"):
        write_json(tmp_path / "state.json", {"a": 1})
    assert not list(tmp_path.iterdir())


def test_filesystem_names_the_mount_point(tmp_path):
    text = filesystem_of(tmp_path)
    mount = Path(text.removeprefix("the disk mounted at ").split(" (")[0])
    assert os.path.ismount(mount) and (tmp_path == mount or mount in tmp_path.parents)
    assert shutil.disk_usage(mount).total == shutil.disk_usage(tmp_path).total


def test_cli_prints_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    src = tmp_path / "weights.bin"
    torch.save({"proj": {"weight": torch.zeros(8, 8)}}, src)
    full_disk_writer(monkeypatch)
    out = tmp_path / "weights.safetensors"
    assert main(["convert", str(src), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the disk mounted at ") and err.count("\n") == 1
    assert f"writing {out} needs" in err and "Traceback" not in err and not out.exists()
