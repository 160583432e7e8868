"""Candidate generation: text-to-image or ControlNet (pose, pose + depth), face + style LoRA
mixing through diffusers adapters, fast LCM mode, batching with one seed per candidate.

    gen = PortraitGenerator(cfg)                  # loads the base model, face LoRA, ControlNets
    batch = gen.generate(style, subject)          # -> StyleBatch with cfg.num_candidates images

LoRA mixing (``lora/mixing.py`` AdapterMixer, diffusers' PEFT integration): the face LoRA is adapter
"face", each style's LoRA adapter "style", weighted with ``set_adapters`` and fused for sampling at
base-model speed, unfused before the next style; fast mode adds LCM-LoRA at weight 1 with LCMScheduler.
Seeds: candidate i of a style draws its latents from ``manual_seed(seed + i)`` (a generator per image),
so it is the same image whatever the batch size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facechain.errors import InputError, ModelNotFoundError
from facechain import lora as lora_io
from facechain.face.fusion import fusion_spec
from facechain.families import get_family
from facechain.generate.config import FACECHAIN_STYLE_LORA, FACECHAIN_STYLE_LORA_FAMILY, GenerateConfig
from facechain.generate.control import setup_pose_control
from facechain.generate.subject import build_prompt, negative_for_subject
from facechain.lora.mixing import AdapterMixer
from facechain.models import (ResolvedModel, check_checkpoint_file, load_controlnet, load_pipeline, native_size, resolve_device,
                              resolve_dtype, resolve_model)
from facechain.generate.styles import Style
import dataclasses
import math
from facechain import memory
from facechain.adapters import get_identity_adapter
from facechain.adapters.ip_adapter_faceid import identity_embedding
from facechain.generate.detailer import DetailerConfig
from facechain.generate.diir import openpose_net, Identity, diir_faces
from facechain.generate.poses import load_pose
from facechain.prompts import PromptEncoder

logger = logging.getLogger(__name__)

FACE_ADAPTER, STYLE_ADAPTER, LCM_ADAPTER = "face", "style", "lcm"


@dataclass(frozen=True)
class Candidate:
    """One generated image before post-processing."""

    index: int  # within its style, 0..num_candidates-1
    seed: int
    image: object  # PIL.Image.Image
    detailer: list[dict] | None = None  # per-face info of the face detailer; None when it did not run
    diir: list[dict] | None = None  # per-face info of DIIR restoration (fusion: diir); None when it did not run


@dataclass(frozen=True)
class StyleBatch:
    """All candidates of one style and how they were made."""

    style: Style
    prompt: str
    negative_prompt: str
    adapters: dict[str, float]  # adapter name -> weight used
    candidates: list[Candidate]
    seconds: float
    settings: dict = field(default_factory=dict)


def check_face_lora(cfg: GenerateConfig) -> Path | None:
    """The face LoRA file, or None when no lora_dir is set. Raises ModelNotFoundError with the fix."""
    if cfg.lora_dir is None:
        logger.warning("no lora_dir: generating without a face LoRA (likeness comes from fusion only)")
        return None
    folder = Path(cfg.lora_dir)
    name = cfg.lora_file
    if not name or Path(name).name != name or name in (".", ".."):
        raise InputError(
            f"lora_file '{name}' must be a file name inside lora_dir, not a path (no folders, no '..'). Put the LoRA "
            "file's folder in lora_dir and its name in lora_file."
        )
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"face LoRA folder {folder} (lora_dir) does not exist. Train one with `sh train_lora.sh ...` / "
            "`facechain train`, then set lora_dir to its output folder."
        )
    path = folder / cfg.lora_file
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        raise ModelNotFoundError(
            f"face LoRA folder {folder} has no {cfg.lora_file} (found: {found or 'no .safetensors files'}). "
            "Set lora_file to the LoRA's file name, or point lora_dir at the trainer's output folder."
        )
    check_checkpoint_file(path, cfg.allow_pickle, "face LoRA")
    return path


def resolve_default_style_lora(cfg: GenerateConfig, family: str) -> Path | None:
    """The file of ``cfg.default_style_lora`` (None when unset). ``facechain`` names FaceChain's
    prompt-only-style LoRA on ModelScope (an SD1.5 LoRA, safetensors)."""
    ref = cfg.default_style_lora
    if not ref:
        return None
    if ref != "facechain":
        return lora_io.resolve(ref, allow_pickle=cfg.allow_pickle, what="default_style_lora")
    repo, revision, name = FACECHAIN_STYLE_LORA
    if family != FACECHAIN_STYLE_LORA_FAMILY:
        raise InputError(
            f"default_style_lora 'facechain' ({repo}) is an SD1.5 LoRA and the base model is {family}. Leave "
            "default_style_lora empty, or name a LoRA made for this base model."
        )
    try:
        return lora_io.resolve(repo, revision=revision, filename=name, allow_pickle=False,
                               what="FaceChain's default style LoRA (default_style_lora: facechain)")
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"default_style_lora facechain: {repo} / {name} (ModelScope, revision {revision}) could not be had "
            f"({exc}). Connect to ModelScope once (it is cached afterwards), or download {name} yourself and set "
            "default_style_lora to its path, or leave default_style_lora empty."
        ) from exc


def check_control_inputs(cfg: GenerateConfig):
    """Load and check the pose (and the depth source) before any model loads.

    Returns (pose map at its drawn size, pose photo or None), or (None, None) without a pose; pass
    them to :class:`PortraitGenerator` so the pose is read (and a photo annotated) only once."""
    if cfg.pose is None:
        return None, None

    pose_map, photo = load_pose(cfg.pose, None, cfg.pose_annotator, cfg.allow_pickle)
    if cfg.depth and cfg.depth_image is None and photo is None:
        raise InputError(
            f"depth is on but pose '{cfg.pose}' is a skeleton map, which has no depth. Use a pose photo, "
            "pass a ready depth_image, or turn depth off."
        )
    if cfg.depth_image is not None and not Path(cfg.depth_image).is_file():
        raise InputError(f"depth_image {cfg.depth_image} does not exist.")
    return pose_map, photo


class PortraitGenerator:
    """Holds the loaded pipeline for one job; :meth:`generate` runs one style."""

    def __init__(self, cfg: GenerateConfig, resolved: ResolvedModel | None = None, control=None, analyzer=None):
        """``control``: what :func:`check_control_inputs` returned for ``cfg`` (read again when None).
        ``analyzer``: the job's face analyzer, used by the face detailer (made from ``cfg.face_backend``
        on first use when None and the detailer is on)."""
        import torch

        self.cfg = cfg
        self.analyzer = analyzer
        t0 = time.perf_counter()
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.resolved = resolved or resolve_model(cfg.base_model, cfg.revision, cfg.sub_path, allow_pickle=cfg.allow_pickle,
                                                  dtype=self.dtype, variant=cfg.variant)
        self.family = self.resolved.family  # its name, as configs and manifests record it
        self.model_family = family = get_family(self.family)
        face_lora = check_face_lora(cfg)
        pose_map, photo = control if control is not None else check_control_inputs(cfg)
        self.identity = self.identity_embedding = None
        if cfg.identity.enabled:  # weights, photos and embedding size are checked before the pipeline loads
            self.identity = get_identity_adapter(cfg.identity, self.family)
            self.identity_embedding = identity_embedding(cfg.identity.photos, self._face_analyzer())
            self.identity.check_embedding(self.identity_embedding)
        pipe = load_pipeline(self.resolved, torch_dtype=self.dtype, single_file_config=cfg.single_file_config,
                             variant=cfg.variant)
        # the family's sampler: DPM-Solver++ 2M (Lu et al. 2022, Alg. 2), LCMScheduler in fast mode
        pipe.scheduler = family.scheduler(pipe.scheduler.config, fast=cfg.fast)
        self.adapters: dict[str, float] = {}
        if face_lora is not None:
            lora_io.load_adapter(pipe, face_lora, FACE_ADAPTER, "face LoRA")
            self.adapters[FACE_ADAPTER] = 1.0
        if self.identity is not None:  # its own LoRA (faceid_0) joins the adapters mixed per style
            self.adapters.update(self.identity.attach(pipe))
        self.default_style_lora = resolve_default_style_lora(cfg, self.family)
        if cfg.fast:
            family.load_fast_adapter(pipe, cfg.lcm_lora, allow_pickle=cfg.allow_pickle, adapter_name=LCM_ADAPTER)
            self.adapters[LCM_ADAPTER] = 1.0
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe  # placed on the device (or offloaded) by _place once every model is loaded
        native = native_size(pipe)
        self.height = cfg.height or native
        self.width = cfg.width or native
        self.control_images: list = []
        self.control_scales: list[float] = []
        self.control_pipe = None
        self.controlnets: list = []  # the job's ControlNets, in the order of control_images
        self.pose_control: str | None = None  # "controlnet" | "repcontrolnet" once a pose is set up
        self._rep_injection = self._rep_features = None
        self.mixer = AdapterMixer(pipe, self.dtype)  # per-style adapter weights, fused and put back exactly
        self._encoder = None  # facechain.prompts.PromptEncoder, made on first use
        if cfg.pose is not None:
            self._setup_control(pose_map, photo)
        self._diir_net = None  # DIIR's landmark ControlNet: the job's OpenPose one, else loaded here
        self._fusion = fusion_spec(cfg.fusion)
        if self._fusion is not None and self._fusion.in_generation and cfg.diir.landmark_weight > 0:
            if self.control_pipe is not None:
                self._diir_net = openpose_net(self.control_pipe.controlnet, ["openpose"] + (["depth"] if cfg.depth else []))
            if self._diir_net is None:
                self._diir_net = load_controlnet(cfg.controlnet_openpose or family.controlnets["openpose"],
                                                 dtype=self.dtype, what="openpose (DIIR's landmark control)",
                                                 allow_pickle=cfg.allow_pickle, variant=cfg.variant)
        self.memory = self._place()
        if self.identity is not None:  # once placed: Plus v2's CLIP encoder runs on the execution device
            self.identity.prepare(self.identity_embedding)
        if torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.synchronize()
        self.load_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ memory

    def _place(self):
        """Choose batch size, offload and VAE slicing/tiling from the memory budget of everything loaded
        (facechain.memory) and put the models on the device that way. Returns the :class:`Plan`."""
        cfg = self.cfg
        own_diir = self._diir_net is not None and all(self._diir_net is not n for n in self.controlnets)
        parts = memory.pipeline_parts(self.pipe, self.controlnets, resident=[self._diir_net] if own_diir else [])
        free = memory.free_memory(self.device)
        plan = memory.plan_memory(parts, self.height, self.width, batch=cfg.batch_size,
                                  offload=memory.offload_for(cfg.offload, self.device, free), slicing=cfg.vae_slicing,
                                  tiling={"on": True, "off": False}.get(cfg.vae_tiling, "auto"), free_bytes=free,
                                  auto_modes=memory.AUTO_OFFLOAD, max_batch=min(memory.DEFAULT_BATCH, cfg.num_candidates))
        if not plan.fits:
            logger.warning("memory: batch %d with offload %s needs about %.1f GiB and %.1f GiB are free (%s); the job "
                           "may run out of memory", plan.batch_size, plan.offload, plan.budget_bytes / memory.GiB,
                           free / memory.GiB, plan.reason)
        # the pipeline that is called holds every model (the ControlNet pipeline shares the base one's)
        memory.apply_plan(self.control_pipe or self.pipe, plan, self.device)
        if own_diir:  # DIIR calls it directly, outside the pipeline: it stays on the device (counted as resident)
            self._diir_net.to(self.device)
        logger.info("memory: batch %d, offload %s, vae slicing %s, tiling %s, budget %.1f GiB (%s)", plan.batch_size,
                    plan.offload, plan.vae_slicing, plan.vae_tiling, plan.budget_bytes / memory.GiB, plan.reason)
        return plan

    @property
    def batch_size(self) -> int:
        return self.memory.batch_size

    @property
    def fuse(self) -> bool:
        """fuse_loras, except under sequential offload (its weights wait on the meta device, nothing to fuse into)."""
        return self.cfg.fuse_loras and self.memory.offload != "sequential"

    # ------------------------------------------------------------------ another person, same pipeline

    # settings that shape the loaded pipeline: two jobs that agree on them can share one generator
    PIPELINE_FIELDS = ("base_model", "revision", "sub_path", "single_file_config", "fast", "lcm_lora", "pose",
                       "pose_control", "depth", "depth_image", "controlnet_openpose", "controlnet_depth",
                       "depth_estimator", "pose_annotator", "identity", "default_style_lora", "fusion", "diir",
                       "face_backend", "device", "dtype", "variant", "height", "width", "allow_pickle", "batch_size",
                       "offload", "vae_slicing", "vae_tiling")

    @classmethod
    def pipeline_key(cls, cfg: GenerateConfig) -> tuple:
        return tuple(repr(getattr(cfg, f)) for f in cls.PIPELINE_FIELDS)

    def switch_person(self, cfg: GenerateConfig) -> None:
        """Serve another job on the loaded pipeline: its face LoRA replaces this one's (no model reload).
        ``cfg`` must agree with this generator's on :attr:`PIPELINE_FIELDS` (batch jobs check
        :meth:`pipeline_key` and load a new generator when they differ)."""
        if self.pipeline_key(cfg) != self.pipeline_key(self.cfg):
            raise ValueError("switch_person: the job needs another pipeline (base model, pose, identity ...)")
        face_lora = check_face_lora(cfg)
        if FACE_ADAPTER in self.adapters:
            self.pipe.delete_adapters(FACE_ADAPTER)
            del self.adapters[FACE_ADAPTER]
        if face_lora is not None:
            lora_io.load_adapter(self.pipe, face_lora, FACE_ADAPTER, "face LoRA")
            self.adapters = {FACE_ADAPTER: 1.0, **self.adapters}
        self.cfg = cfg
        self.load_seconds = 0.0

    # ------------------------------------------------------------------ ControlNet

    def _setup_control(self, pose_map: np.ndarray, photo: np.ndarray | None) -> None:
        control = setup_pose_control(self.pipe, self.model_family, self.resolved, self.cfg, pose_map, photo,
                                     (self.width, self.height), dtype=self.dtype, device=self.device,
                                     face_analyzer=self._face_analyzer)
        self.pose_control = control.mode
        self.control_pipe, self.controlnets = control.control_pipe, control.controlnets
        self.control_images, self.control_scales = control.images, control.scales
        self._rep_injection, self._rep_features = control.rep_injection, control.rep_features

    # ------------------------------------------------------------------ LoRA mixing

    def _activate(self, style: Style) -> dict[str, float]:
        """Load the style LoRA (if any) and set adapter weights. Returns adapter -> weight."""
        pipe = self.pipe
        weights = dict(self.adapters)
        if FACE_ADAPTER in weights:
            weights[FACE_ADAPTER] = style.multiplier_human
        path = None
        if style.has_lora:
            path = lora_io.resolve(style.lora_reference(), filename=style.bin_file, revision=style.revision,
                                   allow_pickle=self.cfg.allow_pickle, what=f"style '{style.name}' LoRA")
            # its weight_rule: linear, or FaceChain's SDXL strength (every tensor times the multiplier: m**3 for kohya)
            weight, what = style.style_weight(path), f"style '{style.name}' ({style.path}) LoRA"
        elif self.default_style_lora is not None:  # a prompt-only style: FaceChain merges its default style LoRA
            path = self.default_style_lora
            weight = style.multiplier_style or self.cfg.default_style_lora_weight
            what = f"default_style_lora ({path}) for style '{style.name}'"
        if path is not None:
            try:  # a corrupt file, or a LoRA made for another base model family: one clear error
                lora_io.load_adapter(pipe, path, STYLE_ADAPTER, what)
            except BaseException:
                if STYLE_ADAPTER in getattr(pipe, "get_list_adapters", lambda: {})().get("unet", []):
                    pipe.delete_adapters(STYLE_ADAPTER)
                raise
            weights[STYLE_ADAPTER] = weight
        try:
            self.mixer.activate(weights, fuse=self.fuse)
        except BaseException:  # never leave the style adapter (or a half fuse) behind for the next style
            self._deactivate(weights)
            raise
        return weights

    def _deactivate(self, weights: dict[str, float]) -> None:
        try:
            self.mixer.deactivate(weights, fused=self.fuse)
        finally:
            if STYLE_ADAPTER in weights:
                self.pipe.delete_adapters(STYLE_ADAPTER)

    # ------------------------------------------------------------------ prompts

    def _prompt_encoder(self):
        """AUTOMATIC1111-weighted, untruncated long prompts (``cfg.prompt_weighting``) for this pipeline's text
        encoders, which the ControlNet and the detailer's inpaint pipelines share."""
        if self._encoder is None or self._encoder.weighting != self.cfg.prompt_weighting:
            self._encoder = PromptEncoder(self.pipe, self.cfg.prompt_weighting)
        return self._encoder

    # ------------------------------------------------------------------ face detailer

    def _face_analyzer(self):
        if self.analyzer is None:
            from facechain.face import get_analyzer

            self.analyzer = get_analyzer(self.cfg.face_backend)
        return self.analyzer

    def _detailer_config(self, steps: int, guidance: float):
        """The detailer's settings: the job's sampling steps (raised so strength x steps runs at least one
        step) and guidance, so fast mode's few LCM steps and low guidance are used with LCM's scheduler."""
        strength = self.cfg.detailer_strength
        return DetailerConfig(mode=self.cfg.detailer, strength=strength,
                              num_inference_steps=max(steps, math.ceil(1 / strength - 1e-9)), guidance_scale=guidance)

    def _detail(self, candidates: list[Candidate], prompt: str, negative: str, dcfg,
                conditioning: dict | None = None) -> list[Candidate]:
        """Run the face detailer on every candidate (the face LoRA must be active: call before _deactivate)."""
        from PIL import Image

        from facechain.generate.detailer import detail_faces

        analyzer = self._face_analyzer()
        out = []
        for c in candidates:
            image, info = detail_faces(self.pipe, np.asarray(c.image.convert("RGB")), analyzer, prompt, negative,
                                       dcfg, seed=c.seed, conditioning=conditioning)
            if any(f["detailed"] for f in info):
                out.append(Candidate(c.index, c.seed, Image.fromarray(image), info, c.diir))
            else:
                out.append(Candidate(c.index, c.seed, c.image, info, c.diir))
        return out

    def _diir(self, candidates: list[Candidate], conditioning: dict) -> list[Candidate]:
        """DIIR on every candidate's faces (fusion: diir), while the face LoRA and identity are active."""
        from PIL import Image

        analyzer = self._face_analyzer()
        null = self._prompt_encoder()("", "")
        identity = None
        if self.identity is not None:  # the adapter's identity in the regeneration (its zero row in the inversion)
            identity = Identity(self.identity, self.identity.embeds(self.identity_embedding, do_cfg=True,
                                                                    device=self.device, dtype=self.pipe.unet.dtype))
        out = []
        for c in candidates:
            image = np.asarray(c.image.convert("RGB"))
            faces = analyzer.detect(image, embed=False)
            if not faces:
                out.append(dataclasses.replace(c, diir=[{"skipped": "no face found"}]))
                continue
            new, report = diir_faces(self.pipe, image, faces, conditioning, null, self.cfg.diir,
                                        controlnet=self._diir_net, identity=identity)
            out.append(dataclasses.replace(c, image=Image.fromarray(new), diir=report))
        return out

    # ------------------------------------------------------------------ sampling

    def _extra_inputs(self, guidance: float) -> dict:
        """The pipeline inputs beside the prompt: the identity adapter's embeddings, the ControlNet images and scales."""
        extra = {}
        if self.identity is not None:
            embeds = self.identity.embeds(self.identity_embedding, do_cfg=guidance > 1, device=self.device,
                                          dtype=self.pipe.unet.dtype)
            if embeds is not None:  # IP-Adapter inputs; FeedFace acts through its own hooks
                extra["ip_adapter_image_embeds"] = embeds
        if self.control_pipe is not None:
            if len(self.control_images) == 1:
                extra.update(image=self.control_images[0], controlnet_conditioning_scale=self.control_scales[0])
            else:
                extra.update(image=self.control_images, controlnet_conditioning_scale=self.control_scales)
        return extra

    def _sample(self, pipe, style: Style, conditioning: dict, extra: dict, steps: int, guidance: float) -> list[Candidate]:
        """``cfg.num_candidates`` images in batches of :attr:`batch_size`, candidate i seeded ``cfg.seed + i``."""
        import torch
        from tqdm.auto import tqdm

        cfg = self.cfg
        gen_device = "cpu" if self.device.type == "mps" else self.device
        candidates: list[Candidate] = []
        with tqdm(total=cfg.num_candidates, desc=f"style {style.name}", unit="img") as bar:
            for start in range(0, cfg.num_candidates, self.batch_size):
                idx = list(range(start, min(start + self.batch_size, cfg.num_candidates)))
                seeds = [cfg.seed + i for i in idx]
                generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
                if self.identity is not None:
                    self.identity.before_call(len(idx), do_cfg=guidance > 1)
                with torch.inference_mode():
                    out = pipe(**conditioning, num_images_per_prompt=len(idx), num_inference_steps=steps,
                               guidance_scale=guidance, generator=generators, height=self.height, width=self.width,
                               **extra)
                candidates += [Candidate(i, s, img) for i, s, img in zip(idx, seeds, out.images)]
                bar.update(len(idx))
        return candidates

    def generate(self, style: Style, subject: tuple[str, str]) -> StyleBatch:
        """Generate ``cfg.num_candidates`` images of ``style`` for ``subject`` = (trigger, attribute phrase)."""
        import torch

        cfg = self.cfg
        # 1. the prompt and the sampling settings
        prompt = build_prompt(subject[0], subject[1], style.add_prompt_style, cfg.prompt)
        negative = negative_for_subject(cfg.negative_prompt, subject[1])
        steps = cfg.fast_num_inference_steps if cfg.fast else cfg.num_inference_steps
        guidance = cfg.fast_guidance_scale if cfg.fast else cfg.guidance_scale
        dcfg = self._detailer_config(steps, guidance) if cfg.detailer != "off" else None
        t0 = time.perf_counter()
        # 2. the adapters: face LoRA, the style's LoRA, identity and fast-mode adapters, mixed (and fused)
        weights = self._activate(style)
        pipe = self.control_pipe or self.pipe
        try:
            # 3. conditioning: the prompt (after the style LoRA: it may change the text encoder too), identity, pose
            conditioning = self._prompt_encoder()(prompt, negative)
            extra = self._extra_inputs(guidance)
            if self._rep_injection is not None:
                self._rep_injection.features = self._rep_features  # the pose, for this style's sampling only
            # 4. sampling, in batches
            candidates = self._sample(pipe, style, conditioning, extra, steps, guidance)
            if self._rep_injection is not None:  # the pose is for the whole picture, not the detailer's face crops
                self._rep_injection.features = None
            # 5. the face detailer, while the face LoRA (and style LoRA) is still active
            if cfg.detailer != "off":
                ident = {k: v for k, v in extra.items() if k == "ip_adapter_image_embeds"}  # the adapter's identity too
                if self.identity is not None:  # the detailer's inpaint calls draw one image each
                    self.identity.before_call(1, do_cfg=dcfg.guidance_scale > 1)
                candidates = self._detail(candidates, prompt, negative, dcfg, {**conditioning, **ident})
            # 6. fusion that runs inside generation (DIIR), the same: while the identity is active
            if self._fusion is not None and self._fusion.in_generation:
                candidates = self._diir(candidates, conditioning)
        finally:
            if self._rep_injection is not None:
                self._rep_injection.features = None
            self._deactivate(weights)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        # 7. what ran, for the manifest
        seconds = time.perf_counter() - t0
        settings = {
            "scheduler": type(pipe.scheduler).__name__, "steps": steps, "guidance_scale": guidance,
            "height": self.height, "width": self.width, "batch_size": self.batch_size, "fused": self.fuse,
            "controlnets": ["openpose"] + (["depth"] if cfg.depth else []) if self.control_pipe is not None else [],
            "pose_control": self.pose_control,
            "style_weight_rule": style.weight_rule if style.has_lora else None,  # adapters["style"] is its result
            "memory": self.memory.to_dict(),
            "controlnet_scales": self.control_scales, "family": self.family,
            "identity": self.identity.describe(self.identity_embedding) if self.identity is not None else None,
            "prompt_encoding": {"syntax": "automatic1111", "truncated": False,
                                **self._prompt_encoder().describe(prompt, negative)},
            "detailer": {"mode": cfg.detailer, "strength": cfg.detailer_strength}
            if cfg.detailer == "off" else {"mode": cfg.detailer, "strength": cfg.detailer_strength,
                                            "steps": dcfg.num_inference_steps,
                                            "guidance_scale": guidance,
                                            "backend": getattr(self.analyzer, "name", None)},
        }
        return StyleBatch(style, prompt, negative, weights, candidates, seconds, settings)
