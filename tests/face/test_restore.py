"""Face restoration (facechain.face.restore) with small real spandrel architectures and random,
seeded weights, loaded through load_restorer from files, on real photos with real (dlib) face
detection. No real GFPGAN/RestoreFormer weights are available offline: these tests check loading,
safety, alignment, pasting and blending, not restoration quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError
from facechain.face.types import Face


def _compact_state_dict(seed: int = 0, upscale: int = 1, in_ch: int = 3, num_feat: int = 8, num_conv: int = 2):
    """State dict of spandrel's Compact (Real-ESRGAN SRVGGNetCompact), tiny and seeded."""
    import torch
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    net = Compact(num_in_ch=in_ch, num_out_ch=in_ch, num_feat=num_feat, num_conv=num_conv, upscale=upscale)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def _save_safetensors(sd: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def compact_sd():
    return _compact_state_dict(seed=0)


@pytest.fixture(scope="module")
def compact_file(tmp_path_factory, compact_sd):
    return _save_safetensors(compact_sd, tmp_path_factory.mktemp("restore") / "compact.safetensors")


@pytest.fixture(scope="module")
def restorer(compact_file):
    from facechain.face.restore import RestoreConfig, load_restorer

    return load_restorer(RestoreConfig(model=compact_file, device="cpu"))


@pytest.fixture(scope="module")
def astronaut(sample_photos, dlib_analyzer):
    image = sample_photos.astronaut()
    faces = dlib_analyzer.detect(image, embed=False)
    assert len(faces) == 1
    return image, faces


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)


def _with_kps(face: Face, kps) -> Face:
    return Face(bbox=face.bbox, score=face.score, kps=kps, backend=face.backend)


# --------------------------------------------------------------------------- restoring


def test_face_region_changes_and_everything_else_is_bit_identical(restorer, astronaut):
    image, faces = astronaut
    before = image.copy()
    out, infos = restorer(image, faces, strength=1.0)
    assert np.array_equal(image, before), "the input array was written to"
    assert out.shape == image.shape and out.dtype == np.uint8 and out is not image
    assert infos == [{"index": 0, "restored": True, "reason": None, "region": infos[0]["region"],
                      "crop_scale": infos[0]["crop_scale"]}]
    weights, region = restorer.blend_weights(image.shape, faces[0], strength=1.0)
    assert region == infos[0]["region"]
    d = _diff(out, image)
    # the face itself (its box) changed: a random-weight model is far from the identity
    x0, y0, x1, y1 = faces[0].bbox.astype(int)
    assert d[y0:y1, x0:x1].mean() > 2.0
    assert (d[weights >= 0.99] > 0).mean() > 0.5
    # outside the blend mask: every pixel bit-identical; inside the region box only where weight > 0
    assert np.array_equal(out[weights == 0], image[weights == 0])
    assert (weights == 0).sum() > 0.8 * weights.size
    rx0, ry0, rx1, ry1 = region
    outside = np.ones(image.shape[:2], bool)
    outside[ry0:ry1, rx0:rx1] = False
    assert np.array_equal(out[outside], image[outside])
    # and the face lands where the keypoints say: the full-weight zone covers the eyes and mouth
    for x, y in faces[0].kps:
        assert weights[int(round(y)), int(round(x))] > 0.99


def test_strength_zero_returns_the_input_and_strength_blends_linearly(restorer, astronaut):
    image, faces = astronaut
    out0, infos0 = restorer(image, faces, strength=0.0)
    assert np.array_equal(out0, image) and out0 is not image
    assert infos0[0]["restored"] is False and infos0[0]["reason"] == "strength is 0"
    full, _ = restorer(image, faces, strength=1.0)
    half, _ = restorer(image, faces)  # cfg default: 0.5
    assert restorer.strength == 0.5
    expect = image.astype(np.float32) + 0.5 * (full.astype(np.float32) - image.astype(np.float32))
    # half = input + 0.5 * w * (restored - input); full rounds restored once more: within 1 level
    assert np.abs(half.astype(np.float32) - expect).max() <= 1.0
    assert _diff(half, image).max() > 0


def test_no_seam_weight_is_zero_at_the_paste_border(restorer, astronaut):
    import cv2

    image, faces = astronaut
    out, _ = restorer(image, faces, strength=1.0)
    weights, _ = restorer.blend_weights(image.shape, faces[0], strength=1.0)
    inside = weights > 0
    # pixels of the pasted region that touch an untouched pixel: weight ~0 there
    touching = inside & cv2.dilate((~inside).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert touching.sum() > 100
    assert weights[touching].max() < 0.02
    d = _diff(out, image).astype(np.float32)
    assert d[touching].max() <= 3
    # the change never exceeds what the weight allows (|restored - input| <= 255 per pixel)
    assert (d <= np.ceil(weights * 255) + 1).all()
    # mean difference rises smoothly from the border inwards: bands of 0.1 in weight, no jump
    bands = [d[(weights > lo) & (weights <= lo + 0.1)].mean() for lo in np.arange(0, 1.0, 0.1)]
    full = d[weights >= 0.999].mean()
    assert bands[0] < 0.15 * full
    assert max(np.diff(bands + [full])) < 0.35 * full


def _check_restored_inside_its_mask(r, image, faces):
    out, infos = r(image, faces)
    assert infos[0]["restored"]
    weights, _ = r.blend_weights(image.shape, faces[0])
    assert np.array_equal(out[weights == 0], image[weights == 0])
    assert _diff(out, image)[weights > 0.99].mean() > 2.0


def test_upscaling_model_output_is_resized_back(tmp_path, astronaut):
    from facechain.face.restore import RestoreConfig, load_restorer

    path = _save_safetensors(_compact_state_dict(seed=1, upscale=2), tmp_path / "compact_x2.safetensors")
    r = load_restorer(RestoreConfig(model=path, device="cpu", input_size=256, strength=1.0))
    assert r.descriptor.scale == 2 and r.input_size == 256
    crop = np.full((256, 256, 3), 128, np.uint8)
    assert r.restore_aligned(crop).shape == (256, 256, 3)
    _check_restored_inside_its_mask(r, *astronaut)


def test_group_photo_every_face_restored(restorer, sample_photos, dlib_analyzer):
    image = sample_photos.group_photo()
    faces = dlib_analyzer.detect(image, embed=False)
    assert len(faces) >= 3
    out, infos = restorer(image, faces, strength=1.0)
    assert [i["restored"] for i in infos] == [True] * len(faces)
    untouched = np.ones(image.shape[:2], bool)
    for face in faces:
        w, _ = restorer.blend_weights(image.shape, face)
        untouched &= w == 0
    assert np.array_equal(out[untouched], image[untouched])
    assert not np.array_equal(out, image)


def test_small_restoreformer_runs_on_a_face(tmp_path, astronaut):
    """spandrel's RestoreFormer (a FaceSR architecture; its descriptor normalises to [-1, 1] itself),
    shrunk to 32 channels, 0.5M parameters; hyperparameters detected from the file's keys and shapes."""
    import torch
    from spandrel.architectures.RestoreFormer import RestoreFormer
    from facechain.face.restore import RestoreConfig, load_restorer

    torch.manual_seed(0)
    net = RestoreFormer(n_embed=32, embed_dim=32, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
                        z_channels=32, double_z=False, enable_mid=True)
    path = _save_safetensors({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                             tmp_path / "restoreformer-tiny.safetensors")
    with pytest.raises(InputError, match="multiple of 32"):
        load_restorer(RestoreConfig(model=path, device="cpu", input_size=250))
    r = load_restorer(RestoreConfig(model=path, device="cpu", input_size=256, strength=1.0))
    assert r.architecture == "RestoreFormer" and r.descriptor.purpose == "FaceSR"
    _check_restored_inside_its_mask(r, *astronaut)


# --------------------------------------------------------------------------- faces that cannot be restored / borders


def test_degenerate_faces_are_skipped_with_a_reason(restorer, astronaut):
    image, faces = astronaut
    good = faces[0]
    same_eyes = good.kps.copy()
    same_eyes[1] = same_eyes[0]
    nan_kps = good.kps.copy()
    nan_kps[2, 0] = np.nan
    far = good.kps + np.float32([5000, 5000])
    bad = [_with_kps(good, same_eyes), _with_kps(good, nan_kps), _with_kps(good, None),
           _with_kps(good, np.zeros((3, 2), np.float32)), _with_kps(good, far)]
    out, infos = restorer(image, [bad[0], good, *bad[1:]], strength=1.0)
    assert [i["restored"] for i in infos] == [False, True, False, False, False, False]
    reasons = [i["reason"] for i in infos]
    assert "same point" in reasons[0]
    assert reasons[1] is None
    assert "not finite" in reasons[2]
    assert "no keypoints" in reasons[3]
    assert "shape" in reasons[4]
    assert "outside the image" in reasons[5]
    alone, _ = restorer(image, [good], strength=1.0)
    assert np.array_equal(out, alone)


def test_face_partly_outside_the_image(restorer, astronaut):
    image, faces = astronaut
    shift = 215  # cuts through the face: the left eye is at x ~203
    cut = np.ascontiguousarray(image[:, shift:])
    face = _with_kps(faces[0], faces[0].kps - np.float32([shift, 0]))
    assert face.kps[:, 0].min() < 0 < face.kps[:, 0].max()
    out, infos = restorer(cut, [face], strength=1.0)
    assert infos[0]["restored"] and infos[0]["region"][0] == 0
    weights, _ = restorer.blend_weights(cut.shape, face, strength=1.0)
    assert np.array_equal(out[weights == 0], cut[weights == 0])
    assert _diff(out, cut)[weights > 0.99].mean() > 2.0


def test_alignment_puts_the_keypoints_on_the_ffhq_template(astronaut):
    from facechain.face.restore import FFHQ_TEMPLATE_512, alignment_matrix

    # keypoints that are an exact similarity image of the template map onto it exactly
    angle, scale, shift = np.deg2rad(20), 0.4, np.array([100.0, 50.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = FFHQ_TEMPLATE_512 @ rot.T + shift
    m = alignment_matrix(kps, 256)
    mapped = kps @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - FFHQ_TEMPLATE_512 / 2).max() < 1e-3
    # a real face's keypoints land near the template (a similarity cannot fit 5 points exactly)
    _, faces = astronaut
    m = alignment_matrix(faces[0].kps, 512)
    mapped = faces[0].kps @ m[:, :2].T + m[:, 2]
    assert np.linalg.norm(mapped - FFHQ_TEMPLATE_512, axis=1).max() < 15
    with pytest.raises(InputError, match="same point"):
        alignment_matrix(np.zeros((5, 2)), 512)


# --------------------------------------------------------------------------- loading and safety


def test_pickle_refused_without_allow_pickle_and_loads_with_it(tmp_path, compact_sd, restorer, astronaut):
    import torch
    from facechain.face.restore import RestoreConfig, load_restorer
    from facechain.models import check_checkpoint_file

    pth = tmp_path / "compact.pth"
    torch.save({"params_ema": compact_sd}, pth)  # the layout GFPGAN's release files use
    with pytest.raises(UnsafeCheckpointError) as err:
        load_restorer(RestoreConfig(model=pth, device="cpu"))
    with pytest.raises(UnsafeCheckpointError) as expected:
        check_checkpoint_file(pth, False, "face restoration model")
    assert str(err.value) == str(expected.value)
    assert str(pth) in str(err.value) and "--allow-pickle" in str(err.value)

    r = load_restorer(RestoreConfig(model=pth, device="cpu", allow_pickle=True))
    assert r.architecture == "Compact"
    image, faces = astronaut
    assert np.array_equal(r(image, faces)[0], restorer(image, faces)[0])


class NotATensor:
    """A pickled object that a tensors-only load must refuse."""


def test_pickle_with_other_objects_refused_even_with_allow_pickle(tmp_path, compact_sd):
    import torch
    from facechain.face.restore import RestoreConfig, load_restorer

    pth = tmp_path / "with_objects.pth"
    torch.save({"params_ema": compact_sd, "extra": NotATensor()}, pth)
    with pytest.raises(UnsafeCheckpointError, match="pickled objects besides tensors") as err:
        load_restorer(RestoreConfig(model=pth, device="cpu", allow_pickle=True))
    assert str(pth) in str(err.value)


def test_files_that_are_not_models_give_clear_errors(tmp_path, compact_sd):
    import torch
    from facechain.face.restore import RestoreConfig, load_restorer

    def load(path, **kw):
        return load_restorer(RestoreConfig(model=path, device="cpu", **kw))

    missing = tmp_path / "GFPGANv1.4.safetensors"
    with pytest.raises(ModelNotFoundError, match="does not exist") as err:
        load(missing)
    assert str(missing) in str(err.value) and "releases" in str(err.value)

    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a model\n")
    with pytest.raises(InputError, match="could not be read as a safetensors file") as err:
        load(text)
    assert str(text) in str(err.value)

    text_pth = tmp_path / "notes.pth"
    text_pth.write_text("this is not a model\n")
    with pytest.raises(InputError, match="could not be read as a PyTorch checkpoint"):
        load(text_pth, allow_pickle=True)

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x00")
    with pytest.raises(InputError, match="unknown file type"):
        load(onnx)

    unknown = _save_safetensors({"foo.weight": torch.zeros(4, 4)}, tmp_path / "unknown.safetensors")
    with pytest.raises(InputError, match="not a model architecture spandrel") as err:
        load(unknown)
    assert str(unknown) in str(err.value)

    gray = _save_safetensors(_compact_state_dict(in_ch=1), tmp_path / "gray.safetensors")
    with pytest.raises(InputError, match="RGB model"):
        load(gray)

    broken_sd = dict(compact_sd)
    broken_sd["body.2.weight"] = torch.zeros(3, 3, 3, 3)
    broken = _save_safetensors(broken_sd, tmp_path / "broken.safetensors")
    with pytest.raises(InputError, match="weights do not fit"):
        load(broken)

    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(InputError, match="not a file"):
        load(folder)


def test_config_and_call_arguments_are_checked(restorer, compact_file, astronaut):
    from facechain.face.restore import RestoreConfig

    for bad in (-0.1, 1.5, float("nan"), "high"):
        with pytest.raises(InputError, match="strength"):
            RestoreConfig(model=compact_file, strength=bad)
    with pytest.raises(InputError, match="input_size"):
        RestoreConfig(model=compact_file, input_size=0)
    with pytest.raises(InputError, match="dtype"):
        RestoreConfig(model=compact_file, dtype="int8")
    from facechain.face.restore import load_restorer

    with pytest.raises(InputError, match="not a torch device"):
        load_restorer(RestoreConfig(model=compact_file, device="toaster"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cannot be used"):
            load_restorer(RestoreConfig(model=compact_file, device="cuda"))
    image, faces = astronaut
    with pytest.raises(InputError, match="RGB uint8"):
        restorer(image.astype(np.float32), faces)
    with pytest.raises(InputError, match="strength"):
        restorer(image, faces, strength=2)
    out, infos = restorer(image, [])
    assert infos == [] and np.array_equal(out, image)


# --------------------------------------------------------------------------- GFPGAN at its real size


@pytest.fixture(scope="module")
def gfpgan_file(tmp_path_factory):
    """GFPGAN v1.3/v1.4's architecture (GFPGANv1Clean, 512 px, 86M parameters) with random weights:
    ~350 MB on disk, ~2 s to build and save."""
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    sd = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    # StyleGAN's noise-injection strengths start at 0 (the noise would not matter); trained GFPGAN
    # weights have them non-zero, so give them a value and the noise reaches the output
    for k in [k for k in sd if k.startswith("stylegan_decoder.style_conv") and tuple(sd[k].shape) == (1,)]:
        sd[k] = torch.full((1,), 0.5)
    return _save_safetensors(sd, tmp_path_factory.mktemp("gfpgan") / "GFPGANv1.4-random.safetensors")


def test_gfpgan_architecture_loads(gfpgan_file):
    from facechain.face.restore import RestoreConfig, load_restorer

    r = load_restorer(RestoreConfig(model=gfpgan_file))  # device "auto"
    assert r.architecture == "GFPGAN" and r.descriptor.purpose == "FaceSR" and r.descriptor.scale == 1
    with pytest.raises(InputError, match="only takes 512 px"):
        load_restorer(RestoreConfig(model=gfpgan_file, device="cpu", input_size=256))


@pytest.mark.slow
def test_gfpgan_restores_a_face_with_its_own_normalisation(gfpgan_file, astronaut):
    """~7 s per forward pass on one CPU thread."""
    import torch
    from facechain.face.restore import RestoreConfig, load_restorer

    r = load_restorer(RestoreConfig(model=gfpgan_file, device="cpu", strength=1.0))
    seen = []
    hook = r.descriptor.model.register_forward_pre_hook(lambda mod, args: seen.append(
        (float(args[0].min()), float(args[0].max()), tuple(args[0].shape))))
    image, faces = astronaut
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    try:
        out, infos = r(image, faces)
    finally:
        hook.remove()
    assert torch.equal(torch.get_rng_state(), rng_before), "the caller's RNG state changed"
    # GFPGAN's network gets [-1, 1] (2x - 1), as GFPGAN's own inference feeds it
    assert seen and seen[0][2] == (1, 3, 512, 512) and seen[0][0] < -0.5 and seen[0][1] <= 1.0
    assert infos[0]["restored"]
    weights, _ = r.blend_weights(image.shape, faces[0])
    assert np.array_equal(out[weights == 0], image[weights == 0])
    assert _diff(out, image)[weights > 0.99].mean() > 2.0
    again, _ = r(image, faces)
    assert np.array_equal(out, again), "two calls on the same input differ (noise not seeded)"


def test_generation_restores_each_fused_face(restorer, dlib_analyzer, sample_photos):
    """fuse_and_rank runs the restorer on each fused face and records it; the rest of the image stays."""
    from matplotlib import cbook
    from PIL import Image

    from facechain.face.fusion import get_fusion
    from facechain.generate.rank import Reference, fuse_and_rank

    ref = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    reference = Reference(ref, dlib_analyzer.detect(ref)[0], "000.png", "test")
    target = sample_photos.astronaut()
    kw = {"fusion": get_fusion("landmark"), "rank": False, "min_face_frac": 0.1, "max_face_frac": 0.9}
    plain = fuse_and_rank([target], reference, dlib_analyzer, **kw)[0]
    restored = fuse_and_rank([target], reference, dlib_analyzer, restorer=restorer, **kw)[0]
    assert plain.fused and restored.fused and "restored" not in plain.extra
    assert restored.extra["restored"]["restored"] is True
    face = dlib_analyzer.detect(target)[0]
    weights, _ = restorer.blend_weights(target.shape, face)
    assert not np.array_equal(restored.image, plain.image)
    assert np.array_equal(restored.image[weights == 0], plain.image[weights == 0])
