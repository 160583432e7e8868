"""The models facechain uses by default and whether each is in a hub cache (Hugging Face's or ModelScope's)
or would be downloaded on first use; insightface's packs and the face swapper on disk. Nothing is asked of
the network."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from facechain.doctor.findings import Finding, gib
from dataclasses import fields
from facechain.adapters import ip_adapter_faceid as faceid
from facechain.face.backends.insightface_backend import PACKS
from facechain.models import SWAPPER_FILE, insightface_root, swapper_model_path
from facechain.train.config import FACECHAIN_FACE_LORA


@dataclass(frozen=True)
class DefaultModel:
    """A model facechain uses by default. ``filename`` is the file whose presence in a hub cache means
    the model is there (the first file its loader reads)."""

    repo_id: str
    filename: str
    used_for: str
    revision: str | None = None
    hub: Literal["huggingface", "modelscope"] = "huggingface"  # where it is published
    include: tuple[str, ...] = ()  # only these files are used (glob patterns); empty = a folder model's every file

    @property
    def download(self) -> str:
        """The command that fetches it into the hub's cache: the file for a single-file model, the repo
        (or its ``include`` files) for a folder model (``filename`` a .json config)."""
        rev = f" --revision {self.revision}" if self.revision else ""
        if self.hub == "modelscope":
            what = "" if self.filename.endswith(".json") else f" {self.filename}"
            return f"modelscope download --model {self.repo_id}{what}{rev}"
        what = (" --include " + " ".join(shlex.quote(p) for p in self.include) if self.include else
                "" if self.filename.endswith(".json") else f" {self.filename}")
        return f"hf download {self.repo_id}{what}{rev}"


def default_models() -> list[DefaultModel]:
    """The hub ids facechain names by default, read from the constants and config defaults that name them."""
    from facechain.adapters.feedface.train import DEFAULT_IMAGE_ENCODER as FEEDFACE_ENCODER
    from facechain.families import FAMILIES
    from facechain.generate import config as gen
    from facechain.lora import LORA_FILE
    from facechain.server.service import ServeConfig
    from facechain.stylize.config import DEFAULT_MODEL as STYLIZE_MODEL

    def default(cls, name):
        return next(f.default for f in fields(cls) if f.name == name)

    base, rev, sub = (default(ServeConfig, n) for n in ("base_model", "revision", "sub_path"))
    out = [DefaultModel(base, f"{sub}/model_index.json", "FaceChain's base model (train_lora.sh, serve)", rev, "modelscope"),
           DefaultModel(FACECHAIN_FACE_LORA[0], FACECHAIN_FACE_LORA[2], "FaceChain's face LoRA (--init_lora facechain)",
                        FACECHAIN_FACE_LORA[1], "modelscope"),
           DefaultModel(gen.FACECHAIN_STYLE_LORA[0], gen.FACECHAIN_STYLE_LORA[2],
                        "FaceChain's style LoRA (default_style_lora: facechain)", gen.FACECHAIN_STYLE_LORA[1], "modelscope"),
           DefaultModel(STYLIZE_MODEL, "model_index.json", "stylize's base model")]
    for family in FAMILIES:
        out.append(DefaultModel(family.reference_repo, f"{family.denoiser}/config.json",
                                f"{family} single-file checkpoints' configs", include=("*.json", "*.txt")))
    for family in FAMILIES:
        if family.fast is not None:
            out.append(DefaultModel(family.fast.lora, LORA_FILE, f"fast mode (LCM-LoRA), {family}"))
    for what in ("openpose", "canny", "depth"):
        for family in FAMILIES:
            if what in family.controlnets:
                out.append(DefaultModel(family.controlnets[what], "config.json", f"{what} ControlNet, {family}"))
    out.append(DefaultModel(default(gen.GenerateConfig, "depth_estimator"), "config.json", "depth estimator (pose photos)"))
    out.append(DefaultModel(default(gen.GenerateConfig, "pose_annotator"), "body_pose_model.pth",
                            "OpenPose annotator (pose photos)"))
    for (adapter, family), name in faceid.CHECKPOINTS.items():
        out.append(DefaultModel(faceid.FACEID_REPO, name, f"identity adapter {adapter}, {family}"))
    encoder, encoder_sub = faceid.DEFAULT_IMAGE_ENCODER
    out.append(DefaultModel(encoder, f"{encoder_sub}/config.json", "Plus v2 identity adapters' image encoder",
                            include=(f"{encoder_sub}/*",)))
    out.append(DefaultModel(FEEDFACE_ENCODER, "config.json", "FeedFace's image encoder"))
    return out


def hf_cache_dir() -> Path:
    """Hugging Face's hub cache: $HF_HUB_CACHE when set now, else huggingface_hub's own resolution."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser()


def _in_hf_cache(model: DefaultModel, cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(model.repo_id, model.filename, cache_dir=str(cache), revision=model.revision)
    return Path(hit) if isinstance(hit, str) else None


def _in_modelscope_cache(model: DefaultModel) -> Path | None:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        return None
    try:
        folder = snapshot_download(model.repo_id, revision=model.revision, local_files_only=True)
    except Exception:  # modelscope raises its own CacheNotFound (and others) for a repo not in its cache
        return None
    path = Path(folder) / model.filename
    return path if path.is_file() else None


def _hf_repo_sizes(cache: Path) -> dict[str, int]:
    """Bytes on disk of each model repo in the Hugging Face cache (huggingface_hub's scan_cache_dir)."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache)
    except Exception:  # CacheNotFound (no cache folder yet) or an unreadable one: no sizes
        return {}
    return {r.repo_id: r.size_on_disk for r in info.repos if r.repo_type == "model"}


def check_models(models: Iterable[DefaultModel] | None = None) -> list[Finding]:
    """One finding per default model: cached (where), or downloaded on first use."""
    cache = hf_cache_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    out = []
    sizes: dict[str, int] | None = None  # scanned once, on the first hit
    for m in default_models() if models is None else models:
        rev = f" (revision {m.revision})" if m.revision else ""
        hit = _in_hf_cache(m, cache)
        hub = "huggingface" if hit else None
        if hit is None:
            hit = _in_modelscope_cache(m)
            hub = "modelscope" if hit else None
        data = {"repo_id": m.repo_id, "revision": m.revision, "file": m.filename, "cached": hub, "path": str(hit or "")}
        if hit:
            if hub == "huggingface":
                sizes = sizes if sizes is not None else _hf_repo_sizes(cache)
                size = sizes.get(m.repo_id, 0)
            else:  # the ModelScope snapshot folder holding the file
                root = hit.parents[len(Path(m.filename).parts) - 1]
                size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            data["size_bytes"] = size
            # a folder model whose download stopped half-way has its config and few of its weights
            out.append(Finding("models", m.repo_id, "ok", f"{m.used_for}: cached ({hub}: {hit}; {gib(size)} of its "
                               "files in the cache)", data=data))
            continue
        when = "downloads are off (HF_HUB_OFFLINE), so using it fails" if offline else f"downloaded from {m.hub} on first use"
        out.append(Finding("models", m.repo_id, "note", f"{m.used_for}: {m.filename} not cached{rev}; {when}",
                           m.download + " (where the network reaches the hub; or copy a cache that has it)", data=data))
    out.extend(_insightface_files())
    return out


def _insightface_files() -> list[Finding]:
    out = []
    for pack in PACKS:
        folder = insightface_root() / "models" / pack
        have = folder.is_dir() and any(folder.glob("*.onnx"))
        out.append(Finding("models", f"insightface {pack}", "ok" if have else "note",
                           f"insightface pack {pack}: " + (f"in {folder}" if have else f"not in {folder}"),
                           "" if have else f"unzip {pack}.zip from insightface's model releases into {folder}",
                           data={"path": str(folder), "cached": "disk" if have else None}))
    swapper = swapper_model_path()
    out.append(Finding("models", SWAPPER_FILE, "ok" if swapper.is_file() else "note",
                       f"face swapper {SWAPPER_FILE}: " + (f"at {swapper}" if swapper.is_file() else f"not at {swapper} "
                                                           "(fusion auto uses the landmark method)"),
                       "" if swapper.is_file() else f"put {SWAPPER_FILE} at {swapper}",
                       data={"path": str(swapper), "cached": "disk" if swapper.is_file() else None}))
    return out
