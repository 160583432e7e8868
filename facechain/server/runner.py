"""A server job in its own process: started with ``spawn`` (never a fork of the server, whose threads and
signal handlers a fork would copy), stopped on cancel, deletion or the job timeout.

The process builds the stage's config and calls the library (``stages.JOB_KINDS``); what it returns (outputs,
report, error) is written atomically to ``jobs/<id>/result.json`` and read by the server's worker thread. A
process that ends without writing it (killed, out of memory) fails its job with its exit code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import traceback

from facechain.errors import FacechainError
from facechain.io import write_json
from facechain.server.workdir import Job, ServeConfig, Workdir

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"


def _job_main(cfg: ServeConfig, job_record: dict, device: str) -> None:
    """The job process: run the job, write its result."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s job: %(message)s")
    from facechain.server.stages import JOB_KINDS

    wd = Workdir(cfg)
    job = Job(**job_record)
    result = {"error": None, "outputs": [], "info": {}}
    try:
        JOB_KINDS[job.kind].run(wd, job, device)
    except FacechainError as exc:  # a bad input: shown to the client
        result["error"] = str(exc)
    except Exception as exc:  # anything else: logged with its traceback; the client sees its type and message
        logger.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["outputs"], result["info"] = job.outputs, job.info
    write_json(wd.job_dir(job.id) / RESULT_FILE, result)


class JobProcess:
    def __init__(self, cfg: ServeConfig, job: Job, device: str):
        self._result_path = Workdir(cfg).job_dir(job.id) / RESULT_FILE
        self._result_path.unlink(missing_ok=True)
        # not a daemon: a job process may start its own workers (a daemon may not); the server stops it itself
        self.process = mp.get_context("spawn").Process(target=_job_main, args=(cfg, dataclasses.asdict(job), device),
                                                       name=f"facechain-job-{job.id}", daemon=False)

    def start(self) -> None:
        self.process.start()

    def wait(self, timeout: float | None) -> bool:
        """True once the process has ended; False when it still runs after ``timeout`` seconds."""
        self.process.join(timeout)
        return not self.process.is_alive()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def result(self) -> dict | None:
        try:
            return json.loads(self._result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
