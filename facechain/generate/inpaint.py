"""Re-drawing a region with a pipeline's inpaint twin: :func:`inpaint_pipeline` makes the inpaint pipeline of
any loaded pipeline with ``from_pipe`` (the same modules, adapters and scheduler; the family's inpaint class),
and :func:`redraw_region` re-generates a crop where a mask is set. The face detailer, templates and DIIR use them."""

from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager

import numpy as np

from facechain.errors import InputError
from facechain.families import Family, family_of_pipeline
from facechain.models import dtype_kwargs

logger = logging.getLogger(__name__)

# base pipeline -> its inpaint pipeline (made with from_pipe: shares the modules). Weak keys: the
# entry goes with the base pipeline, and the inpaint pipeline holds no reference to it.
_INPAINT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARED = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


class _EmptyFp32Notice(logging.Filter):
    """Drops diffusers' "modules ... should be kept in float32: []" warning, logged by every
    ``ModelMixin.to(dtype)`` whose list of float32 modules is empty (nothing to keep): from_pipe
    casts once, and the SDXL inpaint pipeline casts its VAE around every encode."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("There are modules in") and "should be kept in float32: []." in msg)


@contextmanager
def _quiet_empty_fp32_notice():
    target = logging.getLogger("diffusers.models.modeling_utils")
    flt = _EmptyFp32Notice()
    target.addFilter(flt)
    try:
        yield
    finally:
        target.removeFilter(flt)


def _family(pipe) -> Family:
    if getattr(pipe, "unet", None) is None or getattr(pipe, "vae", None) is None:
        raise InputError(f"the face detailer needs a Stable Diffusion pipeline with a UNet and a VAE, got "
                         f"{type(pipe).__name__}.")
    return family_of_pipeline(pipe)


def inpaint_pipeline(pipe):
    """The inpaint pipeline of ``pipe`` (SD1.5 or SDXL text-to-image, img2img or ControlNet pipeline),
    made with ``from_pipe`` once and cached: the same UNet (with its LoRA adapters, fused or not),
    VAE, text encoders and scheduler, no copy. A ControlNet is left out. Made again when ``pipe``'s
    modules were replaced since (e.g. a new scheduler)."""
    import torch

    cached = _INPAINT.get(pipe)
    if cached is not None and all(getattr(cached, n, None) is getattr(pipe, n, None) for n in _SHARED):
        return cached
    cls = _family(pipe).pipeline_class("inpaint")
    if getattr(pipe, "controlnet", None) is not None:
        logger.info("face detailer: inpainting without the ControlNet of %s", type(pipe).__name__)
    # from_pipe ends with new_pipeline.to(dtype=...) (float32 unless told), which would convert the
    # SHARED modules of a half-precision pipeline in place: pass the pipeline's dtype, and put back
    # any module whose dtype still changed (a pipeline whose modules differ in dtype)
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    dtypes = {n: m.dtype for n, m in modules.items() if hasattr(m, "dtype")}
    with _quiet_empty_fp32_notice():  # components the inpaint class does not take (controlnet) are dropped
        inpaint = cls.from_pipe(pipe, **dtype_kwargs(pipe.dtype))
    for n, d in dtypes.items():
        if modules[n].dtype != d:
            modules[n].to(dtype=d)
    if getattr(inpaint, "controlnet", None) is not None:  # pragma: no cover - guards a diffusers change
        raise InputError("the face detailer's inpaint pipeline unexpectedly kept a ControlNet.")
    inpaint.set_progress_bar_config(disable=True)
    _INPAINT[pipe] = inpaint
    return inpaint


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            "the face detailer expects an RGB uint8 array of shape (H, W, 3), got "
            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}."
        )
    return np.ascontiguousarray(image)


def redraw_region(inpaint, crop: np.ndarray, support: np.ndarray, size: int, conditioning: dict,
            cfg, seed: int, controls: dict | None = None) -> np.ndarray:
    """Re-generate ``crop`` (uint8 (s, s, 3)) where ``support`` is set, at ``size`` px; returns uint8 (s, s, 3).
    ``cfg``: ``strength``, ``num_inference_steps``, ``guidance_scale`` (a DetailerConfig). ``conditioning``: the
    prompt embeddings (:class:`facechain.prompts.PromptEncoder`'s keyword arguments).
    ``controls``: extra pipeline arguments: a ControlNet inpaint pipeline's ``control_image`` (images of the
    crop, resized here to ``size``) and ``controlnet_conditioning_scale``, an IP-Adapter's
    ``ip_adapter_image_embeds``."""
    import cv2
    import torch
    from PIL import Image

    side = crop.shape[0]
    up = Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS)
    # the inpaint mask: the feathered mask's support at working size, grown by two latent cells so
    # every latent cell under a non-zero alpha is re-drawn (the pipeline binarizes it per cell)
    grow = 2 * int(inpaint.vae_scale_factor)
    m = cv2.resize(support.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_NEAREST)
    m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    device = inpaint._execution_device  # .device under CPU offload would be the CPU, where the models wait
    gen_device = "cpu" if device.type == "mps" else device
    generator = torch.Generator(gen_device).manual_seed(int(seed))
    extra = dict(controls or {})
    if "control_image" in extra:
        imgs = extra["control_image"]
        imgs = [Image.fromarray(c).resize((size, size), Image.Resampling.NEAREST) for c in
                (imgs if isinstance(imgs, list) else [imgs])]
        extra["control_image"] = imgs if len(imgs) > 1 else imgs[0]
    with torch.inference_mode(), _quiet_empty_fp32_notice():
        out = inpaint(
            **conditioning, **extra, image=up, mask_image=Image.fromarray(m),
            height=size, width=size, strength=cfg.strength, num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale, generator=generator, output_type="np",
        ).images[0]  # float (size, size, 3) in [0, 1]
    new = np.clip(np.rint(np.asarray(out, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(new).resize((side, side), Image.Resampling.LANCZOS))
