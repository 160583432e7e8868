"""The batch's durable job manifest: one SQLite file (``output_dir/batch.sqlite``).

* ``stages``: one row per person and stage: state (pending, running, done, failed), attempts, when it
  started and finished, seconds, the failure's reason, the worker (host:pid) and the outputs with
  their sha256 (paths relative to the batch's output_dir).
* ``events``: an append-only log of every transition (the progress lines come from it).

Every write is one short transaction (``BEGIN IMMEDIATE``) on its own connection, in WAL mode with
``synchronous=FULL``: a record is either wholly there or not at all, a killed writer loses nothing
committed, and several worker processes can write at once (SQLite's lock serialises them; the busy
timeout waits instead of failing). On a multi-node cluster the output folder must be on a file system
every node mounts with POSIX locks (NFSv4, EFS, Lustre): the workers write their own stage records there.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    person TEXT NOT NULL, stage TEXT NOT NULL, position INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, seconds REAL, error TEXT, worker TEXT, outputs TEXT,
    PRIMARY KEY (person, stage));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, person TEXT NOT NULL, stage TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER, detail TEXT);
"""


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


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Manifest:
    """Reads and writes ``path``; cheap to make (a connection per call), so every process makes its own."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @contextmanager
    def _tx(self):
        con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def create(self) -> None:
        """The file with its tables. A new file is built beside and renamed into place, so a reader (``facechain
        batch status``, a worker) never opens it before its tables exist."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target = self.path
        if not target.exists():
            target = self.path.with_name(f"{self.path.name}.{os.getpid()}.new")
        con = sqlite3.connect(target, timeout=120, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
        finally:
            con.close()  # the last connection: SQLite folds the WAL into the file and removes it
        if target != self.path:  # only the driver calls create(), under its batch.lock: nobody else made the file
            os.replace(target, self.path)  # our own temp file onto a name that did not exist a moment ago

    def exists(self) -> bool:
        return self.path.is_file()

    def _event(self, con, person: str, stage: str, state: str, attempt: int | None, detail: str | None) -> None:
        con.execute("INSERT INTO events (time, person, stage, state, attempt, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    (time.time(), person, stage, state, attempt, detail))

    def ensure(self, person: str, stages: tuple[str, ...]) -> None:
        """Rows for a person's stages (pending), keeping the ones already there."""
        with self._tx() as con:
            for i, stage in enumerate(stages):
                con.execute("INSERT OR IGNORE INTO stages (person, stage, position, state) VALUES (?, ?, ?, ?)",
                            (person, stage, i, PENDING))

    def start(self, person: str, stage: str) -> int:
        """Mark a stage running (one more attempt, by this process); returns the attempt number."""
        with self._tx() as con:
            con.execute("UPDATE stages SET state=?, attempts=attempts+1, started=?, finished=NULL, seconds=NULL, "
                        "error=NULL, worker=? WHERE person=? AND stage=?",
                        (RUNNING, time.time(), worker_id(), person, stage))
            (attempt,) = con.execute("SELECT attempts FROM stages WHERE person=? AND stage=?", (person, stage)).fetchone()
            self._event(con, person, stage, RUNNING, attempt, worker_id())
        return attempt

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
        """Back to pending (attempts kept), e.g. a stage interrupted by a crash or whose outputs changed."""
        with self._tx() as con:
            con.execute("UPDATE stages SET state=?, outputs=NULL WHERE person=? AND stage=?", (PENDING, person, stage))
            self._event(con, person, stage, PENDING, None, reason)

    def records(self) -> list[StageRecord]:
        con = sqlite3.connect(self.path, timeout=120)
        try:
            rows = con.execute("SELECT person, stage, position, state, attempts, started, finished, seconds, error, "
                               "worker, outputs FROM stages ORDER BY rowid").fetchall()
        finally:
            con.close()
        return [StageRecord(*r[:10], json.loads(r[10]) if r[10] else {}) for r in rows]

    def get(self, person: str, stage: str) -> StageRecord | None:
        return next((r for r in self.records() if r.person == person and r.stage == stage), None)

    def events(self, after: int = 0) -> list[tuple]:
        """(id, time, person, stage, state, attempt, detail) after event ``after``."""
        con = sqlite3.connect(self.path, timeout=120)
        try:
            return con.execute("SELECT id, time, person, stage, state, attempt, detail FROM events WHERE id > ? "
                               "ORDER BY id", (after,)).fetchall()
        finally:
            con.close()


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
