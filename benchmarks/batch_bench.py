"""Batch benchmark: people per hour for N people, `facechain batch` against N sequential runs of what a
user runs per person (`sh train_lora.sh ...` then `python run_inference.py --config ...`), on this machine.

    python benchmarks/batch_bench.py                        # 3 people, tiny SD1.5, CPU
    python benchmarks/batch_bench.py --people 4 --steps 100
    python benchmarks/batch_bench.py --full-sd15 --resolution 512 --share 1,2,4   # on a GPU: trainings per GPU

Every person gets the same settings both ways (preprocess with dlib, train, generate one style; no eval
stage, as the sequential commands have none). The batch runs on a local Ray runtime (its start-up is
included). ``--share K`` runs the batch again with ``train_gpus = 1/K`` and ``generate_gpus = 1/K``: K
trainings (and K generation actors) on one GPU; where people per hour stops rising, the GPU is full.
Without a GPU the GPU requests are dropped, so --share only matters on a GPU machine. Random weights:
the timings are real, the pictures noise. Prints one table; copy it into benchmarks/RESULTS.md with the
machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_bench import build_model  # noqa: E402  (the same base model as the other benchmarks)
from train_sh_bench import ROOT, _env  # noqa: E402  (the same environment as the other command-line benchmarks)


def _run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return seconds


def _generate_settings(args) -> dict:
    return {"styles": ["Business suit"], "num_images": 1, "num_candidates": args.candidates,
            "batch_size": args.candidates, "num_inference_steps": args.gen_steps, "rank_candidates": False,
            "fusion": "off", "detailer": "off", "dtype": "float16" if args.full_sd15 else "float32"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="training steps per person")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--gen-steps", type=int, default=10)
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--full-sd15", action="store_true")
    p.add_argument("--share", default="", help="comma-separated K: also run the batch with 1/K GPU per training")
    args = p.parse_args(argv)
    from facechain.samples import write_demo_photos

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work / "model", args.full_sd15)
        people = [f"p{i}" for i in range(args.people)]
        for name in people:
            write_demo_photos(work / "photos" / name)
        train_flags = ["--resolution", str(args.resolution), "--max_train_steps", str(args.steps),
                       "--checkpointing_steps", str(args.steps), "--face_backend", "none"]
        gen_cfg = work / "generate.json"  # JSON is YAML: run_inference.py reads either
        gen_cfg.write_text(json.dumps({"base_model": str(model), **_generate_settings(args)}))
        seq = 0.0
        for name in people:
            seq += _run(["sh", str(ROOT / "train_lora.sh"), str(model), "", "", str(work / "photos" / name),
                         str(work / "seq" / name / "processed"), str(work / "seq" / name / "lora"), *train_flags], work)
            seq += _run([sys.executable, str(ROOT / "run_inference.py"), "--config", str(gen_cfg),
                         "--lora-dir", str(work / "seq" / name / "lora"),
                         "--processed-dir", str(work / "seq" / name / "processed"),
                         "--output-dir", str(work / "seq" / name / "portraits")], work)

        def batch(tag: str, share: int | None) -> float:
            resources = f"resources: {{train_gpus: {1 / share}, generate_gpus: {1 / share}}}\n" if share else ""
            jobs = work / f"{tag}.yaml"
            jobs.write_text(
                f"base_model: {model}\noutput_dir: {tag}\nface_backend: dlib\neval: null\n{resources}"
                f"train: {{resolution: {args.resolution}, max_train_steps: {args.steps}, checkpointing_steps: "
                f"{args.steps}, face_backend: none}}\ngenerate: {json.dumps(_generate_settings(args))}\npeople:\n"
                + "".join(f"  - {{name: {n}, photos: {work / 'photos' / n}}}\n" for n in people))
            return _run([sys.executable, "-m", "facechain", "batch", str(jobs), "--no-progress"], work)

        rows = [("batch (local Ray)", batch("batch", None))]
        for k in [int(x) for x in args.share.split(",") if x]:
            rows.append((f"batch, {k} trainings per GPU", batch(f"share{k}", k)))
    n = args.people
    print(f"model: {'full SD1.5 (random weights)' if args.full_sd15 else 'tiny SD1.5'}, {n} people, {args.steps} "
          f"training steps at {args.resolution} px, {args.candidates} candidates x {args.gen_steps} steps; "
          f"{os.cpu_count()} CPUs visible\n")
    print("| run | seconds | people per hour | vs sequential |\n|---|---|---|---|")
    print(f"| sequential: train_lora.sh + run_inference.py per person | {seq:.1f} | {3600 * n / seq:.0f} | 1.00x |")
    for label, s in rows:
        print(f"| {label} | {s:.1f} | {3600 * n / s:.0f} | {seq / s:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
