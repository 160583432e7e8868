"""Training RepControlNet: only the modal copy of the UNet's layers and the condition adapter learn.

    facechain train-adapter repcontrolnet --condition openpose --base-model M --data DIR --output-dir OUT

``DIR/images/`` and ``DIR/conditions/`` hold pairs with the same file stem (any image format). With
``images/`` alone and ``condition: openpose``, the maps are computed from the photos with
controlnet_aux's OpenPose annotator (``annotator``; its weights are pickles: ``allow_pickle``) and kept
in ``OUT/conditions/`` for inspection;
``DIR/metadata.jsonl`` (``{"file_name": "x.png", "text": "..."}``, optional) gives captions. Images and
condition maps are resized and centre-cropped to ``resolution``; latents, condition tensors and
text embeddings are computed once. The loss is diffusers' usual one (MSE on the noise, or on the
velocity for v-prediction models). accelerate runs it (multi-GPU, mixed precision); checkpoints
(``checkpoints/step-N``: modal + adapter weights, AdamW state, RNG, all safetensors) are written
atomically and ``--resume`` continues from the latest. Outputs in OUT:

* ``repcontrolnet_modal.safetensors``: the modal weights, keyed like the base UNet's parameters;
* ``condition_adapter.safetensors``: the condition encoder;
* ``repcontrolnet_config.json``: the settings, the base model, the coefficient, the condition;
* ``train_log.jsonl``: the loss per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facechain.config import model_ref, setting
from facechain.errors import InputError
from facechain.train.config import MixedPrecision
from facechain.preprocess.artifact import METADATA_FILE, read_metadata
from facechain.config import save_config, to_dict
from facechain.generate.poses import openpose_from_photo
from facechain.images import list_images
from facechain.io import save_safetensors, write_json, save_image

logger = logging.getLogger(__name__)

MODAL_FILE = "repcontrolnet_modal.safetensors"
ADAPTER_FILE = "condition_adapter.safetensors"
CONFIG_FILE = "repcontrolnet_config.json"
CKPT_WEIGHTS = "repcontrolnet.safetensors"  # modal + adapter tensors inside a checkpoint
CONDITIONS = ("openpose", "depth", "canny", "landmarks")


@dataclass(frozen=True)
class RepControlNetConfig(model_ref()):
    data: Path = setting("Folder with images/ and conditions/ (same file stems) and an optional metadata.jsonl of captions.", path=True)
    output_dir: Path = setting("Folder for the adapter, its checkpoints and log.", path=True)
    condition: str = setting(f"What the condition maps show ({', '.join(CONDITIONS)}); recorded with the adapter.",
                             default="openpose")
    resolution: int = setting("Training resolution (square).", default=512)
    max_train_steps: int = setting("Training steps.", default=1000)
    train_batch_size: int = setting("Batch size per process.", default=1)
    learning_rate: float = setting("AdamW learning rate (ControlNet's: 1e-5).", default=1e-5)
    weight_decay: float = setting("AdamW weight decay.", default=1e-2)
    coefficient: float = setting("c in (0, 1]: the modal copy starts as c x the base weights and the layer computes "
                                 "(1 - c) x base + modal, so training starts from the base model exactly; merged, "
                                 "W' = (1 - c) W + W_m. The paper gives no value; 0.5 is ours.", default=0.5)
    annotator: str = setting("controlnet_aux OpenPose annotator weights (hub id or folder) that compute the openpose maps "
                             "when data has no conditions/ folder (pickle files: needs allow_pickle).",
                             default="lllyasviel/Annotators", maybe_path=True)
    checkpointing_steps: int = setting("Write a resumable checkpoint every N steps.", default=250)
    checkpoints_total_limit: int | None = setting("Keep at most this many checkpoints (the latest always).", default=2)
    seed: int = setting("Seed of the data order, noise and timesteps.", default=42)
    mixed_precision: MixedPrecision = setting("auto (bf16/fp16 on a GPU, fp32 on a CPU), no, fp16 or bf16.", default="auto")
    gradient_checkpointing: bool = setting("Trade compute for memory in the UNet.", default=False)
    resume: bool = setting("Continue the run in output_dir from its latest checkpoint.", default=False)
    allow_other_files: bool = setting("Write into an output folder that holds files facechain did not write.", default=False)

    def __post_init__(self):
        super().__post_init__()
        if self.condition not in CONDITIONS:
            raise InputError(f"condition must be one of {list(CONDITIONS)}, got '{self.condition}'.")
        if not 0.0 < self.coefficient <= 1.0:
            raise InputError(f"coefficient must be in (0, 1], got {self.coefficient}.")
        for name in ("resolution", "max_train_steps", "train_batch_size", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.resolution % 8:
            raise InputError(f"resolution must be a multiple of 8, got {self.resolution}.")


@dataclass(frozen=True)
class Pair:
    image: Path
    condition: Path | None  # None: computed from the image with the annotator
    caption: str


def load_pairs(data: Path, condition: str = "openpose") -> list[Pair]:
    """The (image, condition map, caption) pairs of ``data``; an image without its map (or the other way
    round) is named and left out, and none at all is an error. Without ``conditions/``, openpose maps
    are to be computed from the images (``condition`` None in each pair)."""
    data = Path(data)
    images_dir, cond_dir = data / "images", data / "conditions"
    if not images_dir.is_dir():
        raise InputError(f"data {data} has no images/ folder. Put the training images in {images_dir} and their "
                         f"condition maps (same file names) in {cond_dir}.")
    images = {p.stem: p for p in list_images(images_dir, "images folder")}
    if not cond_dir.is_dir() and condition != "openpose":
        raise InputError(
            f"data {data} has no conditions/ folder. Put each image's {condition} map in {cond_dir} with the image's file "
            "name (only openpose maps are computed from the photos here).")
    conds = {p.stem: p for p in list_images(cond_dir, "conditions folder")} if cond_dir.is_dir() else None
    meta = data / METADATA_FILE
    captions = {Path(p.file).stem: p.caption for p in read_metadata(meta)} if meta.is_file() else {}
    if conds is None:
        logger.info("repcontrolnet data: no conditions/ folder; openpose maps will be computed from the %d photos",
                    len(images))
        return [Pair(images[s], None, captions.get(s, "")) for s in sorted(images)]
    lonely = sorted(set(images) ^ set(conds))
    if lonely:
        logger.warning("repcontrolnet data: left out (no pair in the other folder): %s", ", ".join(lonely[:10]))
    pairs = [Pair(images[s], conds[s], captions.get(s, "")) for s in sorted(set(images) & set(conds))]
    if not pairs:
        raise InputError(f"data {data}: no image in images/ has a condition map of the same name in conditions/.")
    return pairs


def condition_map(pair: Pair, cfg: RepControlNetConfig) -> np.ndarray:
    """The pair's condition map at ``cfg.resolution`` (square, as the image): its file, or the OpenPose
    map computed from the image (the photo square-cropped first, so the map lines up with the image)."""
    from facechain.adapters.training import square_image

    if pair.condition is not None:
        return square_image(pair.condition, cfg.resolution, "condition map")
    from PIL import Image

    photo = square_image(pair.image, cfg.resolution, "training image")
    pose = openpose_from_photo(
        photo, pair.image, cfg.annotator, cfg.allow_pickle, flag="--annotator",
        needed_for=f"data has no conditions/ folder, so the openpose map of {pair.image} is computed from the photo; that",
        instead=f"put each image's OpenPose map in {pair.image.parent.parent / 'conditions'} under the image's file name")
    return np.array(Image.fromarray(pose).resize((cfg.resolution, cfg.resolution), Image.NEAREST))


def train_repcontrolnet(cfg: RepControlNetConfig, *, progress: bool = True) -> Path:
    """Train as configured (see the module docstring); returns the output folder."""
    from facechain.adapters.training import train_in_output_dir

    return train_in_output_dir(cfg, load_pairs(cfg.data, cfg.condition), _train, progress)


def trainable_state(model) -> dict:
    from facechain.adapters.repcontrolnet.model import modal_state

    out = {f"modal.{k}": v for k, v in modal_state(model.unet).items()}
    out.update({f"adapter.{k}": v.detach() for k, v in model.adapter.state_dict().items()})
    return out


def load_trainable_state(model, state: dict) -> None:
    from facechain.adapters.repcontrolnet.model import load_modal_state

    load_modal_state(model.unet, {k[len("modal."):]: v for k, v in state.items() if k.startswith("modal.")})
    model.adapter.load_state_dict({k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")})


def _train(cfg: RepControlNetConfig, pairs: list[Pair], od, accelerator, progress: bool) -> Path:
    import torch
    import torch.nn.functional as F

    from facechain.adapters import training
    from facechain.adapters.repcontrolnet.model import ConditionedUNet
    from facechain.train import loop

    out = Path(cfg.output_dir)  # od: the main process's OutputDir, None on the others
    existing = training.check_output_dir(cfg, out, MODAL_FILE, ("base_model", "condition", "coefficient", "resolution",
                                                                "train_batch_size", "seed"), "RepControlNet", od)
    maps = [condition_map(p, cfg) for p in pairs]  # before the model loads: a missing annotator fails early
    if accelerator.is_main_process and any(p.condition is None for p in pairs):
        stage = od.stage()
        for p, m in zip(pairs, maps):
            save_image(stage / "conditions" / f"{p.image.stem}.png", m)
        od.commit(stage, replace=False)
    base = training.load_base(cfg, accelerator)
    device, unet = base.device, base.pipe.unet
    # everything that does not train is computed once
    latents = training.encode_images(base, [p.image for p in pairs], cfg.resolution)
    conds = torch.stack([torch.from_numpy(m) for m in maps]).permute(0, 3, 1, 2).float().div(255.0)
    embeds, pooled = training.encode_captions(base, [p.caption for p in pairs])
    gen = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)

    model = ConditionedUNet(unet, cfg.coefficient, cfg.seed)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    run = training.new_run(cfg, od, accelerator, gen, optimizer, CKPT_WEIGHTS,
                           {"config": to_dict(cfg), "model": base.resolved.to_dict()})
    start = loop.resume(run, existing, lambda w: load_trainable_state(inner, w))
    inner.unet.train()
    if accelerator.is_main_process:
        stage = od.stage()
        save_config(cfg, stage / CONFIG_FILE)
        od.commit(stage, replace=False)

    def step(_n: int):
        idx = torch.randint(0, len(pairs), (cfg.train_batch_size,), generator=gen)
        x0 = latents[idx].to(device)
        noisy, timesteps, target = base.objective.noised(x0, gen, device)  # the family's objective
        emb = embeds[idx].to(device)
        with accelerator.autocast():
            pred = model(noisy, timesteps, emb, conds[idx].to(device),
                         training.added_conditions(base, pooled, idx, cfg.resolution, emb.dtype))
        return F.mse_loss(pred.float(), target.float())

    steps = loop.run_steps(run, training.AdapterSteps("train repcontrolnet", step, lambda: trainable_state(inner)), start,
                           progress=progress)
    if accelerator.is_main_process:
        state = trainable_state(inner)
        stage = od.stage()
        save_safetensors(stage / MODAL_FILE, {k[len("modal."):]: v for k, v in state.items() if k.startswith("modal.")})
        save_safetensors(stage / ADAPTER_FILE, {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")})
        write_json(stage / "repcontrolnet.json", {
            "condition": cfg.condition, "coefficient": cfg.coefficient, "family": base.family,
            "base_model": base.resolved.to_dict(), "resolution": cfg.resolution, "steps": steps,
            "adapter_channels": int(unet.conv_in.out_channels)})
        od.commit(stage, replace=False)
        od.record([loop.LOG_FILE], logs=(loop.LOG_FILE,))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out
