"""DiffStyle / InjectFusion (Jeong, Kwon & Uh, arXiv 2303.15403): content injection in h-space.

h is the UNet mid-block output. Generation starts from the *style's* z_T; at steps with
t >= t_edit (400 of 1000) the content's h_c(t) (from its replayed inversion) is blended in
(Sec. 3.2, Eq. 5): h' = slerp(gamma, h, h_c |h| / |h_c|), gamma = hs_coeff (0.3). The decoder
then runs twice, with h and with h' (one batch [content, target, target'] here): x0 is predicted
from eps' and the direction term keeps eps (Sec. 3.3, "quality boosting" off), i.e.
x_{t-1} = sqrt(a_{t-1}) x0(eps') + sqrt(1 - a_{t-1}) eps. A content mask limits the injection
to its region on the h grid. The paper works on pixel DDPMs; on Stable Diffusion h is
1280 x H/64 x W/64 and the effect is weaker (see docs/stylize.md).
"""

from __future__ import annotations

import torch

from facechain.stylize.config import DiffStyleOptions
from facechain.stylize.registry import MethodInput, MethodOutput, MethodSpec


def slerp(gamma: float, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation between flattened a and b (gamma = 0 -> a)."""
    af, bf = a.flatten().double(), b.flatten().double()
    cos = torch.dot(af, bf) / (af.norm() * bf.norm() + eps)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(theta) < 1e-4:  # nearly parallel: slerp -> lerp
        return ((1 - gamma) * a.double() + gamma * b.double()).to(a.dtype)
    s = torch.sin(theta)
    out = torch.sin((1 - gamma) * theta) / s * a.double() + torch.sin(gamma * theta) / s * b.double()
    return out.to(a.dtype)


class HSpaceInjection:
    """Forward hook on ``unet.mid_block`` over the batch [content, target, target_injected]."""

    def __init__(self, gamma: float, mask: torch.Tensor | None):
        self.gamma = gamma
        self.mask = mask
        self.active = False
        self.step: int | None = None
        self.modified: set = set()

    def __call__(self, module, inputs, output):
        if not self.active:
            return None
        h = output.view(-1, 3, *output.shape[1:])  # (H, 3, C, h, w)
        new = h.clone()
        for half in range(h.shape[0]):
            hc, ht = h[half, 0], h[half, 1]
            hc_matched = hc * ht.norm() / (hc.norm() + 1e-7)  # norm matching
            inj = slerp(self.gamma, ht, hc_matched)
            if self.mask is not None:
                m = torch.nn.functional.adaptive_avg_pool2d(self.mask[None, None], ht.shape[-2:])[0].to(ht)
                inj = m * inj + (1 - m) * ht
            new[half, 2] = inj
        self.modified.add((self.step, -1))
        return new.view_as(output)


def run(inp: MethodInput) -> MethodOutput:
    opts: DiffStyleOptions = inp.options
    engine = inp.engine
    sched = engine.schedule(inp.steps)
    start = inp.start_step
    end = inp.end_step if inp.end_step is not None else inp.steps

    def active(i: int) -> bool:
        return sched.timesteps[i] >= opts.t_edit and start <= i < end

    hook = HSpaceInjection(opts.hs_coeff, inp.content.mask)
    zs = inp.trajectory("style").z_T
    branches = [inp.branch("content", "content"), inp.branch("target", init=zs), inp.branch("target_inj", init=zs)]

    def before_step(i: int) -> None:
        hook.active, hook.step = active(i), i

    def update(i: int, xs: dict, eps: dict) -> dict:
        x = xs["target"]
        new = sched.step(eps["target_inj"], i, x, eps_direction=eps["target"]) if active(i) else sched.step(eps["target"], i, x)
        return {"target": new, "target_inj": new}

    blend = inp.latent_blend("target")

    def after_step(i: int, latents: dict) -> None:
        if blend is not None:
            blend(i, latents)
            latents["target_inj"] = latents["target"]

    handle = engine.unet.mid_block.register_forward_hook(hook)
    try:
        out = engine.sample(branches, inp.cond, inp.steps, inp.cfg.guidance_scale, None, update=update,
                            after_step=after_step, before_step=before_step, progress=inp.progress)
    finally:
        handle.remove()
    return MethodOutput(out["target"], hook.modified)


SPEC = MethodSpec(
    name="diffstyle", run=run, options_cls=DiffStyleOptions, default_prompt="", default_start_step=0,
    uses_attention=False, summary="DiffStyle h-space content injection (slerp with norm matching) at the UNet mid-block",
    uses_style_mask=False,  # it injects content features; the content mask limits where
)
