"""Training FeedFace's adapter on a frozen base model (see the package docstring).

    facechain train-adapter feedface --base-model M --data PROCESSED --output-dir OUT

``PROCESSED`` is a folder written by ``facechain preprocess`` (or several people's, one sub folder
each): its ``NNN.png`` crops, their captions (``metadata.jsonl``) and head masks (``masks/NNN.png``).
For each sample, the condition is the face of that photo plus up to ``max_faces - 1`` other photos of
the same person (a random count), each aligned and read by the CLIP image encoder once. Outputs:
``feedface.safetensors`` (projection + blocks), ``feedface.json`` (what it was made for),
``feedface_config.json``, ``train_log.jsonl`` and ``checkpoints/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facechain.config import model_ref, setting
from facechain.errors import InputError
from facechain.train.config import MixedPrecision
from facechain.preprocess.artifact import ProcessedSet
from facechain.config import save_config, to_dict
from facechain.images import read_image
from facechain.io import save_safetensors, write_json
from facechain.models import load_image_encoder

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "feedface.safetensors"
RECORD_FILE = "feedface.json"
CONFIG_FILE = "feedface_config.json"
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-base-patch32"  # the paper's CLIP ViT-B/32 (50 tokens of 768)
MAX_FACES = 5


@dataclass(frozen=True)
class FeedFaceConfig(model_ref()):
    data: Path = setting("A `facechain preprocess` output folder (NNN.png, metadata.jsonl, masks/), or a folder of several, "
                         "one sub folder per person.", path=True)
    output_dir: Path = setting("Folder for the adapter, its checkpoints and log.", path=True)
    image_encoder: str = setting("CLIP image encoder (hub id or folder) whose penultimate tokens are the face condition.",
                                 default=DEFAULT_IMAGE_ENCODER, maybe_path=True)
    resolution: int = setting("Training resolution (the processed crops are resized to it).", default=512)
    max_train_steps: int = setting("Training steps.", default=2000)
    learning_rate: float = setting("AdamW learning rate (FeedFace: 2e-5).", default=2e-5)
    weight_decay: float = setting("AdamW weight decay (FeedFace: 0.03).", default=0.03)
    masked_fraction: float = setting("Share of samples trained with the masked loss (FeedFace: 0.9); the rest with the "
                                     "plain noise loss.", default=0.9)
    condition_dropout: float = setting("Share of samples whose face condition is dropped (FeedFace: 0.1), for guidance.",
                                       default=0.1)
    max_faces: int = setting("Faces concatenated as the condition, at most (FeedFace: 5).", default=MAX_FACES)
    face_backend: str = setting("Face analysis backend that finds the faces to crop: auto, insightface or dlib.", default="auto")
    checkpointing_steps: int = setting("Write a resumable checkpoint every N steps.", default=250)
    checkpoints_total_limit: int | None = setting("Keep at most this many checkpoints (the latest always).", default=2)
    seed: int = setting("Seed of the data order, conditions, noise and timesteps.", default=42)
    mixed_precision: MixedPrecision = setting("auto (bf16/fp16 on a GPU, fp32 on a CPU), no, fp16 or bf16.", default="auto")
    resume: bool = setting("Continue the run in output_dir from its latest checkpoint.", default=False)
    allow_other_files: bool = setting("Write into an output folder that holds files facechain did not write.", default=False)

    def __post_init__(self):
        super().__post_init__()
        for name in ("resolution", "max_train_steps", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 1 <= self.max_faces <= MAX_FACES:
            raise InputError(f"max_faces must be between 1 and {MAX_FACES}, got {self.max_faces}.")
        for name in ("masked_fraction", "condition_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}.")


@dataclass
class Sample:
    person: int
    image: Path
    mask: Path
    caption: str


def load_samples(data: Path) -> list[Sample]:
    """The processed photos of ``data`` (one person) or of its sub folders (one person each), with their
    captions and masks. A folder without ``masks/`` was made before preprocessing saved them: an error
    saying so. Photos without a mask are named and left out."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"data {data} does not exist. Pass the output folder of `facechain preprocess`.")
    folders = [data] if ProcessedSet.exists(data) else sorted(
        p for p in data.iterdir() if p.is_dir() and ProcessedSet.exists(p))
    if not folders:
        raise InputError(f"data {data} holds no processed photos (no metadata.jsonl in it or in its sub folders). Run "
                         "`facechain preprocess PHOTOS OUT` and pass OUT.")
    samples, no_mask = [], []
    for person, folder in enumerate(folders):
        processed = ProcessedSet.read(folder, "data")
        if not processed.has_masks:
            raise InputError(f"{folder} has no masks/ folder: it was processed before preprocessing saved its head masks "
                             "(FeedFace's loss needs them). Run `facechain preprocess` on the photos again.")
        for photo in processed.photos:
            if Path(photo.file).name != photo.file or not processed.path(photo).is_file():
                continue
            if photo.mask is None:
                no_mask.append(f"{folder.name}/{photo.file}")
                continue
            samples.append(Sample(person, processed.path(photo), folder / photo.mask, photo.caption))
    if no_mask:
        logger.warning("feedface data: left out (no mask): %s", ", ".join(no_mask[:10]))
    if not samples:
        raise InputError(f"data {data}: no processed photo with a mask.")
    return samples


def train_feedface(cfg: FeedFaceConfig, *, progress: bool = True) -> Path:
    """Train as configured (see the module docstring); returns the output folder."""
    from facechain.adapters.training import train_in_output_dir

    return train_in_output_dir(cfg, load_samples(cfg.data), _train, progress)


def face_crops(samples: list[Sample], analyzer) -> np.ndarray:
    """Each photo's face aligned at 224 px (insightface's ``norm_crop`` from the 5 keypoints)."""
    from insightface.utils.face_align import norm_crop

    crops = []
    for s in samples:
        img = read_image(s.image, "processed photo")
        faces = analyzer.detect(img, max_faces=1)
        if not faces:
            raise InputError(f"no face found in the processed photo {s.image}. Remove it, or preprocess again.")
        crops.append(norm_crop(img, landmark=np.asarray(faces[0].kps, np.float32), image_size=224))
    return np.stack(crops)


def _train(cfg: FeedFaceConfig, samples: list[Sample], od, accelerator, progress: bool) -> Path:
    import torch
    import torch.nn.functional as F

    from facechain.adapters import training
    from facechain.adapters.feedface.model import FeedFace, FeedFaceHooks, HookedUNet, encode_faces
    from facechain.face import get_analyzer
    from facechain.train import loop

    out = Path(cfg.output_dir)  # od: the main process's OutputDir, None on the others
    existing = training.check_output_dir(cfg, out, WEIGHTS_FILE, ("base_model", "image_encoder", "resolution",
                                                                  "max_faces", "seed"), "FeedFace adapter", od)
    base = training.load_base(cfg, accelerator)
    device, unet = base.device, base.pipe.unet
    unet.requires_grad_(False)
    unet.to(device)
    # frozen parts, computed once: latents, masks on the latent grid, text embeddings, face tokens
    latents = training.encode_images(base, [s.image for s in samples], cfg.resolution)
    masks = torch.stack([torch.from_numpy(training.square_image(s.mask, cfg.resolution, "head mask")[..., 0].copy())
                         for s in samples]).float().div(255.0)[:, None]
    masks = F.interpolate(masks, size=latents.shape[-2:], mode="area")
    embeds, pooled = training.encode_captions(base, [s.caption for s in samples])
    encoder = load_image_encoder(cfg.image_encoder, dtype=torch.float32, allow_pickle=cfg.allow_pickle).to(device)
    tokens = encode_faces(encoder, face_crops(samples, get_analyzer(cfg.face_backend))).float().cpu()  # (N, T, D)
    del encoder
    by_person: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_person.setdefault(s.person, []).append(i)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adapter = FeedFace.for_unet(unet, int(tokens.shape[-1]))
    hooks = FeedFaceHooks(unet, adapter, multiplier=1.0)
    model = HookedUNet(adapter, unet, hooks)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model).adapter
    run = training.new_run(cfg, od, accelerator, gen, optimizer, "feedface_adapter.safetensors",
                           {"config": to_dict(cfg), "model": base.resolved.to_dict()})
    start = loop.resume(run, existing, lambda w: inner.load_state_dict(w))
    if accelerator.is_main_process:
        stage = od.stage()
        save_config(cfg, stage / CONFIG_FILE)
        od.commit(stage, replace=False)

    def condition(i: int) -> torch.Tensor:
        """Photo i's face and up to max_faces - 1 other photos of the same person, concatenated (1, k*T, D)."""
        others = [j for j in by_person[samples[i].person] if j != i]
        k = int(torch.randint(0, min(cfg.max_faces - 1, len(others)) + 1, (1,), generator=gen))
        pick = [others[int(j)] for j in torch.randperm(len(others), generator=gen)[:k]]
        t = tokens[[i, *pick]].reshape(1, -1, tokens.shape[-1])
        if float(torch.rand(1, generator=gen)) < cfg.condition_dropout:
            t = torch.zeros_like(tokens[:1])  # dropped: the unconditional condition (one face's worth of zeros)
        return t

    def step(_n: int):
        i = int(torch.randint(0, len(samples), (1,), generator=gen))
        cond = condition(i).to(device)
        masked = float(torch.rand(1, generator=gen)) < cfg.masked_fraction
        x0 = latents[i:i + 1].to(device)
        noisy, timesteps, target = base.objective.noised(x0, gen, device)  # the family's objective
        target = target.float()
        emb = embeds[i:i + 1].to(device)
        added = training.added_conditions(base, pooled, [i], cfg.resolution, emb.dtype)
        with accelerator.autocast():
            frozen = None
            if masked:  # the frozen base's own prediction (the adapter's hooks pass through without a context)
                with torch.no_grad():
                    frozen = unet(noisy, timesteps, emb, added_cond_kwargs=added, return_dict=False)[0].float()
            pred = model(noisy, timesteps, emb, cond, added).float()
        if not masked:
            return F.mse_loss(pred, target)
        m = masks[i:i + 1].to(device)
        # FeedFace's loss: learn the face inside the mask, keep the frozen model's prediction outside it
        return (((target - pred) * m) ** 2).mean() + (((frozen - pred) * (1 - m)) ** 2).mean()

    steps = loop.run_steps(run, training.AdapterSteps(
        "train feedface", step, lambda: {k: v.detach() for k, v in inner.state_dict().items()}), start, progress=progress)
    if accelerator.is_main_process:
        stage = od.stage()
        save_safetensors(stage / WEIGHTS_FILE, inner.state_dict())
        write_json(stage / RECORD_FILE, {
            "family": base.family, "base_model": base.resolved.to_dict(), "image_encoder": cfg.image_encoder,
            "clip_dim": int(tokens.shape[-1]), "tokens_per_face": int(tokens.shape[1]), "max_faces": cfg.max_faces,
            "blocks": inner.block_names, "context_dim": int(unet.config.cross_attention_dim), "steps": steps,
            "multiplier": 0.8, "guidance_scale": 5.0})
        od.commit(stage, replace=False)
        od.record([loop.LOG_FILE], logs=(loop.LOG_FILE,))
    hooks.remove()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out
