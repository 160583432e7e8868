"""Pose control for generation: the ControlNet(s) (OpenPose, plus depth) and their control pipeline, or a
merged RepControlNet's condition encoder (facechain.adapters.repcontrolnet), set up once per job."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from facechain.errors import InputError
from facechain.families import Family
from facechain.generate.config import GenerateConfig
from facechain.models import ResolvedModel, load_controlnet, load_depth_estimator
from facechain.adapters.repcontrolnet.merge import merged_record, load_condition_adapter

logger = logging.getLogger(__name__)


@dataclass
class PoseControl:
    """What sampling needs of the job's pose: the ControlNet pipeline with its images and scales
    (``mode`` "controlnet"), or the RepControlNet injection and its features (``mode`` "repcontrolnet")."""

    mode: str
    control_pipe: object | None = None
    controlnets: list = field(default_factory=list)  # in the order of images
    images: list = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    rep_injection: object | None = None
    rep_features: object | None = None


def estimate_depth(photo: np.ndarray, model: str, allow_pickle: bool = False) -> np.ndarray:
    """Depth map (RGB uint8) of a pose photo with a transformers depth-estimation model (FaceChain: DPT-large)."""
    from PIL import Image

    depth = load_depth_estimator(model, allow_pickle=allow_pickle)(Image.fromarray(photo))["depth"]
    return np.asarray(depth.convert("RGB"))


def setup_pose_control(pipe, family: Family, resolved: ResolvedModel, cfg: GenerateConfig, pose_map: np.ndarray,
                       photo: np.ndarray | None, size: tuple[int, int], *, dtype, device,
                       face_analyzer: Callable) -> PoseControl:
    """The job's pose control at ``size`` (width, height). ``pose_control: auto`` picks the merged RepControlNet
    of ``resolved`` when it has an OpenPose one and no depth is asked, else the ControlNet(s)."""
    from PIL import Image

    from facechain.generate.poses import letterbox

    # letterboxed, never stretched: a pose (and its depth map) of another aspect than the output keeps
    # its proportions; both are fitted the same way, so they stay aligned
    pose_map = letterbox(pose_map, size, "nearest")
    rep = merged_record(resolved.path)
    mode = cfg.pose_control
    if mode == "auto":
        mode = "repcontrolnet" if rep is not None and rep.get("condition") == "openpose" and not cfg.depth else "controlnet"
    if mode == "repcontrolnet":
        return _repcontrol(pipe, resolved, pose_map, rep, dtype=dtype, device=device)
    nets = [load_controlnet(cfg.controlnet_openpose or family.controlnets["openpose"], dtype=dtype,
                            what="openpose", allow_pickle=cfg.allow_pickle, variant=cfg.variant)]
    images = [Image.fromarray(pose_map)]
    scales = [cfg.pose_weight]
    if cfg.depth:
        if cfg.depth_image is not None:
            from facechain.images import read_image

            depth = read_image(cfg.depth_image, "depth_image")
        else:  # a photo: check_control_inputs refused a skeleton map without depth_image
            from facechain.generate.poses import mask_heads_in_depth

            depth = estimate_depth(photo, cfg.depth_estimator, cfg.allow_pickle)
            depth = np.asarray(Image.fromarray(depth).resize((photo.shape[1], photo.shape[0]), Image.BICUBIC))
            faces = face_analyzer().detect(photo)  # the pose photo's own head: FaceChain masks it
            depth = mask_heads_in_depth(depth, faces)
            if not faces:
                logger.info("depth: no face found in the pose photo; its depth map is used whole")
        nets.append(load_controlnet(cfg.controlnet_depth or family.controlnets["depth"], dtype=dtype,
                                    what="depth", allow_pickle=cfg.allow_pickle, variant=cfg.variant))
        images.append(Image.fromarray(letterbox(depth, size, "bicubic")))
        scales.append(cfg.depth_weight)
    if len(nets) > 1:
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        controlnet = MultiControlNetModel(nets)
    else:
        controlnet = nets[0]
    control_pipe = family.pipeline_class("controlnet").from_pipe(pipe, controlnet=controlnet)
    control_pipe.set_progress_bar_config(disable=True)
    return PoseControl(mode, control_pipe, nets, images, scales)


def _repcontrol(pipe, resolved: ResolvedModel, pose_map: np.ndarray, record: dict | None, *, dtype, device) -> PoseControl:
    """A merged RepControlNet base model: its condition encoder turns the pose map into features added
    to the UNet's first feature map during sampling (facechain.adapters.repcontrolnet)."""
    import torch

    from facechain.adapters.repcontrolnet.model import ConditionInjection

    if record is None or record.get("condition") != "openpose":
        raise InputError(
            f"pose_control is repcontrolnet but base_model {resolved.reference} is not a model merged with an "
            "openpose RepControlNet (`facechain merge-repcontrolnet`). Use such a model, or pose_control: controlnet.")
    adapter = load_condition_adapter(resolved.path, pipe.unet).to(device, dtype)
    pose = torch.from_numpy(np.ascontiguousarray(pose_map)).permute(2, 0, 1)[None].float().div(255.0)
    with torch.inference_mode():
        features = adapter(pose.to(device, dtype))
    return PoseControl("repcontrolnet", rep_injection=ConditionInjection(pipe.unet), rep_features=features)
