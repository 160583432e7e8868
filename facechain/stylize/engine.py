"""The shared stylization engine: a loaded pipeline (base model + LoRAs, identical in inversion
and sampling), image preparation, VAE encode/decode and prompt conditioning through the model family,
cached inversion, and one sampling loop over a batch of named branches.

Branches are latents processed side by side in one UNet batch. A *replayed* branch is reset
at every step to its inversion trajectory (MasaCtrl / Portrait Diffusion's "source" rows: their
attention features are those of the real image, with no stored Q/K/V); a *free* branch is
denoised by the schedule. Methods differ only in their branches, their attention policy and
their per-step update.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from facechain.errors import InputError
from facechain.families import family_of_pipeline, get_family
from facechain.images import PHOTO_MAX_MEGAPIXELS, ImageLike, describe, read_image
from facechain.stylize.attention import AttentionController
from facechain import lora as lora_io
from facechain.stylize.config import StylizeConfig
from facechain.inversion import Schedule, Trajectory, invert, make_schedule
from facechain.stylize.inversion import InversionCache, digest, file_digest
from facechain.stylize.masks import MaskLike, load_mask
from facechain.models import load_pipeline, resolve_device, resolve_dtype, resolve_model
from facechain.prompts import PromptEncoder, has_weighting

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class PreparedImage:
    """An RGB image at the working size, with its mask (if any) carried along."""

    array: np.ndarray  # (H, W, 3) uint8
    source: str
    mask: torch.Tensor | None = None  # (H, W) binary float at the working size

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]

    @property
    def digest(self) -> str:
        return digest(list(self.array.shape), np.ascontiguousarray(self.array).tobytes())


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Long side = ``resolution``, short side rounded to a multiple of 64 (>= 64): latents of
    every SD UNet level then have whole sizes."""
    scale = resolution / max(width, height)
    w, h = (max(64, round(width * scale / 64) * 64), max(64, round(height * scale / 64) * 64))
    return (resolution if width >= height else w, resolution if height > width else h)


def _center_crop_box(w: int, h: int, aspect: float) -> tuple[int, int, int, int]:
    """Largest centred box of aspect width/height = ``aspect``."""
    if w / h > aspect:
        cw = round(h * aspect)
        left = (w - cw) // 2
        return left, 0, left + cw, h
    ch = round(w / aspect)
    top = (h - ch) // 2
    return 0, top, w, top + ch


def prepare_image(image: ImageLike, size: tuple[int, int] | None, resolution: int, what: str,
                  mask: MaskLike | None = None) -> PreparedImage:
    """Read ``image``, centre-crop it to the aspect of ``size`` (default: its own working size)
    and resize; ``mask`` (checked against the image's original size) goes the same way."""
    from PIL import Image

    arr, source = read_image(image, f"{what} image", max_megapixels=PHOTO_MAX_MEGAPIXELS), describe(image)
    h0, w0 = arr.shape[:2]
    m = load_mask(mask, (w0, h0), f"{what} mask") if mask is not None else None
    size = size or working_size(w0, h0, resolution)
    box = _center_crop_box(w0, h0, size[0] / size[1])
    pil = Image.fromarray(arr).crop(box)
    out = np.asarray(pil.resize(size, Image.LANCZOS)) if pil.size != size else np.asarray(pil)
    if m is not None:
        left, top, right, bottom = box
        mc = m[top:bottom, left:right]
        mc = torch.nn.functional.interpolate(mc[None, None], size=(size[1], size[0]), mode="nearest")[0, 0]
        if not bool(mc.any()):
            raise InputError(f"{what} mask is empty after cropping/resizing the image to {size[0]}x{size[1]}; "
                             "mark a larger region or use an image of the content's aspect ratio.")
        m = mc
    return PreparedImage(np.ascontiguousarray(out), source, m)


# --------------------------------------------------------------------------- conditioning


@dataclass
class Conditioning:
    """Text conditioning of one prompt (and its negative), ready to tile over a batch."""

    cond: torch.Tensor
    uncond: torch.Tensor
    added: dict | None = None  # the family's added conditioning (SDXL: {"text_embeds", "time_ids"}) for cond
    added_uncond: dict | None = None

    def batch(self, n: int, cfg: bool) -> tuple[torch.Tensor, dict | None]:
        parts = ([self.uncond] * n if cfg else []) + [self.cond] * n
        emb = torch.cat(parts)
        if self.added is None:
            return emb, None
        keys = self.added.keys()
        src = ([self.added_uncond] * n if cfg else []) + [self.added] * n
        return emb, {k: torch.cat([s[k] for s in src]) for k in keys}


@dataclass
class Branch:
    name: str
    init: torch.Tensor  # (C, h, w) latent at step 0
    replay: Trajectory | None = None  # replayed from this trajectory at every step


Update = Callable[[int, dict, dict], dict]  # (step, latents by branch, eps by branch) -> new free latents


@dataclass
class Counters:
    unet_calls: int = 0
    unet_images: int = 0  # single-image UNet passes (batch rows)
    invert_seconds: float = 0.0
    sample_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- engine


class Engine:
    """A loaded model ready to invert and sample. Build once, stylize many times: the
    inversion cache lives here."""

    def __init__(self, cfg: StylizeConfig, pipe=None):
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        loaded = pipe is None
        if loaded:
            resolved = resolve_model(cfg.base_model, cfg.revision, cfg.sub_path, allow_pickle=cfg.allow_pickle,
                                     dtype=self.dtype)
            pipe = load_pipeline(resolved, torch_dtype=self.dtype)
            self.family = get_family(resolved.family)
            self.model_id = f"{resolved.reference}@{cfg.revision or ''}/{cfg.sub_path or ''}:{resolved.path}"
        else:
            self.family = family_of_pipeline(pipe, f"the given pipeline's UNet config ({type(pipe).__name__})")
            self.model_id = pipe_id(pipe)
        prediction = dict(pipe.scheduler.config).get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise InputError(
                f"model {cfg.base_model if loaded else (pipe.name_or_path or type(pipe).__name__)} predicts "
                f"{prediction!r} (its scheduler's prediction_type); stylize supports only epsilon-prediction models "
                "(SD1.5-family and SDXL base models and their fine-tunes), not v-prediction models such as SD 2.x 768. "
                "Pass an epsilon-prediction base model with --base-model."
            )
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = pipe.vae
        # SDXL's VAE overflows in float16 (its config sets force_upcast): it is held in float32 for the engine's
        # life, since stylize encodes and decodes many times (the family's encode/decode would otherwise move it to
        # float32 and back around every call; with the VAE already float32 they run it as it is).
        self.vae_dtype = self.dtype
        if self.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae_dtype = torch.float32
            self.vae.to(dtype=torch.float32)
            logger.info("VAE runs in float32 (its config sets force_upcast; float16 would overflow)")
        self.fast = cfg.fast
        self.prompt_weighting = cfg.prompt_weighting
        self.impl = cfg.attention
        self.refine = cfg.inversion_refine
        self.lora_signature = self._load_loras(cfg)
        self.cache = InversionCache(cfg.cache_dir)
        self.counters = Counters()
        self._schedules: dict = {}
        self._conds: dict = {}
        self._encoder = None  # facechain.prompts.PromptEncoder, made on first use
        self.unet.eval()

    def matches(self, cfg: StylizeConfig) -> bool:
        """Whether this engine was built for ``cfg``'s model, LoRAs, fast mode and device."""
        return getattr(self, "_cfg_key", None) == _engine_key(cfg)

    # -- LoRAs
    def _load_loras(self, cfg: StylizeConfig) -> list:
        self._cfg_key = _engine_key(cfg)
        names, weights, signature = [], [], []
        refs = list(cfg.loras)
        scales = list(cfg.lora_scales) or [1.0] * len(refs)
        if cfg.fast:
            lcm_ref = self.family.fast_lora_ref(cfg.lcm_lora)
            refs.append(lcm_ref)
            scales.append(1.0)
        for i, (ref, scale) in enumerate(zip(refs, scales)):
            is_lcm = cfg.fast and i == len(refs) - 1
            what = "LCM-LoRA" if is_lcm else "LoRA"
            path = lora_io.resolve(ref, allow_pickle=cfg.allow_pickle, what=what)
            name = "lcm" if is_lcm else f"lora_{i}"
            lora_io.load_adapter(self.pipe, path, name, what)
            names.append(name)
            weights.append(float(scale))
            signature.append((file_digest(path), float(scale)))
            logger.info("loaded %s %s (weight %.2f)", "LCM-LoRA" if is_lcm else "LoRA", path, scale)
        if names:
            self.pipe.set_adapters(names, adapter_weights=weights)
        return signature

    # -- schedule, conditioning
    def schedule(self, steps: int) -> Schedule:
        kind = "lcm" if self.fast else "ddim"
        if (kind, steps) not in self._schedules:
            if kind == "lcm":
                check_lcm_steps(dict(self.pipe.scheduler.config), steps)
            self._schedules[(kind, steps)] = make_schedule(dict(self.pipe.scheduler.config), steps, kind)
        return self._schedules[(kind, steps)]

    @torch.no_grad()
    def conditioning(self, prompt: str, negative_prompt: str, size: tuple[int, int]) -> Conditioning:
        key = (prompt, negative_prompt, size)
        if key in self._conds:
            return self._conds[key]
        if self._encoder is None:  # AUTOMATIC1111 weighting, no truncation past 77 tokens
            self._encoder = PromptEncoder(self.pipe, self.prompt_weighting)
        kw = self._encoder(prompt, negative_prompt)
        pe, ne = kw["prompt_embeds"].to(self.device), kw["negative_prompt_embeds"].to(self.device)
        w, h = size
        # the family's added conditioning, per branch (SDXL: pooled text + size ids; SD1.5: none)
        pos, neg = (self.family.added_conditioning(None if kw.get(k) is None else kw[k].to(self.device), h, w, 1,
                                                   self.device, pe.dtype)
                    for k in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"))
        cond = Conditioning(pe, ne, pos, neg)
        self._conds[key] = cond
        return cond

    def eps(self, x: torch.Tensor, t: int, emb: torch.Tensor, added: dict | None) -> torch.Tensor:
        self.counters.unet_calls += 1
        self.counters.unet_images += x.shape[0]
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        return self.unet(x, t, encoder_hidden_states=emb, **kwargs).sample

    # -- VAE
    @torch.no_grad()
    def encode(self, image: PreparedImage) -> torch.Tensor:
        """Clean latent (C, h, w): the VAE posterior mean times the scaling factor (Portrait Diffusion, MasaCtrl)."""
        return self.family.encode_latents(self.vae, image.array, self.device)[0].to(self.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        return self.family.decode_latents(self.vae, z[None])

    # -- inversion
    def inversion_key(self, image: PreparedImage, prompt: str, steps: int) -> str:
        sched = self.schedule(steps)
        # v3: prompts are encoded with AUTOMATIC1111 weighting and without truncation (facechain.prompts); a
        # weighted prompt's embedding also depends on how the weights act (an unweighted one's does not)
        weighting = (self.prompt_weighting,) if has_weighting(prompt) else ()
        return digest("v3", image.digest, self.model_id, sched.signature(), prompt, self.lora_signature,
                      str(self.dtype), self.impl, self.refine, *weighting)

    @torch.no_grad()
    def invert(self, image: PreparedImage, prompt: str, steps: int, progress: bool = True) -> Trajectory:
        """The image's trajectory under ``prompt`` (conditional branch only, guidance 1, as all seed methods)."""
        key = self.inversion_key(image, prompt, steps)
        traj = self.cache.get(key, self.device)
        if traj is not None:
            logger.debug("inversion cache hit for %s", image.source)
            return traj
        start = time.perf_counter()
        z0 = self.encode(image)
        cond = self.conditioning(prompt, "", image.size)
        emb, added = cond.batch(1, cfg=False)
        with AttentionController(self.unet, ("image",), None, impl=self.impl):
            traj = invert(lambda x, t: self.eps(x, t, emb, added), z0, self.schedule(steps), progress, self.refine)
        self.counters.invert_seconds += time.perf_counter() - start
        self.cache.put(key, traj, {"image": image.source, "prompt": prompt, "steps": steps})
        return traj

    # -- sampling
    @torch.no_grad()
    def sample(self, branches: list[Branch], cond: Conditioning, steps: int, guidance_scale: float,
               controller: AttentionController | None = None, *, update: Update | None = None,
               after_step: Callable[[int, dict], None] | None = None, progress: bool = True,
               before_step: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
        """Denoise the free branches; returns each branch's final latent (C, h, w).

        ``update(step, x, eps)`` replaces the default per-branch schedule step;
        ``after_step(step, latents)`` may edit free latents in place (e.g. latent blending);
        ``before_step(step)`` runs before each UNet call (e.g. to arm a feature hook)."""
        sched = self.schedule(steps)
        cfg = guidance_scale > 1.0
        names = [b.name for b in branches]
        latents = {b.name: b.init for b in branches}
        emb, added = cond.batch(len(branches), cfg)
        start = time.perf_counter()
        if controller is not None:
            controller.halves = 2 if cfg else 1
        for i in tqdm(range(len(sched)), desc="sample", disable=not progress, leave=False):
            for b in branches:
                if b.replay is not None:
                    latents[b.name] = b.replay.at_step(i)
            x = torch.stack([latents[n] for n in names])
            x_in = torch.cat([x, x]) if cfg else x
            if controller is not None:
                controller.step = i
            if before_step is not None:
                before_step(i)
            out = self.eps(x_in, sched.timesteps[i], emb, added)
            if cfg:
                uncond, text = out.chunk(2)
                out = uncond + guidance_scale * (text - uncond)
            eps = {n: out[j] for j, n in enumerate(names)}
            xs = {n: x[j] for j, n in enumerate(names)}
            if update is not None:
                new = update(i, xs, eps)
            else:
                new = {b.name: sched.step(eps[b.name], i, xs[b.name]) for b in branches if b.replay is None}
            latents.update(new)
            if after_step is not None:
                after_step(i, latents)
        if controller is not None:
            controller.step = None
        self.counters.sample_seconds += time.perf_counter() - start
        for b in branches:
            if b.replay is not None:
                latents[b.name] = b.replay.latents[0]
        return latents


def pipe_id(pipe) -> str:
    """Identity of a passed-in pipeline for the inversion cache: a hash of its configs (UNet,
    scheduler, VAE) and its source path, stable across processes (unlike ``id(pipe)``)."""
    configs = [dict(c.config) if c is not None else None for c in (pipe.unet, pipe.scheduler, pipe.vae)]
    return "pipe:" + digest(configs, getattr(pipe, "name_or_path", None), type(pipe).__name__)


def check_lcm_steps(scheduler_config: dict, steps: int) -> None:
    """LCM samples from its distillation schedule of ``original_inference_steps`` timesteps
    (LCMScheduler, default 50), so it cannot take more steps than that."""
    from diffusers import LCMScheduler

    limit = int(LCMScheduler.from_config(scheduler_config).config.original_inference_steps)
    if steps > limit:
        raise InputError(
            f"num_inference_steps {steps} with fast (LCM-LoRA) mode: the LCM scheduler allows at most its original_inference_steps "
            f"({limit}) steps; lower --num-inference-steps to {limit} or fewer (LCM-LoRA works best with 2-8), or drop --fast."
        )


def _engine_key(cfg: StylizeConfig) -> tuple:
    return (cfg.base_model, cfg.revision, cfg.sub_path, tuple(cfg.loras), tuple(cfg.lora_scales), cfg.fast,
            cfg.lcm_lora, cfg.device, cfg.dtype, cfg.attention, str(cfg.cache_dir), cfg.inversion_refine,
            cfg.prompt_weighting)
