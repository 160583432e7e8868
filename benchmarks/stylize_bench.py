"""Stylization cost: ours (SDPA attention, inversion cache) against the reference formulation
(einsum attention materialising the n x n similarity, every content inverted again), same model,
same method, same images.

    python benchmarks/stylize_bench.py                       # tiny SD1.5 model, CPU
    python benchmarks/stylize_bench.py --model PATH --resolution 512 --steps 50 --device cuda

Prints, per formulation: UNet passes (single-image equivalents), seconds and peak memory per
stylization of one content after ``--styles`` style images, and an attention micro-benchmark
(one self-attention call at a given token count). Each formulation runs in its own process so
peak memory (CPU: max RSS; CUDA: max allocated) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args) -> dict:
    import numpy as np
    from skimage import data

    from facechain.stylize import StylizeConfig, build_engine, stylize

    attention = "sdpa" if args.worker == "ours" else "einsum"
    cfg = StylizeConfig(base_model=args.model, resolution=args.resolution, num_inference_steps=args.steps, device=args.device,
                        method=args.method, attention=attention)
    engine = build_engine(cfg)
    if args.worker == "reference":
        engine.cache.max_items = 0  # no inversion cache: each stylization inverts its content again
    content = data.astronaut()
    pool = [data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(), data.hubble_deep_field()]
    styles = [pool[i % len(pool)] for i in range(args.styles)]
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    loaded_mb = _peak_mb(args.device)
    t0 = time.perf_counter()
    passes = []
    for s in styles:
        r = stylize(content, np.ascontiguousarray(s), cfg, engine=engine, progress=False)
        passes.append(r.stats["unet_passes"])
    seconds = time.perf_counter() - t0
    return {"formulation": args.worker, "attention": attention, "styles": args.styles, "unet_passes": passes,
            "unet_passes_per_stylization": sum(passes) / len(passes), "seconds_per_stylization": seconds / len(passes),
            "peak_mb": _peak_mb(args.device), "peak_mb_after_load": loaded_mb}


def attention_micro(tokens: int, heads: int, dim: int, batch: int, device: str, repeats: int = 3) -> list[dict]:
    """One self-attention call, SDPA vs einsum; peak memory of the call over its inputs (CUDA only)."""
    import torch

    from facechain.stylize.attention import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, dim, device=device) for _ in range(3))
    rows = []
    for impl in ("sdpa", "einsum"):
        attend(q, k, v, impl=impl)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(repeats):
            attend(q, k, v, impl=impl)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        row = {"impl": impl, "tokens": tokens, "ms": 1000 * (time.perf_counter() - t0) / repeats,
               "nxn_matrix_mb": batch * heads * tokens * tokens * 4 / 2**20 if impl == "einsum" else 0.0}
        if device.startswith("cuda"):
            row["extra_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="base model (default: a tiny SD1.5 model built in a temp folder)")
    p.add_argument("--method", default="portrait-diffusion")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--styles", type=int, default=3, help="style images stylized with one content")
    p.add_argument("--device", default="cpu")
    p.add_argument("--micro-tokens", type=int, default=1024, help="tokens of the attention micro-benchmark (4096 = 512 px SD1.5 level 0)")
    p.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from facechain.testing import build_tiny_sd15

            args.model = str(build_tiny_sd15(os.path.join(tmp, "tiny_sd15")))
        rows = []
        for form in ("ours", "reference"):
            cmd = [sys.executable, __file__, "--worker", form, "--model", args.model, "--method", args.method,
                   "--resolution", str(args.resolution), "--steps", str(args.steps), "--styles", str(args.styles),
                   "--device", args.device]
            res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"method {args.method}, {args.resolution} px, {args.steps} steps, {args.styles} styles, device {args.device}")
    print(f"{'formulation':<12}{'attention':<10}{'UNet passes/styl.':>19}{'s/styl.':>10}{'peak MB':>10}{'MB after load':>15}")
    for r in rows:
        print(f"{r['formulation']:<12}{r['attention']:<10}{r['unet_passes_per_stylization']:>19.1f}"
              f"{r['seconds_per_stylization']:>10.2f}{r['peak_mb']:>10.0f}{r['peak_mb_after_load']:>15.0f}")
    print("per-stylization UNet passes:", {r["formulation"]: r["unet_passes"] for r in rows})
    print(f"attention micro-benchmark ({args.micro_tokens} tokens, 8 heads, d 40, batch 3):")
    for r in attention_micro(args.micro_tokens, 8, 40, 3, args.device):
        extra = f", extra peak {r['extra_peak_mb']:.0f} MB" if "extra_peak_mb" in r else ""
        print(f"  {r['impl']:<7}{r['ms']:8.1f} ms  n x n matrix {r['nxn_matrix_mb']:.0f} MB{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
