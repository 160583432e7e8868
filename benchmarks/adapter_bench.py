"""Identity adapter benchmark: IP-Adapter-FaceID against the face-LoRA path, run as users run them.

* **Time to first portrait** (where adapters win): the LoRA path is `sh train_lora.sh` (preprocess +
  train) then `python run_inference.py` for one image; the adapter path is `python run_inference.py`
  with `--identity-adapter` and no training. Both as subprocesses, start-up and model loading included.
* **Seconds per portrait** once loaded (in one process, same model, same settings): no identity (the
  floor), face LoRA, adapter, both. The adapter adds 4 tokens to every cross-attention layer.
* **Pose control**: a merged RepControlNet model against the same base with an OpenPose ControlNet
  (diffusers' ``ControlNetModel.from_unet``, the usual architecture), seconds per sampling step and
  parameters, and the base without a pose (the floor the merged model must match).

    python benchmarks/adapter_bench.py                         # tiny SD1.5 model on CPU
    python benchmarks/adapter_bench.py --full-sd15 --resolution 512 --train-steps 600   # GPU: full-size, random weights

Random weights: the timings are real, the pictures noise. The adapter takes dlib's 128-d embedding
here (the published one takes ArcFace's 512-d; the projection's cost differs by a few kFLOPs).
Prints one table; copy it into benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_bench import prepare as infer_prepare  # noqa: E402  (the same model and face LoRA)
from train_sh_bench import ROOT, _photos, _timed  # noqa: E402  (train_lora.sh as users run it)


def prepare(work: Path, full: bool) -> dict:
    """infer_bench's model and face LoRA, the sample photos, and an adapter for the model."""
    from facechain.testing import build_tiny_faceid_adapter

    paths = infer_prepare(work, full)
    _photos(work / "photos")
    faceid = build_tiny_faceid_adapter(paths["model"], work / "faceid.safetensors", seed=3)
    return {"model": Path(paths["model"]), "photos": work / "photos", "face": Path(paths["face"]), "faceid": faceid}


def _best(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (seconds): on a shared machine the minimum is the figure
    least disturbed by other work, as timeit reports."""
    import torch

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def first_portrait(paths: dict, work: Path, args) -> list[tuple[str, float]]:
    common = ["--base-model", str(paths["model"]), "--num-candidates", "1", "--num-images", "1", "--batch-size", "1",
              "--num-inference-steps", str(args.steps), "--height", str(args.resolution), "--width", str(args.resolution),
              "--no-rank-candidates", "--fusion", "off", "--detailer", "off", "--face-backend", "dlib",
              "--device", args.device, "--dtype", "auto"]
    train, lora_gen, adapter_gen = [], [], []
    for r in range(2):  # the faster of two runs each
        train.append(_timed(["sh", str(ROOT / "train_lora.sh"), str(paths["model"]), "", "", str(paths["photos"]),
                             str(work / f"processed{r}"), str(work / f"lora{r}"), "--resolution", str(args.resolution),
                             "--max_train_steps", str(args.train_steps), "--checkpointing_steps", str(args.train_steps),
                             "--face_backend", "none", "--no-progress"], work))
        lora_gen.append(_timed([sys.executable, str(ROOT / "run_inference.py"), *common, "--lora-dir", str(work / f"lora{r}"),
                                "--processed-dir", str(work / f"processed{r}"), "--output-dir", str(work / f"out-lora{r}")],
                               work))
        adapter_gen.append(_timed([sys.executable, str(ROOT / "run_inference.py"), *common, "--identity-adapter",
                                   "ip-adapter-faceid", "--identity-photos", str(paths["photos"]), "--identity-weights",
                                   str(paths["faceid"]), "--output-dir", str(work / f"out-adapter{r}")], work))
    train_s, gen_lora, gen_adapter = min(train), min(lora_gen), min(adapter_gen)
    return [(f"face LoRA: train_lora.sh ({args.train_steps} steps)", train_s),
            ("face LoRA: run_inference.py, 1 image", gen_lora),
            ("face LoRA: first portrait, total", train_s + gen_lora),
            ("adapter: run_inference.py, 1 image (no training)", gen_adapter)]


def per_portrait(paths: dict, work: Path, args) -> list[tuple[str, float]]:
    import torch

    from facechain.adapters import IdentityConfig
    from facechain.face import get_analyzer
    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    analyzer = get_analyzer("dlib")
    ident = IdentityConfig(adapter="ip-adapter-faceid", photos=paths["photos"], weights=str(paths["faceid"]))
    variants = {"no identity (floor)": {}, "face LoRA": {"lora_dir": paths["face"]}, "adapter": {"identity": ident},
                "face LoRA + adapter": {"lora_dir": paths["face"], "identity": ident}}
    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")
    rows = []
    for name, extra in variants.items():
        cfg = GenerateConfig(base_model=str(paths["model"]), output_dir=work / "unused", num_candidates=args.images,
                             num_images=1, batch_size=args.images, num_inference_steps=args.steps, height=args.resolution,
                             width=args.resolution, rank_candidates=False, fusion="off", detailer="off",
                             face_backend="dlib", device=args.device, **extra)
        gen = PortraitGenerator(cfg, analyzer=analyzer)
        gen.generate(style, ("", "a person"))  # warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rows.append((name, _best(partial(gen.generate, style, ("", "a person")), args.repeats) / args.images))
        del gen
    return rows


def pose_control(paths: dict, work: Path, args) -> list[tuple[str, float, int]]:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from facechain.adapters.repcontrolnet.merge import merge_repcontrolnet
    from facechain.adapters.repcontrolnet.train import RepControlNetConfig, train_repcontrolnet
    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.images import read_image
    from facechain.io import save_image
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    data = work / "repdata"
    for name, pose in (("a", "upper_body_front"), ("b", "upper_body_turn")):
        save_image(data / "images" / f"{name}.png", read_image(paths["photos"] / f"{name}.png"))
        save_image(data / "conditions" / f"{name}.png", read_image(ROOT / "poses" / f"{pose}.png"))
    trained = train_repcontrolnet(RepControlNetConfig(base_model=str(paths["model"]), data=data, output_dir=work / "rep",
                                                      resolution=args.resolution, max_train_steps=2, checkpointing_steps=2),
                                  progress=False)
    merged = merge_repcontrolnet(trained, str(paths["model"]), work / "rep-model")
    unet = UNet2DConditionModel.from_pretrained(str(paths["model"]), subfolder="unet")
    ControlNetModel.from_unet(unet).save_pretrained(work / "controlnet")
    style = load_styles([DEFAULT_STYLES_DIR]).get("Business suit", "sd15")
    variants = [("base, no pose (floor)", str(paths["model"]), {}),
                ("merged RepControlNet + pose", str(merged), {"pose": "upper_body_front"}),
                ("base + OpenPose ControlNet + pose", str(paths["model"]),
                 {"pose": "upper_body_front", "controlnet_openpose": str(work / "controlnet"), "pose_control": "controlnet"})]
    rows = []
    for name, model, extra in variants:
        cfg = GenerateConfig(base_model=model, output_dir=work / "unused", num_candidates=args.images, num_images=1,
                             batch_size=args.images, num_inference_steps=args.steps, height=args.resolution,
                             width=args.resolution, rank_candidates=False, fusion="off", detailer="off",
                             device=args.device, **extra)
        gen = PortraitGenerator(cfg)
        gen.generate(style, ("", "a person"))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        per_step = _best(partial(gen.generate, style, ("", "a person")), args.repeats) / args.steps
        params = sum(p.numel() for p in gen.pipe.unet.parameters())
        if gen.control_pipe is not None:
            params += sum(p.numel() for p in gen.control_pipe.controlnet.parameters())
        rows.append((name, per_step, params))
        del gen
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-sd15", action="store_true", help="full SD1.5 architecture with random weights (GPU)")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--images", type=int, default=4, help="images per timed job")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per variant; the fastest is reported")
    p.add_argument("--train-steps", type=int, default=100, help="LoRA training steps (FaceChain's budget: 200 per photo)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = prepare(work, args.full_sd15)
        per = per_portrait(paths, work, args)
        poses = pose_control(paths, work, args)
        first = first_portrait(paths, work, args)
    floor = per[0][1]
    print(f"model: {'full SD1.5 (random weights)' if args.full_sd15 else 'tiny SD1.5'}, {args.resolution} px, "
          f"{args.steps} steps, device {args.device}\n")
    print("| seconds per portrait (loaded) | s/image | x floor |\n|---|---|---|")
    for name, s in per:
        print(f"| {name} | {s:.3f} | {s / floor:.2f} |")
    print("\n| time to first portrait (subprocesses, as users run them) | s |\n|---|---|")
    for name, s in first:
        print(f"| {name} | {s:.1f} |")
    print(f"\n| pose control ({args.images} images per call) | s per step | x floor | parameters per step |\n|---|---|---|---|")
    for name, s, n in poses:
        print(f"| {name} | {s:.3f} | {s / poses[0][1]:.2f} | {n:,} |")
    lora_total, adapter = first[2][1], first[3][1]
    print(f"\nadapter's first portrait: {lora_total / adapter:.1f}x sooner than the face-LoRA path's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
