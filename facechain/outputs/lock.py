"""The lock of an output folder (``OUT/.facechain/lock``): a writer's exclusive ``flock`` held for its run
(:func:`take_lock`), with the holder's pid, host, command and start time in the file; a reader's shared lock
(:func:`hold_for_reading`, :func:`check_settled`). Where flock is unsupported, a lock whose pid is gone on
this host is taken over."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from facechain.errors import FacechainError, InputError
from facechain.io import current_umask
from facechain.outputs.record import STATE_DIR

logger = logging.getLogger(__name__)


class OutputInUseError(FacechainError):
    """Another run holds the output folder's lock."""


def take_lock(folder: Path, command: str, what: str):
    """Take the exclusive lock of output folder ``folder`` (its state folder exists) for a run of ``command``:
    the open lock file, holding the lock until :func:`release_lock`. OutputInUseError when another run
    holds it; ``what`` names the folder in messages."""
    import fcntl

    lock_path = folder / STATE_DIR / "lock"
    try:  # never through a symlink: the lock file is overwritten with the holder's details
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise InputError(f"{what} {folder}: cannot open its lock file {lock_path} ({exc.strerror}). Remove it if "
                         "it is a link or not a file.") from exc
    fh = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _read_holder(lock_path)
            fh.close()
            if holder and _holder_gone(holder):  # the writer it names is gone: a reader holds it
                holder = {"reader": True}
            raise OutputInUseError(_in_use_message(folder, what, holder)) from None
        # no flock on this filesystem: a lock file whose pid is alive on this host is a live lock
        holder = _read_holder(lock_path)
        if holder and not _holder_gone(holder):
            fh.close()
            raise OutputInUseError(_in_use_message(folder, what, holder)) from None
        if holder:
            logger.info("%s %s: taking over a stale lock of pid %s (no longer running)", what, folder, holder.get("pid"))
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    fh.flush()
    os.chmod(lock_path, 0o666 & ~current_umask())
    return fh


def release_lock(fh) -> None:
    """Release and close a lock :func:`take_lock` took."""
    with contextlib.suppress(OSError):
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    fh.close()


def hold_for_reading(path, command: str, what: str):
    """:func:`check_settled`, then keep a shared lock on the folder until the returned handle is
    closed, so that no run of ``command`` can replace the folder's contents while it is read."""
    check_settled(path, command, what)
    lock = Path(path) / STATE_DIR / "lock"
    if not lock.is_file() or lock.is_symlink():
        return None
    import fcntl

    fh = open(lock, encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputInUseError(_in_use_message(Path(path), what, _read_holder(lock))) from None
        return None
    return fh


def check_settled(path, command: str, what: str) -> None:
    """Before reading a folder a command writes (the trainer reading preprocessing's output,
    generation reading a LoRA folder): refuse while a run holds it, or when its last commit was cut
    short (the folder then mixes two runs' files until that command runs there again)."""
    state = Path(path) / STATE_DIR
    lock = state / "lock"
    if lock.is_file() and not lock.is_symlink():
        import fcntl

        with open(lock, encoding="utf-8") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputInUseError(_in_use_message(Path(path), what, _read_holder(lock))) from None
    record = state / f"{command}.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            pending = data.get("pending") or data.get("incomplete")
        except (OSError, ValueError, AttributeError):
            pending = None
        if pending:
            raise InputError(
                f"{what} {path}: the last `facechain {command}` run there was stopped while it was replacing its outputs, "
                f"so the folder mixes two runs' files. Run the same `facechain {command}` command into it again (it "
                "completes or redoes that step), then retry."
            )


def _read_holder(lock_path: Path) -> dict | None:
    try:
        return json.loads(lock_path.read_text(encoding="utf-8").strip() or "null")
    except (OSError, json.JSONDecodeError):
        return None


def _holder_gone(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell on another host: treat as live
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError):
        return False
    return False


def _in_use_message(path: Path, what: str, holder: dict | None) -> str:
    if holder and holder.get("reader"):
        who = "a facechain run that is reading it (e.g. a training run reading its processed photos)"
    elif holder:
        who = f"pid {holder.get('pid')} on {holder.get('host')} (facechain {holder.get('command')}, since {holder.get('started')})"
    else:
        who = "another facechain run"
    return (f"{what} {path} is in use by {who}. Two runs in one folder would mix their results. Wait for that run to "
            "finish or stop it, or choose another folder.")
