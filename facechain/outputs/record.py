"""The record of an output folder: what a command wrote there (path, size, sha256; a log we append to
by its start) and the commit in progress, as ``OUT/.facechain/<command>.json`` holds them. Parsing refuses
any path outside the folder or inside facechain's own state folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

STATE_DIR = ".facechain"
RECORD_VERSION = 1


@dataclass(frozen=True)
class FileRecord:
    size: int
    # of the whole file; for a log, of its first ``size`` bytes. None only in records written by
    # facechain's first output-record format, where a log entry was {size, sha256: null}.
    sha256: str | None
    log: bool = False  # a log we append to: still ours while it starts with what we recorded

    def to_dict(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "log": self.log}

    @classmethod
    def from_dict(cls, d) -> "FileRecord":
        if isinstance(d, dict) and isinstance(d.get("size"), int) and d.get("sha256") is None and "log" not in d:
            return cls(d["size"], None, True)  # the first format's log entry: a log we append to, owned by name
        if not (isinstance(d, dict) and isinstance(d.get("size"), int) and isinstance(d.get("sha256"), str)
                and isinstance(d.get("log", False), bool)):
            raise ValueError(f"not a file entry: {d!r}")
        return cls(d["size"], d["sha256"], d.get("log", False))

    def matches(self, path: Path) -> bool:
        """``path`` is a regular file with the recorded content (a log: that content as its start)."""
        if path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        if size < self.size or (size != self.size and not self.log):
            return False
        if self.sha256 is None:  # first-format log entry, its start not hashed: ours only while it reads as our log
            return _reads_as_jsonl_log(path, self.size)
        return sha256_file(path, self.size) == self.sha256


def _reads_as_jsonl_log(path: Path, size: int) -> bool:
    """The first ``size`` bytes are whole JSON lines, each a mapping: the logs facechain appends
    (``train_log.jsonl``). A file of another kind put at that name is not taken for ours."""
    with open(path, "rb") as fh:
        head = fh.read(size)
    if not head.endswith(b"\n"):
        return False
    try:
        return all(isinstance(json.loads(line), dict) for line in head.decode("utf-8").splitlines() if line.strip())
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return False


def sha256_file(path: Path, limit: int | None = None) -> str:
    """sha256 of the file, or of its first ``limit`` bytes."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as fh:
        while left is None or left > 0:
            block = fh.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def _safe_rel(rel) -> bool:
    """A relative path inside the output folder, outside our state folder."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in p.parts) and p.parts[0] != STATE_DIR


def record_of(path: Path, log: bool = False) -> FileRecord:
    size = path.stat().st_size
    return FileRecord(size, sha256_file(path, size), log)


def parse_files(raw) -> dict[str, FileRecord]:
    if not isinstance(raw, dict):
        raise ValueError("'files' is not a mapping")
    bad = [k for k in raw if not _safe_rel(k)]
    if bad:
        raise ValueError(f"paths outside the folder: {bad[:3]}")
    return {k: FileRecord.from_dict(v) for k, v in raw.items()}


def parse_pending(raw) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("'pending' is not a mapping")
    stage = raw["stage"]
    if not (isinstance(stage, str) and len(PurePosixPath(stage).parts) == 2
            and PurePosixPath(stage).parts[0] in ("staging", "tmp") and _safe_rel(PurePosixPath(stage).parts[1])):
        raise ValueError(f"staging folder {stage!r} is not inside staging/ or tmp/")
    into = raw["into"]
    if not (into == "" or _safe_rel(into)):
        raise ValueError(f"'into' {into!r} is outside the folder")
    if not isinstance(raw["replace"], bool):
        raise ValueError("'replace' is not true/false")
    files, delete = parse_files(raw["files"]), parse_files(raw["delete"])
    if into and any(not k.startswith(into.rstrip("/") + "/") for k in files):
        raise ValueError("a file outside 'into'")
    return {"stage": stage, "into": into, "replace": raw["replace"],
            "files": {k: v.to_dict() for k, v in files.items()}, "delete": {k: v.to_dict() for k, v in delete.items()}}


def pending_stages(state: Path) -> set[str]:
    """Staging folders (relative to the state folder) that some command's record still needs."""
    keep = set()
    for rec in state.glob("*.json"):
        try:
            pending = json.loads(rec.read_text(encoding="utf-8")).get("pending")
            if isinstance(pending, dict) and isinstance(pending.get("stage"), str):
                keep.add(pending["stage"])
        except (OSError, ValueError, AttributeError):
            continue
    return keep
