"""What the output-ownership rule costs: staging + checksummed commit against writing the same
files straight into the folder (the old way), and the resume fingerprint of a base model against
hashing its files whole.

    python benchmarks/outputs_bench.py [--repeats 5] [--model-mb 1024]

Prints one line per case: seconds for the plain write, for the staged + committed write, and the
overhead as a ratio. Everything runs in a temporary folder on the same disk as the system's temp dir.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _pngs(n: int, side: int, seed: int = 0) -> list[bytes]:
    """Encoded PNGs of photo-like noise (smooth gradients + noise), about the size of real portraits."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = np.linspace(0, 255, side, dtype=np.float32)[None, :, None] * np.ones((side, 1, 3), np.float32)
        img = np.clip(base + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _job_files(styles: int, candidates: int, kept: int, side: int) -> dict[str, bytes]:
    """The files of one generate job: candidates, kept images, contact sheet, manifest, config."""
    pngs = _pngs(candidates, side)
    files = {}
    for s in range(styles):
        for i in range(candidates):
            files[f"candidates/style{s}_{i:03d}.png"] = pngs[i]
        for r in range(kept):
            files[f"style{s}_{r:02d}.png"] = pngs[r]
    files["contact_sheet.png"] = _pngs(1, 4 * side)[0]
    files["manifest.json"] = b"{}" * 2000
    files["generate_config.json"] = b"{}" * 500
    return files


def _write_plain(folder: Path, files: dict[str, bytes]) -> None:
    from facechain.io import write_bytes

    for rel, data in files.items():
        write_bytes(folder / rel, data)


def _write_staged(folder: Path, files: dict[str, bytes], command: str = "generate") -> None:
    from facechain.outputs import OutputDir

    with OutputDir.open(folder, command) as od:
        stage = od.stage()
        _write_plain(stage, files)
        od.commit(stage)


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_writes(root: Path, repeats: int) -> None:
    cases = {
        "generate job, 2 styles x 10 candidates + 3 kept, 512 px": _job_files(2, 10, 3, 512),
        "generate job, 2 styles x 10 candidates + 3 kept, 1024 px": _job_files(2, 10, 3, 1024),
        "train checkpoint, SD1.5 rank-4 LoRA (3 MB + 6 MB optimizer)": {
            "checkpoints/step-000100/lora.safetensors": os.urandom(3 << 20),
            "checkpoints/step-000100/optimizer.safetensors": os.urandom(6 << 20)},
        "train checkpoint, SDXL rank-4 LoRA (23 MB + 46 MB optimizer)": {
            "checkpoints/step-000100/lora.safetensors": os.urandom(23 << 20),
            "checkpoints/step-000100/optimizer.safetensors": os.urandom(46 << 20)},
    }
    for name, files in cases.items():
        n = [0]

        def plain():
            n[0] += 1
            _write_plain(root / f"plain{n[0]}", files)

        def staged():
            n[0] += 1
            _write_staged(root / f"staged{n[0]}", files)

        mb = sum(len(v) for v in files.values()) / 2**20
        tp, ts = _time(plain, repeats), _time(staged, repeats)
        print(f"{name}: {len(files)} files, {mb:.1f} MB: plain {tp:.3f} s, staged + checksummed commit {ts:.3f} s "
              f"({ts / tp:.2f}x, +{ts - tp:.3f} s)")


def bench_fingerprint(root: Path, model_mb: int) -> None:
    from facechain.models import ResolvedModel, model_fingerprint

    folder = root / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "vae").mkdir()
    chunk = os.urandom(16 << 20)
    with open(folder / "unet" / "diffusion_pytorch_model.safetensors", "wb") as fh:
        for _ in range(max(1, model_mb // 16)):
            fh.write(chunk)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(80 << 20))
    (folder / "unet" / "config.json").write_text("{}")
    resolved = ResolvedModel(path=folder, format="diffusers", family="sd15", reference=str(folder))
    t0 = time.perf_counter()
    model_fingerprint(resolved)
    t_fp = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    t_full = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    print(f"resume fingerprint of a {size:.0f} MB model folder (page cache warm): sampled {t_fp:.3f} s, "
          f"whole-file sha256 {t_full:.3f} s ({t_full / t_fp:.0f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model-mb", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="facechain-outputs-bench-") as tmp:
        bench_writes(Path(tmp), args.repeats)
        bench_fingerprint(Path(tmp), args.model_mb)


if __name__ == "__main__":
    main()
