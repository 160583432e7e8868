"""Portrait Diffusion (Liu et al., arXiv 2312.02212): Style Attention Control and Chain-of-Painting.

Batch [style, content, target]; style and content are replayed from their inversions, the
target starts from the content's z_T (Sec. 3.1). On controlled self-attention layers (Sec. 3.2):

* steps < sac_step:  out_t = A_c = Attn(Q_c, K_s, V_s)
* steps >= sac_step: out_t = A_c + g (Attn(Q_t, K_s, V_s) - A_c), g = style_guidance

Masks: with a style mask only, style keys are restricted to it. With both masks (fg/bg mode),
content-foreground queries take style-foreground keys and background queries background keys,
each in its own masked softmax (the official code lets the key mask overwrite the query mask;
here each is applied to its own side). With only_mask_region, out = m * SAC + (1 - m) * the
content's own self-attention output, and the image outside the mask is the content's exactly.

Chain-of-Painting (Sec. 3.3) is a plan of masked passes, coarse to fine; each pass's output is
the next pass's content. A plan is YAML::

    passes:
      - {}                                   # whole image
      - {content_mask: face.png, style_mask: style_face.png, only_mask_region: true, sac_step: 30}
      - {content_mask: eyes.png, only_mask_region: true, style_guidance: 1.5}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from facechain.config import setting
from facechain.errors import InputError
from facechain.stylize.attention import AttnCall, replace_branch
from facechain.stylize.config import PortraitDiffusionOptions, scaled_default
from facechain.stylize.registry import MethodInput, MethodOutput, MethodSpec
from facechain.config import from_dict, load_mapping

SAC_STEP_OF_50 = 35  # official main.py default (--SAC_step 35)


class StyleAttentionControl:
    """The SAC policy over branches style/content/target."""

    def __init__(self, sac_step: int, style_guidance: float, only_mask_region: bool, has_content_mask: bool,
                 has_style_mask: bool):
        self.sac_step = sac_step
        self.g = style_guidance
        self.only_mask_region = only_mask_region
        self.fgbg = has_content_mask and has_style_mask and not only_mask_region
        self.has_style_mask = has_style_mask

    def _sac(self, call: AttnCall, key_mask: torch.Tensor | None) -> torch.Tensor:
        _, ks, vs = call["style"]
        qc = call["content"][0]
        qt = call["target"][0]
        km = key_mask[None, :] if key_mask is not None else None  # (1, Nk) broadcast over queries
        a_c = call.attend(qc, ks, vs, km)
        if call.step < self.sac_step:
            return a_c
        return a_c + self.g * (call.attend(qt, ks, vs, km) - a_c)

    def __call__(self, call: AttnCall) -> torch.Tensor:
        if self.fgbg:
            m = call.mask("content", "area")[:, None]  # (N, 1) query weights
            out = m * self._sac(call, call.mask("style", "any")) + (1 - m) * self._sac(call, call.mask("style_bg", "any"))
        elif self.only_mask_region:
            m = call.mask("content", "area")[:, None]
            fg = self._sac(call, call.mask("style", "any") if self.has_style_mask else None)
            out = m * fg + (1 - m) * call.plain[:, call.branch["content"]]
        else:
            out = self._sac(call, call.mask("style", "any") if self.has_style_mask else None)
        return replace_branch(call, "target", out)


def run(inp: MethodInput) -> MethodOutput:
    opts: PortraitDiffusionOptions = inp.options
    sac_step = opts.sac_step if opts.sac_step is not None else scaled_default(SAC_STEP_OF_50, inp.steps)
    if sac_step > inp.steps:
        raise InputError(f"sac_step {sac_step} is beyond the {inp.steps} steps; pass --sac-step <= {inp.steps}.")
    policy = StyleAttentionControl(sac_step, opts.style_guidance, inp.cfg.only_mask_region,
                                   inp.content.mask is not None, inp.style.mask is not None)
    branches = [inp.branch("style", "style"), inp.branch("content", "content"),
                inp.branch("target", init=inp.trajectory("content").z_T)]
    with inp.controller(("style", "content", "target"), policy) as ctl:
        out = inp.engine.sample(branches, inp.cond, inp.steps, inp.cfg.guidance_scale, ctl,
                                after_step=inp.latent_blend("target"), progress=inp.progress)
    return MethodOutput(out["target"], set(ctl.modified))


# --------------------------------------------------------------------------- Chain-of-Painting


@dataclass(frozen=True)
class PaintingPass:
    """One Chain-of-Painting pass: overrides for this pass only (masks refer to the original content image)."""

    content_mask: str | None = setting("mask on the original content image", default=None)
    style_mask: str | None = setting("mask on the style image", default=None)
    style: str | None = setting("another style image for this pass", default=None)
    only_mask_region: bool | None = None
    sac_step: int | None = None
    style_guidance: float | None = None
    start_step: int | None = None
    end_step: int | None = None
    start_layer: int | None = None
    guidance_scale: float | None = None
    prompt: str | None = None


def load_plan(plan: str | Path | list | dict, base_dir: Path | None = None) -> list[PaintingPass]:
    """Parse a Chain-of-Painting plan (YAML file, or its ``passes`` list); relative paths are
    taken relative to the plan file."""
    if isinstance(plan, (str, Path)):
        path = Path(plan)
        data = load_mapping(path)
        base_dir = path.parent
    else:
        data = plan
    passes = data.get("passes") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) - {"passes"}:
        raise InputError(f"Chain-of-Painting plan: unknown top-level key(s) {sorted(set(data) - {'passes'})}; only 'passes' is allowed.")
    if not isinstance(passes, list) or not passes:
        raise InputError("Chain-of-Painting plan needs a non-empty list 'passes' of mappings (one per pass).")
    out = []
    for i, p in enumerate(passes):
        item = from_dict(PaintingPass, p or {}, where=f"plan.passes[{i}]")
        if base_dir is not None:
            item = dataclasses.replace(item, **{name: str(base_dir / value) for name in ("content_mask", "style_mask", "style")
                                                if (value := getattr(item, name)) is not None and not Path(value).is_absolute()})
        out.append(item)
    return out


SPEC = MethodSpec(
    name="portrait-diffusion", run=run, options_cls=PortraitDiffusionOptions, default_prompt="head",
    default_start_step=0, uses_attention=True,
    summary="Style Attention Control (content queries on style keys/values, style guidance after sac_step); Chain-of-Painting plans",
    mask_matching=True, load_plan=load_plan,
)
