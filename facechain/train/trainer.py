"""The face-LoRA training loop: accelerate + peft, cached inputs, atomic resumable checkpoints,
checkpoint scoring by likeness, and export in the diffusers and kohya formats.

    from facechain.train import TrainConfig, train
    artifact = train(TrainConfig(base_model=..., train_data_dir="processed", output_dir="lora"))
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from facechain.config import save_config, to_dict
from facechain.errors import FacechainError, InputError
from facechain.io import append_jsonl, read_jsonl
from facechain.train import checkpoint as ckpt_io
from facechain import lora as lora_io
from facechain.train.artifact import CONFIG_FILE, LOG_FILE
from facechain.train.config import RESUME_MUTABLE, RESUME_SAME_TARGET, TrainConfig
from facechain.train.data import build_latent_pool, load_processed
from facechain.train.text import TextConditioner, sdxl_time_ids
from facechain.train.validate import LikenessScorer, generate_validation_images, select_checkpoints, validation_resolution

logger = logging.getLogger(__name__)

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP attention, as diffusers' LoRA scripts


class TrainingDivergedError(FacechainError):
    """The loss became NaN or infinite."""


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


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def resolve_mixed_precision(flag: str) -> str:
    """``auto``: bf16 on a CUDA GPU that supports it, fp16 on an older one, fp32 ("no") elsewhere
    (CPU autocast in bf16 is slower than fp32 on most CPUs, and MPS has no fused AdamW)."""
    if flag != "auto":
        return flag
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def usable_cpus() -> int:
    """Cores this process may run on: its CPU affinity, bounded by a cgroup v2/v1 CPU quota (containers)."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = None
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if fields and fields[0] != "max":
            quota = int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            if q > 0:
                quota = q / int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def set_threads(requested: int) -> int:
    """Set torch's intra-op threads: ``requested``, or (0) this process's share of :func:`usable_cpus`
    among the processes accelerate started on this machine. ``accelerate launch`` sets
    OMP_NUM_THREADS=1 unless the user set it, which left the trainer on one core; under the launcher
    that value is not used (``train_lora.sh`` passes a user's own OMP_NUM_THREADS on as
    --num_threads); run without a launcher, a set OMP_NUM_THREADS is the user's and is used."""
    import os

    n = requested
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by accelerate launch, with its OMP_NUM_THREADS
    if n == 0 and not launched and (os.environ.get("OMP_NUM_THREADS") or "").isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])  # the user's own setting, run without a launcher
    if n == 0:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
        n = max(1, usable_cpus() // max(1, local))
    torch.set_num_threads(n)
    return n


def _to(model, device, dtype) -> None:
    """Move ``model``; cast only when the dtype changes."""
    if next(model.parameters()).dtype == dtype:
        model.to(device)
    else:
        model.to(device, dtype)


def flat_parameter(params: list[torch.nn.Parameter]) -> torch.nn.Parameter:
    """One contiguous parameter holding every LoRA weight; each LoRA parameter becomes a view of
    it, and each gradient a view of its gradient (autograd accumulates into an existing ``.grad``
    in place), so AdamW and gradient clipping touch one tensor instead of hundreds (SD1.5: 256).
    Zero gradients with ``set_to_none=False`` to keep the views."""
    if len({(p.dtype, p.device) for p in params}) != 1:
        raise ValueError(f"LoRA parameters must share dtype and device to be flattened, got {sorted({(str(p.dtype), str(p.device)) for p in params})}")
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))  # (N,)
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset:offset + n].view_as(p)
        p.grad = flat.grad[offset:offset + n].view_as(p)
        offset += n
    return flat


def _adamw(params, cfg: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one (CPU, CUDA). A LoRA is hundreds of small
    tensors: per-tensor AdamW costs as much as a tiny UNet's backward (9.6 ms per-tensor, 5.6 ms
    foreach, 1.3 ms fused for SD1.5's 256 LoRA tensors on one CPU thread); the trainer also
    flattens them into one tensor (:func:`flat_parameter`)."""
    kwargs = dict(lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
    if device.type in ("cpu", "cuda"):
        return torch.optim.AdamW(params, fused=True, **kwargs)
    logger.info("AdamW: no fused kernel on %s; using the multi-tensor (foreach) implementation", device.type)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def _note_accelerate_mixed_precision(flag: str) -> None:
    """``--mixed_precision`` governs, also under ``accelerate launch``: accelerate passes its config's
    (or the ``--mixed_precision`` launch option's) setting as ACCELERATE_MIXED_PRECISION, which the
    trainer's flag overrides. Say so in one line when accelerate asks for mixed precision and the
    flag differs (accelerate's default "no" is not worth a line)."""
    import os

    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if env and env.lower() != "no" and env.lower() != flag:
        logger.warning("mixed precision: accelerate's setting is %r (accelerate config / ACCELERATE_MIXED_PRECISION) but "
                       "the trainer uses its --mixed_precision %r; pass --mixed_precision %s to use accelerate's",
                       env, flag, env)


def resolve_init_lora(cfg: TrainConfig) -> Path:
    """The file of ``cfg.init_lora``. ``facechain`` names FaceChain's generic face LoRA on ModelScope:
    a tensor-only pickle from a known publisher, read with ``weights_only=True`` (tensors only, no
    code) without --allow_pickle."""
    from facechain.errors import ModelNotFoundError
    from facechain.models import resolve_weights_file
    from facechain.train.config import FACECHAIN_FACE_LORA, FACECHAIN_INIT_LORA

    if cfg.init_lora != FACECHAIN_INIT_LORA:
        return resolve_weights_file(cfg.init_lora, filename=cfg.init_lora_weight_name or None,
                                    allow_pickle=cfg.allow_pickle, what="init LoRA")
    repo, revision, name = FACECHAIN_FACE_LORA
    name = cfg.init_lora_weight_name or name
    try:
        return resolve_weights_file(repo, filename=name, revision=revision, allow_pickle=True,
                                    what="FaceChain's face LoRA (--init_lora facechain)")
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"--init_lora facechain: FaceChain's face LoRA ({repo} revision {revision}, file {name}, on ModelScope) "
            f"could not be had ({exc}). Connect to ModelScope once (it is cached afterwards), or download {name} "
            f"from {repo} (revision {revision}) yourself and pass --init_lora PATH_TO_FILE --allow_pickle, or train "
            "without --init_lora."
        ) from exc


def _data_fingerprint(examples) -> str:
    """sha256 over the training photos' bytes and captions: a resumed run must see the same data."""
    import hashlib

    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.image.name.encode() + b"\0" + ex.caption.encode() + b"\0" + ex.image.read_bytes())
    return h.hexdigest()


def _check_output_dir(cfg: TrainConfig, out: Path) -> list[ckpt_io.Checkpoint]:
    existing = ckpt_io.list_checkpoints(out)
    if cfg.resume:
        if not existing and ((out / lora_io.LORA_FILE).exists() or (out / lora_io.KOHYA_FILE).exists()):
            raise InputError(
                f"--resume: output_dir {out} holds a finished run's final LoRA ({lora_io.LORA_FILE} or the kohya file) "
                "but no checkpoint to continue from, "
                "so the run cannot be resumed (a new run here would replace that LoRA). Choose a new output folder."
            )
        if not existing and (out / CONFIG_FILE).is_file():  # killed before its first checkpoint: same settings only
            import json

            try:
                saved = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise InputError(f"--resume: {out / CONFIG_FILE} is damaged ({exc}). Choose a new output folder.") from exc
            _check_resume_config(cfg, saved, out / CONFIG_FILE, config_only=True)
        if not existing:
            logger.info("--resume: no checkpoint in %s yet; starting from step 0", out)
        return existing
    if existing or (out / lora_io.LORA_FILE).exists() or (out / lora_io.KOHYA_FILE).exists():
        raise InputError(
            f"output_dir {out} already holds a training run (checkpoints or a final LoRA). "
            "Pass --resume to continue it, or choose an empty output folder."
        )
    return existing


def _check_resume_config(cfg: TrainConfig, saved: dict, where: Path, saved_model: str | None = None,
                         model_now: str | None = None, config_only: bool = False, saved_init: str | None = None,
                         init_now: str | None = None) -> None:
    """Refuse a resume whose settings differ. Paths are compared by what they point to: the base
    model by its files' fingerprint (so ./model and /abs/model are the same model, and another model
    behind the same path is not), the photos by the data fingerprint (checked by the caller), and the
    output folder is the one the checkpoint was found in (it may have moved)."""
    import os

    from facechain.config import upgrade_names

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


def _add_lora(unet, text_encoders: list, cfg: TrainConfig) -> None:
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=list(cfg.target_modules)))
    if cfg.train_text_encoder:
        for enc in text_encoders:
            enc.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=TEXT_ENCODER_TARGETS))


def current_lora(models: dict) -> lora_io.LoraDict:
    """peft state dicts of the models that carry a LoRA, as fp32 CPU tensors."""
    from peft import get_peft_model_state_dict

    return {name: {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(m).items()} for name, m in models.items()}


def load_lora_into(models: dict, lora: lora_io.LoraDict, where: str, strict: bool = True) -> None:
    """Set the adapter weights of ``models`` from ``lora`` (peft keys); refuse shape mismatches."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    for name, model in models.items():
        expected = get_peft_model_state_dict(model)
        given = _align_text_model_prefix(lora.get(name, {}), expected)
        missing = sorted(set(expected) - set(given))
        unused = sorted(set(given) - set(expected))
        for k in set(expected) & set(given):
            if tuple(expected[k].shape) != tuple(given[k].shape):
                raise InputError(
                    f"{where}: {name} weight {k} has shape {tuple(given[k].shape)} but the LoRA being trained has "
                    f"{tuple(expected[k].shape)} (rank {expected[k].shape[0] if 'lora_A' in k else expected[k].shape[1]}). "
                    "Use --rank equal to the file's rank."
                )
        if strict and (missing or unused):
            raise InputError(f"{where}: {name} LoRA keys do not match (missing {missing[:3]}, unexpected {unused[:3]}).")
        if missing or unused:
            logger.info("%s: %s: %d of %d LoRA weights set from the file (%d keys not used)", where, name,
                        len(expected) - len(missing), len(expected), len(unused))
        set_peft_model_state_dict(model, {k: v for k, v in given.items() if k in expected})


def _align_text_model_prefix(given: dict, expected: dict) -> dict:
    """CLIP text encoders name their modules ``text_model.encoder...`` (transformers 4, kohya files)
    or ``encoder...`` (transformers 5); match the file's names to the model's."""
    has = any(k.startswith("text_model.") for k in expected)
    if not has and any(k.startswith("text_model.") for k in given):
        return {k.removeprefix("text_model."): v for k, v in given.items()}
    if has and given and not any(k.startswith("text_model.") for k in given):
        return {f"text_model.{k}": v for k, v in given.items()}
    return given


def train(cfg: TrainConfig, *, progress: bool = True) -> LoraArtifact:
    """Train a face LoRA as configured; see the module and ``docs/train.md``.

    Raises InputError / ModelNotFoundError / UnsafeCheckpointError for bad input, before any
    training starts."""
    from facechain.outputs import check_writable_folder

    check_writable_folder(Path(cfg.output_dir), "output_dir")
    held: list = []  # the main process's OutputDir, once acquired
    threads_before = torch.get_num_threads()
    try:
        return _train(cfg, progress, held)
    finally:
        torch.set_num_threads(threads_before)  # the caller's setting again (a UI or tests training in-process)
        for od in held:
            od.release()
        _release_accelerator_state()


def _train(cfg: TrainConfig, progress: bool, held: list) -> LoraArtifact:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    from facechain.models import files_fingerprint, load_pipeline, model_fingerprint, resolve_model

    # ---- inputs first: data, output folder, init LoRA, model
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
    _note_accelerate_mixed_precision(mixed_precision)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    main = accelerator.is_main_process
    od = None
    if main:  # the main process holds the folder (lock, record) for the whole run
        from facechain.outputs import OutputDir

        od = OutputDir.acquire(out, "train", allow_other_files=cfg.allow_other_files, what="output_dir")
        held.append(od)
        from types import SimpleNamespace

        from facechain.outputs import hold_for_reading

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
    existing = _check_output_dir(cfg, out)
    device = accelerator.device
    weight_dtype = _weight_dtype(mixed_precision)
    log_path, config_path = out / LOG_FILE, out / CONFIG_FILE

    # ---- resume: what step, and is it the same run
    resume_from = existing[-1] if cfg.resume and existing else None
    fingerprint = _data_fingerprint(examples)
    model_id = model_fingerprint(resolved)
    init_id = files_fingerprint(init_path) if init_path else None
    if resume_from is not None:
        saved = ckpt_io.read_state(resume_from.path)[0]
        _check_resume_config(cfg, saved["config"], resume_from.path, saved.get("model_fingerprint"), model_id,
                             saved_init=saved.get("init_lora_fingerprint"), init_now=init_id)
        if saved.get("data") != fingerprint:
            raise InputError(
                f"--resume: the photos or captions in {cfg.train_data_dir} changed since {resume_from.path} was written, "
                "so the run cannot continue as the same run. Restore them, or start a new run in an empty output folder."
            )
    if main:
        if log_path.exists() and not od.owns(LOG_FILE):
            raise InputError(f"output_dir {out} holds a {LOG_FILE} that facechain did not write; it is left untouched. "
                             "Move it away or choose another output folder.")
        stage = od.stage()
        save_config(cfg, stage / CONFIG_FILE)
        od.commit(stage, replace=False)

    # ---- likeness scorer (before the model loads: a missing face backend fails fast)
    scorer = None
    if cfg.face_backend != "none" and main:
        from facechain.face import get_analyzer

        scorer = LikenessScorer.from_photos(get_analyzer(cfg.face_backend), [e.image for e in examples])
        if not scorer.reference:
            logger.warning("validation: no face found in any training photo; checkpoints are not scored and the last step is kept")
            scorer = None

    # ---- model
    pipe = load_pipeline(resolved, torch_dtype=torch.float32, single_file_config=cfg.single_file_config or None)
    family = resolved.family
    unet, vae = pipe.unet, pipe.vae
    cond = TextConditioner.from_pipeline(pipe, family)
    for m in [unet, vae, *cond.encoders]:
        m.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    # The pipeline loads in fp32. The VAE stays fp32 (it encodes once and decodes at validation only;
    # the SDXL VAE overflows in fp16); text encoders stay fp32 until their embeddings are cached.
    vae.to(device)
    _to(unet, device, weight_dtype)
    for enc in cond.encoders:
        _to(enc, device, weight_dtype if cfg.train_text_encoder else torch.float32)
    set_seed(cfg.seed)  # the LoRA's initial (gaussian) weights come from the global generator
    _add_lora(unet, cond.encoders, cfg)
    lora_models = {"unet": unet}
    if cfg.train_text_encoder:
        lora_models.update(zip(["text_encoder", "text_encoder_2"], cond.encoders))
    if mixed_precision != "no":  # LoRA weights train in fp32; cast before any are loaded, so none are rounded
        cast_training_params(list(lora_models.values()), dtype=torch.float32)
    if cfg.init_lora and resume_from is None:  # a resumed run takes its weights from the checkpoint
        try:
            lora, file_scale = lora_io.read_lora_file(init_path, family, unet.config)
        except FacechainError:
            raise
        except Exception as exc:
            raise InputError(f"init LoRA {init_path} could not be read ({type(exc).__name__}: {str(exc)[:200]}). Check "
                             "that it is a complete LoRA file (diffusers or kohya keys).") from exc
        ratio = file_scale / (cfg.alpha / cfg.rank)
        if abs(ratio - 1.0) > 1e-6:  # keep the file's update: up matrices absorb the alpha/rank difference
            logger.info("init LoRA %s: scale %g differs from alpha/rank %g; its up matrices are rescaled by %g",
                        init_path, file_scale, cfg.alpha / cfg.rank, ratio)
            lora = {c: {k: (v * ratio if ".lora_B." in k else v) for k, v in sd.items()} for c, sd in lora.items()}
        load_lora_into(lora_models, lora, f"init LoRA {init_path}", strict=False)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for enc in cond.encoders:  # transformers 5 renamed gradient_checkpointing_enable
                (getattr(enc, "activation_checkpointing_enable", None) or enc.gradient_checkpointing_enable)()

    # ---- cached inputs: VAE latents of the augmentation pool, text embeddings per caption
    pool = build_latent_pool(examples, vae, resolution=cfg.resolution, variants=cfg.aug_variants, seed=cfg.seed,
                             face_crop=cfg.face_crop, flip=cfg.random_flip, device=device, dtype=torch.float32,
                             progress=progress and main)
    pool.mean, pool.std, pool.caption_index = pool.mean.to(device), pool.std.to(device), pool.caption_index.to(device)
    token_ids = cond.tokenize(pool.captions)
    cached_embeds = cached_pooled = None
    if not cfg.train_text_encoder:
        with torch.no_grad():
            cached_embeds, cached_pooled = cond.encode(token_ids)
        cached_embeds = cached_embeds.to(device, weight_dtype)
        cached_pooled = cached_pooled.to(device, weight_dtype) if cached_pooled is not None else None
        for enc in cond.encoders:  # kept for validation only
            _to(enc, device, weight_dtype)

    # ---- optimisation
    params = [p for m in lora_models.values() for p in m.parameters() if p.requires_grad]
    flat = flat_parameter(params)
    optimizer = _adamw([flat], cfg, device)
    max_steps = cfg.num_steps(len(examples))
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)
    prepared = accelerator.prepare(*lora_models.values(), optimizer, lr_scheduler)
    optimizer, lr_scheduler = prepared[-2], prepared[-1]
    train_unet = prepared[0]
    if cfg.compile_unet:  # the training forward only; validation and saving use the same (uncompiled) modules
        train_unet = torch.compile(train_unet)
    gen = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)

    start_step = 0
    scores: dict[int, float | None] = {c.step: c.score for c in existing} if resume_from else {}
    if resume_from is not None:
        state, lora_flat, opt_state = ckpt_io.read_state(resume_from.path)
        load_lora_into(lora_models, lora_io.unflatten(lora_flat), f"checkpoint {resume_from.path}")
        optimizer.load_state_dict(opt_state)
        lr_scheduler.scheduler.load_state_dict({**lr_scheduler.scheduler.state_dict(), **state["lr_scheduler"]})
        ckpt_io.read_rng(resume_from.path, gen, accelerator.process_index)
        start_step = state["step"]
        if main and log_path.exists():  # drop log rows of steps that will be run again (they end the log)
            import json

            rows = [r for r in read_jsonl(log_path) if r.get("step", 0) <= start_step]
            od.rewrite_log(LOG_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
        logger.info("resuming from %s at step %d of %d", resume_from.path.name, start_step, max_steps)
    elif main and log_path.exists():  # a fresh run in a folder whose earlier run left only its log
        od.remove([LOG_FILE])

    prompt = cfg.validation_prompt or max(pool.captions, key=[e.caption for e in examples].count)

    if main:
        append_jsonl(log_path, {"event": "start" if resume_from is None else "resume", "step": start_step, "max_train_steps": max_steps,
                                "photos": len(examples), "pool": len(pool), "family": family, "model": resolved.to_dict(),
                                "trainable_params": sum(p.numel() for p in params), "device": str(device),
                                "mixed_precision": mixed_precision, "threads": threads,
                                "compile_unet": cfg.compile_unet})
        od.record([LOG_FILE], logs=(LOG_FILE,))
    pred_type = noise_scheduler.config.prediction_type
    if device.type == "cuda":  # report the training loop's own peak, not the one-off VAE encoding's
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=max_steps, initial=start_step, desc="train LoRA", disable=not (progress and main))
    for m in lora_models.values():
        m.train()
    step = start_step
    while step < max_steps:
        t0 = time.perf_counter()
        latents, cap = pool.sample(cfg.train_batch_size, gen)  # (B, 4, h, w), (B,)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if cached_embeds is not None:
            embeds = cached_embeds[cap]
            pooled = cached_pooled[cap] if cached_pooled is not None else None
        else:
            embeds, pooled = cond.encode([ids[cap.cpu()] for ids in token_ids])
        added = None
        if family == "sdxl":
            added = {"text_embeds": pooled, "time_ids": sdxl_time_ids(cfg.resolution, latents.shape[0], device, embeds.dtype)}
        target = noise if pred_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        with accelerator.autocast():
            pred = train_unet(noisy.to(weight_dtype), timesteps, embeds, added_cond_kwargs=added, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_([flat], cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=False)  # zero in place: the LoRA gradients are views of flat.grad
        step += 1
        bar.update(1)
        loss_value = loss.detach().item()
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"the training loss became {loss_value} at step {step}. Lower --learning_rate, or use --mixed_precision bf16 "
                f"or no instead of fp16; resume from the last checkpoint with --resume only after changing nothing else."
            )
        if main:
            append_jsonl(log_path, {"step": step, "loss": loss_value, "lr": lr_scheduler.get_last_lr()[0],
                                    "seconds": round(time.perf_counter() - t0, 5), "time": time.time()})
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if step % cfg.checkpointing_steps == 0 or step == max_steps:
            parts = _CheckpointParts(cfg, accelerator, od, out, lora_models, optimizer, lr_scheduler, gen, scorer, pipe,
                                     prompt, log_path, family)
            scores[step] = _checkpoint(parts, step, {"config": to_dict(cfg), "model": resolved.to_dict(),
                                                     "model_fingerprint": model_id, "init_lora_fingerprint": init_id,
                                                     "data": fingerprint})
    bar.close()
    accelerator.wait_for_everyone()

    # ---- final LoRA: the best checkpoint or the average of the top k
    if scorer is None:
        selected = [max_steps]
    else:
        selected = select_checkpoints({s: v for s, v in scores.items() if ckpt_io.checkpoint_dir(out, s).exists()}, cfg.ensemble_top_k)
    lora_path = out / lora_io.LORA_FILE
    kohya_path = out / lora_io.KOHYA_FILE
    if main:
        from safetensors.torch import load_file

        loras = [lora_io.unflatten(load_file(str(ckpt_io.checkpoint_dir(out, s) / "lora.safetensors"))) for s in selected]
        final = loras[0] if len(loras) == 1 else lora_io.average(loras)
        stage = od.stage()
        lora_io.save_diffusers(stage, final, family, cfg.rank, cfg.alpha)
        lora_io.save_kohya(stage, final, family, cfg.alpha, unet.config.layers_per_block if isinstance(unet.config.layers_per_block, int) else 2)
        od.commit(stage, replace=False)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        append_jsonl(log_path, {"event": "final", "step": max_steps, "selected_steps": selected, "peak_training_memory_mb": peak,
                                "scores": {str(s): scores.get(s) for s in selected}, "lora": lora_path.name, "kohya": kohya_path.name})
        od.record([LOG_FILE], logs=(LOG_FILE,))
        logger.info("LoRA written to %s (checkpoints %s)", lora_path, selected)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return LoraArtifact(out, lora_path, kohya_path, config_path, log_path, family, max_steps, selected, dict(scores))


def _release_accelerator_state() -> None:
    """accelerate keeps one process-wide AcceleratorState (mixed precision, ...); clear it so that
    a later ``train()`` in the same process (a UI training several people, tests) may use other
    settings. The process group (PartialState) is kept. accelerate's own tests reset it the same way."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


@dataclass(frozen=True)
class _CheckpointParts:
    """What writing and scoring a checkpoint needs from the training loop."""

    cfg: TrainConfig
    accelerator: object
    od: object  # the output folder's OutputDir (None on processes other than the main one)
    out: Path  # the output folder
    lora_models: dict
    optimizer: object
    lr_scheduler: object
    gen: object  # the training RNG, saved with the checkpoint
    scorer: object  # LikenessScorer, or None without scoring
    pipe: object  # the validation pipeline
    prompt: str
    log_path: Path
    family: str = "sd15"


def _checkpoint(parts: _CheckpointParts, step: int, extra: dict) -> float | None:
    """Score (main process), then write the checkpoint atomically. Returns the score."""
    cfg, accelerator, od, lora_models, scorer, log_path = (parts.cfg, parts.accelerator, parts.od, parts.lora_models,
                                                           parts.scorer, parts.log_path)
    optimizer, lr_scheduler, gen, pipe, prompt = parts.optimizer, parts.lr_scheduler, parts.gen, parts.pipe, parts.prompt
    out = parts.out
    main = accelerator.is_main_process
    staging = ckpt_io.staging_dir(out, step)
    ckpt_io.write_rng(staging, gen, accelerator.process_index)
    accelerator.wait_for_everyone()
    score = None
    if not main:
        accelerator.wait_for_everyone()
        return None
    images = []
    if scorer is not None:
        for m in lora_models.values():
            m.eval()
        images = generate_validation_images(pipe, prompt, cfg.num_validation_images, cfg.validation_num_inference_steps,
                                            validation_resolution(pipe, parts.family, cfg.resolution), seed=cfg.seed,
                                            autocast=accelerator.autocast)
        for m in lora_models.values():
            m.train()
        result = scorer.score(images)
        score = result.score
        append_jsonl(log_path, {"event": "checkpoint", "step": step, "score": score, "per_image": result.per_image,
                                "faces_found": result.faces_found})
    else:
        append_jsonl(log_path, {"event": "checkpoint", "step": step, "score": None})
    from facechain.io import save_image

    for i, im in enumerate(images):
        save_image(staging / f"validation_{i}.png", im)
    final = ckpt_io.finalize(od, staging, step, lora_flat=lora_io.flatten(current_lora(lora_models)),
                             opt_state=optimizer.state_dict(), sched_state=lr_scheduler.scheduler.state_dict(),
                             score=score, extra=extra)
    keep = set(select_checkpoints({c.step: c.score for c in ckpt_io.list_checkpoints(out)}, cfg.ensemble_top_k))
    ckpt_io.prune(od, cfg.checkpoints_total_limit, keep)
    od.record([log_path.name], logs=(log_path.name,))
    logger.debug("checkpoint %s written", final)
    accelerator.wait_for_everyone()
    return score
