"""Preprocessing end to end on real photos with dlib's real models."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facechain.face.align import CROP_SCALE, FACE_CENTER_X, FACE_CENTER_Y
from facechain.preprocess import NoPhotosKept, PreprocessConfig, preprocess
from facechain.images import load_photo

CFG = PreprocessConfig(face_backend="dlib", mask="landmarks")


def _save(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def _report(out, name="report.json"):
    return {e["input"]: e for e in json.loads((out / name).read_text())["entries"]}


def test_single_face_kept_and_placed(tmp_path, sample_photos, dlib_analyzer):
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "a.png", sample_photos.astronaut())
    res = preprocess(src, tmp_path / "out", CFG, progress=False)
    assert [p.name for p in res.kept] == ["000.png"]
    img = np.asarray(Image.open(res.kept[0]).convert("RGB"))
    assert img.shape == (512, 512, 3)
    faces = dlib_analyzer.detect(img)
    assert len(faces) == 1
    f = faces[0]
    cx, cy = f.center / 512
    assert cx == pytest.approx(FACE_CENTER_X, abs=0.03)
    assert cy == pytest.approx(FACE_CENTER_Y, abs=0.04)
    # the face box re-detected in the crop is about 512 / 3.3 px
    assert f.size == pytest.approx(512 / CROP_SCALE, rel=0.2)
    # background turned white by the head mask; the face itself is not
    assert (img[5:40, 5:40] > 245).all()
    assert img[int(f.center[1]), int(f.center[0])].mean() < 240
    meta = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert meta == [{"file_name": "000.png", "text": "<fcsks>, a person"}]
    # dlib gives no gender/age: the report says why the caption is neutral and what to do
    note = json.loads((tmp_path / "out" / "report.json").read_text())["caption_note"]
    assert "no gender or age" in note and "insightface" in note and "metadata.jsonl" in note
    rep = _report(tmp_path / "out")["a.png"]
    assert rep["status"] == "kept" and rep["scores"]["rotation"] == 0 and rep["scores"]["mask"] == "landmarks"
    assert (tmp_path / "out" / "preprocess_config.json").is_file()


@pytest.mark.slow
def test_mixed_folder(tmp_path, sample_photos, dlib_analyzer):
    """Rotations, colour modes and broken files in one run: the good ones kept, the rest reported."""
    a = sample_photos.astronaut()
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "upright.png", a)
    _save(src / "rot90.png", np.ascontiguousarray(np.rot90(a, 1)))
    (src / "exif.jpg").write_bytes(sample_photos.jpeg_with_exif_orientation(a, 6))
    Image.fromarray(a).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
    rgba[:20, :20, 3] = 0
    _save(src / "rgba.png", rgba)
    Image.fromarray(a).convert("L").save(src / "gray.png")
    sixteen = (np.asarray(Image.fromarray(a).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(src / "gray16.png")
    _save(src / "group.jpg", sample_photos.group_photo())
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    (src / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (src / "notes.jpg").write_text("not a photo")
    Image.new("L", (15000, 12000)).save(src / "huge.png")  # 180 MP: over the 150 MP guard
    _save(src / "someone_else.png", sample_photos.other_person())

    res = preprocess(src, tmp_path / "out", CFG, progress=False)
    rep = _report(tmp_path / "out")
    kept = {k for k, e in rep.items() if e["status"] == "kept"}
    assert kept == {"upright.png", "rot90.png", "exif.jpg", "cmyk.jpg", "rgba.png", "gray.png", "gray16.png"}
    assert rep["rot90.png"]["scores"]["rotation"] == 270
    assert rep["exif.jpg"]["scores"]["rotation"] == 0  # EXIF transpose already made it upright
    assert rep["group.jpg"]["reason"] == "several_faces"
    assert rep["truncated.jpg"]["reason"] == "truncated"
    assert rep["notes.jpg"]["reason"] == "not_an_image"
    assert rep["huge.png"]["reason"] == "oversized" and "megapixels" in rep["huge.png"]["detail"]
    assert rep["someone_else.png"]["reason"] == "different_person"
    assert len(res.kept) == 7 and len(res.rejected) == 5
    # every kept image shows an upright face of the same person
    ref = dlib_analyzer.detect(a)[0]
    from facechain.face import similarity

    for p in res.kept:
        faces = dlib_analyzer.detect(np.asarray(Image.open(p).convert("RGB")))
        assert len(faces) == 1, p
        assert similarity(ref, faces[0]) >= 0.5, p


def test_blurry_and_small_rejected(tmp_path, sample_photos):
    import cv2

    a = sample_photos.astronaut()
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "blurry.png", cv2.GaussianBlur(a, (0, 0), 2.5))
    _save(src / "small.png", a)
    res_dir = tmp_path / "out"
    # the astronaut's face is ~90 px: with a 120 px minimum it is "too small"
    cfg = PreprocessConfig(face_backend="dlib", mask="landmarks", min_face_size=120)
    with pytest.raises(NoPhotosKept) as exc:
        preprocess([src / "small.png"], res_dir, cfg, progress=False)
    rep = _report(res_dir, "failed_report.json")["small.png"]
    assert rep["reason"] == "face_too_small" and rep["scores"]["face_size"] < 120
    assert "small.png: face_too_small" in str(exc.value)
    with pytest.raises(NoPhotosKept):
        preprocess([src / "blurry.png"], res_dir, CFG, progress=False)
    rep = _report(res_dir, "failed_report.json")["blurry.png"]
    assert rep["reason"] == "blurry", rep
    assert rep["scores"]["blur"] < CFG.blur_threshold
    assert not (res_dir / "metadata.jsonl").exists()  # no set was ever kept; none is made up


def test_megapixel_guard_is_ours(tmp_path):
    """The configured limit decides, not PIL's 89 MP warning."""
    from facechain.images import ImageRejected

    p = tmp_path / "big.png"
    Image.new("L", (10000, 9500)).save(p)  # 95 MP
    with pytest.raises(ImageRejected, match="over the 90 MP limit"):
        load_photo(p, max_megapixels=90)
    assert load_photo(p, max_megapixels=150).shape == (9500, 10000, 3)


def test_written_files_have_normal_permissions(tmp_path):
    import os

    from facechain.io import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_cli_exits_nonzero_when_nothing_kept(tmp_path, sample_photos):
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "group.jpg", sample_photos.group_photo())
    (src / "bad.jpg").write_text("nope")
    proc = subprocess.run([sys.executable, "-m", "facechain", "preprocess", str(src), str(tmp_path / "out"),
                           "--backend", "dlib", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "no photo was kept" in proc.stderr
    assert "group.jpg: several_faces" in proc.stderr and "bad.jpg: not_an_image" in proc.stderr
    assert (tmp_path / "out" / "failed_report.json").is_file()


def test_load_modes(tmp_path, sample_photos):
    a = sample_photos.astronaut()
    p = tmp_path / "pal.png"
    Image.fromarray(a).convert("P").save(p)
    assert load_photo(p).shape == (512, 512, 3)
    la = Image.fromarray(a).convert("LA")
    la.save(tmp_path / "la.png")
    out = load_photo(tmp_path / "la.png")
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8


@pytest.mark.unit
def test_bad_config():
    from facechain.errors import InputError

    with pytest.raises(InputError, match="multiple of 8"):
        PreprocessConfig(size=500)
    with pytest.raises(InputError, match="mask"):
        PreprocessConfig(mask="magic")


def test_retouch_smooths_skin_only(sample_photos, dlib_analyzer):
    from facechain.preprocess.retouch import retouch_skin

    a = sample_photos.astronaut()
    face = dlib_analyzer.detect(a)[0]
    out = retouch_skin(a, face.landmarks, strength=1.0)
    lm = face.landmarks.astype(int)
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    assert np.abs(out.astype(int) - a).sum() > 0
    # far outside the face nothing changes
    assert (out[:, 400:] == a[:, 400:]).all() and (out[y1 + 40:] == a[y1 + 40:]).all()
    # inside the face, fine texture drops (the Laplacian's variance)
    from facechain.images import sharpness as laplacian_variance

    assert laplacian_variance(out[y0:y1, x0:x1]) < laplacian_variance(a[y0:y1, x0:x1])
