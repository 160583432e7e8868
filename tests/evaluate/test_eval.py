"""facechain eval on real photos with dlib's real models: a same-person set scores above a
different-person set, an exact (or re-framed, re-coloured) copy of a reference photo is flagged
while a new picture of the same face is not, bad inputs are reported or refused with their folder,
and the CLI writes its report.

The one person with a real photo here is the astronaut (scikit-image). Her other "photos" are
augmentations: re-framed and re-coloured views of the photo (the same picture: a copy), and her
head composited into other pictures with another scale, roll and colour (a new picture of the
same face, as face fusion makes: not a copy)."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from facechain.errors import InputError
from facechain.evaluate import (EvalConfig, copy_identity, evaluate, measure, picture_similarity, pixel_diversity,
                                portrait_crop)
from facechain.face import SAME_PERSON_THRESHOLD
from facechain.io import save_image, write_json


def view(image: np.ndarray, *, angle: float = 0.0, zoom: float = 1.0, shift=(0.0, 0.0), flip: bool = False,
         gain: float = 1.0, bias: float = 0.0, saturation: float = 1.0, size: int | None = None) -> np.ndarray:
    """Another view of a photo: mirror, rotate/zoom/shift about the centre (white border), colour
    jitter (contrast gain, brightness bias, saturation), resize to ``size``."""
    img = image[:, ::-1] if flip else image
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
    m[:, 2] += (shift[0] * w, shift[1] * h)
    img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_CUBIC, borderValue=(255, 255, 255))
    f = img.astype(np.float32)
    grey = f.mean(axis=2, keepdims=True)
    f = grey + (f - grey) * saturation
    f = f * gain + bias
    img = np.clip(f, 0, 255).astype(np.uint8)
    if size is not None:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def faces_of(image: np.ndarray, analyzer, margin: float = 1.0, side: int = 320) -> list[np.ndarray]:
    """Each face of a photo as its own square portrait (face plus ``margin`` face widths around it)."""
    out = []
    for f in analyzer.detect(image, embed=False):
        cx, cy = f.center
        half = f.box_side * (0.5 + margin)  # dlib's box side: the pictures these tests were built on
        x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
        x1, y1 = int(min(cx + half, image.shape[1])), int(min(cy + half, image.shape[0]))
        out.append(cv2.resize(image[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_CUBIC))
    return out


def scene(image: np.ndarray, face, background: np.ndarray, *, zoom: float = 1.0, angle: float = 0.0,
          center=(0.5, 0.45), gain: float = 1.0, size: int = 512) -> np.ndarray:
    """The head around ``face`` (a feathered ellipse) pasted into another picture: rotated by
    ``angle``, scaled by ``zoom``, its colours scaled by ``gain``, at ``center`` of a ``size`` square."""
    bg = cv2.resize(background, (size, size), interpolation=cv2.INTER_AREA)
    (cx, cy), s = face.center, face.box_side
    mask = np.zeros(image.shape[:2], np.float32)
    cv2.ellipse(mask, (int(cx), int(cy - 0.15 * s)), (int(0.85 * s), int(1.1 * s)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 15)
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, zoom * size / 512)
    m[:, 2] += (center[0] * size - cx, center[1] * size - cy)
    head = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_CUBIC).astype(np.float32) * gain
    mk = cv2.warpAffine(mask, m, (size, size))[..., None]
    return np.clip(head * mk + bg * (1 - mk), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(sample_photos, dlib_analyzer):
    from skimage import data

    a = sample_photos.astronaut()
    others = [sample_photos.other_person()] + faces_of(sample_photos.group_photo(), dlib_analyzer)
    backgrounds = [data.rocket(), data.coffee(), data.chelsea(), data.hubble_deep_field()]
    return {"astronaut": a, "face": dlib_analyzer.detect(a)[0], "others": others, "backgrounds": backgrounds}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, photos):
    """references/: the astronaut photo and a mirrored, re-framed, re-coloured view of it; same/:
    her head in other pictures; others/: other people; copy/: a byte copy of a reference, a
    re-framed and re-coloured copy, her head in another picture, and a text file named .png."""
    root = tmp_path_factory.mktemp("eval")
    a, face, bgs = photos["astronaut"], photos["face"], photos["backgrounds"]
    refs = root / "references"
    refs.mkdir()
    save_image(refs / "01.png", a)
    save_image(refs / "02.png", view(a, flip=True, zoom=1.15, shift=(0.03, 0.02), gain=1.1, bias=-10))
    same = root / "same"
    same.mkdir()
    save_image(same / "same_0.png", scene(a, face, bgs[0], zoom=1.2, angle=6))
    save_image(same / "same_1.png", scene(a, face, bgs[1], zoom=0.9, angle=-5, gain=0.85, center=(0.4, 0.5)))
    save_image(same / "same_2.png", scene(a, face, bgs[2], zoom=1.0, gain=1.1, size=448))
    # a small picture: the face (about 45 px) is found by the second, enlarged detection
    save_image(same / "same_3.png", scene(a, face, bgs[3], zoom=0.8, angle=4, size=320))
    others = root / "others"
    others.mkdir()
    for i, img in enumerate(photos["others"]):
        save_image(others / f"other_{i}.png", img)
    copy = root / "copy"
    copy.mkdir()
    shutil.copyfile(refs / "01.png", copy / "exact_copy.png")
    save_image(copy / "recoloured_copy.png", view(a, angle=8, zoom=0.9, gain=0.9, bias=15, saturation=0.7))
    save_image(copy / "new_picture.png", scene(a, face, bgs[1], zoom=1.1, angle=-4, gain=0.9))
    (copy / "broken.png").write_bytes(b"this is a text file, not a picture\n")
    return {"root": root, "refs": refs, "same": same, "others": others, "copy": copy}


@pytest.fixture(scope="module")
def reports(folders, dlib_analyzer):
    """measure() of same/, others/ and copy/ against references/."""
    return {k: measure(folders[k], folders["refs"], analyzer=dlib_analyzer) for k in ("same", "others", "copy")}


def test_same_person_scores_above_different_people(reports):
    same, others = reports["same"], reports["others"]
    assert same.summary.faces_found == 4
    assert others.summary.faces_found >= 4  # Tom Hanks and the faces of the group photo
    assert same.summary.identity_mean > others.summary.identity_mean + 0.25
    assert same.summary.identity_mean > SAME_PERSON_THRESHOLD > others.summary.identity_mean
    assert same.summary.same_person_frac == 1.0
    assert others.summary.same_person_frac == 0.0
    # face size in the image's own pixels, also for the small one found enlarged
    face_px = {e.file: e.face_px for e in same.images}
    # Face.size of the astronaut: 110 px at 512 (dlib's box: 87)
    assert 40 < face_px["same_3.png"] < 70  # 110 x 0.8 x 320/512 = 55 px, not the enlarged image's 110
    assert face_px["same_0.png"] == pytest.approx(110 * 1.2, rel=0.1)
    # views of one photo vary less, in identity, than different people do
    assert same.summary.identity_diversity < others.summary.identity_diversity
    assert same.summary.pixel_diversity is not None and 0 < same.summary.pixel_diversity < 1
    assert same.summary.copies == 0 and others.summary.copies == 0
    assert same.summary.reference_spread_measured and 0 < same.summary.reference_spread < 0.5


def test_copies_are_flagged_and_a_new_picture_of_the_face_is_not(reports):
    report = reports["copy"]
    by = {e.file: e for e in report.images}
    exact, recoloured, new = by["exact_copy.png"], by["recoloured_copy.png"], by["new_picture.png"]
    assert exact.copy and exact.nearest_reference == exact.copy_reference == "01.png"
    assert exact.copy_identity == pytest.approx(1.0, abs=1e-3) and exact.copy_pixel == pytest.approx(1.0, abs=1e-3)
    assert recoloured.copy and recoloured.copy_pixel > report.thresholds["copy_pixel"]
    # the same face pixels in another picture: as close in identity as a copy, but not the same picture
    assert new.status == "ok" and new.same_person and not new.copy
    assert new.copy_identity > report.thresholds["copy_identity"]
    assert new.copy_pixel < report.thresholds["copy_pixel"] - 0.2
    assert report.summary.copies == 2 and report.summary.copy_files == ["exact_copy.png", "recoloured_copy.png"]


def test_unreadable_image_is_listed_and_the_run_goes_on(reports):
    report = reports["copy"]
    broken = next(e for e in report.images if e.file == "broken.png")
    assert broken.status == "unreadable" and broken.reason.startswith("not_an_image")
    assert report.summary.images == 4 and report.summary.unreadable == 1 and report.summary.faces_found == 3
    assert report.summary.same_person_frac == 1.0  # over the readable images


def test_bad_folders_are_clear_errors(folders, tmp_path, style_images, dlib_analyzer):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"reference folder .*empty.* holds no images"):
        measure(folders["same"], empty, analyzer=dlib_analyzer)
    with pytest.raises(InputError, match=r"generated folder .*empty.* holds no images"):
        measure(empty, folders["refs"], analyzer=dlib_analyzer)
    faceless = tmp_path / "faceless"
    faceless.mkdir()
    save_image(faceless / "cat.png", style_images["style"])
    save_image(faceless / "coffee.png", style_images["coffee"])
    (faceless / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match=r"no face was found in any reference photo in .*faceless") as exc:
        measure(folders["same"], faceless, analyzer=dlib_analyzer)
    assert "cat.png: no face found" in str(exc.value) and "broken.jpg: not_an_image" in str(exc.value)
    assert "one clear, frontal face" in str(exc.value)


def test_ranking_backend_from_manifest_and_caveat(folders, tmp_path, dlib_analyzer):
    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copyfile(folders["same"] / "same_0.png", gen / "style_00.png")
    save_image(gen / "contact_sheet.png", np.zeros((64, 64, 3), np.uint8))  # generate's own file: skipped
    write_json(gen / "manifest.json", {"ranking": {"on": True, "backend": "dlib"}})
    report = measure(gen, folders["refs"], analyzer=dlib_analyzer)
    assert [e.file for e in report.images] == ["style_00.png"]
    assert (report.ranking_backend, report.ranking_backend_source, report.independent) == ("dlib", "manifest", False)
    assert any("also ranked" in c for c in report.caveats)
    write_json(gen / "manifest.json", {"ranking": {"on": False, "backend": None}})
    report = measure(gen, folders["refs"], analyzer=dlib_analyzer)
    assert report.ranking_backend is None and report.independent is True and not report.caveats
    (gen / "manifest.json").unlink()
    report = measure(gen, folders["refs"], EvalConfig(ranking_backend="insightface"), analyzer=dlib_analyzer)
    assert (report.ranking_backend_source, report.independent) == ("flag", True)
    report = measure(gen, folders["refs"], analyzer=dlib_analyzer)
    assert report.ranking_backend_source == "unknown" and any("not known" in c for c in report.caveats)


@pytest.mark.slow
def test_cli_writes_report_and_chart(folders, tmp_path, dlib_analyzer, capsys):
    from facechain.cli import main

    gen = tmp_path / "gen"
    shutil.copytree(folders["copy"], gen)
    write_json(gen / "manifest.json", {"ranking": {"on": True, "backend": "dlib"}})
    # auto: another backend than the ranking one when one loads; offline here only dlib does
    assert main(["eval", str(gen), "--reference", str(folders["refs"]), "--backend", "auto"]) == 0
    out = gen / "eval"
    data = json.loads((out / "report.json").read_text())
    assert data["summary"]["images"] == 4 and data["summary"]["copies"] == 2
    assert data["backend"]["ranking"] == "dlib"
    assert data["backend"]["independent_of_ranking"] == (data["backend"]["used"] != "dlib")
    assert bool(data["caveats"]) == (data["backend"]["used"] == "dlib")
    assert {e["file"]: e["status"] for e in data["images"]} == {
        "broken.png": "unreadable", "exact_copy.png": "ok", "new_picture.png": "ok", "recoloured_copy.png": "ok"}
    chart = np.asarray(Image.open(out / "report.png").convert("RGB"))
    assert chart.shape[0] >= 400 and chart.shape[1] >= 600 and chart.std() > 10  # a drawn figure, not a blank page
    assert json.loads((out / "eval_config.json").read_text())["face_backend"] == "auto"
    printed = capsys.readouterr()
    assert "copies of a reference photo: 2 (exact_copy.png, recoloured_copy.png)" in printed.out
    assert "unreadable: broken.png" in printed.err
    # a second run replaces its own report; the eval/ folder is never read as generated images
    assert main(["eval", str(gen), "--reference", str(folders["refs"]), "--backend", "dlib"]) == 0
    assert json.loads((out / "report.json").read_text())["summary"]["images"] == 4
    # a folder holding the user's files is refused, and they are untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["eval", str(gen), "--reference", str(folders["refs"]), "--backend", "dlib", "--output-dir", str(mine)]) == 1
    assert (mine / "notes.txt").read_text() == "mine" and not (mine / "report.json").exists()
    # the output may not be an input folder
    assert main(["eval", str(gen), "--reference", str(folders["refs"]), "--backend", "dlib", "--output-dir", str(gen)]) == 1
    assert "is the same folder as the generated folder" in capsys.readouterr().err


def test_copy_measures(photos):
    assert copy_identity(1.0, 0.3) == 1.0
    assert copy_identity(0.7, 0.3) == 0.0  # as far from it as the references are from each other
    assert copy_identity(0.85, 0.3) == pytest.approx(0.5)
    assert copy_identity(0.97, 0.01) == copy_identity(0.97, 0.15)  # near-duplicate references: the spread's floor
    a, face = photos["astronaut"], photos["face"]
    crop = portrait_crop(a, face)
    assert crop.shape == (64, 64)
    assert picture_similarity(crop, crop * 0.5 + 40) == pytest.approx(1.0)  # contrast/brightness do not count
    # the mirrored crop is the crop of the mirrored photo (the face found there by the detector)
    flipped = np.ascontiguousarray(a[:, ::-1])
    from facechain.face import get_analyzer

    assert picture_similarity(portrait_crop(a, face, mirror=True),
                              portrait_crop(flipped, get_analyzer("dlib").detect(flipped)[0])) > 0.97
    assert picture_similarity(crop, portrait_crop(flipped, face)) < 0.9  # not the same picture unmirrored
    same = np.full((8, 8, 3), 100, np.uint8)
    assert pixel_diversity([same, same]) == 0.0
    assert pixel_diversity([same, same + 51]) == pytest.approx(0.2, abs=1e-6)
    assert pixel_diversity([same]) is None


@pytest.mark.unit
def test_config_is_checked():
    with pytest.raises(InputError, match="copy_identity_threshold"):
        EvalConfig(copy_identity_threshold=0)
    with pytest.raises(InputError, match="detect_size"):
        EvalConfig(detect_size=10)


def test_evaluate_default_output_dir(folders, tmp_path, dlib_analyzer):
    gen = tmp_path / "gen"
    shutil.copytree(folders["same"], gen)
    result = evaluate(gen, folders["refs"], EvalConfig(face_backend="dlib"), analyzer=dlib_analyzer)
    assert result.output_dir == gen / "eval" and result.exit_code == 0
    assert sorted(p.name for p in (gen / "eval").iterdir()) == [".facechain", "eval_config.json", "report.json", "report.png"]


@pytest.mark.unit
def test_generate_folder_with_eval_report_inside_is_not_refused(tmp_path):
    """An eval report inside generate's folder is another command's output folder: a later generate
    run there neither refuses the folder because of it nor lists its files as its own."""
    from facechain.outputs import OutputDir

    gen_dir = tmp_path / "portraits"
    od = OutputDir.acquire(gen_dir, "generate")
    stage = od.stage()
    (stage / "a.png").write_bytes(b"x")
    od.commit(stage, replace=False)
    od.release()
    ev = OutputDir.acquire(gen_dir / "eval", "eval")
    stage = ev.stage()
    (stage / "report.json").write_text("{}")
    ev.commit(stage, replace=False)
    ev.release()
    (gen_dir / "notes.txt").write_text("mine")  # a user's file is still found
    od = OutputDir.acquire(gen_dir, "generate", allow_other_files=True)
    try:
        assert od.other_files() == ["notes.txt"]
    finally:
        od.release()
