"""Identity adapters: a person's likeness from a few photos without training a face LoRA.

    spec = IdentityConfig(adapter="ip-adapter-faceid", photos="processed/", scale=0.6)
    adapter = get_identity_adapter(spec, family="sd15")    # resolves the weights (safetensors only)
    extra_loras = adapter.attach(pipe)                      # diffusers' load_ip_adapter / set_ip_adapter_scale
    embeds = adapter.embeds(embedding, do_cfg=True, ...)    # -> pipe(..., ip_adapter_image_embeds=embeds)

Adapters are behind an explicit registry (``register_identity_adapter``); generation uses one next
to the face LoRA (both), or instead of it (no ``lora_dir``). Nothing here imports torch until an
adapter is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Protocol, runtime_checkable

from facechain.config import setting
from facechain.errors import InputError
from facechain.registry import Registry
from facechain.adapters.feedface.identity import FeedFaceIdentity
from facechain.adapters.ip_adapter_faceid import IPAdapterFaceID, IPAdapterFaceIDPlusV2


@dataclass(frozen=True)
class IdentityConfig:
    """The ``identity:`` block of a generate config (also ``--identity-*`` flags)."""

    adapter: str = setting("identity adapter: ip-adapter-faceid, ip-adapter-faceid-plusv2 "
                                                       "(also reads the face's CLIP image features) or feedface (an "
                                                       "adapter trained with `facechain train-adapter feedface`); empty = none", default="")
    photos: Path | None = setting("folder of the person's photos (one face each; the "
                                                               "processed folder works): their face embeddings are averaged", default=None, path=True)
    scale: float = setting("strength of the adapter's identity in [0, 2] (IP-Adapter's "
                                                        "set_ip_adapter_scale; IP-Adapter-FaceID's model card: 0.6-1.0)", default=0.6)
    lora_scale: float = setting("weight of the LoRA that ships inside an IP-Adapter-FaceID "
                                                             "checkpoint (trained with it at 1.0); 0 = off", default=1.0)
    weights: str = setting("adapter weights: a .safetensors file (a .bin must be converted "
                                                       "once with `facechain convert`); empty = the converted default "
                                                       "for the base model's family. feedface: its training output folder", default="", maybe_path=True)
    image_encoder: str = setting("CLIP image encoder of the Plus variants (hub id or "
                                                             "transformers folder); empty = h94/IP-Adapter, subfolder "
                                                             "models/image_encoder (the ViT-H/14 they were trained with)", default="", maybe_path=True)
    image_encoder_subfolder: str = setting("folder inside image_encoder that holds the "
                                                                       "encoder (e.g. models/image_encoder); empty = "
                                                                       "image_encoder itself", default="")

    def __post_init__(self):
        if not self.adapter:
            if self.photos is not None or self.weights:
                raise InputError("identity: photos/weights are set but adapter is empty. Set identity.adapter (e.g. "
                                 f"ip-adapter-faceid; available: {available_identity_adapters()}), or remove the block.")
            return
        ADAPTERS.get(self.adapter)  # an unknown name lists the choices
        if self.photos is None:
            raise InputError(f"identity.adapter is {self.adapter} but identity.photos is empty. Set it to a folder of "
                             "the person's photos (one face each), e.g. the output folder of `facechain preprocess`.")
        if self.image_encoder_subfolder and not self.image_encoder:
            raise InputError(f"identity.image_encoder_subfolder is {self.image_encoder_subfolder!r} but "
                             "identity.image_encoder is empty. Set image_encoder to the repo or folder it is in, or "
                             "leave both empty for the default (h94/IP-Adapter, models/image_encoder).")
        if not 0.0 <= self.scale <= 2.0:
            raise InputError(f"identity.scale must be in [0, 2], got {self.scale}.")
        if not 0.0 <= self.lora_scale <= 2.0:
            raise InputError(f"identity.lora_scale must be in [0, 2], got {self.lora_scale}.")

    @property
    def enabled(self) -> bool:
        return bool(self.adapter)


@runtime_checkable
class IdentityAdapter(Protocol):
    """What generation, templates and DIIR ask of an identity adapter (made as ``cls(spec, family_name)``, which
    resolves and checks its weights before any model loads). Callers ask these members, never the name."""

    name: ClassVar[str]
    # whether several people's identities can act in one call, each masked to its own face (templates'
    # MGMICA harmonisation: diffusers' ``ip_adapter_masks``, one adapter "image" per person)
    masked_multi_identity: ClassVar[bool]

    def check_embedding(self, emb) -> None:
        """Refuse a face embedding the adapter cannot take (its size, its face backend), before any model loads."""

    def attach(self, pipe) -> dict[str, float]:
        """Load into ``pipe``; returns the extra LoRA adapters it brought (name -> weight) for ``set_adapters``."""

    def prepare(self, emb) -> None:
        """Called once after :meth:`attach` (and after placement) with the person's embedding."""

    def before_call(self, num_images: int, do_cfg: bool, unconditional: bool = False) -> None:
        """Called before each pipeline call with its number of images (``unconditional``: DIIR's inversion)."""

    def embeds(self, emb, *, do_cfg: bool, device, dtype) -> list | None:
        """``ip_adapter_image_embeds`` for one prompt, or None for an adapter that acts through hooks."""

    def describe(self, emb) -> dict:
        """What the manifest records of the adapter and the identity."""


def _builtin(registry: Registry) -> None:
    registry.register(IPAdapterFaceID.name, IPAdapterFaceID)
    registry.register(IPAdapterFaceIDPlusV2.name, IPAdapterFaceIDPlusV2)

    registry.register(FeedFaceIdentity.name, FeedFaceIdentity)


# name -> class(spec, family name) making an IdentityAdapter
ADAPTERS: Registry[Callable[..., IdentityAdapter]] = Registry("identity adapter", builtins=_builtin)


def register_identity_adapter(name: str, factory: Callable) -> None:
    ADAPTERS.register(name, factory)


def available_identity_adapters() -> list[str]:
    return ADAPTERS.names()


def get_identity_adapter(spec: IdentityConfig, family: str) -> IdentityAdapter:
    return ADAPTERS.get(spec.adapter)(spec, str(family))
