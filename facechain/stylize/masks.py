"""Mask utilities: load and check a mask against its image, resize it with the image, and bring
it to the token grids of the UNet's attention layers (64/32/16/8 for a 512 px SD1.5 image).

A mask is a float tensor (H, W) holding exactly 0 or 1 (a pixel is inside when its value is
above half of the maximum, so 0/255 PNGs and 0/1 arrays both work).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facechain.errors import InputError
from facechain.images import PHOTO_MAX_MEGAPIXELS, read_image

MaskLike = str | os.PathLike | np.ndarray | torch.Tensor


def load_mask(mask: MaskLike, image_size: tuple[int, int], what: str = "mask") -> torch.Tensor:
    """Load ``mask`` (path, array or tensor) as a binary (H, W) float tensor.

    ``image_size`` is the (width, height) of the image the mask belongs to; a mask of another
    size or an empty mask is refused with an InputError naming ``what``.
    """
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if not path.is_file():
            raise InputError(f"{what} {path} does not exist. Pass a black-and-white image of the same size as its image.")
        # the shared reader: EXIF orientation as its image gets it, alpha ignored
        arr = read_image(path, what, gray=True, max_megapixels=PHOTO_MAX_MEGAPIXELS).astype(np.float32)
        where = str(path)
    else:
        arr = mask.detach().cpu().float().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask, dtype=np.float32)
        where = f"array of shape {tuple(arr.shape)}"
        if arr.ndim == 3:
            # colour channels only: an RGBA mask's alpha (opaque = 255 everywhere) is not the mask
            arr = arr[..., :3].max(axis=-1) if arr.shape[-1] in (1, 3, 4) else arr
        if arr.ndim != 2:
            raise InputError(f"{what} ({where}) must be 2-D (H, W) or (H, W, C), got {arr.ndim} dimensions.")
    w, h = image_size
    if arr.shape != (h, w):
        raise InputError(
            f"{what} ({where}) is {arr.shape[1]}x{arr.shape[0]} pixels but its image is {w}x{h}; "
            "a mask must have exactly its image's size. Resize the mask (nearest neighbour) or re-export it from the same image."
        )
    peak = float(arr.max()) if arr.size else 0.0
    binary = arr > (peak / 2.0) if peak > 0 else np.zeros_like(arr, dtype=bool)
    if not binary.any():
        raise InputError(f"{what} ({where}) is empty (no pixel is set); mark the region to stylize in white, or drop the mask.")
    return torch.from_numpy(binary.astype(np.float32))


def check_has_background(mask: torch.Tensor, what: str = "mask") -> None:
    """Foreground/background modes need both parts."""
    if bool((mask > 0.5).all()):
        raise InputError(f"{what} covers the whole image, so there is no background to take style from; "
                         "draw a mask that leaves some of the image out, or drop it.")


def token_grid(num_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of an attention layer's token grid, from its token count and the latent size."""
    h, w = latent_hw
    for factor in (1, 2, 4, 8, 16, 32):
        gh, gw = -(-h // factor), -(-w // factor)  # the UNet's stride-2 convs round up
        if gh * gw == num_tokens:
            return gh, gw
    raise ValueError(f"{num_tokens} tokens do not match latent {h}x{w} at any downsampling factor")


def to_tokens(mask: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """Flatten a (H, W) mask onto a token grid: (h*w,).

    ``mode="any"``: a token is in when any pixel under it is (adaptive max pool) -- used to pick
    attention keys, so a non-empty mask never becomes an empty key set on a coarse grid.
    ``mode="area"``: the covered fraction in [0, 1] -- used to blend query outputs.
    """
    m = mask[None, None].float()
    if mode == "any":
        out = F.adaptive_max_pool2d(m, grid)
    elif mode == "area":
        out = F.adaptive_avg_pool2d(m, grid)
    else:
        raise ValueError(f"mode must be 'any' or 'area', got {mode!r}")
    return out.flatten()


def inner_feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soften a binary mask's edge *inward* only: zero wherever ``mask`` is zero, so a composite
    ``out * a + content * (1 - a)`` leaves every pixel outside the mask exactly the content's."""
    if radius <= 0:
        return mask.clone()
    k = 2 * radius + 1
    blurred = F.avg_pool2d(mask[None, None], k, stride=1, padding=radius, count_include_pad=False)[0, 0]
    # 2*blur-1 reaches 1 only where the whole window is inside; clamp makes the edge fade inward.
    return (mask * (2 * blurred - 1).clamp(0, 1)).clamp(0, 1)
