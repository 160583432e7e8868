"""One attention controller for every method: a processor on each of the UNet's attention
layers (``unet.set_attn_processor``) that knows the sampling step, the self-attention layer's
index in call order and the batch layout, and hands the self-attention of controlled
(step, layer) pairs to a method's policy.

Batch layout: ``halves x branches`` -- without guidance one half (cond); with classifier-free
guidance two, [uncond: b_0..b_{K-1}, cond: b_0..b_{K-1}], as diffusers pipelines order them.
Policies see q, k, v as (H, K, heads, N, d) so a target's uncond half attends to its sources'
uncond keys and its cond half to their cond keys (what MasaCtrl does and Portrait Diffusion's
to-do "CFG > 1" needs).

Attention runs through ``F.scaled_dot_product_attention``: masks go in as ``attn_mask``,
temperature as ``scale``; no (N x N) matrix is built in Python. ``impl="einsum"`` computes
the reference formulation (softmax of an explicit einsum similarity, as in the MasaCtrl and
Portrait Diffusion code) for parity tests and benchmarks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from facechain.stylize.masks import to_tokens, token_grid

Impl = Literal["sdpa", "einsum"]

_SECTION = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def self_attention_layers(unet) -> list[str]:
    """Processor names of the self-attention layers (``attn1``) in UNet call order:
    down blocks, mid block, up blocks, each in index order (SD1.5: 16, SDXL: 70 layers)."""

    def key(name: str):
        section = name.split(".", 1)[0]
        return (_SECTION.get(section, 3), [int(n) for n in re.findall(r"\.(\d+)(?=\.|$)", name)])

    names = [n for n in unet.attn_processors if n.endswith("attn1.processor")]
    return sorted(names, key=key)


def attend(q, k, v, key_mask: torch.Tensor | None = None, scale: float | None = None, impl: Impl = "sdpa"):
    """softmax(q k^T * scale) v over the last two dims; ``key_mask`` (bool, broadcastable to
    (..., Nq, Nk); True = may attend) restricts the keys."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    sim = torch.einsum("...id,...jd->...ij", q, k) * scale  # (..., Nq, Nk) materialised
    if key_mask is not None:
        sim = sim.masked_fill(~key_mask, torch.finfo(sim.dtype).min)
    return torch.einsum("...ij,...jd->...id", sim.softmax(dim=-1), v)


@dataclass
class AttnCall:
    """What a policy sees for one self-attention call. Tensors are (H, K, heads, N, d)."""

    step: int
    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    plain: torch.Tensor  # every branch's own attention output
    branch: dict[str, int]
    controller: "AttentionController"

    def attend(self, q, k, v, key_mask=None, scale=None):
        return attend(q, k, v, key_mask, scale, self.controller.impl)

    def mask(self, name: str, mode: Literal["any", "area"]) -> torch.Tensor:
        """Mask ``name`` on this layer's token grid, (N,) on the tensors' device."""
        return self.controller.token_mask(name, self.q.shape[-2], mode, self.q.device, self.q.dtype)

    def __getitem__(self, name: str):
        """(q, k, v) of branch ``name``: each (H, heads, N, d)."""
        i = self.branch[name]
        return self.q[:, i], self.k[:, i], self.v[:, i]


class AttentionPolicy(Protocol):
    """Returns the new (H, K, heads, N, d) output, or None to leave the layer unchanged."""

    def __call__(self, call: AttnCall) -> torch.Tensor | None: ...


@dataclass
class AttentionController:
    """Installs :class:`ControlledAttnProcessor` on every attention layer of ``unet``.

    Use as a context manager; the original processors are restored on exit. Set ``step``
    before each UNet call (``None`` = uncontrolled, e.g. during inversion)."""

    unet: object
    branches: tuple[str, ...]
    policy: AttentionPolicy | None = None
    start_step: int = 0
    end_step: int | None = None
    start_layer: int = 0
    layers: frozenset[int] | None = None  # explicit layer set; overrides start_layer
    impl: Impl = "sdpa"
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (h, w) on the latent grid
    latent_hw: tuple[int, int] = (64, 64)
    step: int | None = None
    halves: int = 1
    modified: set = field(default_factory=set)  # (step, layer) pairs the policy changed

    def __post_init__(self):
        self.layer_names = self_attention_layers(self.unet)
        self.num_layers = len(self.layer_names)
        self._token_masks: dict = {}
        self._saved = None

    # -- which calls are controlled
    def controls(self, step: int | None, layer: int) -> bool:
        if self.policy is None or step is None:
            return False
        if step < self.start_step or (self.end_step is not None and step >= self.end_step):
            return False
        return layer in self.layers if self.layers is not None else layer >= self.start_layer

    def token_mask(self, name: str, num_tokens: int, mode: str, device, dtype) -> torch.Tensor:
        key = (name, num_tokens, mode)
        if key not in self._token_masks:
            if name not in self.masks:
                raise KeyError(f"no mask named {name!r}; have {sorted(self.masks)}")
            grid = token_grid(num_tokens, self.latent_hw)
            self._token_masks[key] = to_tokens(self.masks[name], grid, mode)
        out = self._token_masks[key].to(device)
        return out.bool() if mode == "any" else out.to(dtype)

    # -- install / restore
    def __enter__(self):
        self._saved = dict(self.unet.attn_processors)
        index = {name: i for i, name in enumerate(self.layer_names)}
        procs = {name: ControlledAttnProcessor(self, index.get(name)) for name in self._saved}
        self.unet.set_attn_processor(procs)
        return self

    def __exit__(self, *exc):
        self.unet.set_attn_processor(self._saved)
        self._saved = None
        return False


class ControlledAttnProcessor:
    """Diffusers attention processor (same pre/post steps as ``AttnProcessor2_0``) whose
    self-attention core may be replaced by the controller's policy."""

    def __init__(self, controller: AttentionController, layer: int | None):
        self.controller = controller
        self.layer = layer  # None for cross-attention

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        ctl = self.controller
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        if attention_mask is not None:
            seq = (encoder_hidden_states if encoder_hidden_states is not None else hidden_states).shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        out = attend(query, key, value, attention_mask, None, ctl.impl)  # (B, heads, N, d)
        n_branch = len(ctl.branches)
        if (
            self.layer is not None
            and encoder_hidden_states is None
            and batch == ctl.halves * n_branch
            and ctl.controls(ctl.step, self.layer)
        ):
            shape = (ctl.halves, n_branch) + tuple(out.shape[1:])  # (H, K, heads, N, d)
            call = AttnCall(
                step=ctl.step, layer=self.layer, q=query.view(shape), k=key.view(shape), v=value.view(shape),
                plain=out.view(shape), branch={n: i for i, n in enumerate(ctl.branches)}, controller=ctl,
            )
            new = ctl.policy(call)
            if new is not None:
                out = new.reshape(out.shape)
                ctl.modified.add((ctl.step, self.layer))

        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def replace_branch(call: AttnCall, name: str, value: torch.Tensor) -> torch.Tensor:
    """``call.plain`` with branch ``name`` replaced by ``value`` (H, heads, N, d)."""
    out = call.plain.clone()
    out[:, call.branch[name]] = value
    return out
