"""A trained FeedFace adapter as generation's identity source: ``identity: {adapter: feedface,
weights: OUT, photos: DIR, scale: 0.8}`` (OUT: the output folder of ``facechain train-adapter feedface``;
scale: the multiplier, FeedFace's 0.8; FeedFace samples with guidance 5).

Up to ``max_faces`` of the person's photos (one face each) are aligned, read by the adapter's CLIP
image encoder and concatenated as the condition; the unconditional half of each guided call gets the
dropped condition the adapter was trained with (zeros).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from facechain.errors import InputError, ModelNotFoundError
from facechain.models import load_image_encoder

logger = logging.getLogger(__name__)


class FeedFaceIdentity:
    name = "feedface"
    masked_multi_identity = False  # its hooks condition every face of a call on one person

    def __init__(self, spec, family: str):
        from facechain.adapters.feedface.train import RECORD_FILE, WEIGHTS_FILE

        if not spec.weights:
            raise InputError("identity.adapter is feedface but identity.weights is empty. Set it to the output folder of "
                             "`facechain train-adapter feedface`.")
        folder = Path(spec.weights)
        folder = folder.parent if folder.is_file() else folder
        self.weights = folder / WEIGHTS_FILE
        if not (folder / RECORD_FILE).is_file() or not self.weights.is_file():
            raise ModelNotFoundError(f"{folder} is not a finished FeedFace training folder (it needs {WEIGHTS_FILE} and "
                                     f"{RECORD_FILE}). Pass the output folder of `facechain train-adapter feedface`.")
        self.record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        if self.record.get("family") != family:
            raise InputError(f"the FeedFace adapter in {folder} was trained on a {self.record.get('family')} model and the "
                             f"base model is {family}. Use the base model it was trained on, or train one for this model.")
        self.spec = spec
        self.family = family
        self.encoder_ref = spec.image_encoder or self.record["image_encoder"]
        self.hooks = self.encoder = self._ctx = self._unet = None
        self.faces: int | None = None  # how many faces the condition holds, once prepared

    def check_embedding(self, emb) -> None:
        """FeedFace reads the faces' crops, not the recognition embedding: any face backend works."""

    def attach(self, pipe) -> dict[str, float]:
        from safetensors.torch import load_file

        from facechain.adapters.feedface.model import FeedFace, FeedFaceHooks

        adapter = FeedFace.for_unet(pipe.unet, int(self.record["clip_dim"]))
        if adapter.block_names != list(self.record["blocks"]):
            raise InputError(f"the FeedFace adapter {self.weights} was made for a UNet with other transformer blocks "
                             f"({len(self.record['blocks'])} against {len(adapter.block_names)}). Use the base model it "
                             "was trained on.")
        try:
            adapter.load_state_dict(load_file(str(self.weights)))
        except Exception as exc:
            raise InputError(f"FeedFace weights {self.weights} could not be loaded ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160]}). Train the adapter again.") from exc
        adapter.to(device=pipe.unet.device, dtype=pipe.unet.dtype).eval()
        self.hooks = FeedFaceHooks(pipe.unet, adapter, multiplier=self.spec.scale)
        encoder = load_image_encoder(self.encoder_ref, dtype=pipe.unet.dtype,
                                     subfolder=self.spec.image_encoder_subfolder if self.spec.image_encoder else "")
        if int(encoder.config.hidden_size) != int(self.record["clip_dim"]):
            raise InputError(f"the FeedFace adapter reads {self.record['clip_dim']}-wide CLIP tokens, and the image "
                             f"encoder {self.encoder_ref} gives {encoder.config.hidden_size}-wide ones. Use the encoder it "
                             f"was trained with ({self.record['image_encoder']}).")
        self.encoder = encoder.to(pipe.unet.device)
        self._unet = pipe.unet  # prepare() runs the encoder where the UNet is by then (generation moves it after attach)
        return {}

    def prepare(self, emb) -> None:
        import torch

        from facechain.adapters.feedface.model import encode_faces

        if emb.crops is None or not len(emb.crops):
            raise InputError("feedface needs the faces' crops, and the identity embedding has none.")
        k = min(len(emb.crops), int(self.record.get("max_faces", 5)))
        if len(emb.crops) > k:
            logger.info("feedface: %d photos, the adapter takes %d faces; using the first %d", len(emb.crops), k, k)
        device = self._unet.device if self._unet is not None else self.encoder.device
        self.encoder.to(device)
        self.hooks.adapter.to(device)
        tokens = encode_faces(self.encoder, emb.crops[:k])  # (k, T, D)
        tokens = tokens.reshape(1, -1, tokens.shape[-1])
        adapter = self.hooks.adapter
        with torch.no_grad():
            self._ctx = (adapter.context(torch.zeros_like(tokens)), adapter.context(tokens))
        self.faces = k

    def before_call(self, num_images: int, do_cfg: bool, unconditional: bool = False) -> None:
        import torch

        uncond, cond = self._ctx
        if unconditional:  # DIIR's inversion: the unconditional rows only
            rows = [uncond] * num_images
        else:
            rows = [uncond] * num_images + [cond] * num_images if do_cfg else [cond] * num_images
        self.hooks.context = torch.cat(rows)

    def embeds(self, emb, *, do_cfg: bool, device, dtype):
        return None  # the condition acts through the hooks, not through diffusers' IP-Adapter inputs

    def describe(self, emb) -> dict:
        return {"adapter": self.name, "weights": str(self.weights), "scale": self.spec.scale,
                "image_encoder": self.encoder_ref, "photos": emb.photos[: self.faces or len(emb.photos)],
                "faces": self.faces, "trained_steps": self.record.get("steps")}
