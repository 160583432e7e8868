"""Browser-attack and request-size defences of `facechain serve`, as one ASGI middleware.

:class:`BrowserGuard` wraps the whole server (the API and the mounted web app) and, without buffering a body:

- refuses a request whose ``Host`` is not one of the server's names (DNS rebinding: a page on another site
  whose name is made to resolve to this machine);
- refuses a state-changing request (POST, PUT, PATCH, DELETE, OPTIONS) sent by a page of another origin
  (CSRF), judged by ``Origin``, or by ``Referer`` when there is no ``Origin``; a request with neither (curl,
  scripts) is let through, since a browser always sends one of them cross-site unless told not to;
- removes every ``Access-Control-*`` header from the responses (the web app's own CORS layer answers any
  origin once the server is reached by a name that is not localhost), except for configured origins;
- adds ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: SAMEORIGIN`` and ``Referrer-Policy:
  same-origin`` to every response;
- refuses a body over the size limit as it is received: at once from its ``Content-Length``, or by counting
  a chunked body, in which case the app sees the client disconnect.

:func:`guard_settings` gives its settings for a server bound to an address; :func:`safe_media_type` the
content type of a file we serve, fixed by our own file kinds.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import PurePath
from urllib.parse import urlsplit

from facechain.errors import InputError

logger = logging.getLogger(__name__)

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN"),
                    (b"referrer-policy", b"same-origin"))
DEFAULT_PORTS = frozenset({"80", "443"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})

# Our file kinds -> (content type, serve as a download). Never text/html, never image/svg+xml: a file whose
# name or bytes came from a client can then not run script in the server's origin.
MEDIA_TYPES = {
    ".png": ("image/png", False),
    ".jpg": ("image/jpeg", False),
    ".jpeg": ("image/jpeg", False),
    ".webp": ("image/webp", False),
    ".gif": ("image/gif", False),
    ".bmp": ("image/bmp", False),
    ".tif": ("image/tiff", False),
    ".tiff": ("image/tiff", False),
    ".json": ("application/json", False),
    ".jsonl": ("text/plain; charset=utf-8", False),
    ".safetensors": ("application/octet-stream", True),
}


def loopback_hosts() -> frozenset[str]:
    """The names of this machine on its loopback interface."""
    return frozenset({"127.0.0.1", "localhost", "::1"})


def safe_media_type(path) -> tuple[str, bool]:
    """(content type, attachment) for a file the server sends: by its suffix among our own file kinds, never
    sniffed from its bytes nor taken from the client; any other kind is ``application/octet-stream`` sent as
    an attachment (a download, never shown in the page)."""
    return MEDIA_TYPES.get(PurePath(str(path)).suffix.lower(), ("application/octet-stream", True))


def split_host(value: str) -> tuple[str, str | None] | None:
    """``host[:port]`` (a Host header or a URL's netloc; IPv6 in brackets) -> (lower-case name, port or
    None); None when it is malformed."""
    value = value.strip().lower().rpartition("@")[2]
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        port = rest[1:] or None
    elif value.count(":") == 1:
        name, port = value.split(":")
        if not port.isdigit():
            return None
    elif value.count(":") > 1:  # a bare IPv6 address (not valid in a Host header, but unambiguous)
        name, port = value, None
    else:
        name, port = value, None
    if not name or any(c in name for c in "/\\?#[] \t"):
        return None
    return name, port


def _same_place(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    """Same name and port; an absent port and a default one (80, 443) are the same, since the scheme is not
    compared (a TLS reverse proxy in front of the server)."""
    return a[0] == b[0] and (None if a[1] in DEFAULT_PORTS else a[1]) == (None if b[1] in DEFAULT_PORTS else b[1])


def _is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _config_names(values, field: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)):
        raise InputError(f"{field} must be a list of names, got the single string {values!r}; write it as a list, "
                         f"e.g. [{values!r}]")
    return tuple(values or ())


def _config_host(value) -> str:
    parsed = split_host(value) if isinstance(value, str) else None
    if parsed is None or parsed[1] is not None or "://" in value:
        raise InputError(f"allowed_hosts entry {value!r} is not a host name: write the name (or address) by which "
                         f"browsers reach the server, without scheme or port, e.g. 'myhost.lan' or '192.168.1.5'")
    return parsed[0]


def _config_origin(value) -> str:
    parts = urlsplit(value.strip().lower()) if isinstance(value, str) else None
    if (parts is None or parts.scheme not in ("http", "https") or split_host(parts.netloc) is None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise InputError(f"allowed_origins entry {value!r} is not an origin: write the scheme, name and port of the "
                         f"page that may call the server, without a path, e.g. 'https://team.example' or "
                         f"'http://myhost.lan:8080'")
    return f"{parts.scheme}://{parts.netloc}"


def guard_settings(bind_host: str, extra_hosts=(), extra_origins=(), *, max_request_mb: float = 200.0) -> dict:
    """The :class:`BrowserGuard` settings for a server bound to ``bind_host``.

    Bound to a loopback address, the server answers only the loopback names, that address and
    ``extra_hosts``. Bound to all interfaces (``0.0.0.0``, ``::``) or a network address, it answers
    ``extra_hosts``, that address (or the loopback names, for all interfaces) when ``extra_hosts`` is given,
    and any ``Host`` when it is not (authentication protects it then). ``extra_origins`` are origins of other
    pages allowed to make requests and to read the responses."""
    hosts = frozenset(_config_host(h) for h in _config_names(extra_hosts, "allowed_hosts"))
    origins = frozenset(_config_origin(o) for o in _config_names(extra_origins, "allowed_origins"))
    if isinstance(max_request_mb, bool) or not isinstance(max_request_mb, (int, float)) or not max_request_mb > 0:
        raise InputError(f"max_request_mb must be a positive number of MB (the largest request body the server "
                         f"accepts), got {max_request_mb!r}")
    bind = bind_host.strip().lower().strip("[]")
    if _is_loopback(bind):
        allowed = loopback_hosts() | {bind} | hosts
    elif not hosts:
        allowed = None
    elif bind in WILDCARD_BINDS:
        allowed = loopback_hosts() | hosts
    else:
        allowed = hosts | {bind}
    return {"allowed_hosts": allowed, "allowed_origins": origins, "max_body_bytes": int(max_request_mb * 1e6)}


def _headers(scope) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in scope.get("headers", ()):
        out.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


def _finish_headers(raw, keep_cors: bool) -> list:
    """The response's headers less any ``Access-Control-*`` (unless ``keep_cors``), plus the security
    headers the app did not set itself."""
    headers = [(k, v) for k, v in raw if keep_cors or not k.lower().startswith(b"access-control-")]
    present = {k.lower() for k, _ in headers}
    headers.extend((k, v) for k, v in SECURITY_HEADERS if k not in present)
    return headers


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("latin-1"))]
    await send({"type": "http.response.start", "status": status, "headers": _finish_headers(headers, False)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BrowserGuard:
    """ASGI middleware: the Host, Origin/Referer, CORS, security-header and body-size rules above.

    ``allowed_hosts`` None accepts any Host. ``allowed_origins`` are full origins (``https://team.example``)
    whose pages may send state-changing requests and keep the app's CORS headers. ``max_body_bytes`` is the
    largest request body (the ``max_request_mb`` server setting)."""

    def __init__(self, app, *, allowed_hosts: frozenset[str] | None, allowed_origins: frozenset[str] = frozenset(),
                 max_body_bytes: int):
        if max_body_bytes <= 0:
            raise InputError(f"max_body_bytes must be positive, got {max_body_bytes}; raise max_request_mb in the "
                             f"server config")
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.allowed_origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)
        self.max_body_bytes = int(max_body_bytes)

    @property
    def limit_text(self) -> str:
        return f"{self.max_body_bytes / 1e6:g} MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._host_refusal(headers)
        if scope["type"] == "websocket":
            if refusal:
                logger.warning("websocket refused: %s", refusal)
                await send({"type": "websocket.close", "code": 1008, "reason": refusal[:120]})
                return
            await self.app(scope, receive, send)
            return
        if refusal:
            await _send_error(send, 400, refusal)
            return
        refusal = self._origin_refusal(scope["method"], headers)
        if refusal:
            await _send_error(send, 403, refusal)
            return
        refusal = self._length_refusal(headers)
        if refusal:
            await _send_error(send, refusal[0], refusal[1])
            return
        origin = (headers.get("origin") or [""])[0].strip().lower().rstrip("/")
        exchange = _Exchange(self, receive, send, keep_cors=bool(origin) and origin in self.allowed_origins)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if not exchange.refused:
                raise
            # the app stopped on the disconnect it was shown; the client already has its 413 (or a cut response)
            logger.info("request body over %s: the app stopped on the disconnect (%s)", self.limit_text, type(exc).__name__)

    def _host_refusal(self, headers) -> str | None:
        if self.allowed_hosts is None:
            return None
        values = headers.get("host", [])
        parsed = split_host(values[0]) if len(values) == 1 else None
        if parsed is not None and parsed[0] in self.allowed_hosts:
            return None
        shown = values[0] if len(values) == 1 else ("no Host header" if not values else f"{len(values)} Host headers")
        return (f"Host {shown!r} is not a name of this server: requests for other names are refused, so that a web "
                f"page cannot reach the server by a name of its own (DNS rebinding). If you reach the server by "
                f"that name, add it to allowed_hosts in the server config")

    def _origin_refusal(self, method: str, headers) -> str | None:
        if method.upper() not in STATE_CHANGING:
            return None
        origins, referers = headers.get("origin", []), headers.get("referer", [])
        if origins:
            source, claimed = "Origin", origins[0].strip()
        elif referers:
            source, claimed = "Referer", referers[0].strip()
        else:
            return None  # not sent by a browser page (curl, scripts)
        hosts = headers.get("host", [])
        here = split_host(hosts[0]) if len(hosts) == 1 else None
        parts = urlsplit(claimed.lower()) if claimed.lower() != "null" else None
        there = split_host(parts.netloc) if parts is not None and parts.netloc else None
        if len(origins) <= 1 and there is not None:
            if f"{parts.scheme}://{parts.netloc}" in self.allowed_origins:
                return None
            if here is not None and _same_place(here, there):
                return None
        return (f"{method.upper()} refused: {source} {claimed!r} is not this server's origin, and a page on another "
                f"site may not change anything here (cross-site request forgery). Use the web app on this server, "
                f"or call the API without a browser; if pages of that origin are yours, add it (scheme://name:port) "
                f"to allowed_origins in the server config")

    def _length_refusal(self, headers) -> tuple[int, str] | None:
        values = headers.get("content-length", [])
        if not values:
            return None
        if len(set(values)) != 1 or not values[0].strip().isdigit():
            return 400, (f"Content-Length {', '.join(values)!r} is not one whole number of bytes: send the body's "
                         f"length, or a chunked body")
        length = int(values[0])
        if length <= self.max_body_bytes:
            return None
        return 413, self.too_large(f" of {length / 1e6:.4g} MB")

    def too_large(self, size: str = "") -> str:
        return (f"request body{size} is over the server's limit of {self.limit_text}: send fewer or smaller "
                f"files, or raise max_request_mb in the server config")


class _Exchange:
    """One HTTP request's receive and send: counts the body as it arrives and fixes the response headers."""

    def __init__(self, guard: BrowserGuard, receive, send, keep_cors: bool):
        self.guard, self._receive, self._send, self.keep_cors = guard, receive, send, keep_cors
        self.received = 0
        self.started = False
        self.refused = False

    async def receive(self):
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.guard.max_body_bytes:
                self.refused = True  # before any await: from now on the app's messages are dropped
                logger.warning("request body over %s refused while it was received", self.guard.limit_text)
                if not self.started:
                    await _send_error(self._send, 413, self.guard.too_large())
                return {"type": "http.disconnect"}
        return message

    async def send(self, message):
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
            message = {**message, "headers": _finish_headers(message.get("headers", ()), self.keep_cors)}
        await self._send(message)
