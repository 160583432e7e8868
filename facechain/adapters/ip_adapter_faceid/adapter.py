"""The IP-Adapter-FaceID adapters on a pipeline: :class:`IPAdapterFaceID` (the ArcFace embedding) and
:class:`IPAdapterFaceIDPlusV2` (plus the CLIP image features of the face, cached)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facechain.adapters.ip_adapter_faceid.embedding import CLIP_CROP, IdentityEmbedding
from facechain.adapters.ip_adapter_faceid.weights import adapters_home, check_state, read_shape, resolve_weights
from facechain.errors import FacechainError, InputError, ModelNotFoundError
import hashlib
from facechain.io import save_safetensors
from facechain.models import load_image_encoder

logger = logging.getLogger(__name__)

# The image encoder the Plus checkpoints were trained with, OpenCLIP ViT-H/14 (IP-Adapter's wiki,
# "IP-Adapter-Face"), in the copy that loads as transformers' CLIPVisionModelWithProjection from
# safetensors: h94/IP-Adapter's models/image_encoder (config.json: CLIPVisionModelWithProjection, hidden
# 1280; model.safetensors). diffusers' IP-Adapter docs load it so (`from_pretrained("h94/IP-Adapter",
# subfolder="models/image_encoder")`) and load_ip_adapter finds it there (<subfolder>/image_encoder).
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K is that model (IP-Adapter's README: OpenCLIP ViT-H-14) packaged as a
# whole CLIPModel, text tower included, so its vision tower loads only as part of a larger download.
DEFAULT_IMAGE_ENCODER = ("h94/IP-Adapter", "models/image_encoder")
# The channel order the face crop is handed to CLIP in: BGR, as in the published usage. h94/IP-Adapter-FaceID's
# model card (FaceID-Plus / Plus v2): `image = cv2.imread(...)` (BGR), `face_align.norm_crop(image, ...,
# image_size=224)`, the BGR crop passed as is to IPAdapterFaceIDPlus.generate(face_image=...), whose
# CLIPImageProcessor takes it for RGB. diffusers' docs ("IP-Adapter > FaceID"): `cv2.cvtColor(np.asarray(image),
# cv2.COLOR_BGR2RGB)` on a PIL (RGB) image swaps it to BGR before norm_crop and prepare_ip_adapter_image_embeds.
# Our crops are RGB (read_image): they are flipped to BGR for the encoder only.
CLIP_CHANNELS = "bgr"
CLIP_FEATURES_VERSION = "plusv2-clip-1"  # what the cached features are: penultimate hidden states, mean over crops
PACK_LICENSE = "insightface's model packs are licensed for non-commercial research only"
LICENSE_NOTE = f"IP-Adapter-FaceID needs insightface's ArcFace embedding; {PACK_LICENSE}."


class IPAdapterFaceID:
    """IP-Adapter-FaceID on an SD1.5 or SDXL pipeline (see :mod:`facechain.adapters.ip_adapter_faceid`)."""

    name = "ip-adapter-faceid"
    lora_adapter = "faceid_0"  # the peft adapter name diffusers gives the checkpoint's LoRA
    masked_multi_identity = True  # one embedding per person, each masked with diffusers' ip_adapter_masks

    def __init__(self, spec, family: str):
        self.spec = spec
        self.family = family
        self.path = resolve_weights(spec.adapter, family, spec.weights)
        self.shape = read_shape(self.path, self.name)

    def check_embedding(self, emb: IdentityEmbedding) -> None:
        if emb.vector.shape[0] != self.shape.embed_dim:
            raise InputError(
                f"{self.name} ({self.path.name}) takes {self.shape.embed_dim}-d face embeddings and the {emb.backend} "
                f"face backend gives {emb.vector.shape[0]}-d ones. IP-Adapter-FaceID was trained on insightface's "
                f"ArcFace (512-d): set face_backend: insightface (its buffalo_l pack; {PACK_LICENSE}).")

    def attach(self, pipe) -> dict[str, float]:
        """Load the adapter into ``pipe`` with diffusers' ``load_ip_adapter`` and set its scale.
        Returns the extra LoRA adapters it brought, name -> weight, for the caller's ``set_adapters``."""
        check_state(self.shape, pipe.unet, self.path, self.family, self.name)
        self._before_load(pipe)
        try:
            pipe.load_ip_adapter(str(self.path.parent), subfolder="", weight_name=self.path.name,
                                 image_encoder_folder=None)
        except FacechainError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise InputError(f"{self.name} weights {self.path} could not be loaded ({type(exc).__name__}: {first}). "
                             "Check that the file is a complete IP-Adapter-FaceID checkpoint for this base model.") from exc
        pipe.set_ip_adapter_scale(self.spec.scale)
        self._after_load(pipe)
        loaded = getattr(pipe, "get_list_adapters", lambda: {})().get("unet", [])
        return {self.lora_adapter: self.spec.lora_scale} if self.lora_adapter in loaded else {}

    def _before_load(self, pipe) -> None:
        pass

    def _after_load(self, pipe) -> None:
        pass

    def prepare(self, emb: IdentityEmbedding) -> None:
        """Called once after :meth:`attach` with the person's embedding; nothing to do here."""

    def before_call(self, num_images: int, do_cfg: bool, unconditional: bool = False) -> None:
        """Called before each pipeline call with its number of images (the Plus variants set their CLIP
        features for that batch; ``unconditional``: the unconditional rows only, for DIIR's inversion);
        nothing to do here."""

    def embeds(self, emb: IdentityEmbedding, *, do_cfg: bool, device, dtype) -> list:
        """``ip_adapter_image_embeds`` for one prompt: [(2 or 1, 1, 1, D)], zeros first under guidance."""
        import torch

        v = torch.from_numpy(emb.vector).reshape(1, 1, 1, -1)
        if do_cfg:
            v = torch.cat([torch.zeros_like(v), v])
        return [v.to(device=device, dtype=dtype)]

    def describe(self, emb: IdentityEmbedding) -> dict:
        return {"adapter": self.name, "weights": str(self.path), "scale": self.spec.scale,
                "lora_scale": self.spec.lora_scale if self.shape.has_lora else None,
                "photos": emb.photos, "embedding": {"backend": emb.backend, "dim": int(emb.vector.shape[0])},
                "license": LICENSE_NOTE}


def encoder_identity(ref: str, subfolder: str) -> str | None:
    """What names an image encoder's weights for the CLIP feature cache: a hub repo by id, subfolder and
    the commit its files come from (the snapshot huggingface_hub resolves config.json to, from its cache
    when offline); a local folder by its config.json bytes and each weight file's name, size and
    modification time. None when a hub commit cannot be had (the features are then not cached)."""
    folder = Path(ref).expanduser() / subfolder
    if folder.is_dir():
        h = hashlib.sha256(b"local|")
        config_file = folder / "config.json"
        h.update(config_file.read_bytes() if config_file.is_file() else b"")
        for f in sorted(folder.iterdir()):
            if f.suffix in (".safetensors", ".bin") and f.is_file():
                st = f.stat()
                h.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return "local:" + h.hexdigest()[:32]
    from huggingface_hub import hf_hub_download

    try:  # <cache>/models--owner--name/snapshots/<commit>/<subfolder>/config.json
        parts = Path(hf_hub_download(ref, "config.json", subfolder=subfolder or None)).parts
    except Exception as exc:
        logger.info("image encoder %s: no hub commit (%s)", ref, type(exc).__name__)
        return None
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
    return f"hub:{ref}:{subfolder}@{commit}" if commit else None


def clip_cache_key(crops: np.ndarray, encoder_id: str, dtype) -> str:
    """The CLIP feature cache key: the encoder's input (the aligned crops' bytes and shape, CLIP_CROP,
    channel order), the encoder and the dtype it ran in."""
    h = hashlib.sha256(f"{CLIP_FEATURES_VERSION}|{CLIP_CROP}|{CLIP_CHANNELS}|{encoder_id}|{dtype}|{crops.shape}|".encode())
    h.update(np.ascontiguousarray(crops, dtype=np.uint8).tobytes())
    return h.hexdigest()[:32]


class IPAdapterFaceIDPlusV2(IPAdapterFaceID):
    """IP-Adapter-FaceID Plus v2: the ArcFace embedding plus the CLIP image features of the face
    (a perceiver resampler over both, and v2's shortcut that adds the ID tokens back). The CLIP
    encoder (ViT-H by default) reads each photo's face aligned by insightface's ``norm_crop`` at 224 px,
    in BGR order (:data:`CLIP_CHANNELS`); its penultimate hidden states are averaged over the photos, as
    the ArcFace embeddings are. diffusers takes them on the projection layer (``clip_embeds``,
    ``shortcut=True``), one row per image of a call, unconditional ones (a zero image) first under guidance.

    The encoder runs on the pipeline's execution device in the UNet's dtype, once per set of face crops:
    its features are cached in $FACECHAIN_HOME/identity/ beside the ArcFace embeddings (keyed by
    :func:`clip_cache_key`), so a later job with the same photos neither loads nor runs it."""

    name = "ip-adapter-faceid-plusv2"
    masked_multi_identity = False  # its CLIP features are set per call for one person's crops

    def __init__(self, spec, family: str):
        super().__init__(spec, family)
        self.encoder_ref, self.encoder_subfolder = ((spec.image_encoder, spec.image_encoder_subfolder)
                                                    if spec.image_encoder else DEFAULT_IMAGE_ENCODER)
        self._pipe = self._features = self._encoder_config = self._encoder_id = None
        self.encoder = None  # the CLIPVisionModelWithProjection, loaded on the first cache miss
        self.cache_hit: bool | None = None  # whether the last prepare() read its features from the cache

    def _encoder_name(self) -> str:
        return self.encoder_ref + (f" (subfolder {self.encoder_subfolder})" if self.encoder_subfolder else "")

    def _before_load(self, pipe) -> None:
        """Check the encoder's width from its config (its weights load only when features are computed)."""
        from transformers import CLIPVisionConfig

        try:
            config = CLIPVisionConfig.from_pretrained(self.encoder_ref, subfolder=self.encoder_subfolder)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"CLIP image encoder {self._encoder_name()} could not be read ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}). Download it on a machine with network access "
                "and set identity.image_encoder to the local folder (identity.image_encoder_subfolder to the "
                "folder inside it that holds config.json).") from exc
        if int(config.hidden_size) != self.shape.clip_dim:
            raise InputError(
                f"{self.name} ({self.path.name}) reads {self.shape.clip_dim}-wide CLIP image features, and the image "
                f"encoder {self._encoder_name()} gives {config.hidden_size}-wide ones. Use the encoder it was trained "
                f"with ({DEFAULT_IMAGE_ENCODER[0]}, subfolder {DEFAULT_IMAGE_ENCODER[1]}).")
        self._encoder_config = config
        self._encoder_id = encoder_identity(self.encoder_ref, self.encoder_subfolder)

    def _after_load(self, pipe) -> None:
        layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        layer.shortcut = True  # v2
        self._pipe = pipe

    def _cache_path(self, crops: np.ndarray, dtype) -> Path | None:
        if self._encoder_id is None:
            logger.info("%s: the image encoder's revision is unknown; its features are not cached", self.name)
            return None
        return adapters_home().parent / "identity" / f"clip-{clip_cache_key(crops, self._encoder_id, dtype)}.safetensors"

    def prepare(self, emb: IdentityEmbedding) -> None:
        """The averaged CLIP features of the face crops (and of a zero image, the unconditional ones), from
        the cache or computed on the pipeline's execution device. Call after the pipeline is on its device."""
        pipe = self._pipe
        if emb.crops is None or not len(emb.crops):
            raise InputError(f"{self.name} needs the faces' crops, and the identity embedding has none.")
        device, dtype = pipe._execution_device, pipe.unet.dtype
        cached = self._cache_path(emb.crops, dtype)
        if cached is not None and cached.is_file():
            from safetensors.torch import load_file

            try:
                hit = load_file(str(cached), device=str(device))
                self._features, self.cache_hit = (hit["negative"], hit["positive"]), True
                logger.info("%s: CLIP features cached (%s)", self.name, cached.name)
                return
            except Exception as exc:  # a damaged cache file is computed again, never trusted
                logger.info("%s: CLIP feature cache %s unreadable (%s); computing", self.name, cached, type(exc).__name__)
        self._features, self.cache_hit = self.clip_features(emb.crops, device, dtype), False
        if cached is not None:
            neg, pos = self._features
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                save_safetensors(cached, {"negative": neg.contiguous().cpu(), "positive": pos.contiguous().cpu()},
                                 metadata={"image_encoder": self._encoder_id, "channels": CLIP_CHANNELS})
            except OSError as exc:  # a read-only home: the job goes on without the cache
                logger.warning("%s: could not cache CLIP features in %s (%s)", self.name, cached.parent,
                               exc.strerror or exc)

    def clip_features(self, crops: np.ndarray, device, dtype):
        """(negative, positive), each (1, tokens, hidden): the encoder's penultimate hidden states of a zero
        image and the mean over ``crops`` (uint8 RGB (N, 224, 224, 3), handed to CLIP in BGR order)."""
        import torch
        from transformers import CLIPImageProcessor

        if self.encoder is None:
            self.encoder = load_image_encoder(self.encoder_ref, dtype=dtype, subfolder=self.encoder_subfolder)
        enc = self.encoder.to(device=device, dtype=dtype)
        # diffusers' load_ip_adapter makes this processor for an encoder of this input size (and IP-Adapter's own
        # code uses CLIPImageProcessor's defaults: resize and centre-crop to 224, OpenAI CLIP mean/std)
        size = int(self._encoder_config.image_size)
        processor = CLIPImageProcessor(size=size, crop_size=size)
        bgr = [np.ascontiguousarray(c[..., ::-1]) for c in crops]  # CLIP_CHANNELS
        pixels = processor(images=bgr, return_tensors="pt").pixel_values.to(device=device, dtype=dtype)
        with torch.inference_mode():
            pos = enc(pixels, output_hidden_states=True).hidden_states[-2].mean(0, keepdim=True)
            neg = enc(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]
        if torch.device(device).type != "cpu":  # sampling does not need it: its memory goes back to the UNet
            enc.to("cpu")
        return neg, pos

    def before_call(self, num_images: int, do_cfg: bool, unconditional: bool = False) -> None:
        import torch

        if self._features is None:
            raise RuntimeError("prepare() must run before the first pipeline call")
        neg, pos = self._features
        if unconditional:
            rows = [neg] * num_images
        else:
            rows = [neg] * num_images + [pos] * num_images if do_cfg else [pos] * num_images
        layer = self._pipe.unet.encoder_hid_proj.image_projection_layers[0]
        layer.clip_embeds = torch.cat(rows)[:, None].to(device=self._pipe._execution_device, dtype=self._pipe.unet.dtype)

    def describe(self, emb: IdentityEmbedding) -> dict:
        return {**super().describe(emb), "image_encoder": self.encoder_ref,
                "image_encoder_subfolder": self.encoder_subfolder, "clip_channels": CLIP_CHANNELS,
                "clip_features_cached": self.cache_hit, "shortcut": True}
