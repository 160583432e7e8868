"""RepControlNet's two-branch UNet and its merge (see the package docstring).

Every ``nn.Linear`` and ``nn.Conv2d`` of the UNet becomes a :class:`RepLayer`: the frozen base
layer (W, b) and a trainable modal copy initialised to (c·W, c·b), with

    y = (1 - c) · base(x) + modal(x)              (= base(x) at initialisation)

Both branches read the same input, so the layer is linear in its weights and merges exactly:
W' = (1 - c)·W + W_m, b' = (1 - c)·b + b_m (the paper's Θ' = aΘ + bΘ_m with a = 1 - c, b = 1),
RepVGG-style. A :class:`ConditionAdapter` (diffusers' ``ControlNetConditioningEmbedding``: a small
conv encoder from the condition map down to the latent grid, zero-initialised output) encodes the
condition into the UNet's first feature map: its output is added to ``conv_in``'s. It depends on the
condition only, not on the noisy latent or the step, so it runs once per image; the merged UNet has
the base's parameters and per-step FLOPs, plus one addition.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F

REP_TYPES = (nn.Linear, nn.Conv2d)


class RepLayer(nn.Module):
    """A frozen base layer and its trainable modal copy (see the module docstring)."""

    def __init__(self, base: nn.Module, coefficient: float):
        super().__init__()
        if not isinstance(base, REP_TYPES):
            raise TypeError(f"RepLayer wraps nn.Linear or nn.Conv2d, got {type(base).__name__}")
        self.base = base
        self.modal = copy.deepcopy(base)
        with torch.no_grad():
            for p in self.modal.parameters():
                p.mul_(coefficient)
        for p in self.base.parameters():
            p.requires_grad_(False)
        for p in self.modal.parameters():
            p.requires_grad_(True)
        self.coefficient = float(coefficient)
        self.two_branch = False  # True: evaluate the branches separately (the paper's form; tests compare it)

    def merged_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        a = 1.0 - self.coefficient
        w = a * self.base.weight + self.modal.weight
        b = None if self.base.bias is None else a * self.base.bias + self.modal.bias
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.two_branch:
            return (1.0 - self.coefficient) * self.base(x) + self.modal(x)
        # one product with the merged weights: the same function and the same gradient for the modal
        # weights as the two branches, at the base layer's cost
        w, b = self.merged_parameters()
        if isinstance(self.base, nn.Linear):
            return F.linear(x, w, b)
        return self.base._conv_forward(x, w, b)

    def __getattr__(self, name: str):  # in_features, out_channels, weight, ...: the base layer's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def wrap_unet(unet: nn.Module, coefficient: float) -> list[str]:
    """Replace every Linear/Conv2d of ``unet`` by a :class:`RepLayer` in place; the base freezes.
    Returns the wrapped layers' names."""
    if not 0.0 < coefficient <= 1.0:
        raise ValueError(f"coefficient must be in (0, 1], got {coefficient}")
    for p in unet.parameters():
        p.requires_grad_(False)
    names = [n for n, m in unet.named_modules() if type(m) in REP_TYPES]
    for name in names:
        parent, child = _parent(unet, name)
        base = getattr(parent, child)
        setattr(parent, child, RepLayer(base, coefficient))
    return names


def rep_layers(unet: nn.Module) -> dict[str, RepLayer]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, RepLayer)}


def modal_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The modal weights, keyed by the base parameter they pair with (``down_blocks.0...conv1.weight``)."""
    out = {}
    for name, layer in rep_layers(unet).items():
        for pname, p in layer.modal.named_parameters():
            out[f"{name}.{pname}"] = p.detach()
    return out


def load_modal_state(unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
    layers = rep_layers(unet)
    expected = {f"{n}.{p}" for n, layer in layers.items() for p, _ in layer.modal.named_parameters()}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"modal weights do not match the UNet (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for key, value in state.items():
            name, _, pname = key.rpartition(".")
            getattr(layers[name].modal, pname).copy_(value)


def merge_unet(unet: nn.Module) -> nn.Module:
    """Put the merged weights into the base layers and unwrap every RepLayer, in place: ``unet`` becomes
    a plain UNet with the base's parameter names and shapes."""
    with torch.no_grad():
        for name, layer in rep_layers(unet).items():
            w, b = layer.merged_parameters()
            base = layer.base
            base.weight.copy_(w)
            if b is not None:
                base.bias.copy_(b)
            parent, child = _parent(unet, name)
            setattr(parent, child, base)
    for p in unet.parameters():
        p.requires_grad_(False)
    return unet


def make_condition_adapter(unet, conditioning_channels: int = 3):
    """diffusers' ``ControlNetConditioningEmbedding`` (the ControlNet hint encoder: 3 stride-2 convs, so
    8x down to the latent grid; zero-initialised output) into ``conv_in``'s channels."""
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    out = unet.conv_in.out_channels
    return ControlNetConditioningEmbedding(conditioning_embedding_channels=out, conditioning_channels=conditioning_channels,
                                           block_out_channels=(16, 32, 96, 256))


class ConditionInjection:
    """Adds the condition adapter's features to ``unet.conv_in``'s output while active (a forward hook).
    ``features``: (1 or B, C, h, w), broadcast over the batch (both halves under guidance)."""

    def __init__(self, unet):
        self.unet = unet
        self.features: torch.Tensor | None = None
        self._handle = unet.conv_in.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.features is None:
            return output
        f = self.features.to(dtype=output.dtype, device=output.device)
        if f.shape[-2:] != output.shape[-2:]:
            raise ValueError(f"condition features {tuple(f.shape[-2:])} do not match the latent grid "
                             f"{tuple(output.shape[-2:])}: the condition map must have the image's size")
        return output + f

    def remove(self) -> None:
        self._handle.remove()


class ConditionedUNet(nn.Module):
    """What training optimises: the UNet wrapped into two-branch layers (:func:`wrap_unet`, in place) and
    its condition adapter; ``forward`` runs the UNet with the condition's features at ``conv_in``.
    ``seed``: the adapter's initial weights (its output layer starts at zero either way)."""

    def __init__(self, unet, coefficient: float, seed: int = 0):
        super().__init__()
        wrap_unet(unet, coefficient)
        self.unet = unet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adapter = make_condition_adapter(unet)
        self.injection = ConditionInjection(unet)

    def forward(self, noisy, timesteps, embeds, condition, added=None):
        self.injection.features = self.adapter(condition)
        try:
            return self.unet(noisy, timesteps, embeds, added_cond_kwargs=added, return_dict=False)[0]
        finally:
            self.injection.features = None


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
