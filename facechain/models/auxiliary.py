"""The helper models: ControlNets, the CLIP image encoder, the depth estimator, the OpenPose annotator, and
where insightface keeps its models and the face swapper. (Not ``aux.py``: Windows reserves that name.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from facechain.errors import FacechainError, InputError, ModelNotFoundError, UnsafeCheckpointError
from facechain.models.device import dtype_kwargs, is_half
from facechain.models.hub import (
    HUB_REF_HELP,
    fetch_first,
    fetch_from_hub,
    first_line,
    hub_sources,
    join_path,
    other_safetensors,
    with_single_files,
)
from facechain.models.weights import (
    check_checkpoint_file,
    check_variant,
    checkpoint_keys,
    plan_component,
    read_weights_file,
    safetensors_only,
)
from facechain.errors import require


def _fetch_model(ref: str, where: str, kind: Literal["model", "controlnet"], *, dtype, variant: str,
                 allow_pickle: bool, setting: str) -> Path:
    """The local folder or file of a single model: ``ref`` itself when it exists on disk, else downloaded
    (only what loads) from the first of :func:`hub_sources` that has it."""
    local = Path(str(ref)).expanduser()
    if local.exists():
        return local
    sources = [] if _looks_like_local(str(ref)) else hub_sources(str(ref))
    if not sources:
        raise ModelNotFoundError(f"{where} could not be loaded: {local} does not exist. Set {setting} to an existing "
                                 f"folder or file, or to {HUB_REF_HELP}.")
    _, path = fetch_first(sources, lambda s: fetch_from_hub(s, kind=kind, where=where, half=is_half(dtype),
                                                          variant=variant, allow_pickle=allow_pickle), where,
                          f"Download it on a machine with network access and set {setting} to the local folder.")
    return path


def _looks_like_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or os.sep != "/" and os.sep in ref


def _load_model_folder(cls, folder: Path, where: str, *, dtype, variant: str, allow_pickle: bool, **kwargs):
    """``cls.from_pretrained(folder)`` with the variant and format :func:`plan_component` picks."""
    plan = plan_component([f.name for f in folder.iterdir() if f.is_file()], where=where, half=is_half(dtype),
                          variant=variant, allow_pickle=allow_pickle)
    return cls.from_pretrained(str(folder), variant=plan.variant, use_safetensors=plan.format == "safetensors",
                               **dtype_kwargs(dtype), **kwargs)


def load_controlnet(ref: str, *, dtype, what: str, allow_pickle: bool = False, variant: str = "auto"):
    """A ControlNet with diffusers' ``ControlNetModel``. ``ref``: a local diffusers folder or file, or
    :data:`HUB_REF_HELP` (Hugging Face hub, then ModelScope, then :data:`MODELSCOPE_COPIES`). A folder whose
    diffusers weights are pickles but that holds one other .safetensors file (as
    ``thibaud/controlnet-openpose-sdxl-1.0``: ``diffusion_pytorch_model.bin`` + ``OpenPoseXL2.safetensors``)
    loads that file. Safetensors only unless ``allow_pickle``; ``what``: the control it gives ("openpose",
    "depth", "canny"), for messages and the setting's name."""
    check_variant(variant)
    where = f"{what} ControlNet '{ref}'"
    setting = f"controlnet_{what.split()[0]}"
    path = _fetch_model(ref, where, "controlnet", dtype=dtype, variant=variant, allow_pickle=allow_pickle,
                        setting=setting)
    from diffusers import ControlNetModel

    if path.is_file():
        return _controlnet_from_file(path, where, dtype=dtype, allow_pickle=allow_pickle)
    try:
        return _load_model_folder(ControlNetModel, path, where, dtype=dtype, variant=variant, allow_pickle=allow_pickle)
    except (UnsafeCheckpointError, InputError) as exc:
        single = other_safetensors([f.name for f in path.iterdir() if f.is_file()])
        if len(single) != 1:
            raise with_single_files(exc, single) from None
        return _controlnet_from_file(path / single[0], where, dtype=dtype, allow_pickle=allow_pickle)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{where} could not be loaded from {path} ({first_line(exc)}). Set "
                                 f"{setting} to a diffusers ControlNet folder (config.json + weights).") from exc


def _controlnet_from_file(path: Path, where: str, *, dtype, allow_pickle: bool):
    """A ControlNet from one checkpoint file: diffusers-layout keys (``controlnet_cond_embedding.*``) are read
    into ``ControlNetModel.from_config(config.json beside the file)``; the original layout goes through
    ``ControlNetModel.from_single_file`` with that config (or, without one, diffusers' own lookup, which needs
    the network once)."""
    from diffusers import ControlNetModel

    check_checkpoint_file(path, allow_pickle, where)
    config = path.parent / "config.json"
    keys = checkpoint_keys(path)
    if any(k.startswith("controlnet_cond_embedding.") for k in keys):
        if not config.is_file():
            raise ModelNotFoundError(f"{where}: {path.name} holds diffusers-layout ControlNet weights, whose "
                                     f"architecture is read from a config.json beside it; there is none in "
                                     f"{path.parent}. Put the repo's config.json there.")
        model = ControlNetModel.from_config(ControlNetModel.load_config(str(path.parent)))
        missing, unexpected = model.load_state_dict(read_weights_file(path, where), strict=False)
        if missing or unexpected:
            raise InputError(f"{where}: {path.name} does not match its config.json ({len(missing)} weights missing, "
                             f"{len(unexpected)} unexpected, e.g. {(list(missing) + list(unexpected))[:2]}).")
        return model.to(dtype)
    try:
        kwargs = {"config": str(path.parent)} if config.is_file() else {}
        return ControlNetModel.from_single_file(str(path), **kwargs, **dtype_kwargs(dtype))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{where}: single-file checkpoint {path} could not be loaded ({first_line(exc)}). Its architecture "
            "comes from a config.json beside the file (a diffusers ControlNet config of the same family) or, "
            "without one, from diffusers' reference repo, which needs network access once.") from exc


def load_image_encoder(ref: str, *, dtype, allow_pickle: bool = False, variant: str = "auto", subfolder: str = ""):
    """A CLIP image encoder (transformers' ``CLIPVisionModelWithProjection``; local folder, or hub id: Hugging
    Face, then ModelScope; ``subfolder`` inside it, e.g. ``h94/IP-Adapter`` + ``models/image_encoder``) for the
    IP-Adapter Plus variants and FeedFace; only its config and weights (``model*.safetensors`` in the chosen
    variant) are downloaded. Safetensors only unless ``allow_pickle``."""
    from transformers import CLIPVisionModelWithProjection

    check_variant(variant)
    if subfolder:
        local = Path(str(ref)).expanduser()
        ref = str(local / subfolder) if local.exists() else join_path(str(ref), subfolder)
    where = f"CLIP image encoder '{ref}'"
    path = _fetch_model(ref, where, "model", dtype=dtype, variant=variant, allow_pickle=allow_pickle,
                        setting="identity.image_encoder")
    try:
        return _load_model_folder(CLIPVisionModelWithProjection, path, where, dtype=dtype, variant=variant,
                                  allow_pickle=allow_pickle)
    except FacechainError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{where} could not be loaded ({first_line(exc)}). Download it on a machine with network access and "
            "set identity.image_encoder to the local folder."
        ) from exc


def load_depth_estimator(ref: str, *, allow_pickle: bool = False):
    """A transformers ``depth-estimation`` pipeline (FaceChain: DPT-large): a local folder, or a hub id (Hugging
    Face, then ModelScope, then FaceChain's copy in :data:`MODELSCOPE_COPIES`), downloading only its configs and
    weights; safetensors only unless ``allow_pickle``."""
    from transformers import pipeline as hf_pipeline

    where = f"depth estimator '{ref}'"
    path = _fetch_model(ref, where, "model", dtype=None, variant="auto", allow_pickle=allow_pickle,
                        setting="depth_estimator (or pass a ready depth_image)")
    try:
        return hf_pipeline("depth-estimation", model=str(path), model_kwargs=safetensors_only(allow_pickle))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{where} could not be loaded from {path} ({type(exc).__name__}). Download it on a machine with "
            "network access and set depth_estimator to the local folder, or pass a ready depth_image."
        ) from exc


def load_pose_annotator(ref: str, *, allow_pickle: bool, needed_for: str, instead: str, flag: str = "--pose-annotator"):
    """controlnet_aux's OpenPose detector. Its weights ship only as pickle files
    (body_pose_model.pth, hand_pose_model.pth), so it needs ``allow_pickle``. ``needed_for`` and
    ``instead`` complete the error messages (what asked for it; what works without it)."""
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
