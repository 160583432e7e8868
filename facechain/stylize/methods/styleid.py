"""StyleID (Chung et al., "Style Injection in Diffusion", CVPR'24) with MagicStyle-style fusion
(arXiv 2409.08156, Feature Fusion Attention).

Batch [style, content, target]; style and content replayed from their inversions (the
official code stores their Q/K/V during inversion, > 3 GB per image; replaying recomputes the
same features on the fly with no storage). On controlled decoder self-attention layers:

* query preservation (Eq. 4): q = gamma q_c + (1 - gamma) q_t, gamma = 0.75
* keys/values from the style: K = K_s, V = V_s; MagicStyle fusion adds the content's:
  K = [K_s; w K_c], V = [V_s; V_c] (w = content_kv_weight, 0 = pure StyleID)
* attention temperature (Sec. 4.2): logits scaled by T / sqrt(d), T = 1.5 (SDPA ``scale``)
* initial latent AdaIN (Sec. 4.3): z_T = sigma_s (z_c - mu_c) / sigma_c + mu_s, per channel.

A content mask (e.g. a face mask) keeps the injection inside it; a style mask restricts the
style keys. Default layers: 10..15 of SD1.5 (up_blocks 2-3, StyleID's injection layers).
"""

from __future__ import annotations

import math

import torch

from facechain.stylize.attention import AttnCall, replace_branch
from facechain.stylize.config import StyleIDOptions
from facechain.stylize.registry import MethodInput, MethodOutput, MethodSpec


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel AdaIN of (C, h, w) latents (Huang & Belongie 2017)."""
    mu_c, sd_c = content.mean((-2, -1), keepdim=True), content.std((-2, -1), keepdim=True)
    mu_s, sd_s = style.mean((-2, -1), keepdim=True), style.std((-2, -1), keepdim=True)
    return (content - mu_c) / (sd_c + eps) * sd_s + mu_s


class StyleInjection:
    def __init__(self, opts: StyleIDOptions, has_content_mask: bool, has_style_mask: bool):
        self.opts = opts
        self.has_content_mask = has_content_mask
        self.has_style_mask = has_style_mask

    def __call__(self, call: AttnCall) -> torch.Tensor:
        o = self.opts
        _, ks, vs = call["style"]
        qc, kc, vc = call["content"]
        qt = call["target"][0]
        q = o.gamma * qc + (1 - o.gamma) * qt
        key_mask = call.mask("style", "any") if self.has_style_mask else None
        k, v = ks, vs
        if o.content_kv_weight > 0:
            k = torch.cat([ks, o.content_kv_weight * kc], dim=-2)  # (H, heads, 2N, d)
            v = torch.cat([vs, vc], dim=-2)
            if key_mask is not None:
                key_mask = torch.cat([key_mask, torch.ones_like(key_mask)])
        scale = o.temperature / math.sqrt(q.shape[-1])
        out = call.attend(q, k, v, key_mask[None, :] if key_mask is not None else None, scale)
        if self.has_content_mask:
            m = call.mask("content", "area")[:, None]
            out = m * out + (1 - m) * call.plain[:, call.branch["target"]]
        return replace_branch(call, "target", out)


def run(inp: MethodInput) -> MethodOutput:
    opts: StyleIDOptions = inp.options
    zc, zs = inp.trajectory("content").z_T, inp.trajectory("style").z_T
    init = adain(zc, zs) if opts.adain else zc
    policy = StyleInjection(opts, inp.content.mask is not None, inp.style.mask is not None)
    branches = [inp.branch("style", "style"), inp.branch("content", "content"), inp.branch("target", init=init)]
    with inp.controller(("style", "content", "target"), policy) as ctl:
        out = inp.engine.sample(branches, inp.cond, inp.steps, inp.cfg.guidance_scale, ctl,
                                after_step=inp.latent_blend("target"), progress=inp.progress)
    return MethodOutput(out["target"], set(ctl.modified))


SPEC = MethodSpec(
    name="styleid", run=run, options_cls=StyleIDOptions, default_prompt="", default_start_step=0,
    uses_attention=True,
    summary="StyleID injection: content-query preservation, style keys/values, temperature, AdaIN start; MagicStyle content-KV fusion",
)
