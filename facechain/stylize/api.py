"""``stylize(content, style, cfg) -> Stylization``: the library entry point behind
``facechain stylize``. Build an :class:`Engine` once and pass it to stylize many pairs: the
content's inversion is then computed once for any number of styles."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facechain.config import from_dict, save_config, to_dict
from facechain.errors import InputError
from facechain.io import save_image, write_json
from facechain.stylize.config import StylizeConfig, scaled_default
from facechain.images import ImageLike
from facechain.stylize.engine import Engine, PreparedImage, prepare_image
from facechain.stylize.masks import MaskLike, check_has_background, inner_feather
from facechain.stylize.registry import DEFAULT_START_LAYER_FRACTION, MethodInput, MethodSpec, get_method

logger = logging.getLogger(__name__)

FEATHER_PX_AT_512 = 8  # inward feather of the only-mask-region composite, scaled with resolution


@dataclass(frozen=True)
class Stylization:
    """One stylized image and how it was made."""

    image: np.ndarray  # (H, W, 3) uint8
    content: PreparedImage
    config: StylizeConfig
    modified: frozenset  # (step, layer) pairs the method changed (layer -1: mid-block)
    stats: dict = field(default_factory=dict)
    passes: tuple = ()  # Chain-of-Painting: each pass's image


def build_engine(cfg: StylizeConfig) -> Engine:
    return Engine(cfg)


def stylize(content: ImageLike | PreparedImage, style: ImageLike | PreparedImage, cfg: StylizeConfig,
            *, content_mask: MaskLike | None = None, style_mask: MaskLike | None = None,
            engine: Engine | None = None, progress: bool = True) -> Stylization:
    """Stylize ``content`` after ``style`` with ``cfg.method``; Portrait Diffusion options with
    a ``plan`` run Chain-of-Painting. Masks are checked against their image's original size."""
    method = get_method(cfg.method)
    options = from_dict(method.options_cls, cfg.options, where=f"options ({cfg.method})")
    cfg.check_steps()
    if engine is None:
        engine = build_engine(cfg)
    elif not engine.matches(cfg):
        raise InputError("the engine passed to stylize() was built for another model/LoRA/fast setting; build one with build_engine(cfg).")
    engine.schedule(cfg.num_steps)  # refuses steps the schedule cannot take (e.g. LCM) before any work
    if cfg.resolution is None:
        cfg = dataclasses.replace(cfg, resolution=engine.family.native_size)  # the family's training resolution
    if (isinstance(content, PreparedImage) and content_mask is not None) or (isinstance(style, PreparedImage) and style_mask is not None):
        raise InputError("a prepared image carries its own mask; pass the mask to prepare_image() instead of stylize().")
    plan = getattr(options, "plan", None)
    if plan and method.load_plan is not None:
        return _chain_of_painting(content, style, cfg, options, method.load_plan(plan), content_mask, style_mask, engine, progress)
    content_p = content if isinstance(content, PreparedImage) else prepare_image(content, None, cfg.resolution, "content", content_mask)
    style_p = style if isinstance(style, PreparedImage) else prepare_image(style, content_p.size, cfg.resolution, "style", style_mask)
    return _single_pass(content_p, style_p, cfg, options, engine, progress)


def _single_pass(content: PreparedImage, style: PreparedImage, cfg: StylizeConfig, options, engine: Engine,
                 progress: bool) -> Stylization:
    method = get_method(cfg.method)
    steps = cfg.num_steps
    if content.size != style.size:
        raise InputError(f"style image is {style.size[0]}x{style.size[1]} but the content is "
                         f"{content.size[0]}x{content.size[1]}; prepare the style at the content's size.")
    _check_masks(cfg, content, style, method)
    num_layers = len([n for n in engine.unet.attn_processors if n.endswith("attn1.processor")])
    start_layer = cfg.start_layer if cfg.start_layer is not None else round(DEFAULT_START_LAYER_FRACTION * num_layers)
    if method.uses_attention and start_layer >= num_layers:
        raise InputError(f"start_layer {start_layer} is beyond this model's {num_layers} self-attention layers "
                         f"(0..{num_layers - 1}); lower --start-layer.")
    if not method.uses_attention and cfg.start_layer is not None:
        logger.warning("start_layer is ignored by %s (it injects at the UNet mid-block)", method.name)
    start_step = cfg.start_step if cfg.start_step is not None else scaled_default(method.default_start_step, steps)
    prompt = cfg.prompt if cfg.prompt is not None else method.default_prompt
    before = dataclasses.replace(engine.counters)
    hits_before = engine.cache.hits
    t0 = time.perf_counter()
    inp = MethodInput(engine, content, style, cfg, options, prompt, steps, start_step, cfg.end_step, start_layer, progress)
    out = method.run(inp)
    image = engine.decode(out.latent)
    if cfg.only_mask_region:
        image = composite(image, content.array, content.mask, max(content.size))
    stats = {
        "method": method.name,
        "seconds": round(time.perf_counter() - t0, 3),
        "unet_calls": engine.counters.unet_calls - before.unet_calls,
        "unet_passes": engine.counters.unet_images - before.unet_images,
        "inversion_cache_hits": engine.cache.hits - hits_before,
        "steps": steps, "start_step": start_step, "start_layer": start_layer, "prompt": prompt,
        "controlled_pairs": len(out.modified),
    }
    return Stylization(image, content, cfg, frozenset(out.modified), stats)


def composite(image: np.ndarray, content: np.ndarray, mask: torch.Tensor, long_side: int) -> np.ndarray:
    """Stylized inside the mask, the content's exact pixels outside (edge feathered inward)."""
    radius = max(1, round(FEATHER_PX_AT_512 * long_side / 512))
    a = inner_feather(mask.float(), radius).numpy()[..., None]
    out = image.astype(np.float32) * a + content.astype(np.float32) * (1 - a)
    out = np.round(out).clip(0, 255).astype(np.uint8)
    outside = mask.numpy() < 0.5
    out[outside] = content[outside]  # exact, whatever the float rounding did
    return out


def _check_masks(cfg: StylizeConfig, content: PreparedImage, style: PreparedImage, method: MethodSpec) -> None:
    if cfg.only_mask_region and content.mask is None:
        raise InputError("only_mask_region needs a content mask (--content-mask): the region to stylize.")
    if content.mask is not None and style.mask is not None and not cfg.only_mask_region and method.mask_matching:
        check_has_background(content.mask, "content mask")
        check_has_background(style.mask, "style mask")
    if not method.uses_style_mask and style.mask is not None:
        logger.warning("%s ignores the style mask (it injects content features; the content mask limits where)", method.name)
    if content.mask is not None and style.mask is None and not cfg.only_mask_region and method.mask_matching:
        raise InputError(
            f"{method.name}: a content mask alone does nothing; add --style-mask for foreground/background "
            "matching, or --only-mask-region to stylize inside the content mask only."
        )


def _chain_of_painting(content, style, cfg: StylizeConfig, options, plan, content_mask, style_mask,
                       engine: Engine, progress: bool) -> Stylization:
    """Chain-of-Painting (Portrait Diffusion Sec. 3.3): each pass's output is the next content.

    A pass without a content mask of its own uses the global content mask and the global
    ``only_mask_region`` (a pass may override either); a pass that sets ``only_mask_region:
    false`` and has no style mask repaints the whole image."""
    base = prepare_image(content, None, cfg.resolution, "content", content_mask)
    current = base.array
    images, total = [], {"seconds": 0.0, "unet_passes": 0, "unet_calls": 0, "inversion_cache_hits": 0}
    modified: set = set()
    last = None
    for i, p in enumerate(plan):
        where = f"plan pass {i + 1}"
        pass_style_mask = p.style_mask or style_mask
        if p.content_mask is not None:
            cmask = prepare_image(content, None, cfg.resolution, f"{where} content", p.content_mask).mask
        elif p.only_mask_region is False and pass_style_mask is None:
            cmask = None  # this pass explicitly repaints the whole image
        else:
            cmask = base.mask  # the global --content-mask (with the global only_mask_region unless overridden)
        content_p = PreparedImage(current, f"{base.source}#pass{i}", cmask)
        style_p = prepare_image(p.style or style, base.size, cfg.resolution, f"{where} style", pass_style_mask)
        overrides = {k: v for k, v in (("only_mask_region", p.only_mask_region), ("start_step", p.start_step),
                                       ("end_step", p.end_step), ("start_layer", p.start_layer),
                                       ("guidance_scale", p.guidance_scale), ("prompt", p.prompt)) if v is not None}
        opts = dataclasses.replace(options, plan=[], **{k: v for k, v in (("sac_step", p.sac_step),
                                                                          ("style_guidance", p.style_guidance)) if v is not None})
        pass_cfg = dataclasses.replace(cfg, **overrides, options=dict(to_dict(opts).items()))
        pass_cfg.check_steps()
        last = _single_pass(content_p, style_p, pass_cfg, opts, engine, progress)
        current = last.image
        images.append(current)
        modified |= {(i,) + pair for pair in last.modified}
        for k in total:
            total[k] += last.stats[k]
        logger.info("Chain-of-Painting pass %d/%d done", i + 1, len(plan))
    stats = dict(last.stats, **{k: round(v, 3) if isinstance(v, float) else v for k, v in total.items()}, passes=len(plan))
    return Stylization(current, base, cfg, frozenset(modified), stats, tuple(images))


def save_stylization(result: Stylization, out_dir: str | Path, name: str) -> Path:
    """Write ``<name>.png``, the config and a manifest entry beside it (atomically)."""
    out_dir = Path(out_dir)
    path = save_image(out_dir / f"{name}.png", result.image)
    for i, img in enumerate(result.passes[:-1]):
        save_image(out_dir / f"{name}.pass{i + 1}.png", img)
    save_config(result.config, out_dir / f"{name}.config.json")
    write_json(out_dir / f"{name}.json", {"image": path.name, "content": result.content.source, **result.stats})
    return path
