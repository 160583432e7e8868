"""Mixing a pipeline's LoRA adapters per call: ``set_adapters`` with their weights, fused into the base
weights when asked, and put back exactly afterwards.

``fuse_lora``/``unfuse_lora`` in half precision round the base weights a little each time; the mixer
keeps an exact copy (on the CPU) of every base weight a fuse touches and restores it after each unfuse.
"""

from __future__ import annotations

from typing import Iterator


class AdapterMixer:
    """The adapter mixing of one pipeline (``pipe``, its weights in ``dtype``)."""

    def __init__(self, pipe, dtype):
        self.pipe = pipe
        self.dtype = dtype
        self._base_copies: dict[int, tuple] = {}

    def activate(self, weights: dict[str, float], *, fuse: bool) -> None:
        """Make ``weights`` (adapter name -> weight) the active adapters, fused into the base weights if ``fuse``."""
        if not weights:
            return
        self.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        if fuse:
            self._snapshot_base_weights()
            self.pipe.fuse_lora(adapter_names=list(weights), lora_scale=1.0)

    def deactivate(self, weights: dict[str, float], *, fused: bool) -> None:
        """Undo :meth:`activate`: unfuse and put the exact base weights back."""
        if weights and fused:
            self.pipe.unfuse_lora()
            self._restore_base_weights()

    def _lora_base_params(self) -> Iterator:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name in ("unet", "transformer", "text_encoder", "text_encoder_2"):
            model = getattr(self.pipe, name, None)
            if model is None:
                continue
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    base = module.get_base_layer()
                    for p in (getattr(base, "weight", None), getattr(base, "bias", None)):
                        if p is not None:
                            yield p

    def _snapshot_base_weights(self) -> None:
        """Copy (once) every not yet copied weight under a LoRA layer, in half precision only:
        in float32 the unfuse round trip is exact enough and the copy would only cost memory."""
        import torch

        if self.dtype == torch.float32:
            return
        for p in self._lora_base_params():
            if id(p) not in self._base_copies:
                self._base_copies[id(p)] = (p, p.detach().to("cpu", copy=True))

    def _restore_base_weights(self) -> None:
        import torch

        with torch.no_grad():
            for p, saved in self._base_copies.values():
                p.copy_(saved)
