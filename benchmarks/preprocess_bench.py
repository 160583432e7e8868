"""Preprocessing speed and memory on ~12 MP photos, CPU, dlib backend.

    python benchmarks/preprocess_bench.py [--photos 8] [--threads 2]

Builds 4000x3000 JPEGs from the astronaut photo (face scaled up to a realistic ~700 px, on a
textured background; upright, sideways and EXIF-rotated variants), runs the preprocessing stage
on them and prints seconds per photo (wall clock, model loading excluded) and the process's peak
resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def make_photos(folder: Path, n: int) -> None:
    import cv2
    import numpy as np
    from PIL import Image

    from facechain.samples import astronaut, jpeg_with_exif_orientation

    rng = np.random.default_rng(0)
    a = astronaut()
    for i in range(n):
        canvas = cv2.resize(rng.integers(60, 200, (300, 400, 3), dtype=np.uint8), (4000, 3000), interpolation=cv2.INTER_CUBIC)
        big = cv2.resize(a, (2400, 2400), interpolation=cv2.INTER_CUBIC)
        x0 = 400 + 200 * (i % 3)
        canvas[300:2700, x0:x0 + 2400] = big[:2400, :]
        kind = i % 3
        if kind == 0:
            Image.fromarray(canvas).save(folder / f"{i:02d}.jpg", quality=92)
        elif kind == 1:
            Image.fromarray(np.ascontiguousarray(np.rot90(canvas))).save(folder / f"{i:02d}.jpg", quality=92)
        else:
            (folder / f"{i:02d}.jpg").write_bytes(jpeg_with_exif_orientation(canvas, 6))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="0: auto (one per core)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import cv2

    cv2.setNumThreads(args.threads)
    from facechain.face import get_analyzer
    from facechain.preprocess import PreprocessConfig, preprocess

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        make_photos(src, args.photos)
        analyzer = get_analyzer("dlib")
        cfg = PreprocessConfig(face_backend="dlib", identity_check=True, workers=args.workers)
        t = time.perf_counter()
        res = preprocess(src, out, cfg, analyzer=analyzer, progress=False)
        dt = time.perf_counter() - t
        steps: dict[str, float] = {}
        for e in res.entries:
            for k, v in e.timings.items():
                steps[k] = steps.get(k, 0.0) + v
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n = len(res.entries)
    print(f"photos: {n} x 4000x3000 JPEG (12.0 MP), kept {len(res.kept)}")
    print(f"seconds per photo: {dt / n:.3f}  (total {dt:.2f} s, {os.cpu_count()} cores visible, {args.threads} threads)")
    per_step = ", ".join(f"{k} {v / n:.3f}" for k, v in steps.items() if k != "total")
    print(f"workers: {cfg.workers or 'auto'}; per step, summed over workers (s/photo): {per_step}")
    print(f"peak resident memory: {peak_mb:.0f} MB (main process), {child_mb:.0f} MB (largest worker)")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
