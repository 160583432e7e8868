"""The HTTP API (facechain serve) on the demo settings (the tiny model, dlib): every endpoint, bad uploads
(non-images, oversized, path-like names), ids that are not ids, paths that leave the workdir, a failing
job that does not take the server down, and concurrent jobs queued on the one worker."""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import pytest

def _png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd15):
    from fastapi.testclient import TestClient

    from facechain.server import build_server, demo_config

    work = tmp_path_factory.mktemp("serve")
    from facechain import samples
    from facechain.io import save_image

    save_image(work / "templates" / "solo.png", samples.astronaut())
    cfg = dataclasses.replace(demo_config(work), base_model=str(tiny_sd15), max_upload_mb=2.0,
                              templates_dir=work / "templates")
    app, service = build_server(cfg)
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host of the server bound to 127.0.0.1
        yield client, service


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[tuple[str, bytes]]:
    from facechain.samples import write_demo_photos

    return [(p.name, p.read_bytes()) for p in write_demo_photos(tmp_path_factory.mktemp("photos"))]


def _wait(client, jid: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{jid}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {jid} did not finish: {job}")


@pytest.fixture(scope="module")
def trained(server, photos):
    client, _ = server
    r = client.post("/api/people", data={"name": "Ada", "consent": "true"}, files=[("photos", (n, b, "image/png")) for n, b in photos])
    assert r.status_code == 200, r.text
    person = r.json()
    job = client.post(f"/api/people/{person['id']}/train").json()
    assert job["state"] in ("queued", "running") and job["kind"] == "train"
    return person, _wait(client, job["id"])


def test_catalogue_endpoints(server):
    client, _ = server
    assert client.get("/api/health").json()["ok"] is True
    assert "Business suit" in client.get("/api/styles").json()["styles"]
    assert client.get("/api/poses").json()["poses"]


@pytest.mark.slow
def test_train_reports_photos_progress_and_serves_the_lora(server, trained):
    client, service = server
    person, job = trained
    assert job["state"] == "done", job["error"]
    report = {r["file"]: r for r in job["info"]["preprocess"]}
    assert any(r["status"] == "kept" for r in report.values())
    assert "not an image PIL can read" in report["07_notes.jpg"]["reason"]  # the demo's text file named .jpg: refused
    assert report["07_notes.jpg"]["status"] == "rejected" and person["rejected_uploads"][0]["file"] == "07_notes.jpg"
    assert report["05_group.jpg"]["status"] == "rejected"  # a preprocessing rule: several faces
    prog = job["progress"]
    assert prog["total"] == 20 and prog["step"] == 20 and len(prog["loss"]) == 20
    kept = next(r["output"] for r in report.values() if r["status"] == "kept")
    assert client.get(f"/api/people/{person['id']}/files/{kept}").status_code == 200
    assert client.get(f"/api/people/{person['id']}").json()["trained"] is True
    for fmt in ("diffusers", "kohya"):
        r = client.get(f"/api/people/{person['id']}/lora", params={"format": fmt})
        assert r.status_code == 200 and r.content[:8]  # a safetensors file
    assert client.get(f"/api/people/{person['id']}/lora", params={"format": "ckpt"}).status_code == 400
    assert [p["id"] for p in client.get("/api/people").json()["people"]] == [person["id"]]


@pytest.mark.slow
def test_generate_gallery_manifest_and_files(server, trained):
    client, _ = server
    person, _ = trained
    job = client.post(f"/api/people/{person['id']}/generate", json={"styles": ["Business suit"], "num_images": 1}).json()
    job = _wait(client, job["id"])
    assert job["state"] == "done", job["error"]
    assert len(job["info"]["gallery"]) == 1 and job["info"]["gallery"][0]["style"] == "Business suit"
    manifest = client.get(f"/api/jobs/{job['id']}/files/out/manifest.json").json()
    assert manifest["styles"][0]["style"] == "Business suit"
    png = client.get(f"/api/jobs/{job['id']}/files/{job['info']['gallery'][0]['file']}")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert job["id"] in [j["id"] for j in client.get("/api/jobs").json()["jobs"]]


def test_bad_uploads_are_refused(server, tmp_path):
    client, service = server
    from facechain import samples

    good = _png(samples.astronaut())
    cases = [
        ([("photos", ("notes.png", b"just text", "image/png"))], "not an image PIL can read"),
        ([("photos", ("notes.txt", good, "text/plain"))], "is not an image file"),
        ([("photos", ("big.png", b"\0" * 2_100_000, "image/png"))], "over the upload limit of 2 MB"),
    ]
    for files, words in cases:
        r = client.post("/api/people", data={"name": "x", "consent": "true"}, files=files)
        assert r.status_code == 400 and words in r.json()["error"], r.text
    before = set(service.root.rglob("*"))
    r = client.post("/api/people", data={"name": "x", "consent": "true"},
                    files=[("photos", ("../../../escape.png", good, "image/png"))])
    assert r.status_code == 200
    new = set(service.root.rglob("*")) - before
    assert all(service.root in p.parents for p in new) and not (service.root.parent / "escape.png").exists()
    assert any(p.name == "escape.png" for p in new)


@pytest.mark.slow
def test_ids_and_paths_are_confined(server, trained):
    client, service = server
    person, job = trained
    assert client.get("/api/people/..%2F..%2Fetc").status_code in (400, 404)
    assert client.get("/api/people/not-an-id").status_code == 400
    assert client.get("/api/people/AAAAAAAAAAAAAAAA").status_code == 404  # well-formed, unknown
    assert client.get("/api/jobs/AAAAAAAAAAAAAAAA").status_code == 404
    secret = service.root / "people" / person["id"] / "person.json"
    for rel in ("../../people/" + person["id"] + "/person.json", "%2E%2E/%2E%2E/people/x/person.json"):
        r = client.get(f"/api/jobs/{job['id']}/files/{rel}")
        assert r.status_code in (400, 404) and r.content != secret.read_bytes()
    assert client.get(f"/api/people/{person['id']}/files/..%2Fperson.json").status_code in (400, 404)
    assert client.post(f"/api/people/{person['id']}/generate", content=b"[1, 2]",
                       headers={"content-type": "application/json"}).status_code == 400


@pytest.mark.slow
def test_failing_jobs_and_concurrent_jobs(server, trained):
    """A bad setting is refused at submit time, naming it; jobs submitted together all finish, one at a time on
    the one worker (queued, never overlapping), each in its own process."""
    client, _ = server
    person, _ = trained
    bad = client.post(f"/api/people/{person['id']}/generate", json={"styles": ["No such style"]})
    assert bad.status_code == 400 and "unknown 'No such style'" in bad.json()["error"]
    ids = [client.post(f"/api/people/{person['id']}/generate", json={"num_images": 1, "seed": s}).json()["id"]
           for s in (1, 2, 3)]
    jobs = [_wait(client, j) for j in ids]
    assert [j["state"] for j in jobs] == ["done"] * 3
    spans = sorted((j["started"], j["finished"]) for j in jobs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert client.get("/api/health").status_code == 200


@pytest.mark.slow
def test_template_and_stylize_jobs(server, trained):
    client, _ = server
    person, _ = trained
    from facechain import samples

    r = client.post("/api/template", data={"people": person["id"]},
                    files={"template": ("team.png", _png(samples.astronaut()), "image/png")})
    job = _wait(client, r.json()["id"])
    assert job["state"] == "done", job["error"]
    assert client.get(f"/api/jobs/{job['id']}/files/out/result.png").status_code == 200
    assert client.get("/api/templates").json()["templates"] == ["solo.png"]
    named = _wait(client, client.post("/api/template", data={"people": person["id"], "name": "solo.png"}).json()["id"])
    assert named["state"] == "done", named["error"]
    r = client.post("/api/template", data={"people": person["id"], "name": "../serve.png"})
    assert r.status_code == 400 and "no template '../serve.png'" in r.json()["error"]
    r = client.post("/api/stylize", data={"method": "portrait-diffusion"},
                    files={"content": ("me.png", _png(samples.astronaut()), "image/png"),
                           "style": ("art.png", _png(samples.astronaut()[::-1].copy()), "image/png")})
    job = _wait(client, r.json()["id"])
    assert job["state"] == "done", job["error"]
    assert job["outputs"] and client.get(f"/api/jobs/{job['id']}/files/{job['outputs'][0]}").status_code == 200
    import numpy as np

    mask = np.zeros((512, 512), np.uint8)
    mask[100:400, 150:350] = 255  # the face region of the astronaut
    r = client.post("/api/stylize", data={"method": "portrait-diffusion", "only_mask_region": "true"},
                    files={"content": ("me.png", _png(samples.astronaut()), "image/png"),
                           "style": ("art.png", _png(samples.astronaut()[::-1].copy()), "image/png"),
                           "content_mask": ("m.png", _png(mask), "image/png")})
    masked = _wait(client, r.json()["id"])
    assert masked["state"] == "done", masked["error"]
    assert masked["params"]["content_mask"] == "inputs/content_mask_m.png" and masked["params"]["only_mask_region"]
    untrained = client.post("/api/people", data={"name": "n", "consent": "true"},
                            files=[("photos", ("a.png", _png(samples.astronaut()), "image/png"))]).json()
    r = client.post("/api/template", data={"people": untrained["id"]},
                    files={"template": ("t.png", _png(samples.astronaut()), "image/png")})
    assert r.status_code == 400 and "no trained LoRA" in r.json()["error"]


@pytest.mark.slow
def test_jobs_survive_a_server_restart(server, trained):
    """A new server on the same workdir lists the finished jobs (a browser refresh or a restart loses none)."""
    from facechain.server.accounts import LOCAL
    from facechain.server.service import Service

    client, service = server
    again = Service(service.cfg, workers=1)
    assert {j["id"] for j in client.get("/api/jobs").json()["jobs"]} <= {j["id"] for j in again.jobs(LOCAL)}
    assert Path(again.root) == service.root
