"""Face analysis with dlib's real models on real photos."""

import numpy as np
import pytest

from facechain.errors import InputError
from facechain.face import SAME_PERSON_THRESHOLD, get_analyzer, similarity
from facechain.face.align import FACE_CENTER_X, FACE_CENTER_Y, portrait_crop_transform, roll_degrees, warp_crop


def _variant(img, angle=8.0, scale=1.1):
    """The same photo re-shot: mirrored, rotated, rescaled, darker, JPEG-compressed."""
    import io

    import cv2
    from PIL import Image

    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(img[:, ::-1].copy(), m, (w, h), borderValue=(128, 128, 128))
    out = np.clip(out.astype(np.float32) * 0.8, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=60)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_detect_single_face(dlib_analyzer, sample_photos):
    faces = dlib_analyzer.detect(sample_photos.astronaut())
    assert len(faces) == 1
    f = faces[0]
    assert f.landmarks.shape == (68, 2) and f.kps.shape == (5, 2) and f.embedding.shape == (128,)
    assert f.score >= dlib_analyzer.min_score
    assert 150 < f.center[0] < 280 and 60 < f.center[1] < 200  # the astronaut's face, upper middle-left
    assert f.kps[0, 0] < f.kps[1, 0]  # image-left eye first
    assert f.gender is None and f.age is None


def test_group_photo_has_several_faces(dlib_analyzer, sample_photos):
    faces = dlib_analyzer.detect(sample_photos.group_photo(), embed=False)
    assert len(faces) >= 4
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)


def test_textured_patch_is_not_a_face(dlib_analyzer):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
    assert dlib_analyzer.detect(noise, embed=False) == []
    # with the score gate lowered to the detector's raw threshold, weak windows appear in texture:
    weak = dlib_analyzer.detect(noise, embed=False, min_score=-1.0)
    assert all(f.score < dlib_analyzer.min_score for f in weak)


def test_same_person_vs_different_people(dlib_analyzer, sample_photos):
    a = dlib_analyzer.detect(sample_photos.astronaut())[0]
    a2 = dlib_analyzer.detect(_variant(sample_photos.astronaut()))[0]
    other = dlib_analyzer.detect(sample_photos.other_person())[0]
    group = dlib_analyzer.detect(sample_photos.group_photo())
    same = similarity(a, a2)
    assert same >= SAME_PERSON_THRESHOLD, same
    assert similarity(a, other) < SAME_PERSON_THRESHOLD
    for i in range(len(group)):
        assert similarity(a, group[i]) < SAME_PERSON_THRESHOLD
        for j in range(i + 1, len(group)):
            assert similarity(group[i], group[j]) < SAME_PERSON_THRESHOLD, (i, j)
    assert similarity(a, a) == pytest.approx(1.0)


def test_similarity_refuses_mixed_backends(sample_photos, dlib_analyzer):
    a = dlib_analyzer.detect(sample_photos.astronaut())[0]
    import dataclasses

    relabelled = dataclasses.replace(a, backend="insightface")
    with pytest.raises(InputError, match="cannot compare"):
        similarity(a, relabelled)


def test_bad_image_input(dlib_analyzer):
    with pytest.raises(InputError, match="RGB uint8"):
        dlib_analyzer.detect(np.zeros((10, 10), np.float32))


def test_unknown_backend():
    with pytest.raises(InputError, match="unknown face backend"):
        get_analyzer("nope")


def test_auto_falls_back_to_dlib_offline(monkeypatch, tmp_path):
    from facechain.face import registry

    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))  # no packs there, and we are offline
    registry._LOADED.clear()
    analyzer = get_analyzer("auto")
    assert analyzer.name == "dlib"
    registry._LOADED.clear()


def test_crop_transform_places_face(dlib_analyzer, sample_photos):
    img = sample_photos.astronaut()
    face = dlib_analyzer.detect(img)[0]
    t = portrait_crop_transform(face, 512)
    crop = warp_crop(img, t)
    assert crop.shape == (512, 512, 3)
    c = t.apply_points(face.center[None])[0] / 512
    assert c[0] == pytest.approx(FACE_CENTER_X, abs=1e-3) and c[1] == pytest.approx(FACE_CENTER_Y, abs=1e-3)
    k = t.apply_points(face.kps)
    assert abs(roll_degrees(k)) < 0.5  # de-rolled
    assert (crop[0, 0] == 255).all()  # white padding outside the photo (crop is ~3.3x the face)
