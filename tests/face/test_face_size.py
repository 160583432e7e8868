"""One face-size measure for every backend (facechain.face.Face.size): FaceChain's measure, max(w, h)
of the SCRFD box, computed from the five keypoints. Real photos with dlib's real models; the
figures behind the constants are in benchmarks/RESULTS.md ("Face size")."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facechain.face import Face, kps_face_size
from facechain.face.align import CROP_SCALE, portrait_crop_transform, warp_crop
from facechain.face.types import FRONTAL_EYE_MOUTH_PER_EYES, SCRFD_SIZE_PER_EYE_MOUTH
from facechain.generate.rank import check_face

# insightface's ArcFace alignment template (112 x 112): where SCRFD's keypoints land after alignment
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def _old_size(face: Face) -> float:
    """The measure this replaces: sqrt(w * h) of the backend's box."""
    return float(np.sqrt(face.width * face.height))


def _face(kps, bbox=(0, 0, 100, 100)) -> Face:
    return Face(bbox=np.asarray(bbox, np.float32), score=1.0, kps=np.asarray(kps, np.float32), backend="test")


@pytest.fixture(scope="module")
def astronaut_face(dlib_analyzer, sample_photos):
    img = sample_photos.astronaut()
    return img, dlib_analyzer.detect(img, embed=False)[0]


def test_size_is_the_scrfd_scale_keypoint_measure_not_dlibs_box(astronaut_face):
    _, f = astronaut_face
    k = f.kps.astype(np.float64)
    em = np.linalg.norm((k[3] + k[4]) / 2 - (k[0] + k[1]) / 2)
    eyes = np.linalg.norm(k[1] - k[0])
    assert f.size == pytest.approx(SCRFD_SIZE_PER_EYE_MOUTH * max(em, FRONTAL_EYE_MOUTH_PER_EYES * eyes), rel=1e-6)
    # dlib's HOG box is tighter than SCRFD's: 87 px here, the face measures ~110 px
    assert f.box_side == pytest.approx(87, abs=3)
    assert f.size > 1.15 * _old_size(f)
    assert 100 < f.size < 120
    # the box stays available for drawing and pixel regions
    assert f.width == f.bbox[2] - f.bbox[0] and f.area == pytest.approx(f.width * f.height)


def test_dlib_measures_an_arcface_aligned_photo_like_scrfds_keypoints(dlib_analyzer, sample_photos):
    """Tom_Hanks_54745.png is a 112 px face insightface aligned onto its ArcFace template, i.e. where
    SCRFD's keypoints were mapped: dlib's size of that photo is within a few % of the size the
    template's (SCRFD-placed) keypoints give, whatever dlib's box says."""
    img = sample_photos.other_person()
    f = dlib_analyzer.detect(img, embed=False)[0]
    scrfd_kps_size = kps_face_size(ARCFACE_112)
    assert f.size == pytest.approx(scrfd_kps_size, rel=0.04)
    assert abs(_old_size(f) / scrfd_kps_size - 1) > 0.2  # dlib's box: 86 px against 114


def test_size_scales_with_the_photo_while_dlibs_box_jumps_between_pyramid_levels(dlib_analyzer, astronaut_face):
    img, base = astronaut_face
    sizes, boxes = [], []
    for s in np.arange(0.9, 1.51, 0.06):
        found = dlib_analyzer.detect(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC
                                                if s > 1 else cv2.INTER_AREA), embed=False)
        assert len(found) == 1
        sizes.append(found[0].size / s / base.size)
        boxes.append(_old_size(found[0]) / s / _old_size(base))
    assert max(sizes) / min(sizes) < 1.04  # measured 1.02
    assert max(boxes) / min(boxes) > 1.10  # dlib's boxes come in steps of 6/5 (measured 1.18)


@pytest.mark.parametrize("deg", [-15, -10, 10, 15])
def test_a_rolled_face_keeps_its_size(dlib_analyzer, astronaut_face, deg):
    img, base = astronaut_face
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    turned = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    f = dlib_analyzer.detect(turned, embed=False)[0]
    assert f.size == pytest.approx(base.size, rel=0.03)  # measured within 1 %


def _posed_kps(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The ArcFace template's keypoints as a 3D face (eyes and mouth corners about one plane, the nose
    tip in front), turned by yaw/pitch/roll (degrees) and projected orthographically."""
    p = ARCFACE_112 - ARCFACE_112.mean(0)
    eyes = np.linalg.norm(p[1] - p[0])
    z = np.array([-0.35, -0.35, 0.25, -0.3, -0.3]) * eyes  # depth towards the camera
    pts = np.c_[p, z]
    a, b, c = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (pts @ (rz @ rx @ ry).T)[:, :2] + 300


def test_turned_and_nodded_heads_keep_their_size():
    frontal = kps_face_size(_posed_kps())
    for yaw in (-45, -30, -15, 15, 30, 45):
        assert kps_face_size(_posed_kps(yaw=yaw)) == pytest.approx(frontal, rel=0.03), yaw
    # nodding shortens the eye-to-mouth distance until the eye distance takes over (at 0.9 of it;
    # this template's ratio is 1.15): 2-8 % lost at 15-20 degrees, 8-11 % at 25
    for pitch in (-20, -15, 15, 20):
        assert kps_face_size(_posed_kps(pitch=pitch)) == pytest.approx(frontal, rel=0.08), pitch
    for pitch in (-25, 25):
        assert kps_face_size(_posed_kps(pitch=pitch)) == pytest.approx(frontal, rel=0.12), pitch
    for yaw, pitch, roll in ((30, 15, 20), (-40, -20, -35), (20, 25, 90)):
        assert kps_face_size(_posed_kps(yaw, pitch, roll)) == pytest.approx(frontal, rel=0.12), (yaw, pitch, roll)
    # the inter-ocular distance alone would lose 29 % at 45 degrees of yaw
    eyes = lambda k: np.linalg.norm(k[1] - k[0])  # noqa: E731
    assert eyes(_posed_kps(yaw=45)) < 0.75 * eyes(_posed_kps())


def test_faces_without_usable_keypoints_fall_back_to_the_box():
    assert _face(np.zeros((5, 2)), (10, 20, 90, 120)).size == 100.0  # max(80, 100)
    assert _face(np.full((5, 2), np.nan), (0, 0, 50, 40)).size == 50.0
    assert kps_face_size(None) is None and kps_face_size(np.zeros((4, 2))) is None
    assert _face(ARCFACE_112).size == pytest.approx(kps_face_size(ARCFACE_112))  # keypoints win over the box


def test_the_preprocessing_crop_gives_faces_the_facechain_size(dlib_analyzer, astronaut_face):
    """FaceChain's crop puts a face of 0.35/1.15 of the side (156 px at 512) in the photo; with dlib's
    box as the face size the face came out ~25 % larger."""
    img, f = astronaut_face
    tf = portrait_crop_transform(f, 512)
    assert tf.face_size == pytest.approx(f.size)
    crop = warp_crop(img, tf)
    g = dlib_analyzer.detect(crop, embed=False)[0]
    assert g.size == pytest.approx(512 / CROP_SCALE, rel=0.04)  # 155.8 px
    old = warp_crop(img, portrait_crop_transform(f, 512, crop_scale=CROP_SCALE * _old_size(f) / f.size))
    assert dlib_analyzer.detect(old, embed=False)[0].size > 1.15 * 512 / CROP_SCALE


def test_an_upper_body_portrait_facechain_keeps_is_not_dropped_as_too_small(dlib_analyzer, astronaut_face):
    """A 512 px portrait in FaceChain's layout with the face at 0.26 of the side (133 px: inside
    FaceChain's 120-300 px) is usable; measured by dlib's box (105 px) it was 'face too small'."""
    img, f = astronaut_face
    portrait = warp_crop(img, portrait_crop_transform(f, 512, crop_scale=1 / 0.26))
    faces = dlib_analyzer.detect(portrait, embed=False)
    assert len(faces) == 1 and faces[0].size == pytest.approx(0.26 * 512, rel=0.04)
    assert check_face(faces, portrait.shape, 0.23, 0.59) is None
    assert _old_size(faces[0]) < 0.23 * 512  # the old measure dropped it
    # a face FaceChain would drop stays dropped: 0.20 of the side is under 120 px
    small = warp_crop(img, portrait_crop_transform(f, 512, crop_scale=1 / 0.20))
    assert check_face(dlib_analyzer.detect(small, embed=False), small.shape, 0.23, 0.59).startswith("face too small")


def test_the_detailer_redraws_exactly_the_faces_ranking_calls_too_small():
    import dataclasses
    import inspect

    from facechain.face.region import needs_detail
    from facechain.generate.detailer import DetailerConfig
    from facechain.generate import GenerateConfig
    from facechain.generate.rank import fuse_and_rank

    min_frac = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}["min_face_frac"]
    assert DetailerConfig().small_face_frac == min_frac == inspect.signature(fuse_and_rank).parameters[
        "min_face_frac"].default == 0.23
    for side in (100.0, 117.0, 118.0, 140.0):
        face = _face(np.zeros((5, 2)), (0, 0, side, side))  # measured by its box
        too_small = check_face([face], (512, 512, 3), min_frac, 0.59) is not None
        assert needs_detail(face, (512, 512, 3)) == too_small, side
