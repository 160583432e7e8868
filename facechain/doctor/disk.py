"""Free disk where the models go and in the current folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

from facechain.doctor.caches import hf_cache_dir
from facechain.doctor.findings import Finding, gib

# Below this much free disk a download of a base model can fail half-way: the SDXL base's fp16
# safetensors alone are about 7 GB (stabilityai/stable-diffusion-xl-base-1.0).
MIN_FREE_DISK = 10 << 30


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
        detail = f"{what} ({path}): {gib(usage.free)} free"
        if usage.free < MIN_FREE_DISK:
            out.append(Finding("disk", what, "problem", f"{detail}, under {gib(MIN_FREE_DISK)} (an SDXL base model "
                               "is about 7 GB)", fix, data=data))
        else:
            out.append(Finding("disk", what, "ok", detail, data=data))
    return out
