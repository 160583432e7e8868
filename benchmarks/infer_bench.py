"""Inference benchmark: seconds per job of N candidates and peak memory,
ours (face + style LoRA fused, candidates batched) vs plain (adapters unfused, one image at a time),
on the same model, plus the post-processing (landmark fusion + dlib ranking) of N real 512 px photos.

    python benchmarks/infer_bench.py                  # tiny SD1.5 model, 64 px, CPU
    python benchmarks/infer_bench.py --full-sd15      # full SD1.5 architecture, random weights, 512 px (GPU)
    python benchmarks/infer_bench.py --full-sd15 --fast   # + LCM mode (random LCM-LoRA, LCMScheduler)

Random weights make the timings real but the pictures noise: no download is needed. Each mode runs
in its own process so its peak memory (CUDA max allocated, or process max RSS on CPU) is its own.
Prints one table; copy it into benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_model(model: Path, full: bool) -> Path:
    """The benchmarks' base model: full-size SD1.5 with random weights (fp16 on a GPU), or the tiny one."""
    import torch

    from facechain.testing import build_full_sd15, build_tiny_sd15

    if full:
        return build_full_sd15(model, torch.float16 if torch.cuda.is_available() else torch.float32)
    return build_tiny_sd15(model)


def prepare(work: Path, full: bool) -> dict:
    from facechain.testing import random_lora

    model = build_model(work / "model", full)
    random_lora(model, work / "face", 1, "pytorch_lora_weights.safetensors")
    random_lora(model, work / "lcm", 3, "pytorch_lora_weights.safetensors")
    styles = work / "styles"
    random_lora(model, styles, 2, "bench_style.safetensors")
    (styles / "bench.json").write_text(json.dumps({
        "name": "Bench", "img": "", "model_id": "bench_style.safetensors", "revision": None, "bin_file": None,
        "multiplier_style": 0.35, "multiplier_human": 0.95, "add_prompt_style": "oil painting, upper body",
    }))
    return {"model": str(model), "face": str(work / "face"), "lcm": str(work / "lcm"), "styles": str(styles)}


def run_mode(args) -> dict:
    """One measurement in this process: load, warm up, then time a job of N candidates."""
    import torch

    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import load_styles

    paths = json.loads(args.paths)
    ours = args.mode == "ours"
    cfg = GenerateConfig(
        base_model=paths["model"], output_dir=Path(tempfile.gettempdir()) / "bench_out", lora_dir=Path(paths["face"]),
        styles=["Bench"], style_dirs=[Path(paths["styles"])], num_candidates=args.candidates, num_images=1,
        batch_size=args.batch if ours else 1, fuse_loras=ours, num_inference_steps=args.steps, fast=args.fast,
        fast_num_inference_steps=args.fast_steps, lcm_lora=paths["lcm"], rank_candidates=False, fusion="off", device=args.device,
    )
    style = load_styles([Path(paths["styles"])]).get("Bench", "sd15")
    gen = PortraitGenerator(cfg)
    warm = dataclasses.replace(cfg, num_candidates=min(cfg.batch_size, args.candidates), num_images=1)
    gen.cfg = warm
    gen.generate(style, ("<fcsks>", "a person"))  # warm-up: kernels, allocator, LoRA load of the style
    gen.cfg = cfg
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    batch = gen.generate(style, ("<fcsks>", "a person"))
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"mode": args.mode, "seconds": seconds, "peak_gib": peak, "candidates": len(batch.candidates),
            "steps": batch.settings["steps"], "size": batch.settings["height"], "scheduler": batch.settings["scheduler"],
            "load_s": gen.load_seconds, "memory": "cuda max allocated" if torch.cuda.is_available() else "process max RSS"}


def postprocess_bench(n: int) -> dict:
    """Landmark fusion + dlib ranking of n real 512 px portraits (the astronaut photo)."""
    from skimage.data import astronaut

    from facechain.face import get_analyzer
    from facechain.face.fusion import get_fusion
    from facechain.generate.rank import Reference, fuse_and_rank

    analyzer = get_analyzer("dlib")
    img = astronaut()
    ref = Reference(img, analyzer.detect(img)[0], "astronaut", "bench")
    t0 = time.perf_counter()
    scored = fuse_and_rank([img.copy() for _ in range(n)], ref, analyzer, fusion=get_fusion("landmark"),
                           min_face_frac=0.05, max_face_frac=0.9)
    return {"seconds": time.perf_counter() - t0, "usable": sum(s.dropped is None for s in scored)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-sd15", action="store_true", help="full SD1.5 architecture at 512 px (needs a GPU)")
    p.add_argument("--fast", action="store_true", help="LCM mode (random LCM-LoRA) instead of DPM-Solver++")
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--batch", type=int, default=None, help="batch size of ours (default: all candidates at once)")
    p.add_argument("--steps", type=int, default=None, help="default 40 (full) or 4 (tiny)")
    p.add_argument("--fast-steps", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-postprocess", action="store_true")
    p.add_argument("--mode", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (40 if args.full_sd15 else 4)
    args.batch = args.batch or args.candidates
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = prepare(Path(tmp), args.full_sd15)
        print(f"models built in {time.perf_counter() - t0:.1f} s")
        rows = []
        for mode in ("ours", "plain"):
            cmd = [sys.executable, __file__, "--mode", mode, "--paths", json.dumps(paths), "--candidates",
                   str(args.candidates), "--batch", str(args.batch), "--steps", str(args.steps), "--fast-steps",
                   str(args.fast_steps), "--device", args.device] + (["--fast"] if args.fast else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
    post = None if args.skip_postprocess else postprocess_bench(args.candidates)
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    model = "full SD1.5 architecture (random weights)" if args.full_sd15 else "tiny SD1.5 (facechain.testing)"
    print(f"\n{model}, {rows[0]['size']} px, {rows[0]['steps']} steps {rows[0]['scheduler']}, "
          f"{args.candidates} candidates, device: {dev}")
    print(f"{'mode':34s} {'s/job':>8s} {'s/img':>7s} {'peak GiB':>9s}")
    for r in rows:
        label = (f"ours (fused, batch {args.batch})" if r["mode"] == "ours" else "plain (unfused, batch 1)")
        print(f"{label:34s} {r['seconds']:8.2f} {r['seconds'] / r['candidates']:7.3f} {r['peak_gib']:9.2f}")
    print(f"speed-up: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x   (memory: {rows[0]['memory']})")
    if post:
        print(f"post-processing (landmark fusion + dlib ranking, {args.candidates} real 512 px photos, CPU): "
              f"{post['seconds']:.2f} s")
        print(f"end to end (ours + post-processing): {rows[0]['seconds'] + post['seconds']:.2f} s per job")


if __name__ == "__main__":
    main()
