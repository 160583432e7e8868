"""The hubs: where a reference is looked for (the Hugging Face hub, ModelScope, then FaceChain's ModelScope
copies), which files of a repo listing a loader reads (:func:`download_plan`), and fetching them, one source
after the other (:func:`fetch_first`)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError
from facechain.io import not_regular_kind
from facechain.models.weights import (
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    SIDE_SUFFIXES,
    ComponentPlan,
    check_checkpoint_file,
    loaded_components,
    plan_component,
    weight_file_kind,
)
from urllib.parse import urlparse
import socket

logger = logging.getLogger(__name__)

Hub = Literal["auto", "huggingface", "modelscope"]


def looks_like_path(ref: str) -> bool:
    """Whether ``ref`` can only be a path on disk (not a hub id ``owner/name``)."""
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


def join_path(*parts: str) -> str:
    """Repo-relative path parts joined with ``/``, empty parts and stray slashes dropped."""
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
    out = [HubSource(h, repo, rev, join_path(sub, path)) for h in hubs]
    if hub != "huggingface" and not rev:
        for copy in MODELSCOPE_COPIES.get(join_path(repo, sub), ()):
            crepo, crev, csub = parse_hub_ref(copy)
            out.append(HubSource("modelscope", crepo, crev, join_path(csub, path)))
    return out


def _children(files: list[str], folder: str) -> list[str]:
    """The files directly inside ``folder`` of a repo listing (repo-relative paths)."""
    prefix = f"{folder}/" if folder else ""
    return [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]


def _side_files(files: list[str], folder: str) -> list[str]:
    return [f for f in _children(files, folder) if f.endswith(SIDE_SUFFIXES) and weight_file_kind(f) is None]


def other_safetensors(names) -> list[str]:
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
        cfg = join_path(path.rpartition("/")[0], "config.json")
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
        single = other_safetensors(names) if kind == "controlnet" else []
        if len(single) != 1:
            raise with_single_files(exc, single) from None
        plan = ComponentPlan("", None, (single[0],))
    return _side_files(files, path) + list(plan.files)


def _pipeline_plan(files, path, under, where, half, variant, allow_pickle, model_index) -> list[str]:
    index = join_path(path, "model_index.json")
    if index not in files and join_path(path, "unet/config.json") not in files:
        singles = [f for f in _children(files, path)
                   if f.lower().endswith(SAFE_SUFFIXES + (PICKLE_SUFFIXES if allow_pickle else ()))]
        if len(singles) == 1:
            return singles
        raise InputError(f"{where} holds neither a diffusers model (model_index.json) nor exactly one checkpoint "
                         f"file (found {len(singles)}). Name the sub folder or the checkpoint file.")
    folders = {u.split("/", 1)[0] for u in under if "/" in u}
    out = [index] if index in files else []
    for comp in loaded_components(model_index if index in files else None, folders):
        cpath = join_path(path, comp)
        plan = plan_component(_children(files, cpath), where=where, half=half, variant=variant,
                              allow_pickle=allow_pickle, component=comp, needs_weights=join_path(cpath, "config.json") in files)
        out += _side_files(files, cpath) + list(plan.files)
    return out


def with_single_files(exc: Exception, single: list[str]) -> Exception:
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
    index = join_path(src.path, "model_index.json")
    model_index = _hub_json(src, index) if kind == "pipeline" and index in files else None
    patterns = download_plan(files, src.path, kind=kind, where=where, half=half, variant=variant,
                             allow_pickle=allow_pickle, model_index=model_index)
    logger.info("%s: downloading %d files from %s", where, len(patterns), src)
    return _hub_snapshot(src, patterns) / src.path


def first_line(exc: Exception) -> str:
    """``Type: first line of the message`` of ``exc``, for one-line reports."""
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
            attempts.append(f"{src}: {first_line(exc)}")
        except Exception as exc:  # network, auth, missing repo or file: reported together
            attempts.append(f"{src}: {first_line(exc)}")
    offline = " (HF_HUB_OFFLINE is set)" if _hub_offline() else ""
    tried = ("\n  tried: " + "\n  tried: ".join(attempts)) if attempts else ""
    if refused is not None:
        raise UnsafeCheckpointError(f"{refused}{tried}") from refused
    raise ModelNotFoundError(f"{where} could not be found locally or downloaded{offline}.{tried}\n{fix}")


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
    kind = not_regular_kind(local)
    if kind is not None:
        raise InputError(f"{what} '{local}' is {kind}, not a regular file. Pass the path of the weights file itself.")
    if looks_like_path(ref) or not filename:
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
