"""FeedFace's adapter on a frozen Stable Diffusion UNet (see the package docstring).

* ``FeedFace``: a linear projection of the face tokens (CLIP image encoder, penultimate layer) into
  the UNet's cross-attention width, and one :class:`AdapterBlock` per transformer block of the UNet.
* :class:`AdapterBlock`: self-attention, cross-attention to the face tokens, a GEGLU feed-forward
  (each pre-norm, residual), then a zero-initialised output linear. Its output, times the
  multiplier, is added to the transformer block's output (a forward hook: the UNet is not changed),
  so an untrained adapter leaves the base model's output bit for bit.
* :class:`FeedFaceHooks`: attaches the blocks; ``context`` holds the projected face tokens of the
  current call (one row per image of the UNet's batch), None to pass through.
"""

from __future__ import annotations

import torch
from torch import nn


class AdapterBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int):
        from diffusers.models.attention import FeedForward
        from diffusers.models.attention_processor import Attention

        super().__init__()
        heads = max(1, dim // 64)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=context_dim, heads=heads, dim_head=dim // heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = h + self.attn1(self.norm1(h))
        x = x + self.attn2(self.norm2(x), encoder_hidden_states=context)
        x = x + self.ff(self.norm3(x))
        return self.out(x)


def transformer_blocks(unet) -> dict[str, nn.Module]:
    from diffusers.models.attention import BasicTransformerBlock

    return {n: m for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)}


class FeedFace(nn.Module):
    def __init__(self, block_dims: dict[str, int], clip_dim: int, context_dim: int):
        super().__init__()
        self.block_names = list(block_dims)
        self.proj = nn.Linear(clip_dim, context_dim)
        self.blocks = nn.ModuleDict({_key(n): AdapterBlock(d, context_dim) for n, d in block_dims.items()})

    @classmethod
    def for_unet(cls, unet, clip_dim: int) -> "FeedFace":
        dims = {n: int(m.norm1.normalized_shape[0]) for n, m in transformer_blocks(unet).items()}
        return cls(dims, clip_dim, int(unet.config.cross_attention_dim))

    def context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Face tokens (B, T, clip_dim) -> the blocks' cross-attention context (B, T, context_dim)."""
        return self.proj(tokens)


def _key(name: str) -> str:
    return name.replace(".", "__")


class FeedFaceHooks:
    """Adds ``multiplier x block(output, context)`` to each transformer block's output while ``context`` is set."""

    def __init__(self, unet, adapter: FeedFace, multiplier: float = 0.8):
        blocks = transformer_blocks(unet)
        missing = [n for n in adapter.block_names if n not in blocks]
        if missing or len(blocks) != len(adapter.block_names):
            raise ValueError(f"the adapter's blocks do not match this UNet's transformer blocks (missing {missing[:3]}, "
                             f"{len(blocks)} in the UNet, {len(adapter.block_names)} in the adapter)")
        self.adapter = adapter
        self.multiplier = float(multiplier)
        self.context: torch.Tensor | None = None
        self._handles = [blocks[n].register_forward_hook(self._hook(_key(n))) for n in adapter.block_names]

    def _hook(self, key: str):
        def hook(module, inputs, output):
            if self.context is None:
                return output
            ctx = self.context.to(dtype=output.dtype, device=output.device)
            if ctx.shape[0] != output.shape[0]:
                raise ValueError(f"face context has {ctx.shape[0]} rows and the UNet's batch {output.shape[0]}")
            block = self.adapter.blocks[key]
            if next(block.parameters()).device != output.device:  # the UNet was moved (or offloaded) after attaching
                self.adapter.to(output.device)
            return output + self.multiplier * block(output, ctx)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class HookedUNet(nn.Module):
    """The adapter (the only trained module) and the frozen UNet it hooks into, as one Module whose forward
    runs the UNet with the face condition, so accelerate's data-parallel wrapper sees the whole step.
    The UNet is held outside the module tree: it is neither trained nor broadcast."""

    def __init__(self, adapter: FeedFace, unet, hooks: FeedFaceHooks):
        super().__init__()
        self.adapter = adapter
        self._frozen = (unet, hooks)

    def forward(self, noisy, timesteps, embeds, condition, added=None):
        unet, hooks = self._frozen
        hooks.context = self.adapter.context(condition)
        try:
            return unet(noisy, timesteps, embeds, added_cond_kwargs=added, return_dict=False)[0]
        finally:
            hooks.context = None


def encode_faces(encoder, crops) -> torch.Tensor:
    """Aligned face crops (N, H, W, 3) uint8 -> the CLIP image encoder's penultimate hidden states (N, T, D)."""
    from transformers import CLIPImageProcessor

    size = int(encoder.config.image_size)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = processor(images=list(crops), return_tensors="pt").pixel_values
    pixels = pixels.to(device=encoder.device, dtype=encoder.dtype)
    with torch.no_grad():
        return encoder(pixels, output_hidden_states=True).hidden_states[-2]
