"""IP-Adapter-FaceID (Ye et al. 2023, h94/IP-Adapter-FaceID) through diffusers' own loader.

The adapter turns a face-recognition embedding (insightface's ArcFace, 512-d) into 4 extra
cross-attention tokens (``IPAdapterFaceIDImageProjection``) that IP-Adapter attention processors
attend to next to the prompt, and ships a LoRA trained with it. diffusers loads both:
``pipe.load_ip_adapter(folder, subfolder="", weight_name=..., image_encoder_folder=None)`` (the
LoRA becomes the peft adapter ``faceid_0``), ``pipe.set_ip_adapter_scale(scale)``, and sampling
takes ``ip_adapter_image_embeds=[tensor of shape (2 or 1, 1, 1, D)]`` (zeros first for the
unconditional half when guidance is on).

What facechain adds around it:

* **Safetensors only.** The published checkpoints are pickles (``.bin``); ``facechain convert``
  reads a trusted one once with ``torch.load(weights_only=True)`` and writes ``.safetensors`` (into
  :func:`adapters_home` by default, where the default weights are then found). A ``.bin`` is
  refused with that command in the message.
* **Checked before any sampling** (:func:`check_state`): that the file is an IP-Adapter-FaceID
  checkpoint, made for this base model's family (its cross-attention size and number of
  cross-attention layers match the UNet), and that the face embedding has the size the adapter
  takes (the dlib backend's 128-d embedding is not ArcFace's 512-d).
* **The person's embedding** (:func:`identity_embedding`): the mean of the unit-length embeddings
  of one face per photo, scaled back to unit length. A photo with no face or several faces is an
  error naming it.

insightface's model packs (buffalo_l, antelopev2), whose ArcFace embedding this adapter needs, are
licensed for non-commercial research only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facechain.errors import FacechainError, InputError, ModelNotFoundError

logger = logging.getLogger(__name__)

FACEID_REPO = "h94/IP-Adapter-FaceID"
# (adapter, family) -> the published pickle in FACEID_REPO; its converted copy is <stem>.safetensors
CHECKPOINTS = {
    ("ip-adapter-faceid", "sd15"): "ip-adapter-faceid_sd15.bin",
    ("ip-adapter-faceid", "sdxl"): "ip-adapter-faceid_sdxl.bin",
    ("ip-adapter-faceid-plusv2", "sd15"): "ip-adapter-faceid-plusv2_sd15.bin",
    ("ip-adapter-faceid-plusv2", "sdxl"): "ip-adapter-faceid-plusv2_sdxl.bin",
}
# The image encoder the Plus checkpoints were trained with, OpenCLIP ViT-H/14 (IP-Adapter's wiki,
# "IP-Adapter-Face"), in the copy that loads as transformers' CLIPVisionModelWithProjection from
# safetensors: h94/IP-Adapter's models/image_encoder (config.json: CLIPVisionModelWithProjection, hidden
# 1280; model.safetensors). diffusers' IP-Adapter docs load it so (`from_pretrained("h94/IP-Adapter",
# subfolder="models/image_encoder")`) and load_ip_adapter finds it there (<subfolder>/image_encoder).
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K is that model (IP-Adapter's README: OpenCLIP ViT-H-14) packaged as a
# whole CLIPModel, text tower included, so its vision tower loads only as part of a larger download.
DEFAULT_IMAGE_ENCODER = ("h94/IP-Adapter", "models/image_encoder")
CLIP_CROP = 224  # the face crop the Plus variants' image encoder sees (insightface's norm_crop at 224 px)
# The channel order the face crop is handed to CLIP in: BGR, as in the published usage. h94/IP-Adapter-FaceID's
# model card (FaceID-Plus / Plus v2): `image = cv2.imread(...)` (BGR), `face_align.norm_crop(image, ...,
# image_size=224)`, the BGR crop passed as is to IPAdapterFaceIDPlus.generate(face_image=...), whose
# CLIPImageProcessor takes it for RGB. diffusers' docs ("IP-Adapter > FaceID"): `cv2.cvtColor(np.asarray(image),
# cv2.COLOR_BGR2RGB)` on a PIL (RGB) image swaps it to BGR before norm_crop and prepare_ip_adapter_image_embeds.
# Our crops are RGB (read_image): they are flipped to BGR for the encoder only.
CLIP_CHANNELS = "bgr"
CLIP_FEATURES_VERSION = "plusv2-clip-1"  # what the cached features are: penultimate hidden states, mean over crops
FAMILY_CROSS_DIM = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
PACK_LICENSE = "insightface's model packs are licensed for non-commercial research only"
LICENSE_NOTE = f"IP-Adapter-FaceID needs insightface's ArcFace embedding; {PACK_LICENSE}."


def adapters_home() -> Path:
    """Where converted adapter weights live: $FACECHAIN_HOME/adapters (default ~/.cache/facechain/adapters)."""
    root = os.environ.get("FACECHAIN_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "facechain")
    return Path(root) / "adapters"


def convert_command(filename: str) -> str:
    return f"facechain convert {FACEID_REPO} --file {filename}"


def resolve_weights(adapter: str, family: str, weights: str = "") -> Path:
    """The adapter's .safetensors file: ``weights`` when given, else the converted default for
    ``family`` in :func:`adapters_home`. A pickle, or a default not converted yet, is one error
    saying which ``facechain convert`` command makes the file."""
    from facechain.models import resolve_weights_file

    if weights:
        suffix = Path(weights).suffix.lower()
        if suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
            raise InputError(
                f"identity.weights {weights} is a pickle file, which facechain does not load (it can run code). "
                f"Convert it once: `facechain convert {weights}` (reads tensors only) writes a .safetensors file; set "
                "identity.weights to that file.")
        return resolve_weights_file(weights, allow_pickle=False, what=f"{adapter} weights")
    name = CHECKPOINTS.get((adapter, family))
    if name is None:
        raise InputError(f"{adapter} has no published checkpoint for {family} base models. Use an SD1.5 or SDXL base "
                         "model, or set identity.weights to a checkpoint made for this one.")
    path = adapters_home() / (Path(name).stem + ".safetensors")
    if not path.is_file():
        raise ModelNotFoundError(
            f"{adapter} weights for {family} are not on this machine ({path}). Run once, with network access: "
            f"`{convert_command(name)}` (downloads {FACEID_REPO}/{name} and writes {path.name} there), or set "
            "identity.weights to a converted .safetensors file.")
    return path


def convert_checkpoint(src: str, out: str | os.PathLike | None = None, *, filename: str | None = None,
                       revision: str | None = None) -> Path:
    """Read a trusted pickle checkpoint tensors-only (``torch.load(weights_only=True)``) and write its
    tensors as one .safetensors file; nested dicts become dotted keys (``image_proj.norm.weight``, the
    layout diffusers' ``load_ip_adapter`` reads). ``src``: a local file, or a hub / ModelScope repo id
    with ``filename``. ``out``: default :func:`adapters_home` / <stem>.safetensors. An existing ``out``
    is never overwritten."""
    import torch

    from facechain.io import save_safetensors
    from facechain.models import read_weights_file, resolve_weights_file

    path = resolve_weights_file(src, filename=filename, revision=revision, allow_pickle=True,
                                what="checkpoint to convert")
    dest = Path(out) if out is not None else adapters_home() / (path.stem + ".safetensors")
    if dest.suffix.lower() != ".safetensors":
        raise InputError(f"convert: the output {dest} must end in .safetensors.")
    if dest.exists():
        raise InputError(f"convert: {dest} already exists and is not overwritten. Remove it, or pass another --out.")
    state = read_weights_file(path, "checkpoint to convert")
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            logger.info("convert: %s is a %s, not a tensor; not kept", prefix or "<root>", type(value).__name__)

    walk("", state)
    if not flat:
        raise InputError(f"convert: {path} holds no tensors; nothing to convert.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(dest, flat, metadata={"converted_from": path.name})
    logger.info("convert: %d tensors from %s -> %s", len(flat), path, dest)
    return dest


# ---------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class FaceIDShape:
    embed_dim: int  # the face embedding size the projection takes
    cross_dim: int  # the cross-attention size it was made for
    layers: int  # IP attention layers (one per UNet cross-attention layer)
    has_lora: bool
    clip_dim: int | None = None  # Plus: the CLIP image encoder's hidden size it reads


PLUS_IN, PLUS_OUT = "image_proj.perceiver_resampler.proj_in.weight", "image_proj.perceiver_resampler.proj_out.weight"


def read_shape(path: Path, adapter: str = "ip-adapter-faceid") -> FaceIDShape:
    """What an IP-Adapter-FaceID (``plus``: FaceID Plus) .safetensors file was made for, from its tensor
    shapes (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            shapes = {k: f.get_slice(k).get_shape() for k in keys
                      if k in ("image_proj.proj.0.weight", "image_proj.norm.weight", PLUS_IN, PLUS_OUT)}
    except Exception as exc:
        raise InputError(f"{adapter} weights {path} could not be read as safetensors ({type(exc).__name__}); "
                         "the file is damaged or not an adapter.") from exc
    is_plus = PLUS_IN in shapes and PLUS_OUT in shapes
    is_plain = "image_proj.norm.weight" in shapes and not is_plus
    own = sorted(v for (a, _), v in CHECKPOINTS.items() if a == adapter)
    if "image_proj.proj.0.weight" not in shapes or not (is_plus or is_plain):
        raise InputError(f"{path} is not an IP-Adapter-FaceID checkpoint: it lacks the FaceID projection "
                         f"(image_proj.proj.0, and image_proj.norm or a perceiver resampler). Use {adapter}'s own file "
                         f"({', '.join(own)}, converted).")
    if is_plus != adapter.endswith("plusv2"):
        kind = "an IP-Adapter-FaceID Plus checkpoint" if is_plus else "a plain IP-Adapter-FaceID checkpoint"
        raise InputError(f"{path} is {kind}, and identity.adapter is {adapter}. Set identity.adapter to "
                         f"{'ip-adapter-faceid-plusv2' if is_plus else 'ip-adapter-faceid'}, or use {adapter}'s own "
                         f"file ({', '.join(own)}, converted).")
    layers = sum(1 for k in keys if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight"))
    cross = int(shapes[PLUS_OUT][0] if is_plus else shapes["image_proj.norm.weight"][0])
    return FaceIDShape(embed_dim=int(shapes["image_proj.proj.0.weight"][1]), cross_dim=cross, layers=layers,
                       has_lora=any(".to_q_lora." in k for k in keys),
                       clip_dim=int(shapes[PLUS_IN][1]) if is_plus else None)


def check_state(shape: FaceIDShape, unet, path: Path, family: str, adapter: str = "ip-adapter-faceid") -> None:
    """Refuse an adapter made for another UNet, before diffusers changes the pipeline."""
    want = int(unet.config.cross_attention_dim)
    if shape.cross_dim != want:
        made = FAMILY_CROSS_DIM.get(shape.cross_dim, f"a {shape.cross_dim}-wide model")
        raise InputError(
            f"IP-Adapter-FaceID weights {path} were made for {made} (cross-attention size {shape.cross_dim}), and the "
            f"base model is {family} (cross-attention size {want}). Use the adapter of the base model's family "
            f"({CHECKPOINTS.get((adapter, family), 'none published')}).")
    cross_layers = sum(1 for name in unet.attn_processors if not name.endswith("attn1.processor"))
    if shape.layers != cross_layers:
        raise InputError(
            f"IP-Adapter-FaceID weights {path} have {shape.layers} attention layers and the base model's UNet has "
            f"{cross_layers} cross-attention layers: the file was made for another UNet. Use the adapter made for this "
            "base model's family.")


# ---------------------------------------------------------------------------- the person's embedding


@dataclass(frozen=True)
class IdentityEmbedding:
    vector: np.ndarray  # float32 (D,), unit length
    photos: list[str]  # the photos it was averaged over
    backend: str
    crops: np.ndarray | None = None  # uint8 (N, 224, 224, 3): each photo's face, aligned (insightface's norm_crop)


def _cache_key(files: list[Path], backend: str) -> str:
    import hashlib

    h = hashlib.sha256(f"identity-v2|{backend}".encode())
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def _read_cached(path: Path) -> IdentityEmbedding | None:
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            return IdentityEmbedding(f.get_tensor("embedding").astype(np.float32), json.loads(meta["photos"]), meta["backend"],
                                     f.get_tensor("crops"))
    except Exception as exc:  # a damaged cache file is measured again, never trusted
        logger.info("identity embedding cache %s unreadable (%s); measuring again", path, type(exc).__name__)
        return None


def identity_embedding(photos: str | os.PathLike, analyzer, cache: bool = True) -> IdentityEmbedding:
    """The mean of the unit-length face embeddings of the photos directly in ``photos`` (one face each),
    scaled to unit length. A photo with no face, or with several, is an error naming each such photo.

    ``cache``: kept in $FACECHAIN_HOME/identity/ (default ~/.cache/facechain/identity), keyed by the
    backend and the photos' names and bytes, so a later job with the same photos skips detection. Not
    in the photos folder: that folder is the user's (or preprocessing's, whose record would count a
    stranger's file there)."""
    from facechain.errors import require
    from facechain.images import PHOTO_MAX_MEGAPIXELS, list_images, read_image

    require("insightface", "the identity adapter's face crops (insightface.utils.face_align)")
    from insightface.utils.face_align import norm_crop

    files = list_images(Path(photos), "identity.photos folder")
    cached = adapters_home().parent / "identity" / f"{_cache_key(files, analyzer.name)}.safetensors" if cache else None
    if cached is not None and cached.is_file():
        hit = _read_cached(cached)
        if hit is not None:
            logger.info("identity embedding: cached (%s), over %d photos", cached.name, len(hit.photos))
            return hit
    vectors, used, problems, crops = [], [], [], []
    for path in files:
        try:
            img = read_image(path, "identity photo", max_megapixels=PHOTO_MAX_MEGAPIXELS)
        except FacechainError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        faces = analyzer.detect(img, max_faces=3)
        if not faces:
            problems.append(f"{path.name}: no face found")
        elif len(faces) > 1:
            problems.append(f"{path.name}: {len(faces)} faces (whose identity is meant is unclear)")
        else:
            emb = faces[0].embedding if faces[0].embedding is not None else analyzer.embed(img, faces[0])
            v = np.asarray(emb, np.float64).reshape(-1)
            vectors.append(v / max(np.linalg.norm(v), 1e-12))
            used.append(path.name)
            crops.append(norm_crop(img, landmark=np.asarray(faces[0].kps, np.float32), image_size=CLIP_CROP))
    if problems:
        raise InputError(
            f"identity.photos {photos}: every photo must show the person's face alone. Fix or remove:\n  "
            + "\n  ".join(problems) + "\n(The output folder of `facechain preprocess` holds only such crops.)")
    mean = np.mean(vectors, axis=0)
    emb = IdentityEmbedding((mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32), used, analyzer.name,
                            np.stack(crops).astype(np.uint8))
    if cached is not None:
        import json

        import torch

        from facechain.io import save_safetensors

        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors(cached, {"embedding": torch.from_numpy(emb.vector), "crops": torch.from_numpy(emb.crops)},
                             metadata={"photos": json.dumps(used), "backend": analyzer.name})
        except OSError as exc:  # a read-only home: the job goes on without the cache
            logger.warning("identity embedding: could not cache it in %s (%s)", cached.parent, exc.strerror or exc)
    return emb


# ---------------------------------------------------------------------------- the adapter


class IPAdapterFaceID:
    """IP-Adapter-FaceID on an SD1.5 or SDXL pipeline (see the module docstring)."""

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
    import hashlib

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
    import hashlib

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
            from facechain.io import save_safetensors

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

        from facechain.models import load_image_encoder

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
