"""The installed software: which onnxruntime and OpenCV distributions are installed (and the pip commands
that leave one of each), torch and the GPUs it can use, the onnxruntime providers an insightface session
gets, whether ``cv2`` imports, and the face backend ``auto`` picks."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

from facechain.doctor.findings import Finding, gib
from facechain.errors import FacechainError

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
        out.append(Finding("torch", f"cuda:{i}", "ok", f"{name}: {gib(free)} free of {gib(total)}",
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
