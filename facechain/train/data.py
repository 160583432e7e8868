"""Training data: the processed folder, FaceChain's FaceCrop + flip augmentation, and the
cache of VAE latents and text embeddings that lets a training step run the UNet only.

The augmentation is sampled into a fixed pool (``aug_variants`` crops per photo), each variant
is VAE-encoded once and its latent distribution (mean, std) kept; a step draws a pool entry
and samples ``mean + std * noise`` from it, as the diffusers training scripts do with
``latent_dist.sample()``. Captions are encoded once per distinct caption.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facechain.face.align import CROP_SCALE, FACE_CENTER_Y
from facechain.images import PHOTO_MAX_MEGAPIXELS, read_image
from facechain.preprocess.artifact import ProcessedSet

logger = logging.getLogger(__name__)

# FaceCrop (FaceChain train_text_to_image_lora.py): the face-size ratio (face side / crop side)
# is drawn from U[0.35, 0.45] and the face centre's height in the crop from U[0.35, 0.5]; the
# crop is centred horizontally. Preprocessing (facechain.face.align, FaceChain's crop rule) makes
# the face 0.35/1.15 of the processed image's side with its centre at 0.435 of the height, so
# the crop side is (0.35/1.15) * side / ratio: 346-445 px of a 512 px photo.
FACE_RATIO_RANGE = (0.35, 0.45)
FACE_CENTER_Y_RANGE = (0.35, 0.5)
PROCESSED_FACE_FRACTION = 1.0 / CROP_SCALE
PROCESSED_FACE_CENTER_Y = FACE_CENTER_Y


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str


def load_processed(folder: str | Path) -> list[Example]:
    """The photos and captions of a processed folder (:class:`~facechain.preprocess.artifact.ProcessedSet`),
    every photo checked to decode."""
    processed = ProcessedSet.read(folder)
    processed.check_photos()
    return [Example(processed.path(p), p.caption) for p in processed.photos]


def face_crop_box(width: int, height: int, ratio: float, center_y: float) -> tuple[int, int, int, int]:
    """Square FaceCrop box (left, top, right, bottom) for a processed photo; see the module constants."""
    side = round(min(PROCESSED_FACE_FRACTION * width / ratio, width, height))
    left = (width - side) // 2
    top = round(PROCESSED_FACE_CENTER_Y * height - center_y * side)
    top = min(max(top, 0), height - side)
    return (left, top, left + side, top + side)


def augment(image: Image.Image, resolution: int, gen: torch.Generator, face_crop: bool, flip: bool) -> Image.Image:
    """One FaceCrop + flip sample of ``image``, resized to ``resolution`` (square)."""
    image = image.convert("RGB")
    u = torch.rand(3, generator=gen).tolist()
    if face_crop:
        ratio = FACE_RATIO_RANGE[0] + u[0] * (FACE_RATIO_RANGE[1] - FACE_RATIO_RANGE[0])
        cy = FACE_CENTER_Y_RANGE[0] + u[1] * (FACE_CENTER_Y_RANGE[1] - FACE_CENTER_Y_RANGE[0])
        image = image.crop(face_crop_box(image.width, image.height, ratio, cy))
    else:  # centre square crop
        s = min(image.size)
        left, top = (image.width - s) // 2, (image.height - s) // 2
        image = image.crop((left, top, left + s, top + s))
    image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    if flip and u[2] < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1], the VAE's input range."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class LatentPool:
    """Cached training inputs. ``mean``/``std``: (P, 4, h, w) latent distributions (already
    multiplied by the VAE scaling factor); ``caption_index``: (P,) index into ``captions``."""

    mean: torch.Tensor
    std: torch.Tensor
    caption_index: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, 4, h, w) and caption indices (B,) for one step, drawn with ``gen`` (CPU)."""
        idx = torch.randint(len(self), (batch_size,), generator=gen)  # drawn on the CPU: same stream on any device
        noise = torch.randn((batch_size, *self.mean.shape[1:]), generator=gen).to(self.mean.device)
        idx = idx.to(self.mean.device)
        return self.mean[idx] + self.std[idx] * noise, self.caption_index[idx]


@torch.no_grad()
def build_latent_pool(examples: list[Example], vae, *, resolution: int, variants: int, seed: int,
                      face_crop: bool, flip: bool, device, dtype, progress: bool = True) -> LatentPool:
    """Sample ``variants`` augmentations per photo and VAE-encode each once (seeded by ``seed``)."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    captions = sorted({e.caption for e in examples})
    means, stds, cap_idx = [], [], []
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    bar = tqdm(total=len(examples) * variants, desc="encode training crops", disable=not progress)
    for ex in examples:
        photo = Image.fromarray(read_image(ex.image, "training photo", max_megapixels=PHOTO_MAX_MEGAPIXELS))
        batch = torch.stack([to_tensor(augment(photo, resolution, gen, face_crop, flip)) for _ in range(variants)])
        for chunk in batch.split(max(1, 8 * 64 * 64 // (resolution * resolution))):  # 8 at 64 px, 1 at 512 px: bounded VAE memory
            dist = vae.encode(chunk.to(device, dtype)).latent_dist
            means.append(((dist.mean - shift) * scale).float().cpu())  # (b, 4, h, w)
            stds.append((dist.std * scale).float().cpu())
            bar.update(len(chunk))
        cap_idx += [captions.index(ex.caption)] * variants
    bar.close()
    return LatentPool(torch.cat(means), torch.cat(stds), torch.tensor(cap_idx), captions)
