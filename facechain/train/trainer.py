"""The face-LoRA trainer: accelerate + peft, cached inputs, checkpoint scoring by likeness, and export
in the diffusers and kohya formats, on the training loop every trainer shares (``facechain.train.loop``:
output folder rule, resume, log, atomic checkpoints). A run reads as its steps: prepare the inputs,
build the model, cache and prepare the steps, resume, run the loop, export.

    from facechain.train import TrainConfig, train
    artifact = train(TrainConfig(base_model=..., train_data_dir="processed", output_dir="lora"))
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from facechain.config import save_config, to_dict
from facechain.errors import InputError
from facechain.io import append_jsonl
from facechain.runtime import (note_accelerate_mixed_precision, resolve_mixed_precision, restored_after_run, set_threads,
                               weight_dtype)
from facechain.train import checkpoint as ckpt_io
from facechain.train import loop
from facechain import lora as lora_io
from facechain.train.artifact import CONFIG_FILE, LOG_FILE
from facechain.train.config import RESUME_MUTABLE, RESUME_SAME_TARGET, TrainConfig
from facechain.train.data import build_latent_pool, load_processed
from facechain.train.lora_weights import (add_lora, adamw, current_lora, flat_parameter, load_init_lora, load_lora_into,
                                          resolve_init_lora)
from facechain.families import get_family
from facechain.train.text import TextConditioner
from facechain.train.validate import LikenessScorer, generate_validation_images, select_checkpoints, validation_resolution
from types import SimpleNamespace
import hashlib
import json
import os
from facechain.config import upgrade_names
from facechain.io import save_image
from facechain.models import files_fingerprint, model_fingerprint, resolve_model, load_pipeline
from facechain.outputs import check_writable_folder, hold_for_reading

if TYPE_CHECKING:
    from accelerate import Accelerator

    from facechain.models import ResolvedModel
    from facechain.outputs import OutputDir
    from facechain.train.checkpoint import Checkpoint
    from facechain.train.data import Example

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraArtifact:
    """What a training run produced."""

    output_dir: Path
    lora_path: Path  # diffusers format
    kohya_path: Path
    config_path: Path
    log_path: Path
    family: str
    steps: int
    selected_steps: list[int]  # checkpoints that make the final LoRA (best first)
    scores: dict[int, float | None] = field(default_factory=dict)


def _to(model, device, dtype) -> None:
    """Move ``model``; cast only when the dtype changes."""
    if next(model.parameters()).dtype == dtype:
        model.to(device)
    else:
        model.to(device, dtype)


def _data_fingerprint(examples) -> str:
    """sha256 over the training photos' bytes and captions: a resumed run must see the same data."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.image.name.encode() + b"\0" + ex.caption.encode() + b"\0" + ex.image.read_bytes())
    return h.hexdigest()


def check_resume_config(cfg: TrainConfig, saved: dict, where: Path, saved_model: str | None = None,
                         model_now: str | None = None, config_only: bool = False, saved_init: str | None = None,
                         init_now: str | None = None) -> None:
    """Refuse a resume whose settings differ. Paths are compared by what they point to: the base
    model by its files' fingerprint (so ./model and /abs/model are the same model, and another model
    behind the same path is not), the photos by the data fingerprint (checked by the caller), and the
    output folder is the one the checkpoint was found in (it may have moved)."""
    now = to_dict(cfg)
    saved = upgrade_names(TrainConfig, saved, str(where), warn=False)  # settings saved under their old names
    if saved_model is not None and model_now is not None and saved_model != model_now:
        raise InputError(
            f"--resume: the base model's files changed since {where} was written (base_model {now['base_model']!r}, "
            "fingerprint of its weight files' sizes and hashes differs): another model is behind that path, so the run "
            "cannot continue. Point base_model at the model the run started with, or start a new run in an empty folder."
        )

    def same_target(k: str) -> bool:
        if config_only:  # killed before its first checkpoint: nothing trained yet, paths may be spelled anew
            return True
        if k == "init_lora" and saved_init is not None:
            return saved_init == init_now
        if k == "output_dir":  # the checkpoint was found in it: the same folder, however it is spelled or moved
            return True
        if k == "train_data_dir":  # the photos and captions are checked by their own fingerprint
            return True
        if k == "base_model" and saved_model is not None:
            return saved_model == model_now
        a, b = saved.get(k), now[k]
        return a == b or (isinstance(a, str) and isinstance(b, str) and os.path.realpath(a) == os.path.realpath(b))

    diff = sorted(k for k in now if k not in RESUME_MUTABLE and saved.get(k) != now[k]
                  and not (k in (*RESUME_SAME_TARGET, "init_lora") and same_target(k))
                  and not (k == "mixed_precision" and resolve_mixed_precision(saved.get(k)) == resolve_mixed_precision(now[k])))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise InputError(
            f"--resume: settings differ from the run being resumed ({where}): {details}. "
            "Resume with the same settings, or start a new run in an empty output folder."
        )


def _check_config_only_resume(cfg: TrainConfig, out: Path) -> None:
    """--resume of a run killed before its first checkpoint: nothing was trained, so only its settings
    (``train_config.json``) must match."""
    try:
        saved = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"--resume: {out / CONFIG_FILE} is damaged ({exc}). Choose a new output folder.") from exc
    check_resume_config(cfg, saved, out / CONFIG_FILE, config_only=True)


def train(cfg: TrainConfig, *, progress: bool = True) -> LoraArtifact:
    """Train a face LoRA as configured; see the module and ``docs/train.md``.

    Raises InputError / ModelNotFoundError / UnsafeCheckpointError for bad input, before any
    training starts."""
    check_writable_folder(Path(cfg.output_dir), "output_dir")
    held: list = []  # the main process's OutputDir, once acquired
    with restored_after_run():  # the caller's thread count and accelerate state again (a UI or tests training in-process)
        try:
            return _train(cfg, progress, held)
        finally:
            for od in held:
                od.release()


def _train(cfg: TrainConfig, progress: bool, held: list) -> LoraArtifact:
    inputs = _prepare_inputs(cfg, held)
    model = _build_model(cfg, inputs)
    run, steps = _prepare_steps(cfg, inputs, model, progress)
    start = _resume(cfg, inputs, model, run, steps)
    loop.run_steps(run, steps, start, progress=progress)
    return _export(cfg, inputs, model, run)


@dataclass
class _Inputs:
    """What the run reads and checks before any model loads."""

    examples: list[Example]  # the processed photos
    init_path: Path | None  # the init LoRA's file
    resolved: ResolvedModel
    mixed_precision: str  # resolved: no, fp16 or bf16
    threads: int
    accelerator: Accelerator
    od: OutputDir | None  # the output folder's, on the main process (None on the others)
    existing: list[Checkpoint]  # the checkpoints in the output folder, oldest first
    fingerprints: dict  # saved in every checkpoint: what a resumed run must match
    scorer: LikenessScorer | None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _prepare_inputs(cfg: TrainConfig, held: list) -> _Inputs:
    """Data, output folder, init LoRA and model reference, accelerate; then the resume checks, the
    saved settings and the likeness scorer (before the model loads: a missing face backend fails fast)."""
    from accelerate import Accelerator

    examples = load_processed(cfg.train_data_dir)
    out = Path(cfg.output_dir)
    init_path = None
    threads = set_threads(cfg.num_threads)
    if cfg.init_lora:
        init_path = resolve_init_lora(cfg)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InputError("mixed_precision 'fp16' needs a CUDA GPU; on CPU use --mixed_precision bf16 or no.")
    resolved = resolve_model(cfg.base_model, cfg.revision, cfg.sub_path, allow_pickle=cfg.allow_pickle)

    mixed_precision = resolve_mixed_precision(cfg.mixed_precision)
    note_accelerate_mixed_precision(mixed_precision)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    main = accelerator.is_main_process
    od = None
    if main:  # the main process holds the folder (lock, record) for the whole run
        from facechain.outputs import OutputDir

        od = OutputDir.acquire(out, "train", allow_other_files=cfg.allow_other_files, what="output_dir")
        held.append(od)

        reading = hold_for_reading(cfg.train_data_dir, "preprocess", "processed folder")  # no preprocessing run
        if reading is not None:                                                           # replaces it meanwhile
            held.append(SimpleNamespace(release=reading.close))
    accelerator.wait_for_everyone()
    if main:  # a user's file where the run's outputs go: refused now, not after the training
        last = cfg.num_steps(len(examples))
        planned = sorted({*range(cfg.checkpointing_steps, last + 1, cfg.checkpointing_steps), last})
        ckpt_files = ["lora.safetensors", "optimizer.safetensors", "state.json",
                      *[f"rng-{i}.safetensors" for i in range(accelerator.num_processes)],
                      *[f"validation_{i}.png" for i in range(cfg.num_validation_images)]]
        planned = [s for s in planned if not ckpt_io.checkpoint_dir(out, s).is_dir()]  # existing ones: checked on resume
        od.check_free([lora_io.LORA_FILE, lora_io.KOHYA_FILE, CONFIG_FILE, LOG_FILE]
                      + [f"{ckpt_io.checkpoint_dir(Path(), s).as_posix()}/{f}" for s in planned for f in ckpt_files])
    existing = loop.check_output_dir(out, cfg.resume, (lora_io.LORA_FILE, lora_io.KOHYA_FILE), "final LoRA", od)
    if cfg.resume and not existing and (out / CONFIG_FILE).is_file():
        _check_config_only_resume(cfg, out)

    # ---- resume: is it the same run
    fingerprints = {"config": to_dict(cfg), "model": resolved.to_dict(), "model_fingerprint": model_fingerprint(resolved),
                    "init_lora_fingerprint": files_fingerprint(init_path) if init_path else None,
                    "data": _data_fingerprint(examples)}
    if existing:
        saved = ckpt_io.read_state(existing[-1].path)[0]
        check_resume_config(cfg, saved["config"], existing[-1].path, saved.get("model_fingerprint"),
                             fingerprints["model_fingerprint"], saved_init=saved.get("init_lora_fingerprint"),
                             init_now=fingerprints["init_lora_fingerprint"])
        if saved.get("data") != fingerprints["data"]:
            raise InputError(
                f"--resume: the photos or captions in {cfg.train_data_dir} changed since {existing[-1].path} was written, "
                "so the run cannot continue as the same run. Restore them, or start a new run in an empty output folder."
            )
    if main:
        stage = od.stage()
        save_config(cfg, stage / CONFIG_FILE)
        od.commit(stage, replace=False)

    scorer = None
    if cfg.face_backend != "none" and main:
        from facechain.face import get_analyzer

        scorer = LikenessScorer.from_photos(get_analyzer(cfg.face_backend), [e.image for e in examples])
        if not scorer.reference:
            logger.warning("validation: no face found in any training photo; checkpoints are not scored and the last step is kept")
            scorer = None
    return _Inputs(examples, init_path, resolved, mixed_precision, threads, accelerator, od, existing, fingerprints, scorer)


@dataclass
class _Model:
    """The base pipeline with the LoRA being trained."""

    pipe: object  # the diffusers pipeline (also the validation pipeline)
    family: str
    cond: TextConditioner
    objective: object  # the family's training objective (DDPM epsilon / v-prediction for SD1.5 and SDXL)
    lora_models: dict  # {"unet": ..., "text_encoder": ..., "text_encoder_2": ...}: the models that carry the LoRA

    @property
    def unet(self):
        return self.pipe.unet


def _build_model(cfg: TrainConfig, inputs: _Inputs) -> _Model:
    """Load the base model, freeze it, add the LoRA (seeded) and set it from the init LoRA."""
    from accelerate.utils import set_seed
    from diffusers.training_utils import cast_training_params

    device, dtype = inputs.device, weight_dtype(inputs.mixed_precision)
    pipe = load_pipeline(inputs.resolved, torch_dtype=torch.float32, single_file_config=cfg.single_file_config or None)
    family = inputs.resolved.family
    unet, vae = pipe.unet, pipe.vae
    cond = TextConditioner.from_pipeline(pipe, family)
    for m in [unet, vae, *cond.encoders]:
        m.requires_grad_(False)
    objective = get_family(family).objective(pipe.scheduler.config)
    # The pipeline loads in fp32. The VAE stays fp32 (it encodes once and decodes at validation only;
    # the SDXL VAE overflows in fp16); text encoders stay fp32 until their embeddings are cached.
    vae.to(device)
    _to(unet, device, dtype)
    for enc in cond.encoders:
        _to(enc, device, dtype if cfg.train_text_encoder else torch.float32)
    set_seed(cfg.seed)  # the LoRA's initial (gaussian) weights come from the global generator
    add_lora(unet, cond.encoders, cfg)
    lora_models = {"unet": unet}
    if cfg.train_text_encoder:
        lora_models.update(zip(["text_encoder", "text_encoder_2"], cond.encoders))
    if inputs.mixed_precision != "no":  # LoRA weights train in fp32; cast before any are loaded, so none are rounded
        cast_training_params(list(lora_models.values()), dtype=torch.float32)
    if cfg.init_lora and not inputs.existing:  # a resumed run takes its weights from the checkpoint
        load_init_lora(cfg, inputs.init_path, family, lora_models)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for enc in cond.encoders:  # transformers 5 renamed gradient_checkpointing_enable
                (getattr(enc, "activation_checkpointing_enable", None) or enc.gradient_checkpointing_enable)()
    return _Model(pipe, family, cond, objective, lora_models)


class _LoraSteps(loop.Steps):
    """The face LoRA's step: a cached latent and caption, noise and a timestep, the denoiser's loss."""

    desc = "train LoRA"
    divergence_hint = ("Lower --learning_rate, or use --mixed_precision bf16 or no instead of fp16; resume from the "
                       "last checkpoint with --resume only after changing nothing else.")
    grads_to_none = False  # zero in place: the LoRA gradients are views of flat.grad

    def __init__(self, cfg: TrainConfig, inputs: _Inputs, model: _Model, pool, token_ids, cached, flat, train_unet,
                 lr_scheduler, gen: torch.Generator, prompt: str):
        self.cfg, self.inputs, self.model, self.pool, self.token_ids = cfg, inputs, model, pool, token_ids
        self.cached_embeds, self.cached_pooled = cached
        self.flat, self.train_unet, self.lr_scheduler, self.gen, self.prompt = flat, train_unet, lr_scheduler, gen, prompt
        self.weight_dtype = weight_dtype(inputs.mixed_precision)

    def loss(self, step: int) -> torch.Tensor:
        cfg, gen, device = self.cfg, self.gen, self.inputs.device
        latents, cap = self.pool.sample(cfg.train_batch_size, gen)  # (B, 4, h, w), (B,)
        noisy, timesteps, target = self.model.objective.noised(latents, gen, device)  # the family's objective
        if self.cached_embeds is not None:
            embeds = self.cached_embeds[cap]
            pooled = self.cached_pooled[cap] if self.cached_pooled is not None else None
        else:
            embeds, pooled = self.model.cond.encode([ids[cap.cpu()] for ids in self.token_ids])
        added = get_family(self.model.family).added_conditioning(pooled, cfg.resolution, cfg.resolution,
                                                                 latents.shape[0], device, embeds.dtype)
        with self.inputs.accelerator.autocast():
            pred = self.train_unet(noisy.to(self.weight_dtype), timesteps, embeds, added_cond_kwargs=added,
                                   return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float())

    def before_optimizer_step(self) -> None:
        accelerator = self.inputs.accelerator
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_([self.flat], self.cfg.max_grad_norm)

    def log_row(self, step: int, loss: float, seconds: float) -> dict:
        return {"step": step, "loss": loss, "lr": self.lr_scheduler.get_last_lr()[0], "seconds": seconds,
                "time": time.time()}

    def trainable(self) -> dict[str, torch.Tensor]:
        return lora_io.flatten(current_lora(self.model.lora_models))

    def validate(self, step: int, staging: Path) -> float | None:
        """Validation portraits scored by likeness to the training photos (none without a scorer)."""
        cfg, scorer = self.cfg, self.inputs.scorer
        log_path = Path(cfg.output_dir) / LOG_FILE
        if scorer is None:
            append_jsonl(log_path, {"event": "checkpoint", "step": step, "score": None})
            return None
        lora_models = self.model.lora_models.values()
        for m in lora_models:
            m.eval()
        pipe = self.model.pipe
        images = generate_validation_images(pipe, self.prompt, cfg.num_validation_images, cfg.validation_num_inference_steps,
                                            validation_resolution(pipe, self.model.family, cfg.resolution), seed=cfg.seed,
                                            autocast=self.inputs.accelerator.autocast)
        for m in lora_models:
            m.train()
        result = scorer.score(images)
        append_jsonl(log_path, {"event": "checkpoint", "step": step, "score": result.score, "per_image": result.per_image,
                                "faces_found": result.faces_found})
        for i, im in enumerate(images):
            save_image(staging / f"validation_{i}.png", im)
        return result.score

    def keep(self) -> set[int]:
        scores = {c.step: c.score for c in ckpt_io.list_checkpoints(Path(self.cfg.output_dir))}
        return set(select_checkpoints(scores, self.cfg.ensemble_top_k))


def _prepare_steps(cfg: TrainConfig, inputs: _Inputs, model: _Model, progress: bool) -> tuple[loop.Run, _LoraSteps]:
    """Cache the inputs (VAE latents of the augmentation pool, text embeddings per caption), then the
    optimizer, the lr schedule and accelerate's preparation."""
    from diffusers.optimization import get_scheduler

    device, dtype, accelerator = inputs.device, weight_dtype(inputs.mixed_precision), inputs.accelerator
    pool = build_latent_pool(inputs.examples, model.pipe.vae, resolution=cfg.resolution, variants=cfg.aug_variants,
                             seed=cfg.seed, face_crop=cfg.face_crop, flip=cfg.random_flip, device=device,
                             dtype=torch.float32, progress=progress and inputs.main)
    pool.mean, pool.std, pool.caption_index = pool.mean.to(device), pool.std.to(device), pool.caption_index.to(device)
    token_ids = model.cond.tokenize(pool.captions)
    cached_embeds = cached_pooled = None
    if not cfg.train_text_encoder:
        with torch.no_grad():
            cached_embeds, cached_pooled = model.cond.encode(token_ids)
        cached_embeds = cached_embeds.to(device, dtype)
        cached_pooled = cached_pooled.to(device, dtype) if cached_pooled is not None else None
        for enc in model.cond.encoders:  # kept for validation only
            _to(enc, device, dtype)

    params = [p for m in model.lora_models.values() for p in m.parameters() if p.requires_grad]
    flat = flat_parameter(params)
    optimizer = adamw([flat], cfg, device)
    max_steps = cfg.num_steps(len(inputs.examples))
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)
    prepared = accelerator.prepare(*model.lora_models.values(), optimizer, lr_scheduler)
    optimizer, lr_scheduler = prepared[-2], prepared[-1]
    train_unet = prepared[0]
    if cfg.compile_unet:  # the training forward only; validation and saving use the same (uncompiled) modules
        train_unet = torch.compile(train_unet)
    gen = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
    run = loop.Run(Path(cfg.output_dir), inputs.od, accelerator, gen, optimizer, max_steps, cfg.checkpointing_steps,
                   cfg.checkpoints_total_limit, extra=inputs.fingerprints, lr_scheduler=lr_scheduler)
    prompt = cfg.validation_prompt or max(pool.captions, key=[e.caption for e in inputs.examples].count)
    steps = _LoraSteps(cfg, inputs, model, pool, token_ids, (cached_embeds, cached_pooled), flat, train_unet,
                       lr_scheduler, gen, prompt)
    return run, steps


def _resume(cfg: TrainConfig, inputs: _Inputs, model: _Model, run: loop.Run, steps: _LoraSteps) -> int:
    """Continue from the latest checkpoint (or start), log the run's start and put the LoRA in training mode."""
    existing = inputs.existing
    start = loop.resume(run, existing, lambda flat: load_lora_into(model.lora_models, lora_io.unflatten(flat),
                                                                   f"checkpoint {existing[-1].path}"))
    if inputs.main:
        append_jsonl(run.log_path, {"event": "resume" if existing else "start", "step": start,
                                    "max_train_steps": run.max_steps, "photos": len(inputs.examples),
                                    "pool": len(steps.pool), "family": model.family, "model": inputs.resolved.to_dict(),
                                    "trainable_params": steps.flat.numel(), "device": str(inputs.device),
                                    "mixed_precision": inputs.mixed_precision, "threads": inputs.threads,
                                    "compile_unet": cfg.compile_unet})
        inputs.od.record([LOG_FILE], logs=(LOG_FILE,))
    if inputs.device.type == "cuda":  # report the training loop's own peak, not the one-off VAE encoding's
        torch.cuda.reset_peak_memory_stats(inputs.device)
    for m in model.lora_models.values():
        m.train()
    return start


def _export(cfg: TrainConfig, inputs: _Inputs, model: _Model, run: loop.Run) -> LoraArtifact:
    """The final LoRA: the best checkpoint or the average of the top k, in the diffusers and kohya formats."""
    out, od, scores, device, max_steps = run.out, run.od, run.scores, inputs.device, run.max_steps
    if inputs.scorer is None:
        selected = [max_steps]
    else:
        selected = select_checkpoints({s: v for s, v in scores.items() if ckpt_io.checkpoint_dir(out, s).exists()},
                                      cfg.ensemble_top_k)
    lora_path = out / lora_io.LORA_FILE
    kohya_path = out / lora_io.KOHYA_FILE
    if inputs.main:
        from safetensors.torch import load_file

        loras = [lora_io.unflatten(load_file(str(ckpt_io.checkpoint_dir(out, s) / "lora.safetensors"))) for s in selected]
        final = loras[0] if len(loras) == 1 else lora_io.average(loras)
        stage = od.stage()
        family, unet = model.family, model.unet
        lora_io.save_diffusers(stage, final, family, cfg.rank, cfg.alpha)
        lora_io.save_kohya(stage, final, family, cfg.alpha, unet.config.layers_per_block if isinstance(unet.config.layers_per_block, int) else 2)
        od.commit(stage, replace=False)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        append_jsonl(run.log_path, {"event": "final", "step": max_steps, "selected_steps": selected,
                                    "peak_training_memory_mb": peak, "scores": {str(s): scores.get(s) for s in selected},
                                    "lora": lora_path.name, "kohya": kohya_path.name})
        od.record([LOG_FILE], logs=(LOG_FILE,))
        logger.info("LoRA written to %s (checkpoints %s)", lora_path, selected)
    accelerator = inputs.accelerator
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return LoraArtifact(out, lora_path, kohya_path, out / CONFIG_FILE, run.log_path, model.family, max_steps, selected,
                        dict(scores))
