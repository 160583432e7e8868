"""Where weights come from. The only module that knows about hubs, folders and checkpoint files.

A base model reference may be:

* a local diffusers folder (``model_index.json`` inside; ``subfolder`` picks a sub-model),
* a single-file checkpoint as model sites ship them (``.safetensors``; pickle formats
  ``.ckpt``/``.bin``/``.pt``/``.pth`` only with ``allow_pickle=True``),
* a Hugging Face hub id (``owner/name``) or a ModelScope id (``owner/name`` + revision such
  as ``v2.0``; FaceChain's default base ``ly261666/cv_portrait_model`` is one).

A hub download fetches only the files that load (:func:`download_plan`): of a pipeline, the components
:func:`load_pipeline` loads (never the safety checker), in the weights variant :func:`plan_component` picks
(``variant`` auto: the fp16 files when running in float16 and they exist). The same rule picks the files of
a local folder, per component, and refuses pickles only in components that load. After the Hugging Face hub
and ModelScope, FaceChain's ModelScope copies (:data:`MODELSCOPE_COPIES`) are tried.

Which model family a model is (SD1.5-family, SDXL) is read from the model's own config (the denoiser's
config for folders and loaded pipelines, the tensor names of single files) by :mod:`facechain.families`,
never from its name or class name.

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

from facechain.errors import FacechainError, InputError, ModelNotFoundError, UnsafeCheckpointError
from facechain.families import family_of_checkpoint_keys as _family_of_keys
from facechain.families import FAMILIES, family_of_folder, family_of_pipeline, get_family

logger = logging.getLogger(__name__)

Hub = Literal["auto", "huggingface", "modelscope"]

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")

@dataclass(frozen=True)
class ResolvedModel:
    """A base model found on disk."""

    path: Path  # a diffusers folder, or a checkpoint file
    format: Literal["diffusers", "single_file"]
    family: str  # the model family's name (facechain.families)
    reference: str  # what the user asked for, for messages and saved configs
    allow_pickle: bool = False  # pickle weight files in a diffusers folder may load (tensors-only)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "family": self.family, "reference": self.reference}


def native_size(pipe) -> int:
    """A loaded pipeline's native image side (512 SD1.5, 1024 SDXL), as its family reads it."""
    return family_of_pipeline(pipe).native_size_of(pipe)


def family_of_checkpoint_keys(keys, where: str) -> str:
    """The family name of a single-file checkpoint, from its tensor names (facechain.families decides)."""
    return _family_of_keys(keys, where).name


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


# --------------------------------------------------------------------------- weight files, variants, components

Variant = Literal["auto", "fp16", "none"]
VARIANTS = ("auto", "fp16", "none")
VARIANT_HELP = ("weights variant: auto (the fp16 files when running in float16 and they exist; a component saved only "
                "as fp16 files loads those in any dtype), fp16, or none (the full-precision files)")
# File stems diffusers (diffusion_pytorch_model) and transformers (model, pytorch_model) read in from_pretrained.
# Other weight files in a folder (OpenPoseXL2.safetensors, open_clip_model.safetensors) are not loaded by it.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
# Pipeline components generation never loads: FaceChain's and diffusers' safety checker (1.2 GB in SD1.5 repos,
# often pickle-only in 2023 conversions) and its image processor; an identity adapter brings its own image encoder.
SKIPPED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
# Small files a component or model folder needs besides its weights (configs, tokenizer vocabularies).
_SIDE_SUFFIXES = (".json", ".txt", ".model")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {list(VARIANTS)}, got {variant!r}. auto picks the fp16 files when "
                         "running in float16 and they exist.")
    return variant


def weight_file_kind(name: str) -> tuple[str, str | None] | None:
    """(``"safetensors"`` | ``"pickle"``, variant) of a weight file ``from_pretrained`` reads, with shard indexes
    (``*.safetensors.index[.fp16].json``); None for any other file. The variant is a dotted part after the stem
    (``diffusion_pytorch_model.fp16.safetensors``), diffusers' and transformers' naming."""
    base = name.rsplit("/", 1)[-1]
    stem = base.split(".", 1)[0].split("-0", 1)[0]
    if stem not in WEIGHT_STEMS:
        return None
    parts = base.split(".")
    if ".safetensors" in base:
        fmt = "safetensors"
    elif any(base.endswith(s) or f"{s}.index" in base for s in PICKLE_SUFFIXES):
        fmt = "pickle"
    else:
        return None
    variant = next((p.split("-", 1)[0] for p in parts[1:-1] if p.startswith("fp16")), None)
    return fmt, variant


@dataclass(frozen=True)
class ComponentPlan:
    """The weight files of one component (a pipeline sub-folder, or a model folder: ``name`` ""), and the variant
    they are loaded as (None: the full-precision files)."""

    name: str
    variant: str | None
    files: tuple[str, ...]

    @property
    def format(self) -> str | None:
        return weight_file_kind(self.files[0])[0] if self.files else None


def plan_component(names, *, where: str, half: bool, variant: str = "auto", allow_pickle: bool = False,
                   component: str = "", needs_weights: bool = True) -> ComponentPlan:
    """Which of ``names`` (a component's file names) load, by one rule for local folders and hub listings:
    safetensors before pickles (pickles only with ``allow_pickle``); variant ``auto`` takes the fp16 files when
    ``half`` and they exist, else the full-precision files, else (a folder saved only as fp16) the fp16 files;
    ``fp16``/``none`` take only those. ``where`` names the model in errors."""
    check_variant(variant)
    found: dict[tuple[str, str | None], list[str]] = {}
    for n in names:
        kind = weight_file_kind(n)
        if kind:
            found.setdefault(kind, []).append(n)
    label = f"{where}" + (f" component '{component}'" if component else "")
    if not found:
        if needs_weights:
            raise InputError(f"{label} has no weight files (diffusion_pytorch_model.* / model.*), so it cannot be "
                             "loaded. Pass a complete diffusers folder or hub id.")
        return ComponentPlan(component, None, ())
    order = {"fp16": ["fp16"], "none": [None]}.get(variant, ["fp16", None] if half else [None, "fp16"])
    formats = ["safetensors", "pickle"] if allow_pickle else ["safetensors"]
    for fmt in formats:  # a safetensors file of any variant before a pickle
        for v in order:
            if (fmt, v) in found:
                return ComponentPlan(component, v, tuple(sorted(found[(fmt, v)])))
    shown = ", ".join(sorted(n.rsplit("/", 1)[-1] for files in found.values() for n in files))
    if not allow_pickle and all(fmt == "pickle" for fmt, _ in found):
        raise UnsafeCheckpointError(
            f"{label} ships its weights only as pickle files ({shown}); loading a pickle can run arbitrary code, so "
            "facechain refuses it by default. Use a copy saved with safetensors, or pass --allow-pickle "
            "(allow_pickle: true) if you trust its source (tensors-only loading).")
    have = sorted({v or "none" for fmt, v in found if fmt in formats})
    raise InputError(f"{label}: variant '{variant}' was asked for, and its weight files ({shown}) are of the "
                     f"variant(s) {have}. Set variant: auto (or one of {have}).")


def _needs_weights(folder: Path) -> bool:
    """A model folder (its config names a diffusers ``_class_name`` or transformers ``architectures``) needs
    weights; a scheduler or tokenizer folder does not."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except ValueError:
        return False
    return isinstance(data, dict) and ("_class_name" in data or "architectures" in data)


def loaded_components(model_index: dict | None, folders) -> list[str]:
    """The pipeline components ``load_pipeline`` loads: those ``model_index.json`` names with a class (not
    ``[null, null]``) and that exist as folders, less :data:`SKIPPED_COMPONENTS`; without a model index, every
    sub-folder but those."""
    folders = set(folders)
    if model_index is None:
        names = folders
    else:
        names = {k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, (list, tuple))
                 and len(v) == 2 and v[0] is not None and v[1] is not None}
    return sorted(n for n in names & folders if n not in SKIPPED_COMPONENTS)


def _read_model_index(folder: Path) -> dict | None:
    index = folder / "model_index.json"
    return json.loads(index.read_text()) if index.is_file() else None


def plan_folder(folder: Path, ref: str, *, half: bool, variant: str = "auto", allow_pickle: bool = False,
                ) -> dict[str, ComponentPlan]:
    """:func:`plan_component` for every component of a diffusers pipeline folder that is loaded."""
    folders = [p.name for p in folder.iterdir() if p.is_dir()]
    comps = loaded_components(_read_model_index(folder), folders)
    return {c: plan_component([f.name for f in (folder / c).iterdir() if f.is_file()], where=f"base model '{ref}'",
                              half=half, variant=variant, allow_pickle=allow_pickle, component=c,
                              needs_weights=_needs_weights(folder / c))
            for c in comps}


def check_folder_weights(folder: Path, ref: str) -> None:
    """Refuse a diffusers folder when a component that is loaded ships its weights only as pickle files (a
    pickle-only ``safety_checker/``, never loaded, is no reason). Any variant counts."""
    folders = [p.name for p in folder.iterdir() if p.is_dir()]
    for c in loaded_components(_read_model_index(folder), folders):
        names = [f.name for f in (folder / c).iterdir() if f.is_file()]
        kinds = {weight_file_kind(n) for n in names} - {None}
        if kinds and all(fmt == "pickle" for fmt, _ in kinds):
            plan_component(names, where=f"base model '{ref}' ({folder})", half=False, component=c)  # raises


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


# ModelScope copies of hub repos the defaults name, tried after the hub (in this order) by every loader: the
# copies FaceChain itself loads (its inference code: damo/face_chain_control_model v1.0.1 model_controlnet/*,
# ly261666/cv_wanx_style_model v1.0.3 contronet-canny, the LCM-LoRA copies). Written ``owner/name[@revision][/path]``.
MODELSCOPE_COPIES: dict[str, tuple[str, ...]] = {
    "lllyasviel/control_v11p_sd15_openpose": (
        "damo/face_chain_control_model@v1.0.1/model_controlnet/control_v11p_sd15_openpose",),
    "lllyasviel/control_v11f1p_sd15_depth": (
        "damo/face_chain_control_model@v1.0.1/model_controlnet/control_v11p_sd15_depth",),
    "lllyasviel/control_v11p_sd15_canny": ("ly261666/cv_wanx_style_model@v1.0.3/contronet-canny",),
    "Intel/dpt-large": ("damo/face_chain_control_model@v1.0.1/model_controlnet/dpt-large",),
    "latent-consistency/lcm-lora-sdv1-5": ("eavesy/lcm-lora-sdv1-5",),
    "latent-consistency/lcm-lora-sdxl": ("AI-ModelScope/lcm-lora-sdxl",),
}
HUB_REF_HELP = ("a hub id owner/name (a diffusers folder), owner/name/sub/folder, or owner/name/FILE.safetensors "
                "(one file in a repo); owner/name@REVISION/... picks a revision")


@dataclass(frozen=True)
class HubSource:
    """One place a model can come from: a repo on a hub, its revision, and a sub folder or file inside it."""

    hub: Literal["huggingface", "modelscope"]
    repo: str
    revision: str | None = None
    path: str = ""

    def __str__(self) -> str:
        return (f"{self.hub}: {self.repo}" + (f"@{self.revision}" if self.revision else "")
                + (f"/{self.path}" if self.path else ""))


def parse_hub_ref(ref: str) -> tuple[str, str | None, str] | None:
    """``owner/name[@revision][/path]`` -> (repo, revision, path); None when ``ref`` is not of that form."""
    ref = str(ref).strip()
    parts = ref.split("/")
    if len(parts) < 2 or not all(parts) or ref.startswith((".", "~")) or any(p in (".", "..") for p in parts):
        return None
    name, _, revision = parts[1].partition("@")
    if not name or "@" in parts[0]:
        return None
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def hub_sources(ref: str, revision: str | None = None, path: str = "", hub: Hub = "auto") -> list[HubSource]:
    """Where a hub reference is looked for, in order: the Hugging Face hub, ModelScope (the same id), then the
    ModelScope copies in :data:`MODELSCOPE_COPIES`. Empty when ``ref`` is not a hub reference."""
    if hub not in ("auto", "huggingface", "modelscope"):
        raise InputError(f"hub must be one of ['auto', 'huggingface', 'modelscope'], got {hub!r}")
    parsed = parse_hub_ref(ref)
    if parsed is None:
        return []
    repo, rev, sub = parsed
    rev = rev or revision
    hubs = ["huggingface", "modelscope"] if hub == "auto" else [hub]
    out = [HubSource(h, repo, rev, _join(sub, path)) for h in hubs]
    if hub != "huggingface" and not rev:
        for copy in MODELSCOPE_COPIES.get(_join(repo, sub), ()):
            crepo, crev, csub = parse_hub_ref(copy)
            out.append(HubSource("modelscope", crepo, crev, _join(csub, path)))
    return out


def _is_half(dtype) -> bool:
    return str(dtype).replace("torch.", "") == "float16"


def _children(files: list[str], folder: str) -> list[str]:
    """The files directly inside ``folder`` of a repo listing (repo-relative paths)."""
    prefix = f"{folder}/" if folder else ""
    return [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]


def _side_files(files: list[str], folder: str) -> list[str]:
    return [f for f in _children(files, folder) if f.endswith(_SIDE_SUFFIXES) and weight_file_kind(f) is None]


def _other_safetensors(names) -> list[str]:
    """Lone checkpoint files beside a diffusers model's own (``OpenPoseXL2.safetensors``): not loaded by
    ``from_pretrained``, but a ControlNet can be loaded from one."""
    return sorted(n for n in names if n.endswith(".safetensors") and weight_file_kind(n) is None)


def download_plan(files: list[str], path: str = "", *, kind: Literal["pipeline", "model", "controlnet"],
                  where: str, half: bool = False, variant: str = "auto", allow_pickle: bool = False,
                  model_index: dict | None = None) -> list[str]:
    """The files of a repo listing (``files``: repo-relative paths) that a loader reads, so a download fetches
    nothing else: for a pipeline (``kind`` "pipeline", ``path`` its folder) ``model_index.json`` and, of each
    component it loads (:func:`loaded_components`), the configs and the weights :func:`plan_component` picks;
    for a single model the configs and its weights; ``path`` naming a file: that file (and, for a ControlNet,
    the ``config.json`` beside it)."""
    path = path.strip("/")
    if path in files:  # one file
        cfg = _join(path.rpartition("/")[0], "config.json")
        return [path] + ([cfg] if kind == "controlnet" and cfg in files else [])
    under = [f[len(path):].lstrip("/") for f in files if not path or f.startswith(path + "/")]
    if not under:
        raise ModelNotFoundError(f"{where}: the repo has no '{path}' folder or file.")
    if kind == "pipeline":
        return _pipeline_plan(files, path, under, where, half, variant, allow_pickle, model_index)
    names = _children(files, path)
    try:
        plan = plan_component(names, where=where, half=half, variant=variant, allow_pickle=allow_pickle)
    except (UnsafeCheckpointError, InputError) as exc:
        single = _other_safetensors(names) if kind == "controlnet" else []
        if len(single) != 1:
            raise _with_single_files(exc, single) from None
        plan = ComponentPlan("", None, (single[0],))
    return _side_files(files, path) + list(plan.files)


def _pipeline_plan(files, path, under, where, half, variant, allow_pickle, model_index) -> list[str]:
    index = _join(path, "model_index.json")
    if index not in files and _join(path, "unet/config.json") not in files:
        singles = [f for f in _children(files, path)
                   if f.lower().endswith(SAFE_SUFFIXES + (PICKLE_SUFFIXES if allow_pickle else ()))]
        if len(singles) == 1:
            return singles
        raise InputError(f"{where} holds neither a diffusers model (model_index.json) nor exactly one checkpoint "
                         f"file (found {len(singles)}). Name the sub folder or the checkpoint file.")
    folders = {u.split("/", 1)[0] for u in under if "/" in u}
    out = [index] if index in files else []
    for comp in loaded_components(model_index if index in files else None, folders):
        cpath = _join(path, comp)
        plan = plan_component(_children(files, cpath), where=where, half=half, variant=variant,
                              allow_pickle=allow_pickle, component=comp, needs_weights=_join(cpath, "config.json") in files)
        out += _side_files(files, cpath) + list(plan.files)
    return out


def _with_single_files(exc: Exception, single: list[str]) -> Exception:
    """``exc`` with the lone .safetensors files a ControlNet could be loaded from named as references."""
    if not single:
        return exc
    names = [s.rsplit("/", 1)[-1] for s in single]
    return type(exc)(f"{exc} It also holds single-file checkpoints ({', '.join(names)}): to load one, name it "
                     f"after the repo id or folder, e.g. OWNER/NAME/{names[0]}.")


def _hub_files(src: HubSource) -> list[str]:
    if src.hub == "huggingface":
        import huggingface_hub as hf

        return list(hf.list_repo_files(src.repo, revision=src.revision))
    from modelscope.hub.api import HubApi

    return [f["Path"] for f in HubApi().get_model_files(src.repo, revision=src.revision, recursive=True)
            if f.get("Type", "blob") != "tree"]


def _hub_json(src: HubSource, name: str) -> dict:
    if src.hub == "huggingface":
        import huggingface_hub as hf

        local = hf.hf_hub_download(src.repo, name, revision=src.revision)
    else:
        from modelscope.hub.file_download import model_file_download

        local = model_file_download(src.repo, name, revision=src.revision)
    return json.loads(Path(local).read_text())


def _hub_snapshot(src: HubSource, patterns: list[str] | None, local_only: bool = False) -> Path:
    if src.hub == "huggingface":
        import huggingface_hub as hf

        return Path(hf.snapshot_download(src.repo, revision=src.revision, allow_patterns=patterns,
                                         local_files_only=local_only))
    from modelscope.hub.snapshot_download import snapshot_download

    return Path(snapshot_download(src.repo, revision=src.revision, allow_patterns=patterns))


def _hub_local_only(hub: str) -> bool:
    """True: the Hugging Face hub is offline or unreachable, so only its cache is read. ModelScope has no such
    mode here: offline or unreachable, it raises ConnectionError."""
    if hub == "huggingface":
        return _hub_offline() or not _reachable(_hf_endpoint())
    if _hub_offline():
        raise ConnectionError("offline mode (HF_HUB_OFFLINE) is set")
    if not _reachable(_modelscope_endpoint()):
        raise ConnectionError(f"{_modelscope_endpoint()} is unreachable")
    return False


def fetch_from_hub(src: HubSource, *, kind: Literal["pipeline", "model", "controlnet"], where: str,
                   half: bool = False, variant: str = "auto", allow_pickle: bool = False) -> Path:
    """Download from ``src`` only the files :func:`download_plan` names (into the Hugging Face or ModelScope
    cache); returns the local path of ``src.path`` (a folder or a file). Offline, the Hugging Face cache is
    used as it is."""
    if _hub_local_only(src.hub):
        path = _hub_snapshot(src, None, local_only=True) / src.path
        if not path.exists():
            raise FileNotFoundError(f"'{src.path}' is not in the cached copy of {src.repo}")
        return path
    files = _hub_files(src)
    index = _join(src.path, "model_index.json")
    model_index = _hub_json(src, index) if kind == "pipeline" and index in files else None
    patterns = download_plan(files, src.path, kind=kind, where=where, half=half, variant=variant,
                             allow_pickle=allow_pickle, model_index=model_index)
    logger.info("%s: downloading %d files from %s", where, len(patterns), src)
    return _hub_snapshot(src, patterns) / src.path


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def fetch_first(sources: list[HubSource], fetch, where: str, fix: str):
    """``fetch(source)`` for each source in turn; the first that works wins: (source, its result). When none
    does, one error lists every place tried: UnsafeCheckpointError when a source was refused for pickle-only
    weights, else ModelNotFoundError ending with ``fix``."""
    attempts, refused = [], None
    for src in sources:
        try:
            return src, fetch(src)
        except UnsafeCheckpointError as exc:
            refused = refused or exc
            attempts.append(f"{src}: {_first_line(exc)}")
        except Exception as exc:  # network, auth, missing repo or file: reported together
            attempts.append(f"{src}: {_first_line(exc)}")
    offline = " (HF_HUB_OFFLINE is set)" if _hub_offline() else ""
    tried = ("\n  tried: " + "\n  tried: ".join(attempts)) if attempts else ""
    if refused is not None:
        raise UnsafeCheckpointError(f"{refused}{tried}") from refused
    raise ModelNotFoundError(f"{where} could not be found locally or downloaded{offline}.{tried}\n{fix}")


def resolve_model(
    model: str | os.PathLike,
    revision: str | None = None,
    subfolder: str | None = None,
    *,
    allow_pickle: bool = False,
    hub: Hub = "auto",
    dtype=None,
    variant: str = "auto",
) -> ResolvedModel:
    """Find ``model`` on disk, downloading it from a hub if needed: the Hugging Face hub, then ModelScope.
    A download fetches only what :func:`load_pipeline` loads (the ``subfolder``'s components but the safety
    checker, in the ``variant`` that ``dtype`` picks: see :func:`plan_component`).

    Raises ModelNotFoundError naming every way to provide the model when it cannot be had,
    UnsafeCheckpointError for pickle weights (a checkpoint, or a loaded component's) without ``allow_pickle``.
    """
    ref = str(model)
    if not ref:
        raise InputError("base model is empty. Pass a hub id, a local diffusers folder or a .safetensors file.")
    check_variant(variant)
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
    where = f"base model '{ref}'" + (f" revision '{revision}'" if revision else "")
    src, path = fetch_first(
        hub_sources(ref, revision, subfolder or "", hub),
        lambda s: fetch_from_hub(s, kind="pipeline", where=where, half=_is_half(dtype), variant=variant,
                                 allow_pickle=allow_pickle), where,
        "Provide it one of these ways: (1) download it on a machine with network access and pass the local "
        "folder (diffusers layout) or .safetensors file; (2) check the hub id and revision; (3) log in with "
        "`huggingface-cli login` if the repo is gated. To smoke-test an install with no network at all, build a "
        "tiny model with `facechain make-tiny-model OUT_DIR` and pass OUT_DIR.")
    logger.info("base model %s found on %s at %s", ref, src, path)
    if subfolder and not path.exists():
        raise ModelNotFoundError(f"base model '{ref}': sub path '{subfolder}' does not exist in {src}.")
    return _resolve_local(path, None, allow_pickle, ref)


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
    if (path / "model_index.json").is_file() or any((path / f.denoiser / "config.json").is_file() for f in FAMILIES):
        family = family_of_folder(path).name
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
    variant: str = "auto",
    **kwargs,
):
    """Load the text-to-image pipeline of ``resolved`` (its family's, e.g. StableDiffusionPipeline or
    StableDiffusionXLPipeline). Other tasks derive from it with ``Pipeline.from_pipe``.

    ``single_file_config``: a diffusers folder or hub id whose configs describe a single-file
    checkpoint's architecture (default: the family's reference repo, ``Family.reference_repo``).
    ``variant``: which weight files of a diffusers folder load, per component (:func:`plan_component`);
    the safety checker, feature extractor and image encoder are never loaded.
    """
    import inspect

    import torch

    family = get_family(resolved.family)
    cls = family.pipeline_class("txt2img")
    torch_dtype = torch_dtype or torch.float32
    for key, value in family.load_kwargs().items():
        kwargs.setdefault(key, value)
    try:
        if resolved.format == "diffusers":
            for name in SKIPPED_COMPONENTS:
                if name in inspect.signature(cls.__init__).parameters:
                    kwargs.setdefault(name, None)
            kwargs = {**_components_by_plan(resolved, torch_dtype, variant, kwargs), **kwargs}
            return cls.from_pretrained(str(resolved.path), **dtype_kwargs(torch_dtype),
                                       **safetensors_only(resolved.allow_pickle), **kwargs)
        config = str(single_file_config or family.reference_repo)
        return cls.from_single_file(str(resolved.path), config=config, **dtype_kwargs(torch_dtype), **kwargs)
    except (OSError, EnvironmentError) as exc:
        if resolved.format == "single_file":
            raise ModelNotFoundError(
                f"single-file checkpoint {resolved.path} needs the {resolved.family} architecture configs from "
                f"'{single_file_config or family.reference_repo}', which could not be loaded ({exc}). "
                "Pass --single-file-config with a local diffusers folder of the same architecture."
            ) from exc
        raise ModelNotFoundError(f"base model folder {resolved.path} could not be loaded: {exc}") from exc


def _components_by_plan(resolved: ResolvedModel, dtype, variant: str, passed: dict) -> dict:
    """``variant`` and the components diffusers would load in another variant or format than
    :func:`plan_component` picks, loaded here with their own class (from ``model_index.json``). diffusers
    gives every component that has any fp16 file the fp16 variant once ``variant="fp16"`` is passed."""
    import importlib

    plans = {c: p for c, p in plan_folder(resolved.path, resolved.reference, half=_is_half(dtype), variant=variant,
                                          allow_pickle=resolved.allow_pickle).items() if c not in passed}
    common = "fp16" if any(p.variant == "fp16" for p in plans.values()) else None
    index = _read_model_index(resolved.path) or {}
    out = {"variant": common} if common else {}
    for comp, plan in plans.items():
        names = [f.name for f in (resolved.path / comp).iterdir() if f.is_file()]
        derived = common if common and any(len(n.split(".")) > 2 and n.split(".")[1].startswith(common)
                                           for n in names) else None
        if not plan.files or derived == plan.variant or comp not in index:
            continue
        library, class_name = index[comp]
        model_cls = getattr(importlib.import_module(library), class_name)
        logger.info("base model %s: %s loaded from %s", resolved.reference, comp, ", ".join(plan.files))
        out[comp] = model_cls.from_pretrained(str(resolved.path / comp), variant=plan.variant,
                                              use_safetensors=plan.format == "safetensors", **dtype_kwargs(dtype))
    return out


def resolve_weights_file(
    ref: str | os.PathLike,
    *,
    filename: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    what: str = "LoRA",
) -> Path:
    """Find a weights file (a LoRA, a face model): a local file, a local folder + ``filename``,
    or a repo id + ``filename`` on the Hugging Face hub, then on ModelScope, then in the ModelScope copies
    (:data:`MODELSCOPE_COPIES`). Pickle files need ``allow_pickle``."""
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
    check_checkpoint_file(Path(filename), allow_pickle, f"{what} '{ref}' file")  # refused before any download

    def fetch(src: HubSource) -> Path:
        if src.hub == "huggingface":
            import huggingface_hub as hf

            return Path(hf.hf_hub_download(src.repo, src.path, revision=src.revision,
                                           local_files_only=_hub_local_only("huggingface")))
        _hub_local_only("modelscope")
        from modelscope.hub.file_download import model_file_download

        return Path(model_file_download(src.repo, src.path, revision=src.revision))

    _, path = fetch_first(hub_sources(ref, revision, filename), fetch, f"{what} '{ref}' file '{filename}'",
                          "Download the file on a machine with network access and point to the local path instead.")
    return path


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
    _, path = fetch_first(sources, lambda s: fetch_from_hub(s, kind=kind, where=where, half=_is_half(dtype),
                                                          variant=variant, allow_pickle=allow_pickle), where,
                          f"Download it on a machine with network access and set {setting} to the local folder.")
    return path


def _looks_like_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or os.sep != "/" and os.sep in ref


def _load_model_folder(cls, folder: Path, where: str, *, dtype, variant: str, allow_pickle: bool, **kwargs):
    """``cls.from_pretrained(folder)`` with the variant and format :func:`plan_component` picks."""
    plan = plan_component([f.name for f in folder.iterdir() if f.is_file()], where=where, half=_is_half(dtype),
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
        single = _other_safetensors([f.name for f in path.iterdir() if f.is_file()])
        if len(single) != 1:
            raise _with_single_files(exc, single) from None
        return _controlnet_from_file(path / single[0], where, dtype=dtype, allow_pickle=allow_pickle)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{where} could not be loaded from {path} ({_first_line(exc)}). Set "
                                 f"{setting} to a diffusers ControlNet folder (config.json + weights).") from exc


def _controlnet_from_file(path: Path, where: str, *, dtype, allow_pickle: bool):
    """A ControlNet from one checkpoint file: diffusers-layout keys (``controlnet_cond_embedding.*``) are read
    into ``ControlNetModel.from_config(config.json beside the file)``; the original layout goes through
    ``ControlNetModel.from_single_file`` with that config (or, without one, diffusers' own lookup, which needs
    the network once)."""
    from diffusers import ControlNetModel

    check_checkpoint_file(path, allow_pickle, where)
    config = path.parent / "config.json"
    keys = _checkpoint_keys(path)
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
            f"{where}: single-file checkpoint {path} could not be loaded ({_first_line(exc)}). Its architecture "
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
        ref = str(local / subfolder) if local.exists() else _join(str(ref), subfolder)
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
            f"{where} could not be loaded ({_first_line(exc)}). Download it on a machine with network access and "
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
