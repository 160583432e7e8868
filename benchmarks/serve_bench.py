"""What the server's safety costs (issue 25), on the tiny demo model, as a user runs it (the HTTP API):

1. a portrait job through the API (its own spawned process) vs the same stage called in-process (what the
   server did before: a worker thread), side by side: the seconds a job pays for its process;
2. storing a phone photo: the upload checks + EXIF-stripping re-encode of a 12 MP JPEG, vs only decoding it
   (the floor: the server must decode it to check it anyway);
3. deleting a person with a trained LoRA and a portrait job: wall time, and what the web cache sweep costs
   over a cache of N files.

    python benchmarks/serve_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _jpeg_12mp() -> bytes:
    import numpy as np
    from PIL import Image

    from facechain import samples

    img = Image.fromarray(samples.astronaut()).resize((4000, 3000))
    arr = np.asarray(img).copy()
    arr[::7, ::5] = 255 - arr[::7, ::5]  # texture, so the JPEG is a realistic size
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def bench_upload(repeats: int) -> None:
    from PIL import Image

    from facechain.server.uploads import clean_image

    data = _jpeg_12mp()
    stored, decode = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        decode.append(time.perf_counter() - t)
        t = time.perf_counter()
        clean_image("phone.jpg", data, "photo", 50.0)
        stored.append(time.perf_counter() - t)
    d, s = statistics.median(decode), statistics.median(stored)
    print(f"upload of a 12 MP JPEG ({len(data) / 1e6:.1f} MB): decode only {d * 1000:.0f} ms, checked + EXIF "
          f"stripped + re-encoded {s * 1000:.0f} ms (x{s / d:.1f} the decode)", flush=True)


def bench_jobs(repeats: int, work: Path) -> None:
    from fastapi.testclient import TestClient

    from facechain.samples import write_demo_photos
    from facechain.server import build_server, demo_config
    from facechain.server.accounts import LOCAL
    from facechain.server.stages import run_generate
    from facechain.server.workdir import Job

    cfg = dataclasses.replace(demo_config(work / "wd"))
    app, service = build_server(cfg)
    photos = [(p.name, p.read_bytes()) for p in write_demo_photos(work / "photos")]
    with TestClient(app, base_url="http://127.0.0.1") as client:
        def wait(jid):
            while True:
                job = client.get(f"/api/jobs/{jid}").json()
                if job["state"] in ("done", "failed", "cancelled"):
                    return job
                time.sleep(0.05)

        pid = client.post("/api/people", data={"name": "Ada", "consent": "true"},
                          files=[("photos", (n, b, "image/png")) for n, b in photos]).json()["id"]
        t = time.perf_counter()
        train = wait(client.post(f"/api/people/{pid}/train").json()["id"])
        print(f"train job (preprocess + 20 steps) through the API: {time.perf_counter() - t:.1f} s ({train['state']})",
              flush=True)
        api, direct = [], []
        for i in range(repeats):
            t = time.perf_counter()
            job = wait(client.post(f"/api/people/{pid}/generate", json={"num_images": 1, "seed": i}).json()["id"])
            api.append(time.perf_counter() - t)
            assert job["state"] == "done", job["error"]
            inline = Job(f"benchInline{i:05d}", "generate", "running", time.time(), {"num_images": 1, "seed": i}, pid)
            t = time.perf_counter()
            run_generate(service, inline, "auto")  # the stage in this process, as a worker thread ran it before
            direct.append(time.perf_counter() - t)
        a, d = statistics.median(api), statistics.median(direct)
        print(f"portrait job, median of {repeats}: through the API (own process) {a:.2f} s, in-process {d:.2f} s: "
              f"+{a - d:.2f} s per job (x{a / d:.2f})", flush=True)
        cache = work / "wd" / ".web-cache"
        for i in range(2000):
            (cache / f"h{i:04d}").mkdir(parents=True, exist_ok=True)
            (cache / f"h{i:04d}" / "x.png").write_bytes(os.urandom(20_000))
        t = time.perf_counter()
        done = service.delete_person(pid, LOCAL)
        print(f"delete a trained person with {len(done['jobs'])} jobs, web cache of 2000 files (40 MB) swept by "
              f"digest: {time.perf_counter() - t:.2f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    bench_upload(args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        bench_jobs(args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
