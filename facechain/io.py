"""Atomic file writing. Everything facechain writes goes through here: temp file in the
same folder, fsync, then ``os.replace``, so a killed run never leaves a half-written file. A write
that finds the disk full is one :class:`~facechain.errors.DiskFullError` naming the disk and the
sizes. :func:`not_regular_kind` tells a FIFO or a device from a file without opening it."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator
import dataclasses
import numpy as np

from facechain.errors import DiskFullError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``. A write that fails for
    want of disk space raises :class:`DiskFullError` naming the disk, ``size`` (the bytes being written, when
    the caller knows them) and the space free there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except Exception as exc:
        code = disk_full_code(exc)
        if code is None:
            raise
        written = 0
        if tmp_path.exists():  # the space free is measured without our partial file
            written = tmp_path.stat().st_size
            tmp_path.unlink()
        raise disk_full_error(path, size, written, code) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# safetensors' writer (Rust) reports an I/O error as SafetensorError("Error while serializing: I/O error: No
# space left on device (os error 28)"), not as an OSError.
_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)")
_DISK_FULL_CODES = (errno.ENOSPC, errno.EDQUOT)


def disk_full_code(exc: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``exc`` says a write found the disk (or the quota) full, else None."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in _DISK_FULL_CODES else None
    if type(exc).__name__ == "SafetensorError":
        m = _OS_ERROR_NUMBER.search(str(exc))
        if m and int(m[1]) in _DISK_FULL_CODES:
            return int(m[1])
    return None


def human_size(n: int) -> str:
    """``n`` bytes as 512 B, 3.4 MB, 1.2 GB (powers of 1000, as disks are sold)."""
    if n < 1000:
        return f"{n} B"
    value, unit = n / 1000, "KB"
    for bigger in ("MB", "GB", "TB"):
        if round(value, 1) < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


def filesystem_of(folder: Path) -> str:
    """The disk holding ``folder``, for a message: its mount point, and its device and type when the system
    lists them (/proc/self/mounts)."""
    mount = Path(os.path.abspath(folder))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    device = ""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and _unescape_mount(fields[1]) == str(mount):
                    device = f"{fields[0]}, {fields[2]}" if fields[0] != fields[2] else fields[2]  # the last one counts
    except OSError:  # not Linux: the mount point alone
        pass
    return f"the disk mounted at {mount}" + (f" ({device})" if device else "")


def _unescape_mount(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def disk_full_error(path: Path, size: int | None, written: int, code: int) -> DiskFullError:
    """The one-line error for a write of ``path`` that found no space: the disk, the size and the space free."""
    folder = path.parent
    try:
        free = human_size(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    need = human_size(size) if size is not None else f"more than the {human_size(written)} written when it failed"
    what = "no space left on" if code == errno.ENOSPC else "your disk quota is used up on"
    return DiskFullError(
        f"{what} {filesystem_of(folder)}: writing {path} needs {need}, and {free} is free there. Free space on that "
        "disk (or write to a folder on another one) and rerun; earlier results are kept, and a training run "
        "continues from its last checkpoint with --resume.")


def current_umask() -> int:
    """The process's umask (read without changing it), for giving a file made 0600 the usual mode."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line (logs). A torn last line from a kill is skipped by :func:`read_jsonl`."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        fh.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn line from an interrupted append
    return rows


def save_image(path: str | os.PathLike, image, format: str | None = None) -> Path:
    """Save a PIL image or an RGB uint8 array atomically (format from the suffix)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    fmt = format or (Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG")
    image.save(buf, format=fmt)
    return write_bytes(path, buf.getvalue())


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path, safetensors_size(tensors, metadata)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder ("a FIFO (named pipe)", "a
    character device", ...), else None. Found with ``os.stat``, so nothing is opened: opening a FIFO waits for a
    writer, and reading ``/dev/zero`` never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def safetensors_size(tensors: dict, metadata: dict | None = None) -> int:
    """The size of the .safetensors file of ``tensors``: their bytes, and a header of about 100 bytes a tensor."""
    header = 8 + len(json.dumps(metadata or {})) + sum(len(k) + 100 for k in tensors)
    return header + sum(t.numel() * t.element_size() for t in tensors.values())


def _json_default(obj: Any):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
