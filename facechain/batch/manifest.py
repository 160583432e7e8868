"""The batch's durable job manifest: one SQLite file (``output_dir/batch.sqlite``).

* ``stages``: one row per person and stage: state (pending, running, done, failed), attempts, when it
  started and finished, seconds, the failure's reason, the worker (host:pid), the outputs with
  their sha256 (paths relative to the batch's output_dir) and the inputs its last attempt started
  with (:func:`facechain.batch.stages.stage_inputs`: the photos' fingerprint, the stage's settings,
  the earlier stages' outputs), which ``--resume`` compares with the batch file's.
* ``events``: an append-only log of every transition (the progress lines come from it).

Every write is one short transaction (``BEGIN IMMEDIATE``) on its own connection, in WAL mode with
``synchronous=FULL``: a record is either wholly there or not at all, a killed writer loses nothing
committed, and several worker processes can write at once (SQLite's lock serialises them; the busy
timeout waits instead of failing). On a multi-node cluster the output folder must be on a file system
every node mounts with POSIX locks (NFSv4, EFS, Lustre): the workers write their own stage records there.

The file is ours only when its SQLite header carries our application id (``PRAGMA application_id``, set
when :meth:`Manifest.create` builds it): :meth:`Manifest.check` refuses any other file by that name (a
database of the user's, a damaged file) with an InputError naming it, before anything opens it for writing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facechain.errors import InputError

logger = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    person TEXT NOT NULL, stage TEXT NOT NULL, position INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, seconds REAL, error TEXT, worker TEXT, outputs TEXT, inputs TEXT,
    PRIMARY KEY (person, stage));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, person TEXT NOT NULL, stage TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER, detail TEXT);
"""
# the SQLite header's application id (bytes 68-71) of every manifest facechain batch creates: "FCBT"
APPLICATION_ID = 0x46434254
SCHEMA_VERSION = 2  # PRAGMA user_version: 2 = the stages table with its inputs column
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class StageRecord:
    person: str
    stage: str
    position: int
    state: str
    attempts: int
    started: float | None
    finished: float | None
    seconds: float | None
    error: str | None
    worker: str | None
    outputs: dict[str, str]  # path relative to the batch folder -> sha256
    inputs: dict | None = None  # what its last attempt started with (stages.stage_inputs); None: never started


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_gone(pid: int) -> bool:
    """No process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def ours_or_empty_sqlite(path: Path) -> bool:
    """Whether ``path`` is an SQLite file with our application id, or empty (killed before SQLite wrote its header)."""
    with open(path, "rb") as fh:
        head = fh.read(100)
    return not head or (head.startswith(_SQLITE_MAGIC) and int.from_bytes(head[68:72], "big") == APPLICATION_ID)


def sweep_leftovers(folder: Path, name: str, ours: Callable[[Path], bool] = ours_or_empty_sqlite) -> list[Path]:
    """Remove what a killed run of ours left beside ``folder/name``: ``name.<pid>.new`` whose pid no longer runs
    here and whose content ``ours`` recognises as our own (a file of that name with other content is a user's and
    stays), with SQLite's ``-wal``, ``-shm`` and ``-journal`` files beside such a one. This process has not made
    one yet when it sweeps, so one with its own pid is an earlier process's that had the same pid. Returns them."""
    pattern = re.compile(re.escape(name) + r"\.(\d+)\.new(-wal|-shm|-journal)?")
    found = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = pattern.fullmatch(p.name)
        if match and not p.is_symlink() and p.is_file():
            found[p] = (int(match.group(1)), match.group(2))
    swept, main_ours = [], {}
    for p, (pid, side) in sorted(found.items(), key=lambda item: item[1][1] is not None):  # main files first
        if pid != os.getpid() and not _pid_gone(pid):
            logger.info("%s: left in place, its process %d still runs", p, pid)
            continue
        if side is None:
            main_ours[pid] = ours(p)
            if not main_ours[pid]:
                logger.info("%s: left in place, its content is not ours", p)
                continue
        elif not main_ours.get(pid):  # SQLite's side files go only with a main file of ours
            continue
        p.unlink(missing_ok=True)
        swept.append(p)
    if swept:
        logger.info("%s: removed %s, left by a run that was killed", folder, ", ".join(p.name for p in swept))
    return swept


class Manifest:
    """Reads and writes ``path``; cheap to make (a connection per call), so every process makes its own."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _recover_hint(self) -> str:
        return (f"If it is a file of yours, move it away or choose another output_dir. If it is this batch's manifest, "
                f"damaged (a full disk, a copy cut short), move it aside (e.g. to {self.path.name}.damaged) and rerun "
                "`facechain batch JOBS.yaml --resume`: it starts a new manifest and runs every person's stages again, "
                "replacing the outputs it wrote in their folders (the old manifest is not read).")

    def _damaged(self, exc: Exception) -> InputError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return InputError(f"{self.path}: the batch manifest stayed locked by another process for 2 minutes ({exc}). "
                              "Check for a stuck facechain batch worker on this output_dir, stop it, then rerun with "
                              "--resume.")
        return InputError(f"{self.path}: the batch manifest cannot be read ({type(exc).__name__}: {exc}). It is left "
                          f"untouched. {self._recover_hint()}")

    def check(self) -> None:
        """Refuse (InputError, naming the file and the way out) a ``path`` that is not a manifest facechain batch
        created and can read: a link, not a regular file, not SQLite, SQLite without our application id (a
        database of the user's), or ours but damaged. Reads only the header of a file that is not ours."""
        if self.path.is_symlink() or not self.path.is_file():
            raise InputError(f"{self.path} is not a regular file (a link, a folder, a device), so it is not a manifest "
                             f"facechain batch wrote. It is left untouched. {self._recover_hint()}")
        with open(self.path, "rb") as fh:
            head = fh.read(100)
        if not head:
            what = "it is empty (0 bytes)"
        elif len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
            what = f"it is not an SQLite database ({self.path.stat().st_size} bytes, no SQLite header)"
        elif int.from_bytes(head[68:72], "big") != APPLICATION_ID:
            what = "it is an SQLite database that facechain batch did not create (its header lacks our application id)"
        else:
            what = None
        if what:
            raise InputError(f"{self.path} is not a manifest facechain batch wrote: {what}. It is left untouched. "
                             f"{self._recover_hint()}")
        try:
            con = sqlite3.connect(self.path, timeout=120)
            try:
                (ok,) = con.execute("PRAGMA quick_check").fetchone()
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                (version,) = con.execute("PRAGMA user_version").fetchone()
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        if ok != "ok":
            raise self._damaged(sqlite3.DatabaseError(f"integrity check: {ok}"))
        if not {"stages", "events"} <= tables:
            raise self._damaged(sqlite3.DatabaseError(f"its tables are missing (it has {sorted(tables) or 'none'})"))
        if version != SCHEMA_VERSION:
            raise InputError(f"{self.path} was written by a facechain version with manifest schema {version} (this one "
                             f"reads {SCHEMA_VERSION}). Rerun with that version, or move the file aside and rerun with "
                             "--resume (every stage runs again).")

    @contextmanager
    def _connect(self):
        """A connection whose SQLite errors (a file damaged meanwhile) become the InputError that says what to do."""
        try:
            con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        try:
            yield con
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        finally:
            con.close()

    @contextmanager
    def _tx(self):
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def create(self) -> None:
        """Check the file, or make it with its tables. A new file is built beside (``batch.sqlite.<pid>.new``;
        what a killed run left by that name is swept first) and linked into place only while the name is free,
        so a reader (``facechain batch status``, a worker) never opens it before its tables exist and no file
        that appeared meanwhile is replaced. Only the driver calls it, under its batch.lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(self.path.parent, self.path.name)
        if self.path.exists() or self.path.is_symlink():
            self.check()
            return
        for suffix in ("-wal", "-shm", "-journal"):  # SQLite would take them for the new file's and rewrite them
            other = self.path.with_name(self.path.name + suffix)
            if other.exists() or other.is_symlink():
                raise InputError(f"{other} is in the way of a new manifest {self.path.name}: SQLite would take it for "
                                 "the new file's own and overwrite it. It is left untouched. Move it away, or choose "
                                 "another output_dir.")
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.new")
        con = sqlite3.connect(tmp, timeout=120, isolation_level=None)
        try:
            con.execute(f"PRAGMA application_id={APPLICATION_ID}")
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            con.executescript(_SCHEMA)
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()  # the last connection: SQLite folds the WAL into the file and removes it
        try:
            os.link(tmp, self.path)  # fails if the name was taken meanwhile: nothing is replaced
        except FileExistsError:
            raise InputError(f"{self.path} appeared while the batch was creating its manifest. It is left untouched; "
                             "rerun (with --resume if it is this batch's).") from None
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self) -> bool:
        return self.path.exists() or self.path.is_symlink()

    def _event(self, con, person: str, stage: str, state: str, attempt: int | None, detail: str | None) -> None:
        con.execute("INSERT INTO events (time, person, stage, state, attempt, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    (time.time(), person, stage, state, attempt, detail))

    def ensure(self, person: str, stages: tuple[str, ...]) -> None:
        """Rows for a person's stages (pending), keeping the ones already there."""
        with self._tx() as con:
            for i, stage in enumerate(stages):
                con.execute("INSERT OR IGNORE INTO stages (person, stage, position, state) VALUES (?, ?, ?, ?)",
                            (person, stage, i, PENDING))

    def start(self, person: str, stage: str, inputs: dict | None = None) -> tuple[int, dict | None]:
        """Mark a stage running (one more attempt, by this process, with ``inputs``); returns the attempt number
        and the inputs the previous attempt started with (None: none did)."""
        with self._tx() as con:
            (before,) = con.execute("SELECT inputs FROM stages WHERE person=? AND stage=?", (person, stage)).fetchone()
            con.execute("UPDATE stages SET state=?, attempts=attempts+1, started=?, finished=NULL, seconds=NULL, "
                        "error=NULL, worker=?, inputs=? WHERE person=? AND stage=?",
                        (RUNNING, time.time(), worker_id(), json.dumps(inputs, sort_keys=True), person, stage))
            (attempt,) = con.execute("SELECT attempts FROM stages WHERE person=? AND stage=?", (person, stage)).fetchone()
            self._event(con, person, stage, RUNNING, attempt, worker_id())
        return attempt, json.loads(before) if before else None

    def finish(self, person: str, stage: str, outputs: dict[str, str], seconds: float) -> None:
        with self._tx() as con:
            con.execute("UPDATE stages SET state=?, finished=?, seconds=?, outputs=? WHERE person=? AND stage=?",
                        (DONE, time.time(), seconds, json.dumps(outputs, sort_keys=True), person, stage))
            self._event(con, person, stage, DONE, None, f"{seconds:.1f} s, {len(outputs)} files")

    def fail(self, person: str, stage: str, error: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE stages SET state=?, finished=?, error=? WHERE person=? AND stage=?",
                        (FAILED, time.time(), error, person, stage))
            self._event(con, person, stage, FAILED, None, error)

    def reset(self, person: str, stage: str, reason: str) -> None:
        """Back to pending (attempts and the last attempt's inputs kept), e.g. a stage interrupted by a crash or
        whose outputs or inputs changed."""
        with self._tx() as con:
            con.execute("UPDATE stages SET state=?, outputs=NULL WHERE person=? AND stage=?", (PENDING, person, stage))
            self._event(con, person, stage, PENDING, None, reason)

    def records(self) -> list[StageRecord]:
        with self._connect() as con:
            rows = con.execute("SELECT person, stage, position, state, attempts, started, finished, seconds, error, "
                               "worker, outputs, inputs FROM stages ORDER BY rowid").fetchall()
        return [StageRecord(*r[:10], json.loads(r[10]) if r[10] else {}, json.loads(r[11]) if r[11] else None)
                for r in rows]

    def get(self, person: str, stage: str) -> StageRecord | None:
        return next((r for r in self.records() if r.person == person and r.stage == stage), None)

    def events(self, after: int = 0) -> list[tuple]:
        """(id, time, person, stage, state, attempt, detail) after event ``after``."""
        with self._connect() as con:
            return con.execute("SELECT id, time, person, stage, state, attempt, detail FROM events WHERE id > ? "
                               "ORDER BY id", (after,)).fetchall()

    def last_event(self) -> int:
        with self._connect() as con:
            (last,) = con.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return last


def status_table(records: list[StageRecord]) -> str:
    """One row per person, one column per stage: state (attempts), seconds; the failures' reasons below."""
    people: dict[str, dict[str, StageRecord]] = {}
    stages: list[str] = []
    for r in records:
        people.setdefault(r.person, {})[r.stage] = r
        if r.stage not in stages:
            stages.append(r.stage)
    width = max([len("person")] + [len(p) for p in people])

    def cell(r: StageRecord | None) -> str:
        if r is None:
            return "-"
        s = r.state + (f" x{r.attempts}" if r.attempts > 1 else "")
        return s + (f" {r.seconds:.0f}s" if r.state == DONE and r.seconds is not None else "")

    lines = ["person".ljust(width) + "  " + "  ".join(s.ljust(18) for s in stages)]
    for person, row in people.items():
        lines.append(person.ljust(width) + "  " + "  ".join(cell(row.get(s)).ljust(18) for s in stages))
    for person, row in people.items():
        for s in stages:
            r = row.get(s)
            if r is not None and r.state == FAILED:
                lines.append(f"{person} {s} failed: {r.error}")
    counts = {st: sum(r.state == st for r in records) for st in (DONE, RUNNING, PENDING, FAILED)}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(records)} stages")
    return "\n".join(lines)
