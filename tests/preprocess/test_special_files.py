"""FIFOs, devices and broken links among the photos: each is in the report with its reason, and none is opened (a
FIFO would block the run until something wrote to it; /dev/zero never ends)."""

import json
import os
import signal

import pytest
from PIL import Image

from facechain.images import ImageRejected, load_photo, read_image
from facechain.errors import InputError
from facechain.preprocess import PreprocessConfig, preprocess

CFG = PreprocessConfig(face_backend="dlib", mask="landmarks", workers=1)


@pytest.fixture
def no_hang():
    """Fail instead of hanging when something opens a FIFO."""
    def stuck(signum, frame):
        raise TimeoutError("a FIFO was opened: the run blocked")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_fifo_and_device_are_reported_not_a_regular_file(tmp_path, sample_photos, dlib_analyzer, no_hang):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(sample_photos.astronaut()).save(src / "a.png")
    os.mkfifo(src / "pipe.jpg")
    os.mkfifo(src / "pipe")
    (src / "zero.png").symlink_to("/dev/zero")
    (src / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    res = preprocess(src, tmp_path / "out", CFG, analyzer=dlib_analyzer, progress=False)
    assert [p.name for p in res.kept] == ["000.png"]
    report = {e["input"]: e for e in json.loads((tmp_path / "out" / "report.json").read_text())["entries"]}
    assert set(report) == {"a.png", "pipe.jpg", "pipe", "zero.png", "gone.jpg"}
    for name, kind in (("pipe.jpg", "a FIFO (named pipe)"), ("pipe", "a FIFO (named pipe)"),
                       ("zero.png", "a character device")):
        assert report[name]["reason"] == "not_a_file", report[name]
        assert report[name]["detail"].startswith(f"this is {kind}, not a regular file"), report[name]
    assert report["gone.jpg"]["reason"] == "unreadable" and "No such file" in report["gone.jpg"]["detail"]


def test_readers_refuse_a_fifo_without_opening_it(tmp_path, no_hang):
    os.mkfifo(tmp_path / "p.png")
    with pytest.raises(ImageRejected, match="this is a FIFO"):
        load_photo(tmp_path / "p.png")
    with pytest.raises(InputError, match=r"pose image .*p\.png cannot be used: this is a FIFO \(named pipe\), not a regular"):
        read_image(tmp_path / "p.png", "pose image")
    with pytest.raises(InputError, match="content image /dev/zero cannot be used: this is a character device"):
        read_image("/dev/zero", "content image")
