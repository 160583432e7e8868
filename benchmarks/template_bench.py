"""Fixed-template benchmark: seconds per face and peak memory, one job for N faces (the model and
ControlNets loaded once, each person's LoRA swapped in) against the single-face path run once per
face (a job per person, as a user mapping one person at a time would run it).

    python benchmarks/template_bench.py                 # tiny SD1.5, the 3-face sample template, CPU
    python benchmarks/template_bench.py --full-sd15     # full SD1.5 architecture, random weights (GPU)

Both run as users run them: `facechain template ...` subprocesses. Peak memory is each process's max RSS
(GNU time). Random weights: the timings are real, the
pictures noise. Prints one table; copy it into benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_bench import build_model  # noqa: E402  (the same base model as the other benchmarks)
from train_sh_bench import _env  # noqa: E402  (the same environment as the other command-line benchmarks)


def _run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, the child's peak RSS in MB, from GNU time)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", *cmd], env=_env(), cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    kb = [int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("maxrss_kb=")]
    return seconds, (kb[-1] / 1024 if kb else float("nan"))


def prepare(work: Path, full: bool) -> dict:
    from diffusers import ControlNetModel, UNet2DConditionModel

    from facechain import samples
    from facechain.io import save_image
    from facechain.testing import random_lora

    model = build_model(work / "model", full)
    template = save_image(work / "team.png", samples.three_faces())
    loras = [random_lora(model, work / f"lora{i}", seed=10 + i) for i in range(3)]
    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    ControlNetModel.from_unet(unet).save_pretrained(work / "cn")
    return {"model": model, "template": template, "loras": loras, "cn": work / "cn"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-sd15", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = prepare(work, args.full_sd15)
        common = [sys.executable, "-m", "facechain", "template", str(paths["template"]), "--base-model", str(paths["model"]),
                  "--num-inference-steps", str(args.steps), "--device", args.device, "--face-backend", "dlib",
                  "--fusion", "off", "--controlnet-openpose", str(paths["cn"]), "--controlnet-canny", str(paths["cn"])]
        one_job = _run(common + [a for i, lora in enumerate(paths["loras"]) for a in ("--person", f"{lora}@{i}")]
                       + ["--output-dir", str(work / "all")], work)
        singles = [_run(common + ["--person", f"{lora}@{i}", "--output-dir", str(work / f"one{i}")], work)
                   for i, lora in enumerate(paths["loras"])]
    n = len(paths["loras"])
    single_s = sum(s for s, _ in singles)
    print(f"model: {'full SD1.5 (random weights)' if args.full_sd15 else 'tiny SD1.5'}, {args.steps} steps, strength "
          f"0.65, openpose + canny ControlNets, {n} faces, device {args.device}, "
          f"{os.cpu_count()} CPUs visible\n")
    print("| run | seconds | seconds per face | peak RSS MB |\n|---|---|---|---|")
    print(f"| one job, {n} faces | {one_job[0]:.1f} | {one_job[0] / n:.1f} | {one_job[1]:.0f} |")
    print(f"| single-face path x {n} (a job per face) | {single_s:.1f} | {single_s / n:.1f} | "
          f"{max(m for _, m in singles):.0f} |")
    print(f"\none job is {single_s / one_job[0]:.2f}x faster than a job per face")
    return 0


if __name__ == "__main__":
    sys.exit(main())
