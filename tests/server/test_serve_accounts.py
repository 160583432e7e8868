"""The server on a network: two accounts with tokens (each sees and uses only its own people and jobs), consent,
the allow-list of client settings (every other field refused, naming it), EXIF stripped from stored photos,
deletion that leaves nothing of the person, cancel, retrain, a job timeout, queue limits, retention, and
`facechain serve --host 0.0.0.0` refused without authentication. Demo settings: the tiny model, dlib."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import time

import pytest

ADA, BOB, OPS = "ada-" + "a" * 28, "bob-" + "b" * 28, "ops-" + "c" * 28


def _png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_with_gps(array) -> bytes:
    """A JPEG whose EXIF holds a GPS position, a camera serial and Orientation 6 (shown rotated 90 degrees)."""
    from PIL import Image

    img = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to show
    exif[0xA431] = "SERIAL-1234567"  # BodySerialNumber
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})  # GPS
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _server(tmp_path_factory, tiny_sd15, **changes):
    from facechain.server import build_server, demo_config

    work = tmp_path_factory.mktemp("serve-accounts")
    tokens = work / "tokens.txt"
    tokens.write_text(f"# accounts\nada:{ADA}\nbob:{BOB}\nops:{OPS}:admin\n")
    tokens.chmod(0o600)
    cfg = dataclasses.replace(demo_config(work / "wd"), base_model=str(tiny_sd15), auth_file=tokens, **changes)
    return build_server(cfg)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd15):
    from fastapi.testclient import TestClient

    app, service = _server(tmp_path_factory, tiny_sd15, max_jobs_waiting=2)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, service


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[tuple[str, bytes]]:
    from facechain.samples import write_demo_photos

    return [(p.name, p.read_bytes()) for p in write_demo_photos(tmp_path_factory.mktemp("photos"))]


def _add(client, token, photos, name="Ada", consent="true"):
    return client.post("/api/people", data={"name": name, "consent": consent}, headers=_auth(token),
                       files=[("photos", (n, b, "image/png")) for n, b in photos])


def _wait(client, token, jid: str, states=("done", "failed", "cancelled"), timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{jid}", headers=_auth(token)).json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {jid} did not reach {states}: {job}")


def test_tokens_are_required(server):
    client, _ = server
    assert client.get("/api/health").status_code == 200  # the one open endpoint: no data
    for headers in ({}, _auth("x" * 40), {"Authorization": f"Basic {ADA}"}):
        r = client.get("/api/people", headers=headers)
        assert r.status_code == 401 and "Bearer" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/people", headers=_auth(ADA)).status_code == 200


def test_two_accounts_see_only_their_own(server, photos):
    client, _ = server
    ada = _add(client, ADA, photos[:2]).json()
    assert ada["owner"] == "ada" and ada["consent"]["account"] == "ada" and ada["consent"]["time"] > 0
    pid = ada["id"]
    assert pid in [p["id"] for p in client.get("/api/people", headers=_auth(ADA)).json()["people"]]
    assert pid not in [p["id"] for p in client.get("/api/people", headers=_auth(BOB)).json()["people"]]
    for method, path in (("get", f"/api/people/{pid}"), ("delete", f"/api/people/{pid}"),
                         ("post", f"/api/people/{pid}/train"), ("post", f"/api/people/{pid}/generate"),
                         ("get", f"/api/people/{pid}/lora")):
        r = getattr(client, method)(path, headers=_auth(BOB))
        assert r.status_code == 404 and f"no person {pid}" in r.json()["error"], (method, path, r.text)
    r = client.post("/api/template", data={"people": pid}, headers=_auth(BOB),
                    files={"template": ("t.png", photos[0][1], "image/png")})
    assert r.status_code == 404
    assert pid in [p["id"] for p in client.get("/api/people", headers=_auth(OPS)).json()["people"]]  # the admin


def test_consent_is_required(server, photos):
    client, service = server
    before = sorted(p.name for p in (service.root / "people").iterdir())
    for consent in ("", "false", "no"):
        r = _add(client, ADA, photos[:1], consent=consent)
        assert r.status_code == 400 and "consent is required" in r.json()["error"]
    assert sorted(p.name for p in (service.root / "people").iterdir()) == before  # nothing stored


@pytest.mark.parametrize("kind,body,words", [
    ("train", {"init_lora": "/etc/passwd", "allow_pickle": True}, "setting 'init_lora' cannot be set by a client"),
    ("train", {"allow_pickle": True}, "'allow_pickle' cannot be set"),
    ("train", {"output_dir": "/tmp/x"}, "'output_dir' cannot be set"),
    ("train", {"base_model": "other/model"}, "'base_model' cannot be set"),
    ("train", {"device": "cuda:3"}, "'device' cannot be set"),
    ("train", {"resolution": 16000}, "'resolution' cannot be set"),
    ("train", {"checkpointing_steps": 1}, "'checkpointing_steps' cannot be set"),
    ("train", {"max_train_steps": 10 ** 6}, "this server allows 1 to 2000 (the server's max_train_steps)"),
    ("train", {"learning_rate": 0.5}, "setting 'learning_rate' is 0.5"),
    ("train", {"seed": "lots"}, "must be an integer"),
    ("train", {"restart": "yes"}, "must be true or false"),
])
def test_forbidden_and_out_of_bounds_train_settings(server, photos, kind, body, words):
    client, service = server
    pid = _add(client, ADA, photos[:1]).json()["id"]
    jobs = len(client.get("/api/jobs", headers=_auth(ADA)).json()["jobs"])
    r = client.post(f"/api/people/{pid}/{kind}", json=body, headers=_auth(ADA))
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert len(client.get("/api/jobs", headers=_auth(ADA)).json()["jobs"]) == jobs  # nothing queued


@pytest.mark.parametrize("body,words", [
    ({"restore_model": "/etc/passwd"}, "'restore_model' cannot be set"),
    ({"pose": "/home/someone/photo.png"}, "setting 'pose' is '/home/someone/photo.png'; pick one of"),
    ({"depth_image": "x.png"}, "'depth_image' cannot be set"),
    ({"identity": {"photos": "/srv"}}, "'identity' cannot be set"),
    ({"default_style_lora": "x"}, "'default_style_lora' cannot be set"),
    ({"allow_other_files": True}, "'allow_other_files' cannot be set"),
    ({"height": 16000}, "'height' cannot be set"),
    ({"num_candidates": 10 ** 5}, "'num_candidates' cannot be set"),
    ({"num_images": "lots"}, "'num_images' must be an integer"),
    ({"num_images": 1000}, "this server allows 1 to 6 (the server's max_images)"),
    ({"num_inference_steps": 10 ** 4}, "max_inference_steps"),
    ({"styles": ["No such style"]}, "unknown 'No such style'"),
    ({"styles": ["Business suit"] * 9 + ["x"]}, "at most 8"),
])
def test_forbidden_and_out_of_bounds_generate_settings(body, words):
    from facechain.errors import InputError
    from facechain.server.client_settings import check_client_settings
    from facechain.server.service import ServeConfig

    with pytest.raises(InputError, match=None) as err:
        check_client_settings("generate", body, ServeConfig())
    assert words in str(err.value)


def test_bodies_that_are_not_json_settings(server, photos):
    client, _ = server
    pid = _add(client, ADA, photos[:1]).json()["id"]
    url = f"/api/people/{pid}/train"
    r = client.post(url, content=b'{"seed": 1}', headers={**_auth(ADA), "content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]  # a cross-site form can't send JSON
    deep = b"[" * 50_000 + b"]" * 50_000
    r = client.post(url, content=deep, headers={**_auth(ADA), "content-type": "application/json"})
    assert r.status_code in (400, 413) and "error" in r.json()
    r = client.post(url, content=b'{"seed": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
                    headers={**_auth(ADA), "content-type": "application/json"})
    assert r.status_code == 400
    r = client.post(url, content=b'{"seed": 1, "seed": 2}', headers={**_auth(ADA), "content-type": "application/json"})
    assert r.status_code == 400 and "seed" in r.json()["error"] and "twice" in r.json()["error"]


def test_stored_photos_have_no_exif_and_are_upright(server):
    from PIL import Image

    from facechain import samples

    client, service = server
    art = samples.astronaut()[:, :400]  # 512 x 400: the orientation swaps it
    data = _jpeg_with_gps(art)
    assert b"SERIAL-1234567" in data
    person = client.post("/api/people", data={"name": "g", "consent": "true"}, headers=_auth(ADA),
                         files=[("photos", ("gps.jpg", data, "image/jpeg"))]).json()
    stored = service.workspace(person["id"]).photos / "gps.jpg"
    raw = stored.read_bytes()
    assert b"SERIAL-1234567" not in raw and b"Exif" not in raw
    with Image.open(stored) as img:
        assert not img.getexif() and img.size == (512, 400)  # upright: rotated as the orientation said


def test_html_uploads_are_never_stored_or_served_as_html(server):
    from facechain import samples

    client, service = server
    html = b"<html><script>alert(document.cookie)</script></html>"
    for name, data in (("page.html", _png(samples.astronaut())), ("page.png", html)):
        r = client.post("/api/people", data={"name": "h", "consent": "true"}, headers=_auth(ADA),
                        files=[("photos", (name, data, "text/html"))])
        assert r.status_code == 400
    polyglot = _png(samples.astronaut()) + html  # a PNG with a page after its end: PIL reads it
    person = client.post("/api/people", data={"name": "h", "consent": "true"}, headers=_auth(ADA),
                         files=[("photos", ("poly.png", polyglot, "image/png"))]).json()
    assert b"<script>" not in (service.workspace(person["id"]).photos / "poly.png").read_bytes()  # our own encoding
    r = client.get(f"/api/people/{person['id']}/files/poly.html", headers=_auth(ADA))
    assert r.status_code == 404 and "text/html" not in r.headers.get("content-type", "")
    from facechain.server.security import safe_media_type

    assert all("html" not in safe_media_type(n)[0] for n in ("x.html", "x.htm", "x.svg", "x.png.html", "x"))


def test_job_records_and_manifests_carry_no_server_paths(server, tmp_path):
    client, service = server
    job_dir = service.job_dir("AAAAAAAAAAAAAAAA")
    manifest = {"output_dir": str(job_dir / "out"), "lora_dir": str(service.root / "people" / "x" / "lora"),
                "base_model": "/opt/models/sd15-film", "image": str(job_dir / "out" / "a.png"),
                "note": f"failed reading {service.root}/people/x/photos/a.png", "n": 3}
    public = service.public_json(manifest, job_dir)
    assert public == {"output_dir": "out", "lora_dir": "<server>/lora", "base_model": "<server>/sd15-film",
                      "image": "out/a.png", "note": "failed reading <workdir>/people/x/photos/a.png", "n": 3}


def test_queue_limit_per_account(server, photos):
    client, service = server
    pid = _add(client, BOB, photos[:1]).json()["id"]
    jids = []
    try:
        for _ in range(2):  # max_jobs_waiting: 2 (a template job on an untrained person is refused; train is allowed)
            r = client.post(f"/api/people/{_add(client, BOB, photos[:1]).json()['id']}/train", headers=_auth(BOB))
            assert r.status_code == 200, r.text
            jids.append(r.json()["id"])
        r = client.post(f"/api/people/{pid}/train", headers=_auth(BOB))
        assert r.status_code == 429 and "max_jobs_waiting" in r.json()["error"]
        r = client.post(f"/api/people/{pid}/train", headers=_auth(ADA))
        assert r.status_code == 404  # and Ada cannot queue on Bob's person
    finally:
        for jid in jids:
            client.post(f"/api/jobs/{jid}/cancel", headers=_auth(BOB))
    for jid in jids:
        assert _wait(client, BOB, jid)["state"] == "cancelled"


def test_delete_removes_everything_of_the_person(server, photos):
    """A person with a queued or running training job: deletion stops the job and removes every file of the
    person and of their jobs, leaving the rest of the workdir as it was."""
    client, service = server

    def files():
        return {p for p in service.root.rglob("*") if p.is_file()}

    import numpy as np

    from facechain import samples

    rng = np.random.default_rng(7)
    unique = []  # photos no other test uploads, so any copy found is a copy of this person's
    for i in range(3):
        img = samples.astronaut().copy()
        img[:4] = rng.integers(0, 255, img[:4].shape, dtype=np.uint8)
        unique.append((f"u{i}.png", _png(img)))
    before = files()
    person = _add(client, ADA, unique).json()
    pid = person["id"]
    job = client.post(f"/api/people/{pid}/train", headers=_auth(ADA)).json()
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in service.person_dir(pid).rglob("*")
               if p.is_file() and p.name != "person.json"} | {hashlib.sha256(b).hexdigest() for _, b in unique}
    r = client.delete(f"/api/people/{pid}", headers=_auth(ADA))
    assert r.status_code == 200 and r.json()["jobs"] == [job["id"]], r.text
    after = files()
    assert after - before <= {service.root / "deleted.jsonl"}
    assert not service.person_dir(pid).exists() and not service.job_dir(job["id"]).exists()
    left = {hashlib.sha256(p.read_bytes()).hexdigest() for p in after}
    assert not digests & left  # no copy of any of the person's files anywhere in the workdir
    assert client.get(f"/api/people/{pid}", headers=_auth(ADA)).status_code == 404
    assert client.get(f"/api/jobs/{job['id']}", headers=_auth(ADA)).status_code == 404
    assert pid in (service.root / "deleted.jsonl").read_text()


def test_retention_deletes_old_people_and_old_cached_files(tmp_path_factory, tiny_sd15, photos):
    from facechain.server.accounts import Account
    from facechain.server.gradio_files import cache_dir

    _, service = _server(tmp_path_factory, tiny_sd15, retention_days=30.0)
    ada = Account("ada")
    old = service.add_person("old", photos[:1], ada, consent=True)
    stale, fresh = cache_dir(service.root) / "h1" / "old.png", cache_dir(service.root) / "h2" / "new.png"
    for p in (stale, fresh):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    assert service.expire()["people"] == [] and not stale.exists() and fresh.exists()  # cache: older than 24 h
    done = service.expire(now=time.time() + 31 * 86400)
    assert done["people"] == [old["id"]] and not service.person_dir(old["id"]).exists()


def test_delete_removes_the_cached_identity_embeddings(tmp_path_factory, tiny_sd15, photos):
    """The identity adapter caches embeddings of a photo folder in $FACECHAIN_HOME/identity (keyed by the
    photos' bytes); deleting the person deletes those of their photos, and no one else's."""
    from facechain.adapters.ip_adapter_faceid import embedding
    from facechain.images import list_images
    from facechain.server.accounts import Account

    _, service = _server(tmp_path_factory, tiny_sd15)
    ada = Account("ada")
    mine = service.add_person("m", photos[:2], ada, consent=True)["id"]
    other = service.add_person("o", photos[2:3], ada, consent=True)["id"]
    folder = embedding.adapters_home().parent / "identity"
    folder.mkdir(parents=True, exist_ok=True)
    cached = {}
    for pid in (mine, other):
        files = list_images(service.workspace(pid).photos, "photos")
        cached[pid] = folder / f"{embedding._cache_key(files, 'dlib')}.safetensors"
        cached[pid].write_bytes(b"cached")
    assert embedding.cached_embedding_files(service.workspace(mine).photos) == [cached[mine]]
    service.delete_person(mine, ada)
    assert not cached[mine].exists() and cached[other].exists()


def test_serve_refuses_the_network_without_authentication(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECHAIN_SERVE_TOKEN")}
    r = subprocess.run([sys.executable, "-m", "facechain", "serve", "--host", "0.0.0.0", "--workdir", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "without authentication" in r.stderr and "FACECHAIN_SERVE_TOKEN" in r.stderr
    assert not (tmp_path / "people").exists()  # refused before anything was made


@pytest.mark.slow
def test_cancel_a_running_job_and_the_next_one_runs(server, photos):
    client, service = server
    person = _add(client, BOB, photos).json()
    job = client.post(f"/api/people/{person['id']}/train", headers=_auth(BOB)).json()
    _wait(client, BOB, job["id"], states=("running",))
    time.sleep(2.0)  # its process is importing / preprocessing
    t0 = time.time()
    r = client.post(f"/api/jobs/{job['id']}/cancel", headers=_auth(BOB))
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and time.time() - t0 < 30
    assert "cancelled by bob" in r.json()["error"]
    assert client.post(f"/api/jobs/{job['id']}/cancel", headers=_auth(BOB)).status_code == 400  # already ended
    again = client.post(f"/api/people/{person['id']}/train", json={"restart": True}, headers=_auth(BOB)).json()
    done = _wait(client, BOB, again["id"])
    assert done["state"] == "done", done["error"]
    assert done["progress"]["step"] == done["progress"]["total"] == 20


@pytest.mark.slow
def test_retrain_starts_over_and_a_changed_setting_says_how(server, photos):
    client, service = server
    pid = _add(client, ADA, photos).json()["id"]
    first = _wait(client, ADA, client.post(f"/api/people/{pid}/train", json={"seed": 1}, headers=_auth(ADA)).json()["id"])
    assert first["state"] == "done", first["error"]
    lora = service.workspace(pid).lora / "pytorch_lora_weights.safetensors"
    before = lora.read_bytes()
    changed = _wait(client, ADA, client.post(f"/api/people/{pid}/train", json={"seed": 2}, headers=_auth(ADA)).json()["id"])
    assert changed["state"] == "failed" and "restart: true" in changed["error"]
    over = _wait(client, ADA, client.post(f"/api/people/{pid}/train", json={"seed": 2, "restart": True},
                                          headers=_auth(ADA)).json()["id"])
    assert over["state"] == "done", over["error"]
    assert lora.read_bytes() != before  # trained again from the start with the new seed


@pytest.mark.slow
def test_a_job_past_its_timeout_is_stopped(tmp_path_factory, tiny_sd15, photos):
    from facechain.server.accounts import Account

    _, service = _server(tmp_path_factory, tiny_sd15, job_timeout_s=3.0)
    ada = Account("ada")
    pid = service.add_person("t", photos, ada, consent=True)["id"]
    jid = service.start_train(pid, None, ada)["id"]
    deadline = time.time() + 60
    while service.job(jid, ada)["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.2)
    job = service.job(jid, ada)
    assert job["state"] == "failed" and "job timeout of 3 s" in job["error"]


def test_a_long_upload_name_keeps_its_extension(server):
    from facechain import samples
    from facechain.server.workdir import safe_name

    client, _ = server
    name = "holiday-" + "x" * 120 + ".png"
    r = client.post("/api/people", data={"name": "long", "consent": "true"}, headers=_auth(ADA),
                    files=[("photos", (name, _png(samples.astronaut()), "image/png"))])
    assert r.status_code == 200, r.text
    [stored] = r.json()["photos"]
    assert stored.endswith(".png") and stored.startswith("holiday-") and len(stored) == 80
    assert safe_name("../../" + "y" * 90, "f") == "y" * 80  # no extension: cut, still never a path
