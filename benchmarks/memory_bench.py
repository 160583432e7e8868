"""Transient memory peaks of the real-size models with random weights (facechain.memory's constants).

    python benchmarks/memory_bench.py                 # every measurement below, one process each
    python benchmarks/memory_bench.py --only vae_sdxl # one of: vae_sdxl, vae_sd15, unet_sd15, unet_sdxl

Each measurement builds one model from the published config (tests/fixtures/configs) on the meta
device, materialises it on the CPU with random weights, notes the process's peak RSS, runs one decode
(or one UNet forward) under inference_mode and reports the growth of the peak RSS: the transient
peak, weights excluded. CPU kernels are not cuDNN's, so this checks the order of magnitude of the GPU
constants in facechain/memory.py; on a GPU, benchmarks/gpu.py measures torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
GIB = 1 << 30

# name -> (model kind, config folder, latent height/width, batch)
RUNS = {
    "vae_sdxl": ("vae", "sdxl/vae", 128, 1),  # 1024 px
    "vae_sd15": ("vae", "sd15/vae", 64, 1),  # 512 px
    "unet_sd15": ("unet", "sd15/unet", 64, 2),  # 512 px, the guidance pair
    "unet_sdxl": ("unet", "sdxl/unet", 128, 1),  # 1024 px, one image (x2 for the guidance pair)
}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure(name: str) -> dict:
    import torch

    from facechain.memory import meta_model

    kind, folder, size, batch = RUNS[name]
    torch.manual_seed(0)
    model = meta_model(kind, CONFIGS / folder, torch.float32).to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        for b in model.buffers():
            b.zero_()
    model.eval()
    before = peak_rss()
    t0 = time.perf_counter()
    with torch.inference_mode():
        z = torch.randn(batch, 4, size, size)
        if kind == "vae":
            out = model.decode(z).sample
        else:
            cross = model.config.cross_attention_dim
            kwargs = {}
            if model.config.addition_embed_type == "text_time":
                kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280),
                                               "time_ids": torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch,
                                                                        dtype=torch.float32)}
            out = model(z, torch.tensor([500] * batch), torch.randn(batch, 77, cross), **kwargs).sample
    seconds = time.perf_counter() - t0
    grown = peak_rss() - before
    pixels = (size * 8) ** 2 if kind == "vae" else size * size
    return {"run": name, "batch": batch, "shape": list(out.shape), "peak_growth_gib": round(grown / GIB, 3),
            "bytes_per_pixel_per_image": int(grown / pixels / batch), "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=list(RUNS), help="one measurement, in this process")
    args = p.parse_args(argv)
    if args.only:
        print(json.dumps(measure(args.only)))
        return 0
    for name in RUNS:  # one process each: the peak RSS of one run is not the next one's floor
        out = subprocess.run([sys.executable, __file__, "--only", name], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
