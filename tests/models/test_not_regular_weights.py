"""A weights path that is a FIFO or a device (``facechain convert /dev/zero``): "not a regular file", not "does not
exist", and nothing is opened."""

import os

import pytest

from facechain.cli import main
from facechain.errors import InputError
from facechain.models import resolve_weights_file

pytestmark = pytest.mark.unit  # model-free


def test_convert_dev_zero_says_not_a_regular_file(capsys):
    assert main(["convert", "/dev/zero"]) == 1
    err = capsys.readouterr().err
    assert "'/dev/zero' is a character device, not a regular file" in err and "does not exist" not in err


def test_fifo_weights_file_is_refused_unopened(tmp_path):
    os.mkfifo(tmp_path / "lora.safetensors")
    with pytest.raises(InputError, match=r"LoRA '.*lora\.safetensors' is a FIFO \(named pipe\), not a regular file"):
        resolve_weights_file(tmp_path / "lora.safetensors")
    with pytest.raises(InputError, match="is a FIFO"):  # a folder + a file name in it
        resolve_weights_file(tmp_path, filename="lora.safetensors")
    with pytest.raises(Exception, match="does not exist"):
        resolve_weights_file(tmp_path / "missing.safetensors")
