"""The inversion cache of stylize: trajectories (facechain.inversion) keyed by everything that shapes them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path

import torch

from facechain.inversion import Trajectory
from facechain.io import save_safetensors

logger = logging.getLogger(__name__)


def digest(*parts) -> str:
    """sha256 over JSON-able parts and tensors/bytes."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class InversionCache:
    """Trajectories by key, in memory (LRU) and optionally on disk as safetensors.

    The key is built by the caller from (image hash, model id, scheduler, steps, prompt,
    LoRA hashes and weights, resolution, dtype): anything that changes the trajectory."""

    def __init__(self, cache_dir: str | Path | None = None, max_items: int = 32):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_items = max_items
        self._mem: OrderedDict[str, Trajectory] = OrderedDict()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    def get(self, key: str, device=None) -> Trajectory | None:
        if key in self._mem:
            self._mem.move_to_end(key)
            self.hits += 1
            return self._mem[key]
        if self.cache_dir is not None:
            path = self.cache_dir / f"{key}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file
                from safetensors import safe_open

                try:
                    tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
                    with safe_open(str(path), framework="pt") as fh:
                        meta = fh.metadata() or {}
                    traj = Trajectory(tensors["latents"], tuple(json.loads(meta["timesteps"])))
                except Exception as exc:  # a torn or foreign file: recompute, say so
                    logger.warning("inversion cache file %s unreadable (%s); inverting again", path, exc)
                else:
                    self.hits += 1
                    self.disk_hits += 1
                    self._remember(key, traj)
                    return traj
        self.misses += 1
        return None

    def put(self, key: str, traj: Trajectory, info: dict | None = None) -> None:
        self._remember(key, traj)
        if self.cache_dir is not None:
            meta = {"timesteps": json.dumps(list(traj.timesteps)), "info": json.dumps(info or {}, default=str)}
            save_safetensors(self.cache_dir / f"{key}.safetensors", {"latents": traj.latents}, metadata=meta)

    def _remember(self, key: str, traj: Trajectory) -> None:
        self._mem[key] = traj
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_items:
            self._mem.popitem(last=False)

    def stats(self) -> dict:
        return {"hits": self.hits, "disk_hits": self.disk_hits, "misses": self.misses, "items": len(self._mem)}
