"""Face fusion and likeness ranking on real photos with the dlib backend (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facechain.errors import InputError, ModelNotFoundError
from facechain.face import SAME_PERSON_THRESHOLD, similarity


def _insightface_image(name: str) -> np.ndarray:
    import insightface
    from PIL import Image

    path = Path(insightface.__file__).parent / "data" / "images" / name
    return np.asarray(Image.open(path).convert("RGB"))


def _crop_face(img: np.ndarray, face, scale: float = 2.6, size: int = 256) -> np.ndarray:
    """Square crop around a face (side = scale x the side of dlib's box), resized like a processed photo."""
    from PIL import Image

    cx, cy = face.center
    half = scale * face.box_side / 2
    box = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
    return np.asarray(Image.fromarray(img).crop(box).resize((size, size), Image.LANCZOS))


@pytest.fixture(scope="module")
def people(dlib_analyzer):
    """Face crops: the reference person (astronaut, Eileen Collins) and other people."""
    from skimage.data import astronaut

    astro = astronaut()
    a_face = dlib_analyzer.detect(astro)[0]
    ref = _crop_face(astro, a_face, 2.6, 256)
    ref_variant = np.ascontiguousarray(_crop_face(astro, a_face, 2.9, 240)[:, ::-1])  # other framing, mirrored
    hanks_img = _insightface_image("Tom_Hanks_54745.png")
    hanks = _crop_face(hanks_img, dlib_analyzer.detect(hanks_img)[0], 2.6, 256)
    group = _insightface_image("t1.jpg")
    others = [_crop_face(group, f, 2.6, 256) for f in dlib_analyzer.detect(group)[:3]]
    return {"ref": ref, "ref_variant": ref_variant, "hanks": hanks, "others": others, "group": group}


def test_ranking_puts_the_reference_person_first(people, dlib_analyzer):
    from facechain.generate.rank import Reference, fuse_and_rank

    ref_face = dlib_analyzer.detect(people["ref"])[0]
    reference = Reference(people["ref"], ref_face, "000.png", "test")
    blank = np.full((256, 256, 3), 128, np.uint8)
    images = [people["hanks"], *people["others"], people["ref_variant"], blank, people["group"]]
    scored = fuse_and_rank(images, reference, dlib_analyzer, rank=True)
    order = [s.index for s in scored if s.dropped is None]
    assert order[0] == 4  # the astronaut, mirrored and reframed, ranks first
    assert scored[0].score >= SAME_PERSON_THRESHOLD
    assert all(s.score < SAME_PERSON_THRESHOLD for s in scored[1:] if s.dropped is None)
    dropped = {s.index: s.dropped for s in scored if s.dropped}
    assert dropped[5] == "no face detected"
    assert dropped[6].endswith("faces detected (need exactly one)") or dropped[6].startswith("face too small")
    assert len(order) == 5  # nothing usable was lost
    # with fusion, every usable candidate gets the reference identity and is fused
    from facechain.face.fusion import get_fusion

    fused = fuse_and_rank(images[:4], reference, dlib_analyzer, fusion=get_fusion("landmark"), rank=True)
    assert all(s.fused and s.score >= SAME_PERSON_THRESHOLD for s in fused), [s.score for s in fused]


def test_landmark_fusion_transfers_identity_and_keeps_outside_pixels(people, dlib_analyzer):
    from facechain.face.fusion import get_fusion

    ref = people["ref"]
    target = people["hanks"]
    ref_face = dlib_analyzer.detect(ref)[0]
    t_face = dlib_analyzer.detect(target)[0]
    before = similarity(t_face, ref_face)
    fusion = get_fusion("landmark")
    result = fusion.fuse(target, t_face, ref, ref_face, strength=1.0)
    fused_faces = dlib_analyzer.detect(result.image)
    assert len(fused_faces) == 1
    after = similarity(fused_faces[0], ref_face)
    assert before < SAME_PERSON_THRESHOLD <= after, (before, after)
    outside = result.mask == 0
    assert outside.mean() > 0.5
    assert np.array_equal(result.image[outside], target[outside])
    # strength 0 keeps the generated face; half strength lands in between
    assert np.array_equal(fusion.fuse(target, t_face, ref, ref_face, strength=0.0).image, target)
    half = fusion.fuse(target, t_face, ref, ref_face, strength=0.5)
    half_score = similarity(dlib_analyzer.detect(half.image)[0], ref_face)
    assert before < half_score < after


@pytest.mark.unit
def test_fusion_registry_and_errors(tmp_path):
    from facechain.face.fusion import LandmarkFusion, get_fusion, register_fusion

    with pytest.raises(ValueError, match="already registered"):
        register_fusion("landmark", LandmarkFusion)
    assert get_fusion("auto", swapper_model=tmp_path / "missing.onnx").name == "landmark"
    with pytest.raises(ModelNotFoundError, match="inswapper_128.onnx there"):
        get_fusion("swapper", swapper_model=tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="unknown fusion method"):
        get_fusion("blend")
    fake = tmp_path / "inswapper_128.onnx"
    fake.write_bytes(b"")
    assert get_fusion("auto", swapper_model=fake, backend="dlib").name == "landmark"  # swapper needs ArcFace faces


def test_landmark_fusion_finds_68_landmarks_for_other_backends(people, dlib_analyzer):
    """Faces without dlib's 68 points (insightface gives 106) are located again with dlib."""
    import dataclasses

    from facechain.face.fusion import LandmarkFusion

    ref, target = people["ref"], people["hanks"]
    ref_face, t_face = dlib_analyzer.detect(ref)[0], dlib_analyzer.detect(target)[0]
    fusion = LandmarkFusion()
    direct = fusion.fuse(target, t_face, ref, ref_face).image
    stripped = [dataclasses.replace(f, landmarks=None, backend="insightface") for f in (t_face, ref_face)]
    assert np.array_equal(fusion.fuse(target, stripped[0], ref, stripped[1]).image, direct)
    far = dataclasses.replace(stripped[0], bbox=np.array([0, 0, 20, 20], np.float32))
    with pytest.raises(InputError, match="dlib found no face at"):
        fusion.fuse(target, far, ref, stripped[1])


def test_template_is_the_best_quality_processed_photo(people, dlib_analyzer, tmp_path):
    import cv2

    from facechain.io import save_image
    from facechain.generate.rank import select_reference_face

    save_image(tmp_path / "000.png", cv2.GaussianBlur(people["ref"], (9, 9), 4))
    save_image(tmp_path / "001.png", people["ref"])
    ref = select_reference_face(tmp_path, dlib_analyzer)
    assert ref.file == "001.png" and "measured" in ref.reason
    report = {"entries": [
        {"input": "a.jpg", "status": "kept", "output": "000.png", "scores": {"detector_score": 1.0, "blur": 900.0}},
        {"input": "b.jpg", "status": "kept", "output": "001.png", "scores": {"detector_score": 1.0, "blur": 100.0}},
        {"input": "c.jpg", "status": "rejected", "output": None, "scores": {}},
    ]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert select_reference_face(tmp_path, dlib_analyzer).file == "000.png"  # report.json's scores are used
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no processed photos"):
        select_reference_face(empty, dlib_analyzer)


def test_job_with_ranking_reports_every_dropped_candidate(tiny_sd15, people, tmp_path):
    """The tiny model draws no faces: every candidate is dropped, reported, and the job still writes its outputs."""
    from facechain.generate import GenerateConfig, run_job
    from facechain.io import save_image

    processed = tmp_path / "processed"
    save_image(processed / "000.png", people["ref"])
    (processed / "metadata.jsonl").write_text(json.dumps({"file_name": "000.png", "text": "<fcsks>, a beautiful woman"}) + "\n")
    cfg = GenerateConfig(base_model=str(tiny_sd15), output_dir=tmp_path / "out", processed_dir=processed,
                         styles=["Chef"], num_candidates=2, num_images=1, num_inference_steps=2, face_backend="dlib",
                         fusion="landmark", device="cpu", dtype="float32")
    result = run_job(cfg)
    style = result.manifest["styles"][0]
    assert result.kept == [] and style["kept"] == []
    assert [d["reason"] for d in style["dropped"]] == ["no face detected"] * 2
    assert style["prompt"].startswith("<fcsks>, a beautiful woman, wearing a white chef jacket")
    assert result.manifest["template"]["file"] == "000.png"
    assert result.manifest["fusion"]["method"] == "landmark"
    assert (tmp_path / "out" / "contact_sheet.png").is_file()


class PhotoCandidates:
    """A candidate source for run_job that returns given real photos as one style's candidates:
    the job's whole post-generation path (template, fusion, ranking, keeping, files, manifest)
    then runs on real faces, which the tiny diffusion models cannot draw."""

    load_seconds = 0.0

    def __init__(self, photos: list[np.ndarray]):
        self.photos = photos

    def generate(self, style, subject):
        from PIL import Image

        from facechain.generate.pipeline import Candidate, StyleBatch

        cands = [Candidate(i, 100 + i, Image.fromarray(p)) for i, p in enumerate(self.photos)]
        return StyleBatch(style, f"{subject[0]}, {subject[1]}", "", {}, cands, 0.0, {"source": "photos"})


@pytest.mark.slow
def test_job_fuses_ranks_and_keeps_real_faces(tiny_sd15, people, dlib_analyzer, tmp_path):
    """End to end after sampling, on real photos: the processed set from facechain.preprocess gives
    the template; candidates are the same person reframed, other people and a faceless image;
    landmark fusion puts the template face into each; ranking keeps the most alike, drops the
    faceless one with its reason; the kept PNGs, candidates, contact sheet and manifest are written."""
    import cv2
    from PIL import Image

    from facechain import samples
    from facechain.generate import GenerateConfig, run_job
    from facechain.io import save_image
    from facechain.preprocess import preprocess

    photo = samples.astronaut()
    save_image(tmp_path / "in" / "a.png", photo)
    save_image(tmp_path / "in" / "b.png", np.ascontiguousarray(photo[:, ::-1]))
    preprocess(tmp_path / "in", tmp_path / "processed", analyzer=dlib_analyzer, progress=False)
    size = 256
    faceless = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8), (0, 0), 3)
    photos = [people["hanks"], np.asarray(Image.fromarray(people["ref_variant"]).resize((size, size))), faceless,
              people["others"][0]]
    cfg = GenerateConfig(base_model=str(tiny_sd15), output_dir=tmp_path / "out", processed_dir=tmp_path / "processed",
                         styles=["Chef"], num_candidates=len(photos), num_images=2, face_backend="dlib",
                         fusion="landmark", rank_candidates=True, device="cpu", dtype="float32")
    result = run_job(cfg, generator=PhotoCandidates(photos))
    assert result.exit_code == 0 and result.failures == []
    style = result.manifest["styles"][0]
    kept = style["kept"]
    assert [k["index"] for k in kept][0] == 1, kept  # the reference person, reframed, ranks first
    assert len(kept) == 2 and kept[0]["score"] >= SAME_PERSON_THRESHOLD
    assert [(d["index"], d["reason"]) for d in style["dropped"]] == [(2, "no face detected")]
    out = tmp_path / "out"
    assert [p.name for p in result.outputs] == ["chef_00.png", "chef_01.png"]
    first = np.asarray(Image.open(out / "chef_00.png").convert("RGB"))
    # fused: the face region was replaced (the template may be the mirrored photo, the candidate's own
    # orientation, so the change is small in level but covers the face)
    changed = np.abs(first.astype(int) - photos[1].astype(int)).max(axis=2) > 2
    assert first.shape == (size, size, 3) and changed.mean() > 0.02
    assert (out / "contact_sheet.png").is_file() and len(list((out / "candidates").glob("*.png"))) == len(photos)
    written = json.loads((out / "manifest.json").read_text())
    assert written["template"]["file"] in {"000.png", "001.png"} and written["fusion"]["method"] == "landmark"
    assert written["styles"][0]["settings"] == {"source": "photos"}


def test_template_from_real_preprocessing_output(dlib_analyzer, tmp_path):
    """The processed folder written by facechain.preprocess: report.json's scores pick the template."""
    import cv2

    from facechain import samples
    from facechain.generate.subject import subject_from_metadata
    from facechain.io import save_image
    from facechain.generate.rank import select_reference_face
    from facechain.preprocess import preprocess

    photo = samples.astronaut()
    save_image(tmp_path / "in" / "a.png", photo)
    save_image(tmp_path / "in" / "b.png", cv2.GaussianBlur(photo, (3, 3), 1))  # kept but less sharp
    save_image(tmp_path / "in" / "c.png", np.ascontiguousarray(photo[:, ::-1]))
    result = preprocess(tmp_path / "in", tmp_path / "processed", analyzer=dlib_analyzer, progress=False)
    report = json.loads((tmp_path / "processed" / "report.json").read_text())
    kept = [e for e in report["entries"] if e["status"] == "kept"]
    best = max(kept, key=lambda e: e["scores"]["detector_score"] * e["scores"]["blur"])
    ref = select_reference_face(tmp_path / "processed", dlib_analyzer)
    assert ref.file == best["output"] and ref.reason.startswith("report.json")
    assert ref.face.landmarks.shape == (68, 2) and len(result.kept) == len(kept)
    trigger, attribute = subject_from_metadata(tmp_path / "processed", "<x>")
    assert trigger == "<fcsks>" and attribute


def test_a_candidate_that_cannot_be_fused_is_reported_not_fatal(people, dlib_analyzer, tmp_path):
    """Landmark fusion raises InputError (no 68 landmarks on the reference): the candidate goes on
    unfused with the reason as a note (ranked when ranking), and outputs are written."""
    import dataclasses

    from facechain.face.fusion import get_fusion
    from facechain.generate.rank import Reference, fuse_and_rank, save_style_outputs

    ref_face = dlib_analyzer.detect(people["ref"])[0]
    blank = np.full((256, 256, 3), 128, np.uint8)
    # a reference face without landmarks on an image where dlib finds no face: fusion cannot run
    reference = Reference(blank, dataclasses.replace(ref_face, landmarks=None, backend="insightface"), "000.png", "t")
    images = [people["ref_variant"], blank]
    scored = fuse_and_rank(images, reference, dlib_analyzer, fusion=get_fusion("landmark"), rank=True)
    assert [s.index for s in scored] == [0, 1]
    # not dropped: ranked unfused, the reason in the manifest
    assert scored[0].dropped is None and not scored[0].fused and scored[0].score is not None
    assert scored[0].extra["fusion_failed"].startswith("landmark fusion needs 68 landmarks")
    assert np.array_equal(scored[0].image, people["ref_variant"])
    assert scored[1].dropped == "no face detected"
    saved = save_style_outputs(tmp_path, "chef", "Chef", scored, [7, 8], 1)
    assert len(saved.kept) == 1 and saved.entries[0]["fusion_failed"].startswith("landmark fusion needs")
    assert (tmp_path / "candidates" / "chef_000.png").is_file()
    unranked = fuse_and_rank(images[:1], reference, dlib_analyzer, fusion=get_fusion("landmark"), rank=False)
    assert unranked[0].dropped is None and not unranked[0].fused
    assert unranked[0].extra["fusion_failed"].startswith("landmark fusion needs 68 landmarks")
    assert np.array_equal(unranked[0].image, people["ref_variant"])


def _pairs(dlib_analyzer):
    """(source, source face, target, target face, name) for real face pairs, mirrored and rotated ones included."""
    import cv2
    from matplotlib import cbook
    from PIL import Image
    from skimage.data import astronaut

    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    astro, hanks = astronaut(), _insightface_image("Tom_Hanks_54745.png")
    group = _insightface_image("t1.jpg")
    h, w = astro.shape[:2]
    rot = cv2.warpAffine(astro, cv2.getRotationMatrix2D((w / 2, h / 2), 12, 1.0), (w, h), borderMode=cv2.BORDER_REFLECT)
    images = {"hopper": hopper, "astronaut": astro, "hanks": hanks, "mirrored": np.ascontiguousarray(astro[:, ::-1]),
              "rotated": rot, "group": group}
    faces = {k: dlib_analyzer.detect(v)[0] for k, v in images.items()}
    pairs = [("hopper", "astronaut"), ("astronaut", "hopper"), ("hanks", "astronaut"), ("hopper", "mirrored"),
             ("hanks", "rotated"), ("hopper", "group")]
    return [(images[s], faces[s], images[t], faces[t], f"{s}->{t}") for s, t in pairs]


def test_warp_covers_every_pixel_inside_the_face_hull(dlib_analyzer):
    """The piecewise warp leaves no pixel of the face hull at the canvas's fill value (issue: a dark
    6x14 px patch on the lower lip where no triangle covered the destination)."""
    import cv2

    from facechain.face.fusion import destination_shape, warp_triangles

    for src, sf, tgt, tf, name in _pairs(dlib_analyzer):
        dst = destination_shape(tf.landmarks, sf.landmarks)
        warped, covered = warp_triangles(src, sf.landmarks.astype(np.float32), dst, tgt.shape[:2])
        hull = np.zeros(tgt.shape[:2], np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(dst.astype(np.int32)), 1)
        inner = cv2.erode(hull, np.ones((5, 5), np.uint8)).astype(bool)  # 2 px: the int hull rounds its corners
        assert covered[inner].all(), name
        assert not (warped[inner] == 0).all(axis=1).any(), name  # no fill-valued (black) pixel left
        assert not warped[~covered].any()


@pytest.mark.slow
def test_fusion_leaves_no_seam(dlib_analyzer):
    """Gradient magnitude on the 2 px just inside the blend mask's edge, fused image / target: a seam
    (a step where the mask ends) raises it; the target's own texture there is the yardstick."""
    import cv2

    from facechain.face.fusion import get_fusion

    def grad(img):
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))

    fusion = get_fusion("landmark")
    for src, sf, tgt, tf, name in _pairs(dlib_analyzer):
        res = fusion.fuse(tgt, tf, src, sf)
        support = (res.mask > 0).astype(np.uint8)
        ring = (support - cv2.erode(support, np.ones((5, 5), np.uint8))).astype(bool)
        ratio = grad(res.image)[ring].mean() / grad(tgt)[ring].mean()
        assert 0.8 < ratio < 1.25, (name, ratio)
        assert np.array_equal(res.image[support == 0], tgt[support == 0])


def test_profile_faces_are_refused_and_small_references_noted(dlib_analyzer):
    import dataclasses

    import cv2

    from facechain.face.fusion import get_fusion, nose_offset

    src, sf, tgt, tf, _ = _pairs(dlib_analyzer)[0]  # hopper -> astronaut
    fusion = get_fusion("landmark")
    assert nose_offset(tf.kps) < 0.15 and nose_offset(sf.kps) < 0.15  # frontal photos
    kps = tf.kps.copy()
    kps[2, 0] += 0.6 * float(np.linalg.norm(kps[1] - kps[0]))  # nose far to one side: a profile
    with pytest.raises(InputError, match="turned sideways"):
        fusion.fuse(tgt, dataclasses.replace(tf, kps=kps), src, sf)
    assert fusion.fuse(tgt, tf, src, sf).notes == ()
    small = cv2.resize(src, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
    small_face = dlib_analyzer.detect(cv2.resize(small, None, fx=2, fy=2))  # dlib needs >= 80 px: find, then scale
    assert small_face
    f = small_face[0]
    f = dataclasses.replace(f, bbox=f.bbox / 2, kps=f.kps / 2, landmarks=f.landmarks / 2)
    res = fusion.fuse(tgt, tf, small, f)
    assert res.notes and "upscaled" in res.notes[0]
    assert not (res.image[res.mask > 0.5] == 0).all(axis=1).any()  # never a black patch


@pytest.mark.slow
def test_contact_sheet_shows_each_kept_image_before_and_after_fusion(dlib_analyzer, tmp_path):
    from facechain.face.fusion import get_fusion
    from facechain.generate.rank import Reference, contact_sheet, fuse_and_rank, save_style_outputs

    src, sf, tgt, _, _ = _pairs(dlib_analyzer)[0]  # hopper -> astronaut
    reference = Reference(src, sf, "000.png", "test")
    scored = fuse_and_rank([tgt, tgt[:, ::-1].copy()], reference, dlib_analyzer, fusion=get_fusion("landmark"),
                           rank=False, min_face_frac=0.1, max_face_frac=0.9)
    saved = save_style_outputs(tmp_path, "chef", "Chef", scored, [1, 2], 1)
    assert len(saved.sheet_images) == 2 + 2  # two candidates, then one pair for the one kept image
    assert saved.sheet_captions[2].endswith("before fusion") and saved.sheet_captions[3].endswith("after fusion")
    assert np.array_equal(saved.sheet_images[2], tgt) and np.array_equal(saved.sheet_images[3], scored[0].image)
    assert not np.array_equal(saved.sheet_images[2], saved.sheet_images[3])
    assert contact_sheet(saved.sheet_images, saved.sheet_captions).size[0] > 0


def _hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


def _face_detail(img: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian inside ``mask``: the fine detail a fused face carries."""
    import cv2

    lap = cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F)
    return float(lap[mask].var())


@pytest.mark.slow
def test_fusion_warps_from_a_sharp_high_resolution_crop(dlib_analyzer, tmp_path):
    """Preprocessing keeps the best photo's crop at its own resolution (reference/hires.png, same
    framing as the 512 px crop); generation fuses from it, so a large (SDXL-size) face gets the
    photo's detail instead of a 512 px crop enlarged."""
    import cv2
    from PIL import Image

    from facechain.face.fusion import get_fusion
    from facechain.io import save_image
    from facechain.generate.rank import select_reference_face
    from facechain.preprocess import PreprocessConfig, preprocess
    from facechain.preprocess.quality import photo_quality

    hopper = _hopper()
    save_image(tmp_path / "in" / "a.png", hopper)
    save_image(tmp_path / "in" / "b.png", cv2.GaussianBlur(hopper, (3, 3), 1))  # kept, less sharp
    save_image(tmp_path / "in" / "c.png", np.ascontiguousarray(hopper[:, ::-1]))
    out = tmp_path / "processed"
    preprocess(tmp_path / "in", out, PreprocessConfig(mask="none"), analyzer=dlib_analyzer, progress=False)
    report = json.loads((out / "report.json").read_text())
    kept = [e for e in report["entries"] if e["status"] == "kept"]
    assert len(kept) == 3
    best = max(kept, key=lambda e: photo_quality(e["scores"]))
    info = report["reference"]
    assert info["output"] == best["output"] and info["hires"] == "reference/hires.png"
    hires = np.asarray(Image.open(out / "reference" / "hires.png").convert("RGB"))
    native = 3.3 * best["scores"]["face_size"]  # the crop's side in the photo's own pixels (CROP_SCALE)
    assert hires.shape[0] == hires.shape[1] == info["hires_size"]
    assert 512 < hires.shape[0] <= native + 8
    # the same framing as the training crop: face keypoints at the same relative places
    processed = np.asarray(Image.open(out / best["output"]).convert("RGB"))
    k_lo = dlib_analyzer.detect(processed)[0].kps / 512
    k_hi = dlib_analyzer.detect(hires)[0].kps / hires.shape[0]
    assert np.abs(k_lo - k_hi).max() < 0.01, np.abs(k_lo - k_hi).max()

    from facechain.images import list_images

    assert len(list_images(out, "reference folder")) == 3  # `facechain eval --reference` sees each photo once
    ref = select_reference_face(out, dlib_analyzer)
    assert ref.file == best["output"] and ref.fusion_file == "reference/hires.png"
    src, src_face = ref.fusion_source()
    assert src.shape == hires.shape and src_face.size > 1.3 * ref.face.size

    # an SDXL-size target with a large face: the astronaut at 1024 px, face ~270 px
    from skimage.data import astronaut

    target = cv2.resize(astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    t_face = dlib_analyzer.detect(target)[0]
    fusion = get_fusion("landmark")
    sharp = fusion.fuse(target, t_face, src, src_face)
    soft = fusion.fuse(target, t_face, ref.image, ref.face)
    inner = (sharp.mask > 0.9) & (soft.mask > 0.9)
    assert inner.sum() > 20000
    gain = _face_detail(sharp.image, inner) / _face_detail(soft.image, inner)
    assert gain > 1.15, gain
    # both keep the identity
    for res in (sharp, soft):
        assert similarity(dlib_analyzer.detect(res.image)[0], src_face) > SAME_PERSON_THRESHOLD


def test_no_high_resolution_crop_when_the_photo_has_no_more_pixels(dlib_analyzer, processed_astronaut, tmp_path):
    """The astronaut's face (~130 px) gives a crop smaller than 512 px: nothing sharper to keep; the
    report says why and fusion uses the processed photo. reference_size 0 turns it off."""
    from facechain.io import save_image
    from facechain.generate.rank import select_reference_face
    from facechain.preprocess import PreprocessConfig, preprocess

    out = processed_astronaut
    info = json.loads((out / "report.json").read_text())["reference"]
    assert info["output"] == "000.png" and info["hires"] is None and "too small" in info["hires_note"]
    assert not (out / "reference/hires.png").exists()
    ref = select_reference_face(out, dlib_analyzer)
    assert ref.fusion_file is None and ref.fusion_source()[0] is ref.image
    with pytest.raises(InputError, match="reference_size"):
        PreprocessConfig(reference_size=100)
    save_image(tmp_path / "in2" / "a.png", _hopper())
    preprocess(tmp_path / "in2", tmp_path / "p2", PreprocessConfig(reference_size=0), analyzer=dlib_analyzer, progress=False)
    info = json.loads((tmp_path / "p2" / "report.json").read_text())["reference"]
    assert info["hires"] is None and info["hires_note"] == "reference_size is 0"
    assert not (tmp_path / "p2" / "reference/hires.png").exists()
