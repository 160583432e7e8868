"""A pose map or depth image whose aspect differs from the output is letterboxed (fit + black
padding), never stretched."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _tall_pose(tmp_path):
    from facechain.io import save_image
    from facechain.generate.poses import draw_openpose

    kp = {"nose": (0.5, 0.2), "neck": (0.5, 0.3), "r_shoulder": (0.3, 0.3), "l_shoulder": (0.7, 0.3),
          "r_hip": (0.4, 0.6), "l_hip": (0.6, 0.6), "r_eye": (0.45, 0.18), "l_eye": (0.55, 0.18)}
    tall = draw_openpose(kp, size=(128, 256))  # w 128, h 256: a full-body (portrait) frame
    save_image(tmp_path / "tall.png", tall)
    return tall


@pytest.mark.unit
def test_load_pose_letterboxes_a_non_square_map(tmp_path):
    from facechain.generate.poses import load_pose

    tall = _tall_pose(tmp_path)
    pose, photo = load_pose(str(tmp_path / "tall.png"), (256, 256))
    assert photo is None and pose.shape == (256, 256, 3)
    np.testing.assert_array_equal(pose[:, 64:192], tall)  # same scale (fits the height), centred
    assert pose[:, :64].max() == 0 and pose[:, 192:].max() == 0  # black bars, no stretched limbs
    # downscaled to fit: aspect kept (the stretch to 64 x 64 would make it twice as wide)
    small, _ = load_pose(str(tmp_path / "tall.png"), (64, 64))
    cols = np.flatnonzero(small.max(axis=(0, 2)) > 0)
    assert cols.min() >= 16 and cols.max() < 48


def test_generator_letterboxes_pose_and_depth(tiny_sd15, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.io import save_image

    _tall_pose(tmp_path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16)).save_pretrained(tmp_path / "cn")
    depth = np.full((256, 128, 3), 200, np.uint8)  # the same tall frame as the pose
    save_image(tmp_path / "depth.png", depth)
    cfg = GenerateConfig(base_model=str(tiny_sd15), output_dir=tmp_path / "out", num_candidates=1, num_images=1,
                         rank_candidates=False, fusion="off", detailer="off", device="cpu", dtype="float32",
                         pose=str(tmp_path / "tall.png"), depth=True, depth_image=tmp_path / "depth.png",
                         controlnet_openpose=str(tmp_path / "cn"), controlnet_depth=str(tmp_path / "cn"),
                         height=64, width=96)
    gen = PortraitGenerator(cfg)
    pose_img, depth_img = (np.asarray(im) for im in gen.control_images)
    assert pose_img.shape == (64, 96, 3) and depth_img.shape == (64, 96, 3)
    # 128 x 256 fits 64 px high as 32 x 64, centred: columns 32..63
    assert pose_img[:, :32].max() == 0 and pose_img[:, 64:].max() == 0
    assert depth_img[:, :32].max() == 0 and depth_img[:, 64:].max() == 0
    assert (depth_img[:, 33:63] == 200).all()
    cols = np.flatnonzero(pose_img.max(axis=(0, 2)) > 0)
    assert cols.min() >= 32 and cols.max() < 64


@pytest.mark.unit
@pytest.mark.parametrize("shape,size", [((50, 200, 3), (100, 100)), ((100, 100, 3), (100, 100)),
                                         ((300, 100, 3), (60, 90))])
def test_letterbox_keeps_aspect(shape, size):
    from facechain.generate.poses import letterbox

    img = np.full(shape, 255, np.uint8)
    out = letterbox(img, size)
    assert out.shape == (size[1], size[0], 3)
    ys, xs = np.nonzero(out[..., 0])
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert abs(w / h - shape[1] / shape[0]) < 0.05 * shape[1] / shape[0] + 0.05


def test_depth_map_loses_the_pose_photos_head(dlib_analyzer, sample_photos):
    """FaceChain masks the head in the depth map: the head's shape comes from the face LoRA, the body
    and room from the pose photo. On a real photo: the face and the hair above it go to the far plane,
    the body below and the room beside stay as estimated."""
    from facechain.generate.poses import mask_heads_in_depth

    photo = sample_photos.astronaut()
    face = dlib_analyzer.detect(photo)[0]
    depth = np.full(photo.shape[:2], 200, np.uint8)
    masked = mask_heads_in_depth(depth, [face])
    cx, cy = (int(v) for v in face.center)
    x1, y1, x2, y2 = (int(v) for v in face.bbox)
    assert masked[cy, cx] == 0 and masked[max(0, y1 - 10), cx] == 0  # face and forehead/hair
    assert masked[min(photo.shape[0] - 1, y2 + (y2 - y1)), cx] == 200  # the chest below
    assert masked[cy, 5] == 200 and masked[cy, photo.shape[1] - 5] == 200  # the room beside
    assert depth[cy, cx] == 200  # the input is not changed
    assert np.array_equal(mask_heads_in_depth(depth, []), depth)  # no face: the whole map
