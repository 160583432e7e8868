"""The offline head mask (``--mask landmarks``) on real photos against hand-labelled masks.

tests/fixtures/head_masks.json holds, per photo, a 'head' outline (face + hair + ears) and 'hair'
polygons in the sample photo's pixels (see its "about"). Each photo goes through the steps
preprocessing uses (dlib's real models, orientation + detection, FaceChain's aligned crop) and
then :func:`facechain.face.segment.head_mask` with method "landmarks"; the labels are mapped into
the crop with the same transform. Two figures per photo:

* hair kept: fraction of the labelled hair pixels inside the mask (the LoRA must see the whole
  hairstyle, long hair included);
* background removed: fraction of the photo's pixels outside the labelled head that are outside
  the mask (white padding where the crop leaves the photo is not counted).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facechain.face.align import portrait_crop_transform, warp_crop
from facechain.face.segment import head_mask, landmark_grabcut_mask
from facechain.face.types import Face
from facechain.preprocess import PreprocessConfig
from facechain.preprocess.orient import orient_and_detect
from facechain.preprocess.select import select_face

FIXTURE = Path(__file__).parents[1] / "fixtures" / "head_masks.json"
LABELS = json.loads(FIXTURE.read_text())["photos"]
MIN_HAIR_KEPT = 0.90
MIN_BACKGROUND_REMOVED = 0.90


def _photo(name: str) -> np.ndarray:
    from facechain import samples

    return samples.astronaut() if name == "astronaut" else samples.insightface_image(name)


def _fill(polygons, shape) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for p in polygons:
        cv2.fillPoly(m, [np.round(np.asarray(p, np.float64)).astype(np.int32)], 1)
    return m > 0


@pytest.fixture(scope="module")
def aligned(dlib_analyzer):
    """photo id -> (aligned crop, its landmarks, keypoints, labelled head, labelled hair, photo area)."""
    cfg = PreprocessConfig(face_backend="dlib", mask="landmarks")
    cache = {}

    def get(pid: str):
        if pid not in cache:
            entry = LABELS[pid]
            image = _photo(entry["image"])
            assert [image.shape[1], image.shape[0]] == entry["size"]
            x0, y0, x1, y1 = entry["region"]
            region = np.ascontiguousarray(image[y0:y1, x0:x1])
            deg, faces, _, s = orient_and_detect(region, dlib_analyzer, cfg.orient_size, cfg.detect_size, cfg.min_face_size)
            assert deg == 0
            f = select_face(faces, cfg.several_faces_ratio)
            face = Face(bbox=f.bbox / s, score=f.score, kps=f.kps / s, backend=f.backend, landmarks=f.landmarks / s)
            tf = portrait_crop_transform(face, cfg.size)
            crop = warp_crop(region, tf)
            photo = warp_crop(np.full_like(region, 255), tf, border=(0, 0, 0))[..., 0] > 127

            def to_crop(poly):
                return tf.apply_points(np.asarray(poly, np.float64) - [x0, y0])

            head = _fill([to_crop(entry["head"])], crop.shape[:2])
            hair = _fill([to_crop(p) for p in entry["hair"]], crop.shape[:2])
            cache[pid] = (crop, tf.apply_points(face.landmarks), tf.apply_points(face.kps), head, hair, photo)
        return cache[pid]

    return get


def _scores(mask: np.ndarray, head: np.ndarray, hair: np.ndarray, photo: np.ndarray) -> tuple[float, float]:
    m = mask > 0
    hair_kept = (m & hair).sum() / hair.sum()
    background = ~head & photo
    return float(hair_kept), float((~m & background).sum() / background.sum())


def test_fixture_covers_long_hair_and_labels_are_consistent():
    assert len(LABELS) >= 3
    assert any(e["long_hair"] for e in LABELS.values())
    for pid, e in LABELS.items():
        shape = (e["size"][1], e["size"][0])
        head, hair = _fill([e["head"]], shape), _fill(e["hair"], shape)
        assert hair.sum() > 1000, pid
        assert (hair & head).sum() / hair.sum() > 0.97, f"{pid}: hair polygons lie outside the head outline"


@pytest.mark.parametrize("pid", sorted(LABELS))
def test_head_mask_keeps_hair_and_removes_background(pid, aligned):
    crop, lms, kps, head, hair, photo = aligned(pid)
    mask, method = head_mask(crop, lms, kps, "landmarks")
    assert method == "landmarks"
    assert mask.shape == crop.shape[:2] and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    hair_kept, removed = _scores(mask, head, hair, photo)
    print(f"{pid}: hair kept {hair_kept:.3f}, background removed {removed:.3f}")
    assert hair_kept >= MIN_HAIR_KEPT, f"{pid}: only {hair_kept:.1%} of the labelled hair is inside the mask"
    assert removed >= MIN_BACKGROUND_REMOVED, f"{pid}: only {removed:.1%} of the background is removed"


def test_mask_is_one_region_without_holes(aligned):
    crop, lms, kps, *_ = aligned("group_left_long_hair")
    mask = landmark_grabcut_mask(crop, lms, kps)
    n, _ = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    assert n == 2  # background + one region
    n_bg, bg = cv2.connectedComponents((mask == 0).astype(np.uint8), connectivity=4)
    border = np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])
    assert set(range(1, n_bg)) <= set(border.tolist())  # every background region reaches the border: no holes


def test_keypoints_only_still_masks_the_head(aligned):
    """Backends without dense landmarks pass only the 5 keypoints."""
    crop, _, kps, head, hair, photo = aligned("astronaut")
    mask = landmark_grabcut_mask(crop, None, kps)
    hair_kept, removed = _scores(mask, head, hair, photo)
    assert mask[int(kps[2][1]), int(kps[2][0])] == 255
    assert hair_kept > 0.8 and removed > 0.9, (hair_kept, removed)
