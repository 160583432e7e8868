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
commands that leave exactly one of each (``facechain doctor --fix`` runs the

Its modules: :mod:`~facechain.doctor.findings` (the report's types), :mod:`~facechain.doctor.installs`
(distributions, torch and the GPU, onnxruntime and OpenCV at run time, the face backend),
:mod:`~facechain.doctor.caches` (default models in the hub caches, insightface's files) and
:mod:`~facechain.doctor.disk`; :func:`run_doctor` runs them.
"""

from __future__ import annotations

from typing import Iterable

from facechain.doctor.caches import DefaultModel, check_models, default_models, hf_cache_dir
from facechain.doctor.disk import MIN_FREE_DISK, check_disk
from facechain.doctor.findings import SECTIONS, DoctorReport, Finding, Status, fix_commands
from facechain.doctor.installs import (
    GPU_EXTRAS,
    ONNXRUNTIME_DISTS,
    OPENCV_DISTS,
    OPENCV_KEPT,
    PINS,
    check_cv2,
    check_face_backend,
    check_onnxruntime_providers,
    check_torch,
    installed_distributions,
    nvidia_smi_gpus,
    onnxruntime_distributions,
    opencv_distributions,
    providers_finding,
)
from facechain.errors import InputError


def run_doctor(sections: Iterable[str] | None = None) -> DoctorReport:
    """Every check of ``sections`` (default: all of SECTIONS), in that order."""
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
