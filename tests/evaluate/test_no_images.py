"""`facechain eval` on a generated folder none of whose images can be read: exit 1, "no images found", no report."""

from PIL import Image

from facechain.cli import main


def test_folder_of_non_images_exits_1(tmp_path, sample_photos, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(sample_photos.astronaut()).save(refs / "a.png")
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "style_00.png").write_text("not a picture")
    (gen / "style_01.jpg").write_bytes(b"\x00" * 100)
    (gen / "notes.txt").write_text("skipped: no image name")
    assert main(["eval", str(gen), "--reference", str(refs), "--backend", "dlib"]) == 1
    err = capsys.readouterr().err
    assert f"error: no images found in the generated folder {gen}: none of its 2 file(s) named like an image" in err
    assert "style_00.png: not_an_image" in err and "style_01.jpg: not_an_image" in err
    assert not (gen / "eval" / "report.json").exists()
