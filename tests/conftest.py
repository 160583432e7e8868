"""Shared fixtures. Tests never touch the network: hub access is switched off here, before
any library that reads these variables is imported."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_facechain_home(tmp_path_factory):
    """facechain's own cache (converted adapters, identity embeddings) in a temporary folder, never the
    user's ~/.cache/facechain."""
    old = os.environ.get("FACECHAIN_HOME")
    os.environ["FACECHAIN_HOME"] = str(tmp_path_factory.mktemp("facechain_home"))
    yield
    if old is None:
        os.environ.pop("FACECHAIN_HOME", None)
    else:
        os.environ["FACECHAIN_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for the whole suite: tiny models spend their time in thread hand-offs,
    and on a small shared CPU OpenMP threads waiting on each other made tiny matmuls ~70x slower
    (measured 2.4 ms vs 33 us for a 64x32 linear)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def style_images():
    """Real photos for stylization: content (astronaut), styles (a cat, coffee)."""
    from skimage import data

    return {"content": data.astronaut(), "style": data.chelsea(), "coffee": data.coffee()}


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    """Folder of a tiny SD1.5-architecture diffusers model (real classes, seeded)."""
    from facechain.testing import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("tiny") / "sd15", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """Folder of a tiny SDXL-architecture diffusers model (real classes, seeded)."""
    from facechain.testing import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_sd15_clip(tmp_path_factory):
    """A tiny SD1.5 model with the real CLIP tokenizer (49,408 tokens): real token and chunk counts."""
    from facechain.testing import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("tiny") / "sd15_clip", seed=0, tokenizer="clip")


@pytest.fixture(scope="session")
def tiny_sdxl_clip(tmp_path_factory):
    """A tiny SDXL model with SDXL's two real CLIP tokenizers (``tokenizer_2`` pads with ``!``)."""
    from facechain.testing import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl_clip", seed=0, tokenizer="clip")


@pytest.fixture(scope="session")
def sample_photos():
    """Real photos shipped inside installed packages (see facechain.samples)."""
    from facechain import samples

    return samples


def _preprocessed(root, photos: dict, analyzer):
    """Write ``photos`` (name -> RGB array) under ``root/in`` and preprocess them with ``analyzer`` into
    ``root/processed`` (NNN.png, metadata.jsonl, masks/, report.json). Returns the processed folder."""
    from facechain.io import save_image
    from facechain.preprocess import preprocess

    for name, image in photos.items():
        save_image(root / "in" / name, image)
    preprocess(root / "in", root / "processed", analyzer=analyzer, progress=False)
    return root / "processed"


@pytest.fixture(scope="session")
def processed_person(tmp_path_factory, dlib_analyzer):
    """One person's processed folder, preprocessed once per session with dlib: the astronaut (a.png), her
    mirror image (b.png) and a slightly blurred copy (c.png) -> 000.png-002.png with captions and head masks.
    Shared: tests read it and never write into it."""
    import cv2
    import numpy as np

    from facechain import samples

    a = samples.astronaut()
    photos = {"a.png": a, "b.png": np.ascontiguousarray(a[:, ::-1]), "c.png": cv2.GaussianBlur(a, (3, 3), 0.8)}
    return _preprocessed(tmp_path_factory.mktemp("processed_person"), photos, dlib_analyzer)


@pytest.fixture(scope="session")
def processed_astronaut(tmp_path_factory, dlib_analyzer):
    """The astronaut's photo alone, preprocessed once per session with dlib (000.png; her face is too small
    for a high-resolution reference crop). Shared: tests read it and never write into it."""
    from facechain import samples

    return _preprocessed(tmp_path_factory.mktemp("processed_astronaut"), {"a.png": samples.astronaut()}, dlib_analyzer)


@pytest.fixture(scope="session")
def dlib_analyzer():
    from facechain.face import get_analyzer

    return get_analyzer("dlib")


@pytest.fixture
def hold_lock():
    """Start a process that holds an output folder's lock (as a running command would):
    ``proc = hold_lock(folder, "train")``. Killed at teardown."""
    import subprocess
    import sys
    import textwrap

    procs = []

    def start(folder, command: str):
        code = textwrap.dedent(f"""
            import time
            from facechain.outputs import OutputDir
            od = OutputDir.acquire({str(folder)!r}, {command!r})
            print("locked", flush=True)
            time.sleep(120)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def sd15_pipe(tiny_sd15):
    """The tiny SD1.5 pipeline, loaded once per test module."""
    from facechain.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sd15)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl):
    from facechain.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_sdxl)))
    pipe.set_progress_bar_config(disable=True)
    return pipe
