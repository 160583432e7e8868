"""`facechain doctor`: the install files agree, duplicate onnxruntime/OpenCV wheels are found (on real
importlib.metadata data written to a folder), a default model in a Hugging Face cache of the real layout
shows as cached, and on this machine the report matches what torch, onnxruntime, importlib.metadata and the
face registry say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from facechain import doctor
from facechain.doctor import (GPU_EXTRAS, ONNXRUNTIME_DISTS, OPENCV_DISTS, OPENCV_KEPT, PINS, DefaultModel,
                              DoctorReport, fix_commands, installed_distributions, onnxruntime_distributions,
                              opencv_distributions)

ROOT = Path(__file__).resolve().parents[2]


def _requirements(name: str) -> list[Requirement]:
    """The requirements of one file, following its `-r` includes."""
    out = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out += _requirements(line[3:].strip())
        elif line:
            out.append(Requirement(line))
    return out


def _names(reqs, among) -> list[str]:
    return [r.name for r in reqs if r.name in among]


@pytest.mark.unit
def test_install_files_pin_one_onnxruntime_and_one_opencv_per_route():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {r.name: r for r in map(Requirement, project["dependencies"])}
    extras = {k: [Requirement(r) for r in v] for k, v in project["optional-dependencies"].items()}
    shared = _requirements("requirements.txt")
    # every shared pin is one of pyproject's dependencies (or of its test extra), inside its bounds (the bounds are
    # the tested versions)
    declared = {**{r.name: r for r in extras.get("test", [])}, **core}
    for req in shared:
        assert req.name in declared, f"requirements.txt pins {req.name}, which pyproject.toml does not depend on"
        (pin,) = req.specifier
        assert pin.operator == "==" and declared[req.name].specifier.contains(pin.version), (req, declared[req.name])
    assert not _names(shared, ONNXRUNTIME_DISTS) and not _names(core.values(), ONNXRUNTIME_DISTS)
    for route, dist in (("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")):
        reqs = _requirements(f"requirements-{route}.txt")
        assert _names(reqs, ONNXRUNTIME_DISTS) == [dist], route
        (ort,) = [r for r in reqs if r.name == dist]
        assert str(ort.specifier) == f"=={PINS[dist]}"  # the version `facechain doctor --fix` installs
        assert _names(extras[route], ONNXRUNTIME_DISTS) == [dist]
        (bound,) = [r for r in extras[route] if r.name == dist]
        assert bound.specifier.contains(PINS[dist]), (route, bound)
        if route == "gpu":
            assert ort.extras == bound.extras == set(GPU_EXTRAS.strip("[]").split(","))
        assert _names(reqs, OPENCV_DISTS) == [OPENCV_KEPT]  # shared pins included once
    assert _names(shared, OPENCV_DISTS) == _names(core.values(), OPENCV_DISTS) == [OPENCV_KEPT]
    (cv,) = [r for r in shared if r.name == OPENCV_KEPT]
    assert str(cv.specifier) == f"=={PINS[OPENCV_KEPT]}"


def _site(tmp_path: Path, dists: dict[str, str]) -> list[str]:
    """A folder of installed-distribution metadata (``<name>-<version>.dist-info/METADATA``), as pip writes it."""
    for name, version in dists.items():
        info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return [str(tmp_path)]


@pytest.mark.unit
def test_both_builds_and_both_opencv_wheels_are_problems_with_their_fix(tmp_path):
    dists = installed_distributions(_site(tmp_path, {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1",
                                                     "opencv-python": "5.1.0.95", "opencv_python_headless": "5.1.0.95",
                                                     "numpy": "2.4.6"}))
    assert dists == {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1", "opencv-python": "5.1.0.95",
                     "opencv-python-headless": "5.1.0.95", "numpy": "2.4.6"}
    gpu = onnxruntime_distributions(dists, gpu=True)
    assert gpu.status == "problem" and "onnxruntime 1.32.0, onnxruntime-gpu 1.31.1 are installed together" in gpu.detail
    assert gpu.commands == (("uninstall", "-y", "onnxruntime", "onnxruntime-gpu"),
                            ("install", "onnxruntime-gpu[cuda,cudnn]==1.31.1"))
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]==1.31.1'" in gpu.fix
    cpu = onnxruntime_distributions(dists, gpu=False)
    assert cpu.status == "problem" and cpu.commands[-1] == ("install", "onnxruntime==1.32.0")
    cv = opencv_distributions(dists)
    assert cv.status == "problem" and "opencv-python 5.1.0.95, opencv-python-headless 5.1.0.95" in cv.detail
    # the kept wheel is installed afresh at its own version: uninstalling the other deleted the shared cv2 files
    assert cv.commands == (("uninstall", "-y", "opencv-python", "opencv-python-headless"),
                           ("install", "opencv-python-headless==5.1.0.95"))
    report = DoctorReport((gpu, cv))
    assert report.exit_code == 1 and fix_commands(report) == [*gpu.commands, *cv.commands]


@pytest.mark.unit
@pytest.mark.parametrize("installed, gpu, status, last", [
    ({"onnxruntime": "1.32.0"}, False, "ok", None),
    ({"onnxruntime-gpu": "1.31.1"}, False, "ok", None),  # the GPU build runs on the CPU too
    ({"onnxruntime-gpu": "1.31.1"}, True, "ok", None),
    ({"onnxruntime": "1.32.0"}, True, "problem", ("install", "onnxruntime-gpu[cuda,cudnn]==1.31.1")),
    ({}, False, "problem", ("install", "onnxruntime==1.32.0")),
])
def test_onnxruntime_build_for_the_machine(installed, gpu, status, last):
    found = onnxruntime_distributions({"numpy": "2.4.6", **installed}, gpu=gpu)
    assert found.status == status
    assert (found.commands[-1] if found.commands and status == "problem" else None) == last
    if not installed:
        assert found.commands == (last,)  # nothing to uninstall


@pytest.mark.unit
def test_a_gpu_machine_needs_the_cuda_provider_in_the_session():
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    built_in = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def judge(available, session, gpu):
        return doctor.providers_finding({"version": "1.31.1", "available": available, "requested": session,
                                         "session": session}, gpu)

    assert judge(cpu_only, ["CPUExecutionProvider"], gpu=False).status == "ok"
    assert judge(built_in, ["CUDAExecutionProvider", "CPUExecutionProvider"], gpu=True).status == "ok"
    no_cuda = judge(cpu_only, ["CPUExecutionProvider"], gpu=True)
    assert no_cuda.status == "problem" and "no CUDA provider" in no_cuda.detail and "--fix" in no_cuda.fix
    # onnxruntime-gpu whose CUDA libraries do not load (seen with onnxruntime-gpu 1.31.1 and no libcublasLt.so.13):
    # the provider is listed as available, and the session falls back to the CPU
    not_loaded = judge(built_in, ["CPUExecutionProvider"], gpu=True)
    assert not_loaded.status == "problem" and "did not load" in not_loaded.detail
    assert "onnxruntime-gpu[cuda,cudnn]==1.31.1" in not_loaded.fix


@pytest.mark.unit
def test_one_opencv_wheel_is_fine_none_is_a_problem():
    assert opencv_distributions({"opencv-python": "5.0.0.93"}).status == "ok"
    none = opencv_distributions({"numpy": "2.4.6"})
    assert none.status == "problem" and none.commands == (("install", f"{OPENCV_KEPT}=={PINS[OPENCV_KEPT]}"),)


@pytest.mark.unit
def test_torch_without_cuda_devices():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    findings = doctor.check_torch(None)  # no nvidia-smi: a CPU machine
    assert [f.status for f in findings] == ["ok", "note"]
    assert findings[0].data == {"version": torch.__version__, "cuda_build": torch.version.cuda}
    # nvidia-smi lists a GPU that torch cannot use: a problem, with the fix for this torch build
    (_, gpu) = doctor.check_torch(["GPU 0: NVIDIA H200 (UUID: GPU-0)"])
    assert gpu.status == "problem" and "nvidia-smi lists 1 GPU(s)" in gpu.detail
    assert ("update the NVIDIA driver" if torch.version.cuda else "pip uninstall -y torch torchvision") in gpu.fix


@pytest.mark.unit
def test_default_models_are_the_ones_facechain_names():
    from facechain.families import default_controlnets, fast_loras, reference_repos
    from facechain.generate import config as gen
    from facechain.train.config import FACECHAIN_FACE_LORA

    LCM_LORAS, SINGLE_FILE_CONFIGS = fast_loras(), reference_repos()

    repos = {m.repo_id for m in doctor.default_models()}
    named = {*LCM_LORAS.values(), *SINGLE_FILE_CONFIGS.values(), *default_controlnets("openpose").values(),
             *default_controlnets("canny").values(), *default_controlnets("depth").values(),
             FACECHAIN_FACE_LORA[0], gen.FACECHAIN_STYLE_LORA[0], "ly261666/cv_portrait_model", "Intel/dpt-large"}
    assert named <= repos, named - repos
    for m in doctor.default_models():
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", m.repo_id), m


def _hf_cache_with(cache: Path, repo_id: str, filename: str) -> Path:
    """A Hugging Face hub cache holding one file of ``repo_id`` in huggingface_hub's layout:
    models--owner--name/{refs/main, blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>}."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    tmp = cache / "weights.tmp"
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet.down.weight": torch.zeros(2, 2)}, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    tmp.rename(repo / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True)
    snap.symlink_to(os.path.relpath(repo / "blobs" / digest, snap.parent))
    return snap


@pytest.mark.unit
def test_a_model_in_the_hub_cache_shows_as_cached(tmp_path, monkeypatch):
    from facechain.families import fast_loras
    from facechain.lora import LORA_FILE

    LCM_LORAS = fast_loras()

    repo = LCM_LORAS["sd15"]
    snap = _hf_cache_with(tmp_path / "hub", repo, LORA_FILE)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (found,) = [f for f in doctor.check_models([DefaultModel(repo, LORA_FILE, "LCM")]) if f.check == repo]
    assert found.status == "ok" and found.data["cached"] == "huggingface" and Path(found.data["path"]) == snap
    assert found.data["size_bytes"] == snap.resolve().stat().st_size  # the one blob, as huggingface_hub counts it


@pytest.mark.slow  # loads dlib and imports insightface: about 9 s on 2 cores
def test_auto_backend_is_the_registrys_pick_and_nothing_is_fetched(tmp_path, monkeypatch):
    from facechain.face.registry import get_analyzer

    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "insightface"))  # no pack on disk
    monkeypatch.delenv("FACECHAIN_OFFLINE", raising=False)
    found = doctor.check_face_backend()
    assert "FACECHAIN_OFFLINE" not in os.environ  # switched on only during the check
    assert found.data["picked"] == get_analyzer("auto").name == "dlib"
    assert "insightface" in found.data["skipped"] and "buffalo_l" in found.data["skipped"]["insightface"]
    assert not (tmp_path / "insightface").exists()  # no download was begun


@pytest.mark.slow
def test_doctor_json_reports_this_machine(tmp_path):
    import onnxruntime as ort
    import torch

    from facechain.families import fast_loras
    from facechain.lora import LORA_FILE

    LCM_LORAS = fast_loras()

    from facechain.train.config import FACECHAIN_FACE_LORA

    _hf_cache_with(tmp_path / "hub", LCM_LORAS["sd15"], LORA_FILE)
    # FaceChain's face LoRA in ModelScope's cache layout: models/<owner>--<name>/snapshots/<revision>/<file>
    face_lora, face_lora_revision, face_lora_file = FACECHAIN_FACE_LORA
    ms_file = (tmp_path / "modelscope" / "models" / face_lora.replace("/", "--") / "snapshots" / face_lora_revision
               / face_lora_file)
    ms_file.parent.mkdir(parents=True)
    ms_file.write_bytes(b"\0" * 1000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(tmp_path / "hub"),
           "INSIGHTFACE_HOME": str(tmp_path / "insightface"), "MODELSCOPE_CACHE": str(tmp_path / "modelscope")}
    run = subprocess.run([sys.executable, "-m", "facechain", "doctor", "--json"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    report = json.loads(run.stdout)
    by = {(f["section"], f["check"]): f for f in report["findings"]}
    assert run.returncode == (1 if report["problems"] else 0)
    assert report["problems"] == sum(f["status"] == "problem" for f in report["findings"])
    assert by[("torch", "torch")]["data"] == {"version": torch.__version__, "cuda_build": torch.version.cuda}
    cuda = torch.cuda.is_available()
    assert any(check.startswith("cuda:") for _, check in by) == cuda
    providers = by[("onnxruntime", "providers")]["data"]
    assert providers["available"] == ort.get_available_providers()
    assert set(providers["session"]) <= set(providers["available"])
    if not cuda:
        assert providers["session"] == ["CPUExecutionProvider"]
    dists = installed_distributions()
    for section, names in (("onnxruntime", ONNXRUNTIME_DISTS), ("opencv", OPENCV_DISTS)):
        found = next(f for (s, _), f in by.items() if s == section and f["data"].get("installed") is not None)
        installed = {d: dists[d] for d in names if d in dists}
        assert found["data"]["installed"] == installed
        if len(installed) > 1:
            assert found["status"] == "problem" and found["commands"]
    assert by[("face-backend", "auto")]["data"]["picked"] == "dlib"  # no insightface pack in INSIGHTFACE_HOME
    lcm = by[("models", LCM_LORAS["sd15"])]
    assert lcm["status"] == "ok" and lcm["data"]["cached"] == "huggingface"
    assert by[("models", LCM_LORAS["sdxl"])]["status"] == "note"
    ms = by[("models", face_lora)]
    assert ms["status"] == "ok" and ms["data"]["cached"] == "modelscope" and ms["data"]["size_bytes"] == 1000
    assert Path(ms["data"]["path"]) == ms_file
    assert by[("models", "insightface buffalo_l")]["status"] == "note"
    assert by[("disk", "Hugging Face cache")]["data"]["path"] == str(tmp_path / "hub")
    assert not (tmp_path / "insightface").exists()


def test_cli_json_parses_and_its_exit_code_counts_the_problems(capsys, tmp_path, monkeypatch):
    import shutil

    from facechain.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["doctor", "--json", "--only", "opencv,disk"])
    report = json.loads(capsys.readouterr().out)
    assert {f["section"] for f in report["findings"]} == {"opencv", "disk"}
    assert code == (1 if report["problems"] else 0)
    (here,) = [f for f in report["findings"] if f["check"] == "current folder"]
    free = shutil.disk_usage(tmp_path).free
    assert abs(here["data"]["free_bytes"] - free) < 1 << 30  # other writers on the disk move it a little
    assert here["status"] == ("problem" if free < doctor.MIN_FREE_DISK else "ok")
    # a place with less room than MIN_FREE_DISK is a problem, with that place's fix
    monkeypatch.setattr(doctor.disk, "MIN_FREE_DISK", free + (1 << 40))
    (small,) = doctor.check_disk({"scratch": (tmp_path, "free space in scratch")})
    assert small.status == "problem" and small.fix == "free space in scratch"
    assert main(["doctor", "--only", "bogus"]) == 1
    assert "doctor sections ['bogus'] are unknown" in capsys.readouterr().err
