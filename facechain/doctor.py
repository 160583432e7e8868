"""``facechain doctor``: what this machine really has, as typed findings, each problem with its fix.

Checked, with no download and no network (hub caches are read, never asked):

* torch: version, CUDA build, the CUDA devices and their free memory, and whether a GPU that
  ``nvidia-smi`` sees is usable by torch;
* onnxruntime: which distributions are installed (``onnxruntime``, ``onnxruntime-gpu``, ... all
  install the one module ``onnxruntime``, so two at once means the files of whichever was
  installed last), its available providers, and the providers an insightface session really gets
  (a one-node ONNX model opened with the providers facechain passes to insightface);
* OpenCV: which distributions are installed (the four OpenCV wheels all install ``cv2``; two at
  once is OpenCV's documented breakage) and whether ``cv2`` imports;
* the face backend ``auto`` picks, by loading the registry's candidates in its order with
  insightface downloads switched off (a pack is only looked for under
  :func:`facechain.models.insightface_root`);
* which default models (the hub ids facechain names by default) are cached locally and which
  would be downloaded on first use: Hugging Face's cache (``try_to_load_from_cache``) and
  ModelScope's (``snapshot_download(local_files_only=True)``);
* free disk where the models go and in the current folder.

Why both onnxruntime builds and both OpenCV wheels end up installed: insightface 2.1 declares
``onnxruntime`` (the CPU build) and ``opencv-python``, facexlib ``opencv-python``, controlnet-aux
``opencv-python-headless``; pip resolves each name separately. :func:`fix_commands` gives the pip
commands that leave exactly one of each (``facechain doctor --fix`` runs them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping

Status = Literal["ok", "note", "problem"]
SECTIONS = ("torch", "onnxruntime", "opencv", "face-backend", "models", "disk")

# Every distribution that installs the module `onnxruntime` (Microsoft's PyPI builds).
ONNXRUNTIME_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn")
# Every distribution that installs the module `cv2` (opencv-python's README: "do not install multiple
# different packages in the same environment ... uninstall them all and reinstall only one").
OPENCV_DISTS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
# The OpenCV kept: it needs no libGL/X11 (servers, containers) and facechain opens no windows.
OPENCV_KEPT = "opencv-python-headless"
# The tested pins; requirements.txt, requirements-cpu.txt and requirements-gpu.txt say the same (a test checks).
PINS = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1", "opencv-python-headless": "5.0.0.93"}
# onnxruntime-gpu's extras that bring the CUDA 13 runtime and cuDNN 9 it was built with as pip packages
# (the same nvidia-* packages torch's CUDA 13 build installs).
GPU_EXTRAS = "[cuda,cudnn]"
# Below this much free disk a download of a base model can fail half-way: the SDXL base's fp16
# safetensors alone are about 7 GB (stabilityai/stable-diffusion-xl-base-1.0).
MIN_FREE_DISK = 10 << 30


@dataclass(frozen=True)
class Finding:
    """One fact about the machine. ``fix`` is one line telling what to do about a problem or a note;
    ``commands`` the pip argument lists (after ``python -m pip``) that apply it, where pip can."""

    section: str
    check: str
    status: Status
    detail: str
    fix: str = ""
    commands: tuple[tuple[str, ...], ...] = ()
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "problem"]

    @property
    def exit_code(self) -> int:
        """0 when nothing is a problem, 1 otherwise (notes do not count)."""
        return 1 if self.problems else 0

    def to_dict(self) -> dict:
        return {"problems": len(self.problems), "findings": [asdict(f) for f in self.findings]}


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


# --------------------------------------------------------------------------- distributions


def installed_distributions(path: list[str] | None = None) -> dict[str, str]:
    """Installed distributions, normalized name -> version, from importlib.metadata: those on
    ``path`` (default sys.path; a name found twice counts once, the first, as Python imports it)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions(**({} if path is None else {"path": path})):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
        if name and name not in found:
            found[name] = dist.version
    return found


def _reinstall(installed: list[str], keep: str, spec: str, dists: Mapping[str, str]) -> tuple[tuple[str, ...], ...]:
    """Uninstall every distribution of the shared module, then install ``keep`` alone: uninstalling one of
    two that share files deletes the other's files too, so the kept one is always installed afresh."""
    version = dists.get(keep) or PINS[keep]
    return ((("uninstall", "-y", *installed),) if installed else ()) + (("install", f"{spec}=={version}"),)


def _fix_line(commands) -> str:
    return "run `facechain doctor --fix`, or: " + " && ".join("pip " + shlex.join(c) for c in commands)


def _one_distribution(section: str, module: str, names: tuple[str, ...], dists: Mapping[str, str], keep: str,
                      spec: str, *, why_several: str, why_none: str, why_wrong: str | None = None) -> Finding:
    """Exactly one of ``names`` (the distributions that install ``module``) should be installed, and, with
    ``why_wrong``, it should be ``keep``; else a problem whose commands leave ``spec`` alone."""
    have = [d for d in names if d in dists]
    listed = ", ".join(f"{d} {dists[d]}" for d in have)
    check = f"{module} distributions"
    data = {"installed": {d: dists[d] for d in have}, "wanted": keep}
    if len(have) > 1:
        detail = (f"{listed} are installed together; they all install the module `{module}`, so what loads is the "
                  f"files of whichever was installed last, and removing one deletes the other's files ({why_several})")
    elif not have:
        detail = why_none
    elif why_wrong is not None and have != [keep]:
        detail = f"only {listed} is installed: {why_wrong}"
    else:
        return Finding(section, check, "ok", f"{listed} (one distribution)", data=data)
    commands = _reinstall(have, keep, spec, dists)
    return Finding(section, check, "problem", detail, _fix_line(commands), commands, data)


def onnxruntime_distributions(dists: Mapping[str, str], gpu: bool) -> Finding:
    """The onnxruntime builds installed, judged for a machine with (``gpu``) or without an NVIDIA GPU:
    exactly one, and on a GPU machine the CUDA one (``onnxruntime-gpu``)."""
    keep = "onnxruntime-gpu" if gpu else "onnxruntime"
    return _one_distribution(
        "onnxruntime", "onnxruntime", ONNXRUNTIME_DISTS, dists, keep, keep + (GPU_EXTRAS if gpu else ""),
        why_several="insightface declares the CPU build `onnxruntime`, so pip puts it beside onnxruntime-gpu",
        why_none="no onnxruntime is installed: the insightface face backend and the face swapper cannot run",
        why_wrong="this machine has an NVIDIA GPU, and insightface runs on the CPU (no CUDAExecutionProvider)" if gpu else None)


def opencv_distributions(dists: Mapping[str, str]) -> Finding:
    """The OpenCV wheels installed: exactly one (any of the four), else a problem whose fix keeps
    opencv-python-headless."""
    return _one_distribution(
        "opencv", "cv2", OPENCV_DISTS, dists, OPENCV_KEPT, OPENCV_KEPT,
        why_several="insightface and facexlib declare opencv-python, controlnet-aux opencv-python-headless",
        why_none="no OpenCV is installed (facechain needs cv2)")


def fix_commands(report: DoctorReport) -> list[tuple[str, ...]]:
    """The pip argument lists (after ``python -m pip``) of every problem pip can fix, in report order."""
    return [cmd for f in report.problems for cmd in f.commands]


# --------------------------------------------------------------------------- torch and the GPU


def nvidia_smi_gpus() -> list[str] | None:
    """The GPUs ``nvidia-smi -L`` lists; None when there is no nvidia-smi (no NVIDIA driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("GPU ")] if out.returncode == 0 else []


def check_torch(smi_gpus: list[str] | None) -> list[Finding]:
    try:
        import torch
    except ImportError as exc:
        return [Finding("torch", "torch", "problem", f"torch cannot be imported ({exc})",
                        "install facechain's dependencies: pip install -r requirements-cpu.txt (or -gpu) && pip install -e .")]
    cuda_build = torch.version.cuda
    out = [Finding("torch", "torch", "ok", f"torch {torch.__version__}, "
                   + (f"CUDA {cuda_build} build" if cuda_build else "CPU-only build (no CUDA)"),
                   data={"version": torch.__version__, "cuda_build": cuda_build})]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(count):
        free, total = torch.cuda.mem_get_info(i)
        name = torch.cuda.get_device_name(i)
        out.append(Finding("torch", f"cuda:{i}", "ok", f"{name}: {_gib(free)} free of {_gib(total)}",
                           data={"name": name, "free_bytes": free, "total_bytes": total}))
    if count:
        return out
    if smi_gpus:
        why = ("this torch is a CPU-only build" if not cuda_build else
               f"torch's CUDA {cuda_build} build cannot use them (the NVIDIA driver is older than that CUDA, or the "
               "GPUs are hidden by CUDA_VISIBLE_DEVICES)")
        pins = " ".join(f"{d}=={v.split('+')[0]}" for d, v in installed_distributions().items() if d in ("torch", "torchvision"))
        fix = (f"install torch's CUDA build (PyPI's Linux x86_64 wheels are it): pip uninstall -y torch torchvision "
               f"&& pip install {pins}" if not cuda_build else
               "update the NVIDIA driver to one that supports CUDA " + str(cuda_build)
               + " (nvidia-smi prints the CUDA version the driver supports), or install the torch build for your driver")
        out.append(Finding("torch", "CUDA devices", "problem",
                           f"nvidia-smi lists {len(smi_gpus)} GPU(s) ({smi_gpus[0]}) but {why}: everything runs on the CPU",
                           fix, data={"nvidia_smi": smi_gpus}))
    else:
        out.append(Finding("torch", "CUDA devices", "note", "no CUDA GPU: training and generation run on the CPU (slow)",
                           "use a machine with an NVIDIA GPU for real models", data={"nvidia_smi": smi_gpus}))
    return out


# --------------------------------------------------------------------------- onnxruntime and OpenCV at run time


def _one_node_model() -> bytes:
    """An ONNX model of one Identity node: enough for onnxruntime to place a session on its providers."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "doctor", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def check_onnxruntime_providers(gpu: bool) -> Finding:
    """onnxruntime's available providers, and the ones a session opened as insightface opens its models
    (facechain's provider list, insightface's CUDA library preload) really gets."""
    try:
        import onnxruntime as ort

        from facechain.face.backends.insightface_backend import onnx_providers
    except ImportError as exc:
        return Finding("onnxruntime", "providers", "problem", f"onnxruntime cannot be imported ({exc})",
                       "run `facechain doctor --fix` to reinstall one onnxruntime build")
    available = list(ort.get_available_providers())
    requested = onnx_providers()
    data = {"version": ort.__version__, "available": available, "requested": requested}
    try:
        with contextlib.suppress(ImportError):
            from insightface.model_zoo.onnxruntime_utils import preload_cuda_libraries

            preload_cuda_libraries(requested)
        session = ort.InferenceSession(_one_node_model(), providers=requested)
        got = list(session.get_providers())
    except Exception as exc:  # a broken install, CUDA libraries that fail to load
        return Finding("onnxruntime", "providers", "problem",
                       f"onnxruntime {ort.__version__} could not open a session with {requested} "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
                       "run `facechain doctor --fix` to reinstall one onnxruntime build", data=data)
    data["session"] = got
    return providers_finding(data, gpu)


def providers_finding(data: dict, gpu: bool) -> Finding:
    """Judge a provider probe (``version``, ``available``, ``requested``, ``session``: what the session got):
    on a GPU machine the session must get CUDAExecutionProvider."""
    got, available = data["session"], data["available"]
    detail = f"onnxruntime {data['version']}: available {available}; an insightface session gets {got}"
    if not gpu or "CUDAExecutionProvider" in got:
        return Finding("onnxruntime", "providers", "ok", detail, data=data)
    if "CUDAExecutionProvider" not in available:
        return Finding("onnxruntime", "providers", "problem", f"{detail}: this onnxruntime build has no CUDA provider",
                       "run `facechain doctor --fix` (it installs onnxruntime-gpu alone)", data=data)
    # onnxruntime lists the provider it was built with, then falls back to the CPU when its libraries do not load
    return Finding("onnxruntime", "providers", "problem",
                   f"{detail}: the CUDA provider is built in but did not load (its CUDA 13 runtime or cuDNN 9 "
                   "libraries are missing; onnxruntime's log above names the file)",
                   f"pip install 'onnxruntime-gpu{GPU_EXTRAS}=={PINS['onnxruntime-gpu']}' (brings them as pip "
                   "packages)", data=data)


def check_cv2() -> Finding:
    try:
        import cv2
    except ImportError as exc:  # e.g. opencv-python's libGL.so.1 missing on a server
        return Finding("opencv", "cv2", "problem", f"cv2 cannot be imported ({exc})",
                       f"run `facechain doctor --fix` (keeps {OPENCV_KEPT}, which needs no libGL)")
    return Finding("opencv", "cv2", "ok", f"cv2 {cv2.__version__} from {Path(cv2.__file__).parent}",
                   data={"version": cv2.__version__})


# --------------------------------------------------------------------------- face backend


@contextlib.contextmanager
def _insightface_downloads_off():
    """FACECHAIN_OFFLINE for the block: the insightface backend then reports a missing pack instead
    of fetching it (facechain.face.backends.insightface_backend)."""
    old = os.environ.get("FACECHAIN_OFFLINE")
    os.environ["FACECHAIN_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FACECHAIN_OFFLINE", None)
        else:
            os.environ["FACECHAIN_OFFLINE"] = old


def check_face_backend() -> Finding:
    """The backend ``get_analyzer("auto")`` picks (the registry's own choice, with insightface downloads
    off), and why each candidate before it in AUTO_ORDER was skipped."""
    from facechain.errors import FacechainError
    from facechain.face.registry import AUTO_ORDER, get_analyzer

    with _insightface_downloads_off():
        try:
            picked = get_analyzer("auto").name
        except FacechainError as exc:
            return Finding("face-backend", "auto", "problem", f"no face backend loads ({exc})".replace("\n", " "),
                           "pip install dlib face_recognition_models (works offline)", data={"picked": None})
        reasons: dict[str, str] = {}
        for name in AUTO_ORDER[:AUTO_ORDER.index(picked)] if picked in AUTO_ORDER else ():
            try:  # it failed inside get_analyzer("auto") just now: this only repeats the failure, for its reason
                get_analyzer(name)
            except FacechainError as exc:
                reasons[name] = str(exc).splitlines()[0]
    skipped = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    return Finding("face-backend", "auto", "note" if reasons else "ok",
                   f"auto picks {picked}" + (f" ({skipped})" if skipped else ""),
                   data={"picked": picked, "skipped": reasons})


# --------------------------------------------------------------------------- default models


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
    from dataclasses import fields

    from facechain.adapters import ip_adapter_faceid as faceid
    from facechain.adapters.feedface.train import DEFAULT_IMAGE_ENCODER as FEEDFACE_ENCODER
    from facechain.families import FAMILIES
    from facechain.generate import config as gen
    from facechain.lora import LORA_FILE
    from facechain.server.service import ServeConfig
    from facechain.stylize.config import DEFAULT_MODEL as STYLIZE_MODEL
    from facechain.train.config import FACECHAIN_FACE_LORA

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
            out.append(Finding("models", m.repo_id, "ok", f"{m.used_for}: cached ({hub}: {hit}; {_gib(size)} of its "
                               "files in the cache)", data=data))
            continue
        when = "downloads are off (HF_HUB_OFFLINE), so using it fails" if offline else f"downloaded from {m.hub} on first use"
        out.append(Finding("models", m.repo_id, "note", f"{m.used_for}: {m.filename} not cached{rev}; {when}",
                           m.download + " (where the network reaches the hub; or copy a cache that has it)", data=data))
    out.extend(_insightface_files())
    return out


def _insightface_files() -> list[Finding]:
    from facechain.face.backends.insightface_backend import PACKS
    from facechain.models import SWAPPER_FILE, insightface_root, swapper_model_path

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


# --------------------------------------------------------------------------- disk


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(places: Mapping[str, tuple[Path, str]] | None = None) -> list[Finding]:
    """Free disk at each place (what -> (folder, how to get more room there)); under MIN_FREE_DISK is a problem."""
    if places is None:
        places = {"Hugging Face cache": (hf_cache_dir(), "free space there, or set HF_HUB_CACHE to a folder on a "
                                                         "larger disk"),
                  "current folder": (Path.cwd(), "free space there, or work in a folder on a larger disk")}
    out = []
    for what, (path, fix) in places.items():
        usage = shutil.disk_usage(_existing(path))
        data = {"path": str(path), "free_bytes": usage.free}
        detail = f"{what} ({path}): {_gib(usage.free)} free"
        if usage.free < MIN_FREE_DISK:
            out.append(Finding("disk", what, "problem", f"{detail}, under {_gib(MIN_FREE_DISK)} (an SDXL base model "
                               "is about 7 GB)", fix, data=data))
        else:
            out.append(Finding("disk", what, "ok", detail, data=data))
    return out


# --------------------------------------------------------------------------- all together


def run_doctor(sections: Iterable[str] | None = None) -> DoctorReport:
    """Every check of ``sections`` (default: all of SECTIONS), in that order."""
    from facechain.errors import InputError

    chosen = list(SECTIONS if sections is None else sections)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise InputError(f"doctor sections {unknown} are unknown. Choose from {list(SECTIONS)}.")
    findings: list[Finding] = []
    smi = nvidia_smi_gpus()
    torch_findings = check_torch(smi)
    gpu = bool(smi) or any(f.check.startswith("cuda:") for f in torch_findings)
    dists = installed_distributions()
    checks = {
        "torch": lambda: torch_findings,
        "onnxruntime": lambda: [onnxruntime_distributions(dists, gpu), check_onnxruntime_providers(gpu)],
        "opencv": lambda: [opencv_distributions(dists), check_cv2()],
        "face-backend": lambda: [check_face_backend()],
        "models": check_models,
        "disk": check_disk,
    }
    for section in SECTIONS:
        if section in chosen:
            findings.extend(checks[section]())
    return DoctorReport(tuple(findings))
