"""Explicit registry of stylization methods and the input every method receives.

A method is ``run(MethodInput) -> MethodOutput`` plus an options dataclass and its paper
defaults; ``register_method`` refuses a duplicate name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from facechain.registry import Registry
from facechain.stylize.attention import AttentionController, AttentionPolicy
from facechain.stylize.config import StylizeConfig
from facechain.stylize.engine import Branch, Conditioning, Engine, PreparedImage
from facechain.inversion import Trajectory

logger = logging.getLogger(__name__)

# MasaCtrl and Portrait Diffusion control layers >= 10 of SD1.5's 16 self-attention layers;
# MasaCtrl's SDXL setting 44 of 70 is the same fraction, so the default scales with the model.
DEFAULT_START_LAYER_FRACTION = 10 / 16


@dataclass
class MethodInput:
    engine: Engine
    content: PreparedImage
    style: PreparedImage
    cfg: StylizeConfig
    options: object
    prompt: str
    steps: int
    start_step: int
    end_step: int | None
    start_layer: int
    progress: bool = True
    _trajs: dict = field(default_factory=dict)

    def trajectory(self, which: str) -> Trajectory:
        """Inversion of ``content`` or ``style`` (cached by the engine)."""
        if which not in self._trajs:
            image = self.content if which == "content" else self.style
            self._trajs[which] = self.engine.invert(image, self.prompt, self.steps, self.progress)
        return self._trajs[which]

    @property
    def cond(self) -> Conditioning:
        return self.engine.conditioning(self.prompt, self.cfg.negative_prompt, self.content.size)

    def controller(self, branches: tuple[str, ...], policy: AttentionPolicy) -> AttentionController:
        masks = {}
        if self.content.mask is not None:
            masks["content"] = self.content.mask
        if self.style.mask is not None:
            masks["style"] = self.style.mask
            masks["style_bg"] = 1.0 - self.style.mask
        z = self.trajectory("content").latents
        return AttentionController(
            self.engine.unet, branches, policy, start_step=self.start_step, end_step=self.end_step,
            start_layer=self.start_layer, impl=self.engine.impl, masks=masks, latent_hw=tuple(z.shape[-2:]),
        )

    def latent_blend(self, target: str) -> Callable[[int, dict], None] | None:
        """With only_mask_region: keep the target's latent outside the content mask on the
        content's trajectory after every step (the pixel composite then makes it exact)."""
        if not (self.cfg.only_mask_region and self.cfg.latent_blend and self.content.mask is not None):
            return None
        traj = self.trajectory("content")
        h, w = traj.latents.shape[-2:]
        m = torch.nn.functional.adaptive_avg_pool2d(self.content.mask[None, None], (h, w))[0].to(traj.latents)

        def blend(i: int, latents: dict) -> None:
            latents[target] = m * latents[target] + (1 - m) * traj.after_step(i)

        return blend

    def branch(self, name: str, which: str | None = None, init: torch.Tensor | None = None) -> Branch:
        if which is not None:
            traj = self.trajectory(which)
            return Branch(name, traj.z_T, traj)
        return Branch(name, init)


@dataclass
class MethodOutput:
    latent: torch.Tensor  # the stylized clean latent (C, h, w)
    modified: set = field(default_factory=set)  # (step, layer) pairs changed; layer -1 = mid-block


@dataclass(frozen=True)
class MethodSpec:
    name: str
    run: Callable[[MethodInput], MethodOutput]
    options_cls: type
    default_prompt: str
    default_start_step: int  # of 50 steps; scaled to other step counts
    uses_attention: bool
    summary: str
    # content + style masks pair foreground with foreground, background with background (both needed)
    mask_matching: bool = False
    uses_style_mask: bool = True  # False: a style mask is ignored (with a warning)
    # Chain-of-Painting: parses the options' ``plan`` into passes; None: the method has no plans
    load_plan: Callable | None = None


def _builtin(registry: Registry) -> None:
    from facechain.stylize.methods import diffstyle, masactrl, portrait_diffusion, styleid

    for module in (portrait_diffusion, styleid, masactrl, diffstyle):
        registry.register(module.SPEC.name, module.SPEC)


METHODS: Registry[MethodSpec] = Registry("stylization method", builtins=_builtin)


def register_method(spec: MethodSpec) -> None:
    """Register a stylization method; a duplicate name is refused."""
    METHODS.register(spec.name, spec)


def available_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)
