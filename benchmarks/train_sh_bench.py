"""The trainer as users run it (`sh train_lora.sh ...`) against diffusers' own LoRA example script
run the way its README says (`accelerate launch train_text_to_image_lora.py ...`), on the same
tiny SD1.5-shaped model (VAE factor 8), the same photos and captions, the same resolution, on
this machine; and against the floor, the UNet's forward + backward alone.

    python benchmarks/train_sh_bench.py --diffusers-example PATH/TO/diffusers/examples/text_to_image/train_text_to_image_lora.py

The example script is read from the diffusers checkout you point to (never copied here); it
needs `pip install datasets` (and the packages of its own requirements.txt that it imports).
Time per step = (wall time of a run of B steps - wall time of a run of A steps) / (B - A), so
start-up, preprocessing, model loading, caching and saving cancel out. Both run with the
environment of a user's shell (OMP_NUM_THREADS unset). Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHON=sys.executable, PYTHONPATH=str(ROOT),
               PREPROCESS_FLAGS="--face-backend dlib --quiet")
    return env


def _photos(folder: Path) -> None:
    from PIL import Image, ImageOps
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(data.astronaut())
    photo.save(folder / "a.png")
    ImageOps.mirror(photo).save(folder / "b.png")


def _timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0


def ours(model: Path, photos: Path, work: Path, steps: int, res: int, extra: list[str]) -> float:
    tag = f"{steps}-{time.time_ns()}"
    return _timed(["sh", str(ROOT / "train_lora.sh"), str(model), "", "", str(photos), str(work / f"processed-{tag}"),
                   str(work / f"ours-{tag}"), "--resolution", str(res), "--max_train_steps", str(steps),
                   "--checkpointing_steps", str(steps), "--face_backend", "none", "--no-progress", *extra], work)


def example(script: Path, model: Path, dataset: Path, work: Path, steps: int, res: int) -> float:
    out = work / f"example-{steps}-{time.time_ns()}"
    return _timed([sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no", str(script),
                   f"--pretrained_model_name_or_path={model}", f"--train_data_dir={dataset}", "--caption_column=text",
                   f"--resolution={res}", "--random_flip", "--train_batch_size=1", f"--max_train_steps={steps}",
                   "--checkpointing_steps=100000", "--learning_rate=1.5e-04", "--lr_scheduler=cosine", "--lr_warmup_steps=0",
                   "--rank=4", "--seed=42", f"--output_dir={out}", "--dataloader_num_workers=0"], work)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusers-example", required=True, help="path of diffusers' examples/text_to_image/train_text_to_image_lora.py")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, nargs=2, default=[2, 12], metavar=("A", "B"), help="step counts of the two runs")
    p.add_argument("--compile", action="store_true", help="also time ours with --compile_unet")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    script = Path(args.diffusers_example).resolve()
    if not script.is_file():
        raise SystemExit(f"{script} is not a file: point --diffusers-example at a diffusers checkout's script")
    from facechain.testing import build_tiny_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="train-sh-bench-"))
    model = work / "model"
    if not model.exists():
        build_tiny_model(model, "sd15")
    photos = work / "photos"
    _photos(photos)
    # the example script reads an imagefolder: the same processed photos and captions as ours
    processed = work / "processed-shared"
    if not processed.exists():
        subprocess.run([sys.executable, "-m", "facechain", "preprocess", str(photos), str(processed), "--face-backend", "dlib",
                        "--quiet"], env=_env(), check=True)
    dataset = work / "dataset"
    if not dataset.exists():
        dataset.mkdir()
        for line in (processed / "metadata.jsonl").read_text().splitlines():
            shutil.copy(processed / json.loads(line)["file_name"], dataset)
        shutil.copy(processed / "metadata.jsonl", dataset)

    a, b = args.steps
    rows = []
    variants = [("ours: sh train_lora.sh", lambda n: ours(model, photos, work, n, args.resolution, []))]
    variants.append(("ours: sh train_lora.sh --num_threads 1 (one core, as before)",
                     lambda n: ours(model, photos, work, n, args.resolution, ["--num_threads", "1"])))
    if args.compile:
        variants.append(("ours: sh train_lora.sh --compile_unet",
                         lambda n: ours(model, photos, work, n, args.resolution, ["--compile_unet"])))
    variants.append(("diffusers train_text_to_image_lora.py (accelerate launch)",
                     lambda n: example(script, model, dataset, work, n, args.resolution)))
    for name, run in variants:
        ta, tb = run(a), run(b)
        rows.append({"variant": name, "s_per_step": (tb - ta) / (b - a), "wall_a": ta, "wall_b": tb})
        print(json.dumps(rows[-1]), flush=True)
    floor = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_bench.py"), "--variant", "unet", "--resolution",
                            str(args.resolution), "--steps", "10", "--warmup", "2", "--workdir", str(work / "floor")],
                           env=_env(), capture_output=True, text=True)
    unet = next((json.loads(l[len("RESULT "):]) for l in floor.stdout.splitlines() if l.startswith("RESULT ")), None)
    if unet is None:
        raise SystemExit(f"floor run failed:\n{floor.stdout[-2000:]}\n{floor.stderr[-3000:]}")
    rows.append({"variant": "floor: UNet fwd+bwd alone", "s_per_step": unet["s_per_step"]})
    print(json.dumps(rows[-1]))
    print(f"\ntiny SD1.5 (VAE factor 8), {args.resolution} px, batch 1, fp32, steps {a} vs {b}, {os.cpu_count()} CPUs")
    for r in rows:
        print(f"{r['variant']:60s} {r['s_per_step']:.3f} s/step  x{r['s_per_step'] / unet['s_per_step']:.2f} of the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
