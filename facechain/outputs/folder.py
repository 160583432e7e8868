"""The output folder a run holds (:class:`OutputDir`): locked, recovered and swept when taken, then
staged results committed through a journal in the record so that they replace the previous run's outputs
only when the run has succeeded; see :mod:`facechain.outputs`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Iterator

from facechain.errors import FacechainError, InputError
from facechain.outputs.lock import release_lock, take_lock
from facechain.outputs.record import (
    RECORD_VERSION,
    STATE_DIR,
    FileRecord,
    parse_files,
    parse_pending,
    pending_stages,
    record_of,
)
from facechain.io import write_json

logger = logging.getLogger(__name__)


class OutputConflictError(FacechainError):
    """A new result would replace a file facechain did not write."""


class OutputCommitError(FacechainError):
    """A commit could not move its files into place (permissions, disk)."""


def same_or_nested(a: Path, b: Path) -> str | None:
    """How folders ``a`` and ``b`` overlap ("the same folder", "inside", "contains"), or None."""
    ra, rb = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    if ra == rb:
        return "the same folder as"
    if rb in ra.parents:
        return "inside"
    if ra in rb.parents:
        return "a parent folder of"
    return None


def check_writable_folder(path: Path, what: str) -> None:
    """A clear error, before any work, when ``path`` cannot be an output folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder. Pass a folder path (it is created if missing).")
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{what} {path}: {parent} is a file, so the folder cannot be created. Pass another path.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{what} {path}: {parent} is not writable (permission denied). Choose a folder you can write to.")
            break


class OutputDir:
    """An output folder held by one run of one command; see the module docstring."""

    def __init__(self, path: Path, command: str, allow_other_files: bool):
        self.path = Path(path)
        self.command = command
        self.allow_other_files = allow_other_files
        self.state = self.path / STATE_DIR
        self.record_path = self.state / f"{command}.json"
        self._lock_fh = None
        self.files: dict[str, FileRecord] = {}
        self.pending: dict | None = None
        self.incomplete = False  # the last commit could not put every result in place

    # ------------------------------------------------------------------ open / close

    @classmethod
    @contextlib.contextmanager
    def open(cls, path, command: str, *, allow_other_files: bool = False, what: str = "output folder") -> Iterator["OutputDir"]:
        od = cls.acquire(path, command, allow_other_files=allow_other_files, what=what)
        try:
            yield od
        finally:
            od.release()

    @classmethod
    def acquire(cls, path, command: str, *, allow_other_files: bool = False, what: str = "output folder") -> "OutputDir":
        """Lock, finish a commit a killed run left half done, sweep temporary files, check for
        files this command did not write. Call :meth:`release` when done (or use :meth:`open`)."""
        path = Path(path)
        check_writable_folder(path, what)
        od = cls(path, command, allow_other_files)
        if od.state.is_symlink() or (od.state.exists() and not od.state.is_dir()):
            raise InputError(f"{what} {path}: {od.state} is not facechain's own folder (a link or a file). Remove it, or "
                             "choose another output folder.")
        for sub in ("staging", "tmp"):
            p = od.state / sub
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                raise InputError(f"{what} {path}: {p} is not facechain's own folder (a link or a file). Remove it, or "
                                 "choose another output folder.")
        try:
            od.state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{what} {path} cannot be created or written ({exc.strerror}). Choose a folder you can write to.") from exc
        od._lock_fh = take_lock(od.path, command, what)
        try:
            od._load_record()
            od._recover()
            od._check_other_files(what)  # a refused run changes nothing
            od._sweep()
        except BaseException:
            od.release()
            raise
        return od

    def release(self) -> None:
        if self._lock_fh is not None:
            release_lock(self._lock_fh)
            self._lock_fh = None


    # ------------------------------------------------------------------ record

    def _load_record(self) -> None:
        self.pending = None
        if not self.record_path.is_file():
            return
        try:
            data = json.loads(self.record_path.read_text(encoding="utf-8"))
            self.files = parse_files(data["files"])
            self.pending = parse_pending(data.get("pending"))
            self.incomplete = bool(data.get("incomplete", False))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise InputError(
                f"{self.record_path} (facechain's record of what it wrote in {self.path}) is damaged ({type(exc).__name__}: "
                f"{str(exc)[:200]}). Nothing was changed. Choose a new output folder, or delete that record file: its "
                "files then count as yours and facechain will not touch them."
            ) from exc

    def _save_record(self) -> None:
        write_json(self.record_path, {
            "version": RECORD_VERSION, "command": self.command,
            "files": {k: v.to_dict() for k, v in sorted(self.files.items())}, "pending": self.pending,
            "incomplete": self.incomplete,
        })

    def owns(self, rel: str) -> bool:
        """True when ``rel`` is recorded as this command's output and still is what was recorded."""
        rec = self.files.get(rel)
        return rec is not None and self._direct(rel) and rec.matches(self.path / rel)

    def _direct(self, rel: str) -> bool:
        """No folder on the way from the output folder to ``rel`` is a link (which could lead outside it)."""
        p = self.path
        for part in PurePosixPath(rel).parts[:-1]:
            p = p / part
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                return False
        return True

    def other_files(self, limit: int | None = None) -> list[str]:
        """Files (and symlinks) in the folder that this command did not record, by relative path. Sub folders
        that hold their own facechain record (another command's output folder) are skipped."""
        found = []
        for root, dirs, names in os.walk(self.path):
            rel_root = Path(root).relative_to(self.path)
            if rel_root == Path("."):
                dirs[:] = [d for d in dirs if d != STATE_DIR]
            # a sub folder with its own record is another command's output folder (e.g. `facechain eval`'s
            # report inside generate's folder): neither this command's files nor a stranger's
            dirs[:] = [d for d in dirs if (Path(root) / d).is_symlink() or not (Path(root) / d / STATE_DIR).is_dir()]
            dirs.sort()
            for name in sorted(names) + [d for d in dirs if (Path(root) / d).is_symlink()]:
                rel = (rel_root / name).as_posix()
                if rel not in self.files:
                    found.append(rel)
                    if limit and len(found) >= limit:
                        return found
        return found

    def _check_other_files(self, what: str) -> None:
        other = self.other_files(limit=6)
        if not other:
            return
        shown = ", ".join(other[:5]) + (", ..." if len(other) > 5 else "")
        if self.allow_other_files:
            logger.info("%s %s holds files facechain did not write (%s); they are left untouched", what, self.path, shown)
            return
        raise InputError(
            f"{what} {self.path} holds files that `facechain {self.command}` did not write ({shown}). facechain never "
            "touches files it did not write, and refuses to mix its results into such a folder. Choose a new or empty "
            "folder, or pass --allow-other-files to write beside them (they stay untouched)."
        )

    # ------------------------------------------------------------------ staging and commit

    def stage(self) -> Path:
        """A new, empty staging folder for this run's results."""
        path = self.state / "staging" / uuid.uuid4().hex[:12]
        path.mkdir(parents=True)
        return path

    def tmp(self) -> Path:
        """The folder for temporary files (same filesystem as the outputs; swept at the next run)."""
        path = self.state / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, stage: Path, *, replace: bool = True, into: str = "", logs: tuple[str, ...] = ()) -> dict[str, Path]:
        """Move every file of ``stage`` into the folder (under ``into``) and record them.

        ``replace=True``: the previous recorded outputs not in the new set are deleted (those still
        as recorded). ``replace=False``: they are kept. ``logs``: relative paths of files we go on
        appending to (ours while they start with the recorded content). Raises OutputConflictError, moving nothing, when a result
        would replace a file this command did not write. Returns {relative path: final path}."""
        stage = Path(stage)
        new: dict[str, dict] = {}
        for p in sorted(stage.rglob("*")):
            if p.is_file():
                rel = (Path(into) / p.relative_to(stage)).as_posix()
                new[rel] = record_of(p, log=rel in logs).to_dict()
        self.check_free(new, f"Nothing was moved. The new results are in {stage}; the next facechain run in this folder "
                             "removes them, so copy them out first if you want them.")
        delete = {rel: rec.to_dict() for rel, rec in self.files.items() if rel not in new} if replace else {}
        self.pending = {"stage": stage.relative_to(self.state).as_posix(), "into": into, "files": new, "delete": delete,
                        "replace": replace}
        self._save_record()  # the journal: a kill from here on is completed by the next run
        self._apply_pending()
        return {rel: self.path / rel for rel in new}

    def check_free(self, rels, note: str = "") -> None:
        """Refuse (OutputConflictError) when a result this run writes would land on a file this
        command did not write (possible only with allow_other_files). Call it before the work when
        the names are known; :meth:`commit` checks again."""
        conflicts = [rel for rel in rels if self._blocked(rel)]
        if conflicts:
            shown = ", ".join(conflicts[:5]) + (", ..." if len(conflicts) > 5 else "")
            raise OutputConflictError(
                f"{self.path} holds files that `facechain {self.command}` did not write (or that changed since it wrote "
                "them) under names its results need "
                f"({shown}); they are left untouched. {note + ' ' if note else ''}Choose another output folder, or move "
                "those files away and rerun."
            )

    def _blocked(self, rel: str) -> bool:
        target = self.path / rel
        for parent in list(Path(rel).parents)[:-1]:  # a path component that is a user's file
            p = self.path / parent
            if p.exists() and (not p.is_dir() or p.is_symlink()):
                return True
        if not os.path.lexists(target):
            return False
        return not self.owns(rel)

    def _apply_pending(self) -> None:
        """Carry out the journalled commit (again, after a kill: files already in place are kept).

        A result is moved only onto a free name or a file the previous record owns; one that would
        land on anything else (a file the user put there after a kill) is skipped. The previous
        outputs are deleted only when every result is in place; otherwise both stay recorded."""
        pending = self.pending
        stage = self.state / pending["stage"]
        into = pending["into"]
        placed: dict[str, FileRecord] = {}
        skipped = []
        for rel, raw in pending["files"].items():
            rec = FileRecord.from_dict(raw)
            dst = self.path / rel
            if rec.matches(dst):  # moved before a kill
                placed[rel] = rec
                continue
            src = stage / (PurePosixPath(rel).relative_to(into) if into else PurePosixPath(rel))
            if not src.is_file() or self._blocked(rel):
                skipped.append(rel)
                continue
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
            except OSError as exc:
                raise OutputCommitError(
                    f"could not move {rel} into {self.path} ({exc.strerror}). The previous outputs are kept and this "
                    "commit is journalled: fix the folder (permissions, disk space), then rerun and it is completed."
                ) from exc
            placed[rel] = rec
        old = dict(self.files)
        if skipped:
            logger.warning("%s: %d result(s) of an interrupted commit could not be put in place (%s); the previous outputs "
                           "were kept, and readers refuse the folder until the command runs there again", self.path,
                           len(skipped), ", ".join(skipped[:3]))
        else:
            for rel, raw in pending["delete"].items():
                self._delete_owned(rel, FileRecord.from_dict(raw))
        # old outputs this commit did not touch stay recorded; those it meant to delete or replace stay
        # recorded only while they are still there as recorded (kept after a skip, or not deletable)
        touched = set(pending["delete"]) | set(pending["files"])
        files = {rel: rec for rel, rec in old.items() if rel not in placed and (rel not in touched or self.owns(rel))}
        files.update(placed)
        self.files = files
        self.incomplete = bool(skipped)
        self.pending = None
        self._save_record()
        shutil.rmtree(stage, ignore_errors=True)  # inside .facechain: ours

    def _delete_owned(self, rel: str, rec: FileRecord) -> bool:
        """Delete ``rel`` if it is still the file we recorded; then its folders inside ours if empty."""
        p = self.path / rel
        if not self._direct(rel) or not rec.matches(p):
            if p.exists():
                logger.info("%s was changed since facechain wrote it; it is left untouched", p)
            return False
        try:
            p.unlink()
        except OSError as exc:
            logger.warning("could not delete %s, an output of an earlier run (%s); it is left in place", p, exc.strerror)
            return False
        parent = p.parent
        while parent != self.path and self.path in parent.parents:
            try:
                parent.rmdir()  # only succeeds when empty
            except OSError:
                break
            parent = parent.parent
        return True

    def remove(self, rels) -> int:
        """Delete recorded outputs (each only if still as recorded) and forget them. Returns the count."""
        n = 0
        for rel in list(rels):
            rec = self.files.pop(rel, None)
            if rec is not None and self._delete_owned(rel, rec):
                n += 1
        self._save_record()
        return n

    def record(self, rels, *, logs: tuple[str, ...] = ()) -> None:
        """Record files this run wrote in place (under the lock) as its outputs."""
        for rel in rels:
            p = self.path / rel
            if p.is_file():
                self.files[rel] = record_of(p, log=rel in logs)
        self._save_record()

    def rewrite_log(self, rel: str, data: bytes) -> None:
        """Replace a log we own with ``data``, its own start (rows dropped from the end): the record
        is updated first, so a kill at any point leaves a log that is still ours."""
        from facechain.io import write_bytes

        self.files[rel] = FileRecord(len(data), hashlib.sha256(data).hexdigest(), True)
        self._save_record()
        write_bytes(self.path / rel, data)

    def owned_under(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/") + "/"
        return [rel for rel in self.files if rel.startswith(prefix)]

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        if self.pending is None:
            return
        logger.info("%s: completing the commit a killed run left half done", self.path)
        (self.state / self.pending["stage"]).mkdir(parents=True, exist_ok=True)
        self._apply_pending()

    def _sweep(self) -> None:
        """Remove what killed runs left in staging/ and tmp/ (ours; no run holds them: we hold the lock)."""
        swept = 0
        keep = pending_stages(self.state)  # another command's half-done commit still needs its staging folder
        for sub in ("staging", "tmp"):
            folder = self.state / sub
            if folder.is_dir() and not folder.is_symlink():
                for p in folder.iterdir():
                    if p.relative_to(self.state).as_posix() in keep:
                        continue
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    swept += 1
        for p in self.state.glob(".*.tmp"):  # a record write (atomic_path) cut short by a kill
            p.unlink(missing_ok=True)
            swept += 1
        if swept:
            logger.info("%s: removed %d temporary item(s) left by an interrupted run", self.path, swept)
