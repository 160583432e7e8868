"""MagicID's mask-guided multi-ID attention (MGMICA) as a final harmonisation pass over all faces.

After every face has been edited on its own, one inpaint pass re-draws the rings around all faces
(where the separate edits meet the template) with every person's identity at once: each person's
IP-Adapter embedding is one "image" of the adapter, and diffusers' ``ip_adapter_masks`` multiply
that image's attention output by its mask (``IPAdapterAttnProcessor``), so person A's identity
tokens act only inside A's mask. The masks are disjoint by construction (a pixel two dilated faces
share belongs to neither), so no identity reaches another person's face. EasyPhoto's own third pass
(rings around all faces, strength 0.3, no user LoRA) is the model for the rest.
"""

from __future__ import annotations

import math

import numpy as np
from facechain.face.region import compose


def identity_masks(face_masks: list[np.ndarray], sizes: list[float], reach: float = 0.15) -> list[np.ndarray]:
    """Each face's mask grown by ``reach`` x its face size, minus every pixel another grown mask also
    covers: disjoint bool masks, one per face."""
    import cv2

    grown = []
    for m, size in zip(face_masks, sizes):
        r = max(1, int(round(reach * size)))
        grown.append(cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0)
    count = np.sum(grown, axis=0)
    return [g & (count == 1) for g in grown]


def ring_mask(face_masks: list[np.ndarray], sizes: list[float], outer: float = 0.12, inner: float = 0.05) -> np.ndarray:
    """Where the harmonisation pass re-draws: a ring around each face (grown by ``outer``, less the face
    shrunk by ``inner``, as fractions of its size) - where a face edit meets the template."""
    import cv2

    out = np.zeros(face_masks[0].shape, bool)
    for m, size in zip(face_masks, sizes):
        m8 = m.astype(np.uint8)
        ro, ri = max(1, int(round(outer * size))), max(1, int(round(inner * size)))
        grown = cv2.dilate(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ro + 1, 2 * ro + 1))) > 0
        shrunk = cv2.erode(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ri + 1, 2 * ri + 1))) > 0
        out |= grown & ~shrunk
    return out


def harmonize(inpaint, image: np.ndarray, face_masks: list[np.ndarray], sizes: list[float], vectors: list[np.ndarray],
              conditioning: dict, *, size: int, steps: int, strength: float, guidance: float, seed: int):
    """Re-draw the rings around all faces in one pass, person k's identity masked to their face.
    Returns (new image, info, the identity masks (full image), the ring mask (full image))."""
    import cv2
    import torch
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import Image

    h_img, w_img = image.shape[:2]
    ids = identity_masks(face_masks, sizes)
    ring = ring_mask(face_masks, sizes)
    ys, xs = np.nonzero(np.any(ids, axis=0) | ring)
    margin = int(0.1 * max(sizes))
    y0, y1 = max(0, ys.min() - margin), min(h_img, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w_img, xs.max() + 1 + margin)
    crop = image[y0:y1, x0:x1]
    # the short side at the model's native size (capped at 4x it on the long side): diffusers infers each
    # attention level's mask grid from the aspect ratio, which needs a grid of at least one row at every level
    scale = min(size / min(crop.shape[:2]), 4 * size / max(crop.shape[:2]))
    f = int(inpaint.vae_scale_factor)
    wh = (max(f, int(round(crop.shape[1] * scale / f)) * f), max(f, int(round(crop.shape[0] * scale / f)) * f))
    sigma = max(1.0, 0.02 * max(sizes))
    r = int(math.ceil(3 * sigma))
    alpha = cv2.GaussianBlur(ring[y0:y1, x0:x1].astype(np.float32), (2 * r + 1, 2 * r + 1), sigma) * ring[y0:y1, x0:x1]
    masks = IPAdapterMaskProcessor().preprocess([Image.fromarray(m[y0:y1, x0:x1].astype(np.uint8) * 255) for m in ids],
                                                height=wh[1], width=wh[0])
    masks = masks.reshape(1, masks.shape[0], masks.shape[2], masks.shape[3])
    pos = torch.from_numpy(np.stack(vectors)).float()[None, :, None, :]  # (1, people, 1, D)
    embeds = torch.cat([torch.zeros_like(pos), pos]) if guidance > 1 else pos
    device = inpaint.device
    gen = torch.Generator("cpu" if device.type == "mps" else device).manual_seed(int(seed))
    mask_img = Image.fromarray((ring[y0:y1, x0:x1].astype(np.uint8) * 255)).resize(wh, Image.NEAREST)
    with torch.inference_mode():
        out = inpaint(**conditioning, image=Image.fromarray(crop).resize(wh, Image.LANCZOS), mask_image=mask_img,
                      height=wh[1], width=wh[0], strength=strength, num_inference_steps=steps, guidance_scale=guidance,
                      generator=gen, output_type="np", ip_adapter_image_embeds=[embeds.to(device, inpaint.unet.dtype)],
                      cross_attention_kwargs={"ip_adapter_masks": [masks.to(device)]}).images[0]
    new = np.clip(np.rint(np.asarray(out, np.float32) * 255), 0, 255).astype(np.uint8)
    new = np.asarray(Image.fromarray(new).resize((crop.shape[1], crop.shape[0]), Image.LANCZOS))
    result = image.copy()
    result[y0:y1, x0:x1] = compose(crop, new, alpha)
    info = {"box": [int(x0), int(y0), int(x1), int(y1)], "working_size": list(wh), "strength": strength,
            "steps": steps, "people": len(vectors),
            "identity_masks_disjoint": bool((np.sum(ids, axis=0) <= 1).all())}
    return result, info, ids, ring
