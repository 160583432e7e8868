"""The web app takes files only from the browser's own uploads: a file path a client names (a server file,
another person's stored photo, a FIFO) is refused by Gradio's own check, which the mounted app enforces; the
workdir is never served by path; what reaches a handler is a regular file in this server's Gradio cache, read
once; no reply names a server path; purge_cache removes a person's files from the cache by content."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest

from facechain.errors import InputError
from facechain.server.accounts import LOCAL
from facechain.server.gradio_files import CACHE_MARKER, cache_dir, purge_cache, read_cached_upload


def _png(seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from fastapi.testclient import TestClient

    from facechain.server import build_server
    from facechain.server.service import ServeConfig

    work = tmp_path_factory.mktemp("serve-files")
    (work / "templates").mkdir()
    (work / "templates" / "solo.png").write_bytes(_png(1))
    old = os.environ.get("GRADIO_TEMP_DIR")
    # no model is loaded: these tests never run a job
    cfg = ServeConfig(workdir=work / "wd", base_model="unused", templates_dir=work / "templates", max_upload_mb=1.0,
                      face_backend="dlib")
    app, service = build_server(cfg)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, service
    if old is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old


def _call(client, api_name: str, data: list) -> tuple[str, object]:
    """(event, data) of a web-app endpoint called over HTTP (Gradio's /gradio_api/call/<name>, then its SSE)."""
    r = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
    assert r.status_code == 200, r.text
    text = client.get(f"/gradio_api/call/{api_name}/{r.json()['event_id']}").text
    events = [block for block in text.split("\n\n") if block.startswith("event:") and "heartbeat" not in block]
    event, payload = events[-1].split("\n", 1)
    return event.removeprefix("event: "), json.loads(payload.removeprefix("data: "))


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _named(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def _upload(client, files: list[tuple[str, bytes]]) -> list[str]:
    r = client.post("/gradio_api/upload", files=[("files", (n, b, "image/png")) for n, b in files])
    assert r.status_code == 200, r.text
    return r.json()


def _no_server_path(reply, *roots: Path) -> None:
    text = json.dumps(reply)
    for root in roots:
        assert str(root) not in text, text


@pytest.fixture(scope="module")
def stored_photo(server) -> Path:
    """Another person's stored photo in the workdir (what the hole turned into a new person's photo)."""
    _, service = server
    person = service.add_person("Other", [("mine.png", _png(2))], LOCAL, consent=True)
    photo = next(service.workspace(person["id"]).photos.iterdir())
    assert photo.is_file()
    return photo


def test_named_server_files_are_refused_by_train_and_stylize(server, stored_photo):
    client, service = server
    cache = cache_dir(service.root)
    before, people = _files(cache), [p["id"] for p in service.people(LOCAL)]
    for target in ("/etc/passwd", stored_photo):
        event, reply = _call(client, "start_train", ["Eve", [_named(target)], True])
        assert event == "error" and reply == {"error": None}, reply  # Gradio's refusal, its text (a path) hidden
        event, reply = _call(client, "start_stylize", [_named(target), _named(target), "styleid", None, None, False])
        assert event == "error" and reply == {"error": None}, reply
        _no_server_path(reply, service.root)
    assert _files(cache) == before  # nothing copied into the cache
    assert [p["id"] for p in service.people(LOCAL)] == people  # and no person made of it


def test_workdir_files_are_not_served_by_path(server, stored_photo):
    client, service = server
    for path in (stored_photo, service.templates_dir / "solo.png", service.root / "people"):
        assert client.get(f"/gradio_api/file={path}").status_code in (403, 404)
    assert str(service.root) not in client.get("/config").text


def test_template_preview_is_served_from_a_cached_copy(server):
    client, service = server
    event, reply = _call(client, "pick_template", ["solo.png"])
    assert event == "complete", reply
    path = Path(reply[0]["path"])
    assert path.is_relative_to(cache_dir(service.root)) and path.read_bytes() == (service.templates_dir / "solo.png").read_bytes()
    r = client.get(f"/gradio_api/file={path}")
    assert r.status_code == 200 and r.content == path.read_bytes()


def test_a_fifo_is_refused_without_waiting(server, tmp_path):
    client, service = server
    outside = tmp_path / "pipe.png"
    os.mkfifo(outside)
    inside = cache_dir(service.root) / "f1f0" / "pipe.png"  # one in the cache too: only read_upload stands there
    inside.parent.mkdir()
    os.mkfifo(inside)
    results: dict = {}

    def calls():
        results["outside"] = _call(client, "start_train", ["Eve", [_named(outside)], True])
        results["inside"] = _call(client, "start_train", ["Eve", [_named(inside)], True])

    worker = threading.Thread(target=calls, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # a reader waits on a FIFO: give it an end of file, so that the server goes on, then fail
        for fifo in (outside, inside):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader on this one
                pass
        worker.join(timeout=10)
        pytest.fail("a FIFO path froze the web app")
    assert results["outside"] == ("error", {"error": None})
    event, (jid, message) = results["inside"]
    assert event == "complete" and jid is None
    assert message == "**Error:** file 'pipe.png' was refused: files come only from this browser's uploads. " \
                      "Upload it in the web app (or send it to the HTTP API)."
    inside.unlink()
    inside.parent.rmdir()


def test_genuine_uploads_reach_the_handler_once(server):
    client, service = server
    paths = _upload(client, [("a.png", b"not a picture"), ("b.png", b"nor this")])  # image names, text content
    assert all(Path(p).is_relative_to(cache_dir(service.root)) for p in paths)
    event, (jid, message) = _call(client, "start_train", ["Eve", [_named(p) for p in paths], True])
    assert event == "complete" and jid is None
    # read by read_upload and handed to the service, which refused their content (not their origin)
    assert "not an image PIL can read" in message and "browser's uploads" not in message, message
    _no_server_path(message, service.root)
    assert not any(Path(p).exists() for p in paths)  # each upload is read once, then deleted
    event, (_, message) = _call(client, "start_train", ["Eve", [_named(paths[0])], True])
    assert "no longer on the server" in message and "upload it again" in message


def test_face_finder_names_no_server_path(server):
    client, service = server
    [path] = _upload(client, [("group.png", _png(4)[:120])])  # a PNG cut short: its header reads, its pixels do not
    event, (preview, message) = _call(client, "find_faces", [_named(path)])
    assert event == "complete" and preview is None
    assert "group.png" in message and "cannot be used" in message, message  # read_image's message, the path cut
    _no_server_path(message, service.root)
    assert Path(path).exists()  # looked at, not read: "Put them in" reads it


def test_paths_in_messages_are_cut_to_file_names(tmp_path):
    import gradio as gr

    from facechain.server.gradio_files import guard_handlers

    root, cache = tmp_path / "wd", tmp_path / "wd" / ".web-cache"
    photo = root / "people" / "p" / "photos" / "a.png"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(b"png")
    cache.mkdir()
    with gr.Blocks() as blocks:
        text, table, files = gr.Markdown(), gr.JSON(), gr.File(file_count="multiple")
        gr.Button().click(lambda: (f"**Error:** photo {photo} cannot be used. In {root}: see {cache}/x/b.png",
                                   {"lora": str(root / "people" / "p" / "lora"), "steps": 3}, [str(photo)]),
                          None, [text, table, files])
    guard_handlers(blocks, [root], cache)
    [block_fn] = [f for f in blocks.fns.values() if f.outputs]
    message, manifest, [served] = block_fn.fn()
    assert message == "**Error:** photo a.png cannot be used. In the server's folder: see b.png"
    assert manifest == {"lora": "lora", "steps": 3}
    assert Path(served).is_relative_to(cache) and Path(served).read_bytes() == b"png"  # a copy, served instead


def test_read_upload_rules(server, tmp_path):
    client, service = server
    from facechain.server.app.common import read_upload

    data = _png(3)
    [path] = _upload(client, [("face.png", data)])
    assert read_upload(service, path) == ("face.png", data)
    assert not Path(path).exists() and not Path(path).parent.exists()  # the file and its hashed folder

    cache = cache_dir(service.root)
    outside = tmp_path / "secret.png"
    outside.write_bytes(data)
    link = cache / "l1nk" / "secret.png"
    link.parent.mkdir()
    link.symlink_to(outside)
    for bad in (outside, link, cache / ".." / "people", cache, "/dev/zero"):
        with pytest.raises(InputError, match="files come only from this browser's uploads") as err:
            read_upload(service, bad)
        assert str(tmp_path) not in str(err.value) and str(service.root) not in str(err.value)
    assert outside.read_bytes() == data and link.is_symlink()  # a refused file is never deleted
    link.unlink()
    link.parent.rmdir()

    r = client.post("/gradio_api/upload", files=[("files", ("big.png", b"\0" * 1_000_001, "image/png"))])
    assert r.status_code == 413  # Gradio's own limit (max_file_size) on uploads
    big = cache / "b1g" / "big.png"  # one in the cache all the same (a copy Gradio made of an upload, say)
    big.parent.mkdir()
    big.write_bytes(b"\0" * 1_000_001)
    with pytest.raises(InputError, match="over the upload limit of 1 MB"):
        read_upload(service, big)
    assert read_cached_upload(big, cache, max_bytes=2_000_000)[1] == b"\0" * 1_000_001


def test_purge_cache_removes_exactly_the_given_contents(tmp_path):
    root = tmp_path / "wd"
    cache = cache_dir(root)
    a, b = b"person A's photo", b"person B's photo"
    files = {cache / "h1" / "x.png": a, cache / "h2" / "y.png": b, cache / "h3" / "z.webp": a, cache / "top.png": a}
    for p, content in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    (cache / CACHE_MARKER).write_text("made by the server\n")  # as use_cache() makes it
    (cache / "h2" / "other.png").write_bytes(a + b)
    outside = tmp_path / "outside.png"
    outside.write_bytes(a)
    (cache / "h4").mkdir()
    (cache / "h4" / "link.png").symlink_to(outside)

    removed = purge_cache(root, {hashlib.sha256(a).hexdigest().upper()})
    assert sorted(removed) == sorted([cache / "h1" / "x.png", cache / "h3" / "z.webp", cache / "top.png"])
    assert not (cache / "h1").exists() and not (cache / "h3").exists() and cache.is_dir()
    assert (cache / "h2" / "y.png").read_bytes() == b and (cache / "h2" / "other.png").exists()
    assert (cache / "h4" / "link.png").is_symlink() and outside.read_bytes() == a  # never followed
    assert purge_cache(root, set()) == [] and purge_cache(tmp_path / "none", {"00"}) == []


def test_gradio_checks_a_mounted_apps_paths_only_with_the_launch_flag(server, tmp_path):
    """What enforce_file_checks relies on (gradio.processing_utils._check_allowed returns early unless
    Blocks.has_launched): without the flag a mounted Blocks hands a client-named file to its handler, with
    it Gradio refuses it. If this fails after a Gradio upgrade, re-read _check_allowed and mount_gradio_app."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from facechain.server.gradio_files import enforce_file_checks

    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    for enforced in (False, True):
        seen = []
        with gr.Blocks() as blocks:
            f = gr.File(type="filepath")
            out = gr.Textbox()
            f.change(lambda p: seen.append(p) or "read", f, out, api_name="take")
        app = gr.mount_gradio_app(FastAPI(), blocks, path="/", show_error=False)
        if enforced:
            enforce_file_checks(blocks)
        with TestClient(app) as client:
            event, reply = _call(client, "take", [_named(secret)])
        if enforced:
            assert event == "error" and reply == {"error": None} and seen == []
        else:
            assert event == "complete" and len(seen) == 1 and Path(seen[0]).read_text() == "not yours", (event, reply)
            Path(seen[0]).unlink()


def test_the_cache_goes_in_the_workdir_unless_someone_else_set_it(tmp_path, monkeypatch):
    from facechain.server.gradio_files import use_cache

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    first = use_cache(tmp_path / "a")
    assert first == (tmp_path / "a" / ".web-cache").resolve() and first.is_dir()
    assert os.environ["GRADIO_TEMP_DIR"] == str(first)
    assert use_cache(tmp_path / "b") == cache_dir(tmp_path / "b")  # a later server may move what we set
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "operator"))
    with pytest.raises(InputError, match="unset GRADIO_TEMP_DIR"):
        use_cache(tmp_path / "c")
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "operator")


def test_a_cache_folder_the_server_did_not_make_is_never_swept(tmp_path):
    from facechain.server.gradio_files import expire_cache, use_cache

    root = tmp_path / "wd"
    theirs = cache_dir(root) / "keep.png"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"a user's file")
    os.utime(theirs, (0, 0))
    assert purge_cache(root, {hashlib.sha256(b"a user's file").hexdigest()}) == []
    assert expire_cache(root, older_than=1e12) == [] and theirs.read_bytes() == b"a user's file"
    with pytest.raises(InputError, match="did not put there"):
        use_cache(root)
