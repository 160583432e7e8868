"""The browser-attack and request-size defences of `facechain serve` (facechain/server/security.py): a tiny
Starlette app behind BrowserGuard (DNS rebinding, CSRF by Origin and Referer, preflights, CORS headers,
security headers, body limits by Content-Length and while a chunked body streams), the settings for each
bind address, the content types of served files, and the guard on a real server (Gradio's CORS header)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from facechain.errors import InputError
from facechain.server.security import BrowserGuard, guard_settings, loopback_hosts, safe_media_type, split_host

unit = pytest.mark.unit  # model-free

ATTACKER = "http://attacker.example"


def _app(calls: list):
    async def echo(request):
        calls.append(request.method)
        body = await request.body()
        return JSONResponse({"n": len(body)})

    async def cors(request):
        calls.append("cors")
        return PlainTextResponse("x", headers={"Access-Control-Allow-Origin": request.headers.get("origin", "*"),
                                               "Access-Control-Allow-Credentials": "true", "X-Frame-Options": "DENY"})

    async def ws(websocket):
        calls.append("ws")
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    return Starlette(routes=[Route("/echo", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
                             Route("/cors", cors), WebSocketRoute("/ws", ws)])


@pytest.fixture
def guarded():
    """(client on http://localhost:7860, the calls the app saw); the guard of a server bound to 127.0.0.1."""
    calls: list = []
    guard = BrowserGuard(_app(calls), **guard_settings("127.0.0.1", (), ("https://front.example",), max_request_mb=0.001))
    with TestClient(guard, base_url="http://localhost:7860") as client:
        yield client, calls


@unit
def test_a_foreign_host_is_refused_and_the_loopback_names_with_a_port_pass(guarded):
    client, calls = guarded
    r = client.get("/echo", headers={"host": "attacker.example"})
    assert r.status_code == 400 and calls == []
    error = r.json()["error"]
    assert "'attacker.example'" in error and "DNS rebinding" in error and "allowed_hosts" in error
    assert r.headers["x-content-type-options"] == "nosniff"
    for host in ("localhost:7860", "127.0.0.1:7860", "[::1]:7860", "LOCALHOST", "127.0.0.1"):
        assert client.get("/echo", headers={"host": host}).status_code == 200, host
    for host in ("attacker.example:7860", "localhost.attacker.example", "[::1", "localhost:x", ""):
        assert client.get("/echo", headers={"host": host}).status_code == 400, host
    assert calls == ["GET"] * 5


@unit
def test_the_host_rule_applies_to_websockets(guarded):
    client, calls = guarded
    with client.websocket_connect("/ws", headers={"host": "localhost:7860"}) as ws:  # (the test client says testserver)
        assert ws.receive_text() == "hi"
    with pytest.raises(WebSocketDisconnect) as err:
        with client.websocket_connect("/ws", headers={"host": "attacker.example"}) as ws:
            ws.receive_text()
    assert err.value.code == 1008 and calls == ["ws"]


@unit
@pytest.mark.parametrize("kind", ["multipart", "text/plain", "urlencoded"])
def test_a_cross_origin_form_post_is_refused_before_the_app(guarded, kind):
    client, calls = guarded
    headers = {"origin": ATTACKER}
    if kind == "multipart":
        r = client.post("/echo", headers=headers, files={"photos": ("a.png", b"x", "image/png")})
    elif kind == "text/plain":
        r = client.post("/echo", headers={**headers, "content-type": "text/plain"}, content=b'{"num_images": 9}')
    else:
        r = client.post("/echo", headers=headers, data={"name": "x"})
    assert r.status_code == 403 and calls == []
    error = r.json()["error"]
    assert f"Origin '{ATTACKER}'" in error and "allowed_origins" in error and "cross-site request forgery" in error
    assert not [k for k in r.headers if k.startswith("access-control-")]


@unit
def test_same_origin_configured_origin_and_headerless_requests_pass(guarded):
    client, calls = guarded
    for origin in ("http://localhost:7860", "https://localhost:7860", "https://front.example"):
        assert client.post("/echo", headers={"origin": origin}, content=b"abc").json() == {"n": 3}, origin
    assert client.delete("/echo", headers={"referer": "http://localhost:7860/?view=people"}).status_code == 200
    assert client.post("/echo", content=b"x").status_code == 200  # curl, scripts: neither header
    assert client.get("/echo", headers={"origin": ATTACKER}).status_code == 200  # reads are not refused
    assert calls == ["POST", "POST", "POST", "DELETE", "POST", "GET"]
    # behind a TLS proxy on the default port: the scheme and the default port are not compared
    r = client.post("/echo", headers={"host": "localhost", "origin": "https://localhost"})
    assert r.status_code == 200


@unit
def test_null_origin_referer_only_cross_site_and_other_ports_are_refused(guarded):
    client, calls = guarded
    cases = [({"origin": "null"}, "Origin 'null'"),
             ({"referer": ATTACKER + "/page.html"}, "Referer 'http://attacker.example/page.html'"),
             ({"origin": "http://localhost:3000"}, "Origin 'http://localhost:3000'"),  # another app on this machine
             ({"origin": ATTACKER, "referer": "http://localhost:7860/"}, "Origin"),  # Origin decides
             ({"referer": "not a url"}, "Referer 'not a url'")]
    for headers, words in cases:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r = client.request(method, "/echo", headers=headers)
            assert r.status_code == 403 and words in r.json()["error"], (method, headers, r.text)
    assert calls == []


@unit
def test_a_cross_origin_preflight_gets_403_without_cors_headers(guarded):
    client, calls = guarded
    r = client.options("/echo", headers={"origin": ATTACKER, "access-control-request-method": "POST",
                                         "access-control-request-headers": "content-type"})
    assert r.status_code == 403 and calls == []
    assert not [k for k in r.headers if k.startswith("access-control-")]


@unit
def test_cors_headers_are_stripped_except_for_configured_origins_and_security_headers_are_added(guarded):
    client, calls = guarded
    for origin in (ATTACKER, None):
        r = client.get("/cors", headers={"origin": origin} if origin else {})
        assert r.status_code == 200 and not [k for k in r.headers if k.startswith("access-control-")], origin
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "same-origin"
        assert r.headers.get_list("x-frame-options") == ["DENY"]  # the app's own value, not a second one
    r = client.get("/cors", headers={"origin": "https://front.example"})
    assert r.headers["access-control-allow-origin"] == "https://front.example"
    r = client.get("/echo")
    assert (r.headers["x-content-type-options"], r.headers["x-frame-options"]) == ("nosniff", "SAMEORIGIN")
    assert calls == ["cors", "cors", "cors", "GET"]


def _drive(guard, headers: dict, chunks: list[bytes]):
    """Run one POST through the ASGI app with a receive() that yields ``chunks`` (a chunked body, no
    Content-Length unless given): (messages sent to the client, how many times receive was called)."""
    sent, pulls = [], []

    async def receive():
        pulls.append(1)
        if len(pulls) <= len(chunks):
            return {"type": "http.request", "body": chunks[len(pulls) - 1], "more_body": len(pulls) < len(chunks)}
        await asyncio.sleep(3600)  # the client waits for the answer; never a disconnect of its own

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/echo", "raw_path": b"/echo", "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5),
             "server": ("127.0.0.1", 7860), "headers": [(k.encode(), v.encode()) for k, v in
                                                         {"host": "127.0.0.1:7860", **headers}.items()]}
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 10))
    return sent, len(pulls)


def _status_and_body(sent: list) -> tuple[int, dict]:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    return starts[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@unit
def test_a_content_length_over_the_limit_is_refused_before_the_app_reads():
    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())

    guard = BrowserGuard(app, **guard_settings("127.0.0.1", max_request_mb=0.0001))  # 100 bytes
    sent, pulls = _drive(guard, {"content-length": "101"}, [b"x" * 101])
    status, body = _status_and_body(sent)
    assert status == 413 and seen == [] and pulls == 0
    assert "0.0001 MB" in body["error"] and "max_request_mb" in body["error"]
    assert _drive(guard, {"content-length": "12x"}, [b"x"])[0][0]["status"] == 400


@unit
def test_a_chunked_body_over_the_limit_is_cut_off_while_it_streams():
    seen = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the app's answer"})

    guard = BrowserGuard(app, **guard_settings("127.0.0.1", max_request_mb=0.0001))
    sent, pulls = _drive(guard, {}, [b"x" * 40] * 10)
    status, body = _status_and_body(sent)  # the app's own answer was dropped
    assert status == 413 and "0.0001 MB" in body["error"] and "max_request_mb" in body["error"]
    assert seen == ["http.request", "http.request", "http.disconnect"] and pulls == 3  # 40, 80, 120 > 100
    assert b"the app's answer" not in b"".join(m.get("body", b"") for m in sent)
    sent, _ = _drive(guard, {}, [b"x" * 40, b"x" * 40, b"x" * 20])  # exactly at the limit: the app answers
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"the app's answer"


@unit
def test_a_starlette_handler_cut_off_mid_body_gives_one_413_and_no_error():
    calls: list = []
    guard = BrowserGuard(_app(calls), **guard_settings("127.0.0.1", max_request_mb=0.0001))
    sent, _ = _drive(guard, {"content-type": "application/octet-stream"}, [b"x" * 60] * 4)
    assert _status_and_body(sent)[0] == 413 and calls == ["POST"]


@unit
def test_guard_settings_for_each_bind_address():
    lo = loopback_hosts()
    assert lo == {"127.0.0.1", "localhost", "::1"}
    assert guard_settings("127.0.0.1")["allowed_hosts"] == lo
    assert guard_settings("localhost", ["MyHost.lan"])["allowed_hosts"] == lo | {"myhost.lan"}
    assert guard_settings("[::1]")["allowed_hosts"] == lo
    assert guard_settings("0.0.0.0")["allowed_hosts"] is None  # any Host: authentication protects it
    assert guard_settings("::")["allowed_hosts"] is None
    assert guard_settings("192.168.1.5")["allowed_hosts"] is None
    assert guard_settings("0.0.0.0", ["myhost.lan"])["allowed_hosts"] == lo | {"myhost.lan"}
    assert guard_settings("192.168.1.5", ["myhost.lan"])["allowed_hosts"] == {"myhost.lan", "192.168.1.5"}
    settings = guard_settings("127.0.0.1", (), ["HTTPS://Team.example/"], max_request_mb=2.5)
    assert settings["allowed_origins"] == {"https://team.example"} and settings["max_body_bytes"] == 2_500_000
    for bad, words in [({"extra_hosts": ["myhost.lan:7860"]}, "allowed_hosts entry 'myhost.lan:7860'"),
                       ({"extra_hosts": ["http://myhost.lan"]}, "without scheme or port"),
                       ({"extra_hosts": "myhost.lan"}, "a list of names"),
                       ({"extra_origins": ["team.example"]}, "allowed_origins entry 'team.example'"),
                       ({"extra_origins": ["https://team.example/app"]}, "without a path"),
                       ({"max_request_mb": 0}, "max_request_mb must be a positive number")]:
        with pytest.raises(InputError, match=words):
            guard_settings("127.0.0.1", **bad)


@unit
def test_split_host():
    assert split_host("LocalHost:7860") == ("localhost", "7860")
    assert split_host("[::1]:80") == ("::1", "80") and split_host("[::1]") == ("::1", None)
    assert split_host("::1") == ("::1", None) and split_host("user@host") == ("host", None)
    assert all(split_host(v) is None for v in ("", "[::1", "[::1]x", "a:b", "a/b", "a b"))


@unit
def test_served_files_have_our_content_types_and_never_html():
    assert safe_media_type("out/result.png") == ("image/png", False)
    assert safe_media_type("a.JPG") == ("image/jpeg", False) and safe_media_type("a.jpeg") == ("image/jpeg", False)
    assert safe_media_type("a.webp") == ("image/webp", False)
    assert safe_media_type("out/manifest.json") == ("application/json", False)
    assert safe_media_type("log.jsonl") == ("text/plain; charset=utf-8", False)
    assert safe_media_type("lora.safetensors") == ("application/octet-stream", True)
    for name in ("x.html", "x.htm", "x.svg", "x.png.html", "x.xhtml", "x.js", "x", "x.png/", ".html"):
        media, attachment = safe_media_type(name)
        assert "html" not in media and "svg" not in media and "javascript" not in media, name
    assert safe_media_type("x.png.html") == ("application/octet-stream", True)
    assert safe_media_type("x.svg") == ("application/octet-stream", True)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory, tiny_sd15):
    from facechain.server import build_server, demo_config

    cfg = dataclasses.replace(demo_config(tmp_path_factory.mktemp("serve")), base_model=str(tiny_sd15))
    app, service = build_server(cfg, bind_host="0.0.0.0")  # no allowed_hosts: any Host (myhost.lan) is answered
    return app


def test_a_real_server_strips_gradios_cors_header_and_refuses_cross_origin_posts(real_server):
    headers = {"host": "myhost.lan", "origin": ATTACKER}
    with TestClient(real_server.app) as inner:  # without the guard, Gradio answers the attacker's origin
        assert inner.get("/config", headers=headers).headers.get("access-control-allow-origin") == ATTACKER
    with TestClient(real_server) as client:
        r = client.get("/config", headers=headers)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert not [k for k in r.headers if k.startswith("access-control-")]
        assert r.headers["x-content-type-options"] == "nosniff"
        r = client.post("/api/people", headers=headers, data={"name": "x"},
                        files=[("photos", ("a.png", b"x", "image/png"))])
        assert r.status_code == 403 and "allowed_origins" in r.json()["error"]
        assert client.get("/api/people", headers={"host": "myhost.lan"}).json()["people"] == []
        r = client.options("/gradio_api/queue/join", headers={**headers, "access-control-request-method": "POST"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_a_real_server_on_loopback_refuses_a_foreign_host(tmp_path, tiny_sd15):
    from facechain.server import build_server, demo_config

    cfg = dataclasses.replace(demo_config(tmp_path), base_model=str(tiny_sd15))
    app, _ = build_server(cfg)
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        assert client.get("/api/health").json()["ok"] is True
        r = client.get("/api/health", headers={"host": "attacker.example"})
        assert r.status_code == 400 and "allowed_hosts" in r.json()["error"]
