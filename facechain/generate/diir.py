"""DIIR: DDIM-inversion-based identity restoration (MagicID), a post-step after any generator.

For each face of an image: crop a square around it and upscale the crop to the model's native size,
encode it with the VAE, run DDIM *inversion* (Song et al. 2021; the deterministic ODE run backwards)
for ``strength`` of the schedule under the unconditional branch (empty prompt, the identity's
unconditional input), then run DDIM forward from the inverted latent with the person's identity (the
face LoRA, which acts through the prompt's trigger word, and/or an identity adapter's embedding),
classifier-free guidance and, when a ControlNet is given, the face's landmarks drawn as OpenPose face
keypoints. The regenerated crop is scaled back and pasted through the feathered face mask, so every
pixel outside the mask is the input's, bit for bit.

Inversion, not noise: img2img at the same strength starts from random noise and loses the face's
layout (pose, expression, lighting); the inverted latent keeps it, so regeneration changes what the
identity conditioning changes. ``invert`` and ``regenerate`` are public so the round trip can be
measured (tests/generate/test_diir.py).

The loop calls the pipeline's own modules (UNet, VAE, ControlNet; the pipeline's scheduler config gives
the DDIM schedule of facechain.inversion, the steps stylize inverts with too), so LoRAs loaded or fused into the UNet and
IP-Adapter attention processors act as they do in the pipeline's own calls.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from facechain.config import setting
from facechain.errors import InputError
from facechain.families import family_of_pipeline
from facechain.face.region import compose, face_region
from facechain.generate.detailer import DetailerConfig
from facechain.models import native_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DIIRConfig:
    """Settings of DIIR restoration; checked on creation (InputError names the field and the rule)."""

    strength: float = setting("Fraction of the DDIM schedule inverted and regenerated, in (0, 1]: more lets the identity "
                              "change more of the face, less keeps more of its details.", default=0.6)
    num_inference_steps: int = setting("DDIM steps over the full schedule; strength x steps of them run each way.",
                                       default=30)
    guidance_scale: float = setting("Classifier-free guidance of the regeneration (the inversion runs unguided).",
                                    default=5.0)
    landmark_weight: float = setting("ControlNet scale of the landmark map (the face's landmarks as OpenPose face "
                                     "keypoints); 0 = no landmark control.", default=0.6)
    padding: float = setting("Crop side as a multiple of the face side, in [1.2, 8].", default=1.6)
    working_size: int | None = setting("Side (px) the crop is upscaled to; empty = the model's native size.", default=None)
    min_face_px: int = setting("Faces smaller than this are left as they are (reported).", default=32)

    def __post_init__(self):
        if not (isinstance(self.strength, (int, float)) and 0.0 < self.strength <= 1.0):
            raise InputError(f"diir strength must be in (0, 1], got {self.strength!r}. 0.4-0.7 restores the identity "
                             "and keeps the face's layout.")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise InputError(f"diir num_inference_steps must be an integer >= 1, got {self.num_inference_steps!r}.")
        if int(self.num_inference_steps * self.strength) < 1:
            raise InputError(f"diir strength x num_inference_steps = {self.strength} x {self.num_inference_steps} runs "
                             f"no step. Raise num_inference_steps to at least {math.ceil(1 / self.strength)}.")
        if not (isinstance(self.guidance_scale, (int, float)) and self.guidance_scale >= 0):
            raise InputError(f"diir guidance_scale must be >= 0, got {self.guidance_scale!r}.")
        if not (isinstance(self.landmark_weight, (int, float)) and self.landmark_weight >= 0):
            raise InputError(f"diir landmark_weight must be >= 0 (0: no landmark control), got {self.landmark_weight!r}.")
        if not (isinstance(self.padding, (int, float)) and 1.2 <= self.padding <= 8):
            raise InputError(f"diir padding (crop side / face side) must be in [1.2, 8], got {self.padding!r}.")
        if self.working_size is not None and (not isinstance(self.working_size, int) or self.working_size < 64
                                              or self.working_size % 8):
            raise InputError(f"diir working_size must be a multiple of 8 and >= 64 (or empty), got {self.working_size!r}.")

    @property
    def run_steps(self) -> int:
        return int(self.num_inference_steps * self.strength)


@dataclass
class Identity:
    """What the regeneration adds over the unconditional inversion: the identity adapter (None: the face
    LoRA alone, through the prompt) and its ``ip_adapter_image_embeds`` ([(2 or 1, 1, 1, D)], the
    unconditional row first under guidance; None for adapters that act through hooks)."""

    adapter: object | None = None
    ip_embeds: list | None = None


def _schedule(pipe, steps: int):
    """The DDIM schedule of ``pipe``'s scheduler config (facechain.inversion: the one DDIM step and its exact
    inverse); the last step lands on alpha_bar[0] (``set_alpha_to_one`` off: latents stay unclipped and the
    schedule ends where the SD schedulers' own configs end it)."""
    from facechain.inversion import make_schedule  # torch: only once DIIR runs, not when a config is read

    return make_schedule({**dict(pipe.scheduler.config), "set_alpha_to_one": False}, steps, "ddim")


def _added_conditions(pipe, conditioning: dict, size: int, negative: bool):
    """(text embeddings, UNet added_cond_kwargs) of one branch: the family's added conditioning (SDXL's
    pooled text and size ids; none for SD1.5)."""
    prefix = "negative_" if negative else ""
    emb = conditioning[f"{prefix}prompt_embeds"]
    added = family_of_pipeline(pipe).added_conditioning(conditioning.get(f"{prefix}pooled_prompt_embeds"), size, size,
                                                        1, emb.device, emb.dtype)
    return emb, added or {}


def _predict(pipe, latents, t, emb, added: dict, control: tuple | None):
    """The UNet's noise prediction for a batch (ControlNet residuals added when ``control`` is given)."""
    kw = {}
    if control is not None:
        net, image, scale = control
        down, mid = net(latents, t, encoder_hidden_states=emb, controlnet_cond=image, conditioning_scale=scale,
                        added_cond_kwargs=added, return_dict=False)
        kw = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return pipe.unet(latents, t, encoder_hidden_states=emb, added_cond_kwargs=added, return_dict=False, **kw)[0]


def _cat(a: dict, b: dict) -> dict:
    import torch

    return {k: torch.cat([a[k], b[k]]) for k in a}


def encode(pipe, image: np.ndarray):
    """VAE latents (the distribution's mean, scaled) of an RGB uint8 image, fp16-safe (the family's encode)."""
    return family_of_pipeline(pipe).encode_latents(pipe.vae, image, pipe.device).to(pipe.unet.dtype)


def decode(pipe, latents) -> np.ndarray:
    return family_of_pipeline(pipe).decode_latents(pipe.vae, latents)


def invert(pipe, latents, null_conditioning: dict, cfg: DIIRConfig, *, size: int, control: tuple | None = None,
           identity: Identity | None = None):
    """DDIM-invert ``latents`` through the first ``cfg.run_steps`` steps of the schedule, unguided, on the
    unconditional branch (``null_conditioning``: the empty prompt's embeddings; the identity's
    unconditional input). Returns the latent at the noise level regeneration starts from."""
    import torch

    schedule = _schedule(pipe, cfg.num_inference_steps)
    n = len(schedule)
    emb, added = _added_conditions(pipe, null_conditioning, size, negative=False)
    identity = identity or Identity()
    if identity.adapter is not None:
        identity.adapter.before_call(1, do_cfg=False, unconditional=True)
    if identity.ip_embeds is not None:
        added = {**added, "image_embeds": [torch.zeros_like(e[-1:]) for e in identity.ip_embeds]}
    x = latents
    with torch.inference_mode():
        for i in range(n - 1, n - 1 - cfg.run_steps, -1):  # the least noisy steps first
            t = schedule.timesteps[i]
            x = schedule.invert_step(_predict(pipe, x, t, emb, added, control), i, x)
    return x


def regenerate(pipe, latents, conditioning: dict, cfg: DIIRConfig, *, size: int, control: tuple | None = None,
               identity: Identity | None = None):
    """DDIM from the inverted ``latents`` through the last ``cfg.run_steps`` steps, with the prompt
    (``conditioning``: PromptEncoder's keyword arguments, the face LoRA's trigger word in it), the identity
    and classifier-free guidance. Returns clean latents."""
    import torch

    schedule = _schedule(pipe, cfg.num_inference_steps)
    guided = cfg.guidance_scale > 1
    emb, added = _added_conditions(pipe, conditioning, size, negative=False)
    if guided:
        n_emb, n_added = _added_conditions(pipe, conditioning, size, negative=True)
        emb, added = torch.cat([n_emb, emb]), _cat(n_added, added)
    identity = identity or Identity()
    if identity.adapter is not None:
        identity.adapter.before_call(1, do_cfg=guided)
    if identity.ip_embeds is not None:
        added = {**added, "image_embeds": [e if guided else e[-1:] for e in identity.ip_embeds]}
    if control is not None and guided:
        control = (control[0], torch.cat([control[1]] * 2), control[2])
    x = latents
    with torch.inference_mode():
        for i in range(len(schedule) - cfg.run_steps, len(schedule)):
            t = schedule.timesteps[i]
            x_in = torch.cat([x, x]) if guided else x
            eps = _predict(pipe, x_in, t, emb, added, control)
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + cfg.guidance_scale * (cond - uncond)
            x = schedule.step(eps, i, x)
    return x


def openpose_net(controlnet, names: list[str] | None = None):
    """The OpenPose ControlNet inside a job's ControlNet (``names``: the nets' roles, in order, for a
    MultiControlNetModel), or None."""
    if controlnet is None:
        return None
    nets = getattr(controlnet, "nets", None)
    if nets is None:
        return controlnet if names is None or names == ["openpose"] else None
    names = names or []
    return nets[names.index("openpose")] if "openpose" in names else None


def diir_faces(pipe, image: np.ndarray, faces: list, conditioning: dict, null_conditioning: dict,
                  cfg: DIIRConfig | None = None, *, controlnet=None, identity: Identity | None = None
                  ) -> tuple[np.ndarray, list[dict]]:
    """Restore every face in ``faces`` (detected on ``image``, RGB uint8) in turn; returns the new image and
    a report per face (crop, steps, whether landmark control ran, or why the face was skipped)."""
    import torch
    from PIL import Image

    from facechain.generate.poses import face_keypoint_map

    cfg = cfg or DIIRConfig()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"DIIR expects an RGB uint8 array (H, W, 3), got {getattr(image, 'dtype', type(image))} "
                              f"{getattr(image, 'shape', '')}.")
    size = cfg.working_size or native_size(pipe)
    region_cfg = DetailerConfig(mode="always", padding=cfg.padding, mask_dilation=0.06, mask_feather=0.04,
                                working_size=size)
    use_control = controlnet is not None and cfg.landmark_weight > 0
    out = image.copy()
    report = []
    for k, face in enumerate(faces):
        entry = {"face": k, "bbox": [round(float(v), 1) for v in face.bbox[:4]], "face_px": round(float(face.size), 1)}
        if face.size < cfg.min_face_px:
            entry["skipped"] = f"face of {face.size:.0f} px is under min_face_px {cfg.min_face_px}"
            report.append(entry)
            continue
        region = face_region(face, image.shape, region_cfg)
        ys, xs = slice(region.y0, region.y0 + region.side), slice(region.x0, region.x0 + region.side)
        crop = out[ys, xs]
        up = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))
        control = None
        if use_control:
            dots = face_keypoint_map(face, region.x0, region.y0, region.side)
            dots = np.asarray(Image.fromarray(dots).resize((size, size), Image.Resampling.NEAREST))
            cond = torch.from_numpy(np.array(dots, copy=True)).permute(2, 0, 1)[None].float().div(255.0)
            control = (controlnet, cond.to(pipe.device, controlnet.dtype), float(cfg.landmark_weight))
        lat = encode(pipe, up)
        noisy = invert(pipe, lat, null_conditioning, cfg, size=size, control=control, identity=identity)
        clean = regenerate(pipe, noisy, conditioning, cfg, size=size, control=control, identity=identity)
        new = np.asarray(Image.fromarray(decode(pipe, clean)).resize((region.side, region.side),
                                                                     Image.Resampling.LANCZOS))
        out[ys, xs] = compose(crop, new, region.alpha)
        entry.update(crop=[region.x0, region.y0, region.side], working_size=size, steps=cfg.run_steps,
                     strength=cfg.strength, guidance_scale=cfg.guidance_scale,
                     landmark_control=float(cfg.landmark_weight) if use_control else None)
        report.append(entry)
    return out, report
