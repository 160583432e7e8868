"""Checkpoint validation and selection by likeness.

At each checkpoint a few validation portraits are generated with the LoRA being trained, the
largest face of each is compared with every training face (:func:`facechain.face.similarity`,
calibrated to [0, 1]) and the checkpoint's score is the mean over portraits of the mean
similarity. A portrait with no face scores 0 (logged). This follows FaceChain's "validate &
ensemble" (Aug-Sep 2023): checkpoints every 100 steps scored by face-embedding similarity to
the training faces, the top state dicts averaged into the final LoRA; FaceChain validated
with inpainting on templates, here the portraits are text-to-image with the training caption.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facechain.images import PHOTO_MAX_MEGAPIXELS, read_image
import contextlib
from facechain.face import similarity
from facechain.models import native_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validation:
    score: float
    per_image: list[float]
    faces_found: int


class LikenessScorer:
    """Scores images against the faces of the training photos with one face backend."""

    def __init__(self, analyzer, reference_faces: list):
        self.analyzer = analyzer
        self.reference = reference_faces

    @classmethod
    def from_photos(cls, analyzer, photos: list[Path]) -> "LikenessScorer":
        faces = []
        for path in photos:
            found = analyzer.detect(read_image(path, "training photo", max_megapixels=PHOTO_MAX_MEGAPIXELS))
            if found:
                faces.append(found[0])
            else:
                logger.info("validation: no face found in training photo %s; it is not used as a reference", path.name)
        return cls(analyzer, faces)

    def score(self, images: list[Image.Image]) -> Validation:
        per_image = []
        found = 0
        for i, image in enumerate(images):
            faces = self.analyzer.detect(np.asarray(image.convert("RGB")))
            if not faces:
                logger.info("validation: no face in validation image %d; it scores 0", i)
                per_image.append(0.0)
                continue
            found += 1
            per_image.append(float(np.mean([similarity(faces[0], ref) for ref in self.reference])))
        return Validation(float(np.mean(per_image)) if per_image else 0.0, per_image, found)


@torch.no_grad()
def generate_validation_images(pipe, prompt: str, n: int, steps: int, resolution: int, seed: int,
                               autocast=None) -> list[Image.Image]:
    """``n`` portraits of ``prompt`` with the pipeline's current (LoRA-carrying) UNet, seeded. The
    UNet steps run under ``autocast`` (the training's mixed precision, a context manager factory);
    the VAE decodes outside it, in its own (fp32) dtype: SDXL's VAE overflows in fp16."""
    pipe.set_progress_bar_config(disable=True)
    vae = pipe.vae
    images = []
    for i in range(n):
        gen = torch.Generator("cpu").manual_seed(seed + i)
        with (autocast or contextlib.nullcontext)():
            latents = pipe(prompt, num_inference_steps=steps, height=resolution, width=resolution, generator=gen,
                           output_type="latent").images
        latents = latents.to(vae.device, vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        decoded = vae.decode(latents, return_dict=False)[0]
        images.append(pipe.image_processor.postprocess(decoded.float(), output_type="pil")[0])
    return images


def validation_resolution(pipe, family, resolution: int) -> int:
    """The size validation images are made at: the family's native size where it makes poor faces below it
    (SDXL), else the training resolution (SD1.5)."""
    from facechain.families import get_family

    return native_size(pipe) if get_family(family).validates_at_native_size else resolution


def select_checkpoints(scores: dict[int, float | None], top_k: int) -> list[int]:
    """Steps of the ``top_k`` best-scoring checkpoints, best first; ties go to the later step.
    Unscored checkpoints (None) rank below scored ones; with no scores at all the latest step wins."""
    if not scores:
        return []
    ranked = sorted(scores, key=lambda s: (scores[s] is not None, scores[s] or 0.0, s), reverse=True)
    return ranked[:top_k]
