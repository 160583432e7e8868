"""Who is asking: the server's accounts and their tokens.

Authentication is on when tokens are configured: ``FACECHAIN_SERVE_TOKEN`` (one token, the account
``admin``) and/or a tokens file (``auth_file`` in the server config, or ``FACECHAIN_SERVE_TOKENS_FILE``), one
account per line::

    # name:token[:admin]
    ada:3f9c...long random token...
    ops:9a01...:admin

Tokens come from the environment or a file, never from the command line (a command line is visible to every
user of the machine in ``ps``). Each token is at least 24 characters (``python -c "import secrets;
print(secrets.token_urlsafe(32))"`` makes one). The API takes ``Authorization: Bearer <token>``; the web app's
login takes the account name and its token. An admin sees every account's people and jobs; any other account
sees only its own.

With no token configured the server has one account, :data:`LOCAL` (an admin): that is allowed only on a
loopback address (``facechain serve`` refuses another host without authentication).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from facechain.errors import InputError

logger = logging.getLogger(__name__)

TOKEN_ENV = "FACECHAIN_SERVE_TOKEN"
TOKENS_FILE_ENV = "FACECHAIN_SERVE_TOKENS_FILE"
MIN_TOKEN_CHARS = 24
NAME_RULE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
HOW_TO = (f"set {TOKEN_ENV} to a random token of {MIN_TOKEN_CHARS}+ characters (python -c \"import secrets; "
          f"print(secrets.token_urlsafe(32))\"), or list accounts in a tokens file (auth_file in the server config, "
          f"or {TOKENS_FILE_ENV}; one 'name:token[:admin]' per line). See docs/serve.md")


@dataclass(frozen=True)
class Account:
    name: str
    admin: bool = False


LOCAL = Account("local", admin=True)  # the one account of a server without authentication (loopback only)


class AuthError(InputError):
    """No or a wrong token (HTTP 401)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Accounts:
    """The configured accounts; only the tokens' SHA-256 digests are kept in memory."""

    def __init__(self, entries: dict[str, tuple[Account, bytes]] | None = None):
        self._by_name = dict(entries or {})

    @property
    def enabled(self) -> bool:
        return bool(self._by_name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Account | None:
        entry = self._by_name.get(name)
        return entry[0] if entry else None

    def check_token(self, token: str | None) -> Account | None:
        """The account whose token this is (compared in constant time over every account), or None."""
        if not token:
            return None
        got, found = _digest(token), None
        for account, want in self._by_name.values():
            if hmac.compare_digest(got, want):
                found = account
        return found

    def check_login(self, name: str, token: str) -> bool:
        """The web app's login: the account's name and its token."""
        account = self.check_token(token)
        return account is not None and hmac.compare_digest(account.name.encode(), str(name or "").encode())

    @classmethod
    def load(cls, auth_file: str | os.PathLike | None = None, env: dict | None = None) -> Accounts:
        """The accounts of ``$FACECHAIN_SERVE_TOKEN`` and the tokens file (``auth_file``, else
        ``$FACECHAIN_SERVE_TOKENS_FILE``); no accounts when neither is set."""
        env = os.environ if env is None else env
        entries: dict[str, tuple[Account, bytes]] = {}

        def add(name: str, token: str, admin: bool, where: str) -> None:
            if not NAME_RULE.match(name):
                raise InputError(f"{where}: account name {name!r} must be 1-40 letters, digits, '.', '_' or '-'.")
            if len(token) < MIN_TOKEN_CHARS:
                raise InputError(f"{where}: the token of account {name!r} has {len(token)} characters; use a random "
                                 f"token of at least {MIN_TOKEN_CHARS} (python -c \"import secrets; "
                                 "print(secrets.token_urlsafe(32))\").")
            if name in entries:
                raise InputError(f"{where}: account {name!r} is listed twice; give each account one line.")
            if any(hmac.compare_digest(_digest(token), d) for _, d in entries.values()):
                raise InputError(f"{where}: account {name!r} has the same token as another account; give each its own.")
            entries[name] = (Account(name, admin), _digest(token))

        if env.get(TOKEN_ENV):
            add("admin", env[TOKEN_ENV].strip(), True, TOKEN_ENV)
        path = auth_file or env.get(TOKENS_FILE_ENV)
        if path:
            path = Path(path).expanduser()
            if not path.is_file():
                raise InputError(f"tokens file {path} does not exist. Create it with one 'name:token[:admin]' per line.")
            mode = path.stat().st_mode
            if mode & (stat.S_IRGRP | stat.S_IROTH):
                logger.warning("tokens file %s is readable by other users of this machine: chmod 600 it", path)
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split(":")
                if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
                    raise InputError(f"tokens file {path}, line {n}: write 'name:token' or 'name:token:admin'.")
                add(parts[0].strip(), parts[1].strip(), len(parts) == 3, f"tokens file {path}, line {n}")
        return cls(entries)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
