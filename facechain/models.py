"""Where weights come from. The only module that knows about hubs, folders and checkpoint files.

A base model reference may be:

* a local diffusers folder (``model_index.json`` inside; ``subfolder`` picks a sub-model),
* a single-file checkpoint as model sites ship them (``.safetensors``; pickle formats
  ``.ckpt``/``.bin``/``.pt``/``.pth`` only with ``allow_pickle=True``),
* a Hugging Face hub id (``owner/name``) or a ModelScope id (``owner/name`` + revision such
  as ``v2.0``; FaceChain's default base ``ly261666/cv_portrait_model`` is one).

Whether a model is SD1.5-family or SDXL is read from the model's own config (the UNet's
``addition_embed_type`` for folders and loaded pipelines, the text-conditioner keys for single
files), never from its name or class name.

The helper models are loaded here too: ControlNets (:func:`load_controlnet`), the depth
estimator (:func:`load_depth_estimator`), the OpenPose annotator (:func:`load_pose_annotator`),
the insightface model root and the face swapper's file (:func:`insightface_root`,
:func:`swapper_model_path`), and what ``device``/``dtype`` ``"auto"`` mean (:func:`resolve_device`,
:func:`resolve_dtype`) for every stage.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

Family = Literal["sd15", "sdxl"]
Hub = Literal["auto", "huggingface", "modelscope"]

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")

# Hub repos whose configs (UNet/VAE/text-encoder/tokenizer/scheduler JSON) describe the
# architecture of a single-file checkpoint of each family. Only small config files are
# fetched from them; pass ``single_file_config`` (a local diffusers folder) to stay offline.
SINGLE_FILE_CONFIGS: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


@dataclass(frozen=True)
class ResolvedModel:
    """A base model found on disk."""

    path: Path  # a diffusers folder, or a checkpoint file
    format: Literal["diffusers", "single_file"]
    family: Family
    reference: str  # what the user asked for, for messages and saved configs
    allow_pickle: bool = False  # pickle weight files in a diffusers folder may load (tensors-only)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "family": self.family, "reference": self.reference}


def native_size(pipe) -> int:
    """A loaded pipeline's native image side: UNet sample size x VAE scale factor (512 SD1.5, 1024 SDXL)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


# --------------------------------------------------------------------------- family detection


def family_of_folder(folder: Path) -> Family:
    """Read SD1.5-family vs SDXL from a diffusers folder's UNet config."""
    unet_cfg = folder / "unet" / "config.json"
    if not unet_cfg.is_file():
        raise InputError(
            f"model folder {folder} has no unet/config.json, so it is not a diffusers Stable Diffusion "
            "folder. Pass a folder saved with `pipeline.save_pretrained()`, a single .safetensors "
            "checkpoint, or a hub id."
        )
    return family_of_unet_config(json.loads(unet_cfg.read_text()), f"model folder {folder}: UNet config {unet_cfg}")


def family_of_unet_config(cfg, where: str) -> Family:
    """SDXL UNets take the pooled text embedding and size ids (``addition_embed_type`` "text_time");
    SD1.5-family UNets take 4 (or 9: inpainting) latent channels and nothing added."""
    cfg = dict(cfg)
    if cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    if cfg.get("addition_embed_type") in (None, "text") and cfg.get("in_channels", 4) in (4, 9):
        return "sd15"
    raise InputError(f"{where} describes neither an SD1.5-family nor an SDXL UNet.")


def family_of_checkpoint_keys(keys, where: str) -> Family:
    """SDXL checkpoints carry two text conditioners (``conditioner.embedders.1``); SD1.x/2.x one."""
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd15"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise InputError(f"checkpoint {where} has a UNet but no text encoder keys; it cannot be used as a base model.")
    raise InputError(
        f"checkpoint {where} is not a Stable Diffusion checkpoint (no `model.diffusion_model.*` keys). "
        "A LoRA file is passed as a LoRA, not as a base model."
    )


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix.lower() in SAFE_SUFFIXES:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    import torch

    # Only reached with allow_pickle, and even then tensors-only: a checkpoint that carries other
    # pickled objects (old Lightning .ckpt files) is refused rather than unpickled.
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds pickled objects besides tensors ({type(exc).__name__}), which facechain does "
            "not unpickle even with --allow-pickle. Convert it to .safetensors (e.g. with a trusted converter on a "
            "machine you control) and pass that file."
        ) from exc
    sd = sd.get("state_dict", sd)
    return list(sd.keys())


def check_checkpoint_file(path: Path, allow_pickle: bool, what: str = "checkpoint") -> None:
    """Refuse pickle formats unless allowed; refuse unknown suffixes."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{what} {path} is a pickle file ({suffix}); loading a pickle can run arbitrary code, so "
                "facechain refuses it by default. Use a .safetensors version of the file, or pass "
                "--allow-pickle if you trust its source."
            )
    elif suffix not in SAFE_SUFFIXES:
        raise InputError(f"{what} {path}: unknown file type '{suffix}'. Expected a .safetensors file.")


def read_weights_file(path: Path, what: str = "checkpoint", fix: str = ""):
    """The contents of a weights file that :func:`check_checkpoint_file` let through: a .safetensors
    file, or a pickle read with ``torch.load(weights_only=True)`` (tensors and plain containers only).
    A pickle holding other objects raises UnsafeCheckpointError; a damaged file, a TorchScript archive
    or anything unreadable one InputError naming ``what``, the file and ``fix``."""
    import pickle

    import torch

    def first(exc: Exception) -> str:
        return str(exc).splitlines()[0][:160] if str(exc) else ""

    fix = f" {fix}" if fix else ""
    if path.suffix.lower() in SAFE_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise InputError(f"{what} {path} could not be read as a safetensors file ({type(exc).__name__}: "
                             f"{first(exc)}); it is damaged or not a model.{fix}") from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise UnsafeCheckpointError(
                f"{what} {path} holds pickled objects besides tensors, which facechain does not unpickle even "
                "with allow_pickle (tensors-only loading, torch.load(weights_only=True)). Convert it to "
                ".safetensors on a machine you trust and pass that file.") from exc
        raise InputError(f"{what} {path} could not be read as a PyTorch checkpoint ({type(exc).__name__}); it is "
                         f"damaged or not a model.{fix}") from exc
    except RuntimeError as exc:
        if "torchscript" in str(exc).lower():
            raise InputError(f"{what} {path} is a TorchScript archive, which is not read (it can carry code). "
                             "Pass the model's state-dict weights (.pth/.safetensors) instead.") from exc
        raise InputError(f"{what} {path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: "
                         f"{first(exc)}).{fix}") from exc
    except Exception as exc:
        raise InputError(f"{what} {path} could not be read as a PyTorch checkpoint ({type(exc).__name__}); it is "
                         f"damaged or not a model.{fix}") from exc


def safetensors_only(allow_pickle: bool) -> dict:
    """``from_pretrained`` kwargs: only .safetensors weights load unless pickles are allowed."""
    return {} if allow_pickle else {"use_safetensors": True}


def check_folder_weights(folder: Path, ref: str) -> None:
    """Refuse a diffusers folder whose components ship their weights only as pickle files."""
    pickled = []
    for comp in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in comp.iterdir() if f.is_file()]
        if any(f.suffix.lower() in PICKLE_SUFFIXES for f in files) and not any(
                f.suffix.lower() in SAFE_SUFFIXES for f in files):
            pickled.append(comp.name)
    if pickled:
        raise UnsafeCheckpointError(
            f"base model '{ref}' ({folder}) holds the weights of {', '.join(pickled)} only as pickle files (.bin/.ckpt); "
            "loading a pickle can run arbitrary code, so facechain refuses it by default. Use a copy saved with "
            "safetensors (`pipe.save_pretrained(dir, safe_serialization=True)`), or pass --allow-pickle if you trust "
            "its source (tensors-only loading)."
        )


# --------------------------------------------------------------------------- resolution


def _looks_like_path(ref: str) -> bool:
    return (
        ref.startswith((".", "/", "~"))
        or os.sep in ref.strip("/").split("/", 1)[-1]
        or ref.count("/") != 1
        or ref.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES)
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub's host, so an unreachable hub costs seconds, not the
    hub clients' own retry loops (tens of seconds each)."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _modelscope_endpoint() -> str:
    return "https://" + os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn")


def _download_hf(repo_id: str, revision: str | None) -> Path:
    from diffusers import DiffusionPipeline

    local_only = _hub_offline() or not _reachable(_hf_endpoint())
    return Path(DiffusionPipeline.download(repo_id, revision=revision or None, local_files_only=local_only))


def _download_modelscope(repo_id: str, revision: str | None) -> Path:
    if _hub_offline():
        raise ConnectionError("offline mode (HF_HUB_OFFLINE) is set")
    if not _reachable(_modelscope_endpoint()):
        raise ConnectionError(f"{_modelscope_endpoint()} is unreachable")
    from modelscope.hub.snapshot_download import snapshot_download

    kwargs = {"revision": revision} if revision else {}
    return Path(snapshot_download(repo_id, **kwargs))


def resolve_model(
    model: str | os.PathLike,
    revision: str | None = None,
    subfolder: str | None = None,
    *,
    allow_pickle: bool = False,
    hub: Hub = "auto",
) -> ResolvedModel:
    """Find ``model`` on disk, downloading it from a hub if needed.

    Raises ModelNotFoundError naming every way to provide the model when it cannot be had,
    UnsafeCheckpointError for a pickle checkpoint without ``allow_pickle``.
    """
    ref = str(model)
    if not ref:
        raise InputError("base model is empty. Pass a hub id, a local diffusers folder or a .safetensors file.")
    revision = revision or None
    subfolder = subfolder or None
    local = Path(ref).expanduser()
    if local.exists():
        return _resolve_local(local, subfolder, allow_pickle, ref)
    if _looks_like_path(ref):
        raise ModelNotFoundError(
            f"base model '{ref}' does not exist on disk. Pass an existing diffusers folder, a .safetensors "
            "checkpoint file, or a hub id of the form owner/name."
        )
    if hub not in ("auto", "huggingface", "modelscope"):
        raise InputError(f"hub must be one of ['auto', 'huggingface', 'modelscope'], got {hub!r}")
    attempts: list[str] = []
    order = ["huggingface", "modelscope"] if hub == "auto" else [hub]
    for source in order:
        try:
            folder = _download_hf(ref, revision) if source == "huggingface" else _download_modelscope(ref, revision)
        except Exception as exc:  # network, auth, missing repo: report them all together
            attempts.append(f"{source}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        logger.info("base model %s found on %s at %s", ref, source, folder)
        return _resolve_local(folder, subfolder, allow_pickle, ref)
    offline = " (HF_HUB_OFFLINE is set)" if _hub_offline() else ""
    raise ModelNotFoundError(
        f"base model '{ref}'" + (f" revision '{revision}'" if revision else "")
        + f" could not be found locally or downloaded{offline}.\n  tried: "
        + "\n  tried: ".join(attempts)
        + "\nProvide it one of these ways: (1) download it on a machine with network access and pass the local "
        "folder (diffusers layout) or .safetensors file; (2) check the hub id and revision; (3) log in with "
        "`huggingface-cli login` if the repo is gated. To smoke-test an install with no network at all, build a "
        "tiny model with `facechain make-tiny-model OUT_DIR` and pass OUT_DIR."
    )


def _resolve_local(path: Path, subfolder: str | None, allow_pickle: bool, ref: str) -> ResolvedModel:
    if subfolder:
        sub = path / subfolder
        if not sub.exists():
            raise ModelNotFoundError(f"base model '{ref}': sub path '{subfolder}' does not exist inside {path}.")
        path = sub
    if path.is_file():
        check_checkpoint_file(path, allow_pickle, "base model checkpoint")
        family = family_of_checkpoint_keys(_checkpoint_keys(path), str(path))
        return ResolvedModel(path=path, format="single_file", family=family, reference=ref)
    if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
        family = family_of_folder(path)
        if not allow_pickle:
            check_folder_weights(path, ref)
        return ResolvedModel(path=path, format="diffusers", family=family, reference=ref, allow_pickle=allow_pickle)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES)
    if len(files) == 1:
        return _resolve_local(files[0], None, allow_pickle, ref)
    raise InputError(
        f"base model folder {path} holds neither a diffusers model (model_index.json) nor exactly one checkpoint "
        f"file (found {len(files)}). Pass the folder's sub path or the checkpoint file itself."
    )


# --------------------------------------------------------------------------- loading


def dtype_kwargs(dtype) -> dict:
    """``{"dtype": d}`` on diffusers versions that renamed ``torch_dtype`` (0.36+), else ``{"torch_dtype": d}``."""
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_resolve_dtype")
    except ImportError:
        renamed = False
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def load_pipeline(
    resolved: ResolvedModel,
    *,
    torch_dtype=None,
    single_file_config: str | os.PathLike | None = None,
    **kwargs,
):
    """Load the text-to-image pipeline of ``resolved`` (StableDiffusionPipeline or
    StableDiffusionXLPipeline). Other tasks derive from it with ``Pipeline.from_pipe``.

    ``single_file_config``: a diffusers folder or hub id whose configs describe a single-file
    checkpoint's architecture (default: the family's reference repo, see SINGLE_FILE_CONFIGS).
    """
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if resolved.family == "sdxl" else StableDiffusionPipeline
    torch_dtype = torch_dtype or torch.float32
    if resolved.family == "sd15":
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    try:
        if resolved.format == "diffusers":
            return cls.from_pretrained(str(resolved.path), **dtype_kwargs(torch_dtype),
                                       **safetensors_only(resolved.allow_pickle), **kwargs)
        config = str(single_file_config or SINGLE_FILE_CONFIGS[resolved.family])
        return cls.from_single_file(str(resolved.path), config=config, **dtype_kwargs(torch_dtype), **kwargs)
    except (OSError, EnvironmentError) as exc:
        if resolved.format == "single_file":
            raise ModelNotFoundError(
                f"single-file checkpoint {resolved.path} needs the {resolved.family} architecture configs from "
                f"'{single_file_config or SINGLE_FILE_CONFIGS[resolved.family]}', which could not be loaded ({exc}). "
                "Pass --single-file-config with a local diffusers folder of the same architecture."
            ) from exc
        raise ModelNotFoundError(f"base model folder {resolved.path} could not be loaded: {exc}") from exc


def resolve_weights_file(
    ref: str | os.PathLike,
    *,
    filename: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    what: str = "LoRA",
) -> Path:
    """Find a weights file (a LoRA, a face model): a local file, a local folder + ``filename``,
    or a hub/ModelScope repo id + ``filename``. Pickle files need ``allow_pickle``."""
    ref = str(ref)
    local = Path(ref).expanduser()
    if local.is_dir():
        if filename:
            local = local / filename
        else:
            cands = sorted(local.glob("*.safetensors"))
            if len(cands) != 1:
                raise InputError(f"{what} folder {local} must hold exactly one .safetensors file or name one; found {len(cands)}.")
            local = cands[0]
    if local.is_file():
        check_checkpoint_file(local, allow_pickle, what)
        return local
    if _looks_like_path(ref) or not filename:
        raise ModelNotFoundError(f"{what} '{ref}'{' / ' + filename if filename else ''} does not exist on disk.")
    attempts = []
    try:
        from huggingface_hub import hf_hub_download

        local_only = _hub_offline() or not _reachable(_hf_endpoint())
        path = Path(hf_hub_download(ref, filename, revision=revision or None, local_files_only=local_only))
        check_checkpoint_file(path, allow_pickle, what)
        return path
    except (UnsafeCheckpointError, InputError):
        raise
    except Exception as exc:
        attempts.append(f"huggingface: {type(exc).__name__}")
    try:
        if _hub_offline() or not _reachable(_modelscope_endpoint()):
            raise ConnectionError("offline or unreachable")
        from modelscope.hub.file_download import model_file_download

        kwargs = {"revision": revision} if revision else {}
        path = Path(model_file_download(ref, filename, **kwargs))
        check_checkpoint_file(path, allow_pickle, what)
        return path
    except (UnsafeCheckpointError, InputError):
        raise
    except Exception as exc:
        attempts.append(f"modelscope: {type(exc).__name__}")
    raise ModelNotFoundError(
        f"{what} '{ref}' file '{filename}' could not be found locally or downloaded ({'; '.join(attempts)}). "
        "Download the file on a machine with network access and point to the local path instead."
    )


# --------------------------------------------------------------------------- identity

# Files up to this size are hashed whole; larger ones by samples (head, tail and evenly spaced
# blocks), so fingerprinting a 7 GB SDXL folder reads a few MB.
_FINGERPRINT_WHOLE = 8 << 20
_FINGERPRINT_BLOCK = 1 << 20
_FINGERPRINT_SAMPLES = 8


def _file_digest(path: Path) -> str:
    import hashlib

    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _FINGERPRINT_WHOLE:
            h.update(fh.read())
        else:
            span = size - _FINGERPRINT_BLOCK
            for i in range(_FINGERPRINT_SAMPLES):
                fh.seek(span * i // (_FINGERPRINT_SAMPLES - 1))
                h.update(fh.read(_FINGERPRINT_BLOCK))
    return h.hexdigest()


def files_fingerprint(path: str | os.PathLike) -> str:
    """An identity of a file or folder's files: their relative paths, sizes and (sampled) sha256.
    The same files reached through another path (absolute vs relative, a symlink) have the same
    fingerprint; other files placed behind the same path have a different one."""
    import hashlib

    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    h = hashlib.sha256()
    for p in files:
        rel = "" if root.is_file() else p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + _file_digest(p).encode() + b"\n")
    return h.hexdigest()


def model_fingerprint(resolved: ResolvedModel) -> str:
    """:func:`files_fingerprint` of the model's folder or checkpoint file."""
    return files_fingerprint(resolved.path)


# --------------------------------------------------------------------------- devices


DEVICE_HELP = "auto (the first CUDA GPU, else Apple MPS, else the CPU), cpu, cuda, cuda:N or mps"
DTYPE_HELP = "auto (float16 on a GPU, float32 on the CPU), float32, float16 or bfloat16"


def resolve_device(name: str = "auto"):
    """``"auto"``: the first CUDA GPU, else Apple's MPS, else the CPU; any other name as torch reads it."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device):
    """``"auto"``: float16 on a GPU (CUDA or MPS), float32 on the CPU; else the named torch dtype."""
    import torch

    if name == "auto":
        return torch.float16 if torch.device(device).type in ("cuda", "mps") else torch.float32
    return getattr(torch, name)


# --------------------------------------------------------------------------- helper models


def load_controlnet(ref: str, *, dtype, what: str, allow_pickle: bool = False):
    """A ControlNet (hub id or local diffusers folder) with diffusers' ``ControlNetModel``; safetensors
    only unless ``allow_pickle``. ``what``: the control it gives ("openpose", "depth"), for the error."""
    from diffusers import ControlNetModel

    try:
        return ControlNetModel.from_pretrained(str(ref), torch_dtype=dtype, **safetensors_only(allow_pickle))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{what} ControlNet '{ref}' could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). "
            f"Download it on a machine with network access and set controlnet_{what} to the local folder."
        ) from exc


def load_image_encoder(ref: str, *, dtype, allow_pickle: bool = False, subfolder: str = ""):
    """A CLIP image encoder (transformers' ``CLIPVisionModelWithProjection``; hub id or local folder, with
    ``subfolder`` inside it, e.g. ``h94/IP-Adapter`` + ``models/image_encoder``) for the IP-Adapter Plus
    variants; safetensors only unless ``allow_pickle``."""
    from transformers import CLIPVisionModelWithProjection

    try:
        return CLIPVisionModelWithProjection.from_pretrained(str(ref), subfolder=subfolder, dtype=dtype,
                                                             **safetensors_only(allow_pickle))
    except (OSError, ValueError) as exc:
        where = f"'{ref}'" + (f" (subfolder {subfolder})" if subfolder else "")
        raise ModelNotFoundError(
            f"CLIP image encoder {where} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). "
            "Download it on a machine with network access and set identity.image_encoder to the local folder."
        ) from exc


def load_depth_estimator(ref: str, *, allow_pickle: bool = False):
    """A transformers ``depth-estimation`` pipeline (FaceChain: DPT-large); safetensors only unless ``allow_pickle``."""
    from transformers import pipeline as hf_pipeline

    try:
        return hf_pipeline("depth-estimation", model=str(ref), model_kwargs=safetensors_only(allow_pickle))
    except Exception as exc:
        raise ModelNotFoundError(
            f"depth estimator '{ref}' could not be loaded ({type(exc).__name__}). Download it on a machine with "
            "network access and set depth_estimator to the local folder, or pass a ready depth_image."
        ) from exc


def load_pose_annotator(ref: str, *, allow_pickle: bool, needed_for: str, instead: str, flag: str = "--pose-annotator"):
    """controlnet_aux's OpenPose detector. Its weights ship only as pickle files
    (body_pose_model.pth, hand_pose_model.pth), so it needs ``allow_pickle``. ``needed_for`` and
    ``instead`` complete the error messages (what asked for it; what works without it)."""
    from facechain.errors import require

    if not allow_pickle:
        raise UnsafeCheckpointError(
            f"{needed_for} loads controlnet_aux's OpenPose annotator weights ('{ref}'), which are pickle files (.pth), "
            f"refused by default since loading a pickle can run code. Pass --allow-pickle if you trust them, or {instead}."
        )
    require("controlnet_aux", "turning a pose photo into an OpenPose map", "controlnet-aux")
    from controlnet_aux import OpenposeDetector

    try:
        return OpenposeDetector.from_pretrained(str(ref))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{needed_for} needs the OpenPose annotator weights '{ref}', which could not be loaded ({type(exc).__name__}). "
            f"Download them on a machine with network access (a local folder works as `{flag}`), or {instead}."
        ) from exc


SWAPPER_FILE = "inswapper_128.onnx"


def insightface_root() -> Path:
    """Where insightface keeps its model packs (``models/<pack>``) and the swapper: ``$INSIGHTFACE_HOME``
    or ``~/.insightface``, as insightface itself."""
    return Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface")).expanduser()


def swapper_model_path(path: str | os.PathLike | None = None) -> Path:
    """The face swapper's ONNX file: ``path`` when given, else ``<insightface root>/models/inswapper_128.onnx``."""
    return Path(path).expanduser() if path else insightface_root() / "models" / SWAPPER_FILE
