"""The server's jobs run in worker processes: one per device, started with ``spawn`` (never a fork of the server,
whose threads and signal handlers a fork would copy), each running one job at a time.

A worker imports the library once when it starts (several seconds: torch, diffusers, the face models), then
takes jobs over a pipe: the stage's config is built and the library called (``stages.JOB_KINDS``), and what
the job returns (outputs, report, error) comes back over the pipe. Cancelling a running job, deleting its
person or passing the job timeout ends the worker's process (SIGTERM, then SIGKILL); the next job starts a
fresh worker. A worker that dies under a job (out of memory, a crash in native code) fails that job with its
exit code, and so does one whose job raised an unexpected error (it is replaced, in case that left it in a
bad state).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import traceback

from facechain.errors import FacechainError
from facechain.server.workdir import Job, ServeConfig, Workdir

logger = logging.getLogger(__name__)


def _worker_main(cfg: ServeConfig, device: str, conn) -> None:
    """The worker process: import once, then run each job it is sent and send back its result."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s job: %(message)s")
    from facechain.server.stages import JOB_KINDS, warm_up

    warm_up(cfg.face_backend)
    wd = Workdir(cfg)
    while True:
        try:
            record = conn.recv()
        except EOFError:  # the server closed the pipe: it is stopping
            return
        job = Job(**record)
        result = {"error": None, "outputs": [], "info": {}, "healthy": True}
        try:
            JOB_KINDS[job.kind].run(wd, job, device)
        except FacechainError as exc:  # a bad input: shown to the client
            result["error"] = str(exc)
        except Exception as exc:  # anything else: logged with its traceback; the client sees its type and message
            logger.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            result["error"], result["healthy"] = f"{type(exc).__name__}: {exc}", False
        result["outputs"], result["info"] = job.outputs, job.info
        conn.send(result)


class WorkerProcess:
    """One device's worker process, started when the first job needs it and again after it was stopped."""

    def __init__(self, cfg: ServeConfig, device: str):
        self.cfg, self.device = cfg, device
        self._ctx = mp.get_context("spawn")
        self.process = None
        self._conn = None
        self._doomed = False

    def start(self) -> None:
        if self._doomed:  # signalled to end: make sure it has, before a new one starts
            self.stop()
        if self.process is not None and self.process.is_alive():
            return
        parent, child = self._ctx.Pipe()
        # a daemon: it ends with the server (its jobs start no processes of their own: preprocessing runs in it)
        self.process = self._ctx.Process(target=_worker_main, args=(self.cfg, self.device, child),
                                         name=f"facechain-worker-{self.device}", daemon=True)
        self.process.start()
        child.close()
        self._conn = parent

    def run(self, job: Job, timeout: float | None) -> tuple[bool, dict | None]:
        """(ended, result) of one job: ended is False when it still ran after ``timeout`` seconds; result is
        None when the process died under it (killed, out of memory)."""
        self.start()
        conn = self._conn  # a stop() from another thread (a cancel) closes it: this call then sees the end
        try:
            conn.send(dataclasses.asdict(job))
            if not conn.poll(timeout):
                return False, None
            result = conn.recv()
        except (EOFError, OSError):  # the process ended (a stop, a crash) before it answered
            self._reap()
            return True, None
        if not result.pop("healthy", True):
            self.stop()
        return True, result

    def _reap(self) -> None:
        if self.process is not None:
            self.process.join(5)

    def terminate(self, force: bool = False) -> None:
        """Signal the process to end (SIGTERM, or SIGKILL with ``force``) without waiting: what a cancel does while
        the server holds its lock; the job's :meth:`run` then returns, and the next :meth:`start` reaps it."""
        self._doomed = True
        proc = self.process
        if proc is not None and proc.is_alive():
            proc.kill() if force else proc.terminate()

    def stop(self, grace: float = 10.0) -> None:
        """End the process (SIGTERM, then SIGKILL after ``grace`` seconds); the next job starts a new one."""
        proc = self.process
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(grace)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self.process, self._conn, self._doomed = None, None, False
        self.last_exitcode = proc.exitcode

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode if self.process is not None else getattr(self, "last_exitcode", None)
