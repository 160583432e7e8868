"""MasaCtrl mutual self-attention (Cao et al., ICCV'23, Sec. 3.2) for style transfer.

Batch [style, target]; the style is replayed from its inversion (the "source"), the target
starts from the content's z_T so its layout is the content's. From step S (4 of 50) on and in
layers >= L (10 of SD1.5's 16), the target's self-attention reads the style:
out_t = softmax(Q_t K_s^T / sqrt(d)) V_s; uncond and cond halves use their own source keys.
Variants: ``union`` attends to [K_s; K_t]; with both masks, target-foreground queries take
source-foreground keys and background queries background keys (MasaCtrl's mask-guided variant).
"""

from __future__ import annotations

import torch

from facechain.stylize.attention import AttnCall, replace_branch
from facechain.stylize.config import MasaCtrlOptions
from facechain.stylize.registry import MethodInput, MethodOutput, MethodSpec

START_STEP_OF_50 = 4  # MasaCtrl's STEP default


class MutualSelfAttention:
    def __init__(self, opts: MasaCtrlOptions, has_content_mask: bool, has_style_mask: bool, only_mask_region: bool):
        self.opts = opts
        self.fgbg = has_content_mask and has_style_mask and not only_mask_region
        self.has_style_mask = has_style_mask
        self.only_mask_region = only_mask_region

    def _masa(self, call: AttnCall, key_mask):
        _, ks, vs = call["style"]
        qt, kt, vt = call["target"]
        if self.opts.union:
            ks, vs = torch.cat([ks, kt], dim=-2), torch.cat([vs, vt], dim=-2)
            if key_mask is not None:
                key_mask = torch.cat([key_mask, torch.ones_like(key_mask)])
        return call.attend(qt, ks, vs, key_mask[None, :] if key_mask is not None else None)

    def __call__(self, call: AttnCall) -> torch.Tensor:
        if self.fgbg:
            m = call.mask("content", "area")[:, None]
            out = m * self._masa(call, call.mask("style", "any")) + (1 - m) * self._masa(call, call.mask("style_bg", "any"))
        else:
            out = self._masa(call, call.mask("style", "any") if self.has_style_mask else None)
            if self.only_mask_region:
                m = call.mask("content", "area")[:, None]
                out = m * out + (1 - m) * call.plain[:, call.branch["target"]]
        return replace_branch(call, "target", out)


def run(inp: MethodInput) -> MethodOutput:
    policy = MutualSelfAttention(inp.options, inp.content.mask is not None, inp.style.mask is not None,
                                 inp.cfg.only_mask_region)
    branches = [inp.branch("style", "style"), inp.branch("target", init=inp.trajectory("content").z_T)]
    with inp.controller(("style", "target"), policy) as ctl:
        out = inp.engine.sample(branches, inp.cond, inp.steps, inp.cfg.guidance_scale, ctl,
                                after_step=inp.latent_blend("target"), progress=inp.progress)
    return MethodOutput(out["target"], set(ctl.modified))


SPEC = MethodSpec(
    name="masactrl", run=run, options_cls=MasaCtrlOptions, default_prompt="", default_start_step=START_STEP_OF_50,
    uses_attention=True, summary="MasaCtrl mutual self-attention: target queries on style keys/values from step S, layer L",
    mask_matching=True,
)
