"""The batch driver: walks every person through their stages on an executor, from the manifest.

Executors:

* :class:`RayExecutor` (``address``: ``local`` starts a Ray runtime on this machine, no server needed;
  ``auto`` joins the cluster this machine is part of; ``ray://host:10001`` a remote cluster through Ray
  Client). Preprocess, train and eval are Ray tasks with their CPU/GPU requests (fractional GPUs let
  several trainings share one GPU); generation runs on long-lived actors that keep the base pipeline
  loaded. A task whose worker dies is re-run by Ray (``max_retries``); an actor is restarted.
* :class:`InProcessExecutor` (``address: inprocess``): the same stages one after another in this
  process (no Ray), for debugging and machines without Ray.

The driver submits each person's next stage when the previous one is done, so CPU preprocessing of
one person overlaps GPU training of another. ``--resume`` reads the manifest: a done stage whose
inputs (photos, settings, the earlier stages' outputs) are still those it ran with and whose outputs
still match their checksums is not rerun; a stage left running by a crash, or failed, runs again
(training resumes from its checkpoint when its inputs are the same); a stage whose inputs or outputs
changed runs again with every stage after it, and the progress output says why.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import socket
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from facechain.batch.config import BatchConfig, PersonJob, Resources
from facechain.batch.manifest import DONE, FAILED, PENDING, RUNNING, Manifest, StageRecord, status_table
from facechain.batch.stages import STAGE_TABLE
from facechain.errors import InputError
import importlib.util
from facechain.batch.stages import run_stage, GenerationWorker, checksums, stage_outputs
from facechain.batch.stages import changed_inputs, stage_inputs
from facechain.batch.manifest import sweep_leftovers
from facechain.errors import MissingDependencyError
from facechain.outputs import check_writable_folder

logger = logging.getLogger(__name__)

ADDRESSES = ("local", "auto", "inprocess")  # or ray://host:port
# passed to Ray workers explicitly: the offline switches and caches the driver was started with
WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
              "FACECHAIN_HOME", "MODELSCOPE_CACHE", "INSIGHTFACE_HOME", "FACECHAIN_INSIGHTFACE_ROOT")


@dataclass(frozen=True)
class BatchResult:
    records: list[StageRecord]
    failed: list[tuple[str, str, str]]  # (person, stage, reason)
    seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or any(r.state != DONE for r in self.records) else 0


def _threads(n: int) -> int:
    from facechain.runtime import usable_cpus

    return n if n > 0 else usable_cpus()


def _run_local_stage(manifest_path: str, root: str, job: PersonJob, stage: str) -> dict:
    """run_stage on the machine that runs it (a Ray task, or in process)."""
    return run_stage(manifest_path, root, job, stage)


class InProcessExecutor:
    name = "in-process"

    def __init__(self, resources: Resources):
        self.resources = resources
        self.worker = None
        self.done: collections.deque = collections.deque()

    def submit(self, person: str, stage: str, job: PersonJob, manifest_path: str, root: str) -> None:
        try:
            if STAGE_TABLE[stage].on_worker:
                from facechain.batch.stages import GenerationWorker

                if self.worker is None:
                    self.worker = GenerationWorker(0)
                result = self.worker.run(manifest_path, root, job)
            else:
                result = _run_local_stage(manifest_path, root, job, stage)
        except Exception as exc:  # recorded by the driver, the batch goes on
            result = exc
        self.done.append((person, result))

    def busy(self) -> bool:
        return bool(self.done)

    def wait(self):
        return self.done.popleft()

    def shutdown(self) -> None:
        self.worker = None


class _GenerationActor:
    """The Ray actor's class: a GenerationWorker whose torch threads are set on its own machine."""

    def __init__(self, threads: int):
        self.worker = GenerationWorker(_threads(threads))

    def run(self, manifest_path: str, root: str, job: PersonJob) -> dict:
        return self.worker.run(manifest_path, root, job)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str, resources: Resources):
        import ray

        from facechain.runtime import usable_cpus

        env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
        env["TQDM_DISABLE"] = "1"  # the workers' progress bars would interleave in the driver's log; the driver has one
        kw = {"include_dashboard": False, "runtime_env": {"env_vars": env},
                  "logging_level": logging.WARNING, "configure_logging": True}
        if address == "local":  # an embedded runtime on this machine: at least 2 logical CPUs, so one generation
            ray.init(num_cpus=max(2, usable_cpus()), **kw)  # actor and one task can always both be placed
        else:
            ray.init(address=address, **kw)
        self.ray = ray
        cluster = ray.cluster_resources()
        gpus = float(cluster.get("GPU", 0))
        r = resources
        if gpus == 0 and (r.train_gpus or r.generate_gpus):
            logger.info("batch: the Ray cluster has no GPU; training and generation run on CPUs")
        g = (lambda x: x) if gpus > 0 else (lambda x: 0)
        common = {"max_retries": r.max_retries, "retry_exceptions": False}
        self.options = {"preprocess": dict(num_cpus=r.preprocess_cpus, **common),
                        "train": dict(num_cpus=r.train_cpus, num_gpus=g(r.train_gpus), **common),
                        "template": dict(num_cpus=r.template_cpus, num_gpus=g(r.template_gpus), **common),
                        "eval": dict(num_cpus=r.eval_cpus, **common)}
        self.stage_task = ray.remote(_run_local_stage)
        n = r.generate_workers or (max(1, int(gpus // r.generate_gpus)) if gpus > 0 and r.generate_gpus > 0 else 1)
        actor = ray.remote(_GenerationActor).options(num_cpus=r.generate_cpus, num_gpus=g(r.generate_gpus),
                                                     max_restarts=r.max_retries, max_task_retries=r.max_retries)
        self.actors = [actor.remote(r.train_threads) for _ in range(n)]
        self.idle = list(self.actors)
        self.queue: collections.deque = collections.deque()
        self.inflight: dict = {}  # ObjectRef -> (person, actor or None)
        logger.info("batch: Ray cluster %s: %s CPUs, %s GPUs; %d generation worker(s)", address,
                    cluster.get("CPU", 0), gpus, n)

    def submit(self, person: str, stage: str, job: PersonJob, manifest_path: str, root: str) -> None:
        if STAGE_TABLE[stage].on_worker:
            self.queue.append((person, job, manifest_path, root))
            self._dispatch()
        else:
            ref = self.stage_task.options(**self.options[stage]).remote(manifest_path, root, job, stage)
            self.inflight[ref] = (person, None)

    def _dispatch(self) -> None:
        while self.idle and self.queue:
            person, job, manifest_path, root = self.queue.popleft()
            actor = self.idle.pop()
            self.inflight[actor.run.remote(manifest_path, root, job)] = (person, actor)

    def busy(self) -> bool:
        return bool(self.inflight or self.queue)

    def wait(self):
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
        person, actor = self.inflight.pop(ready[0])
        try:
            result = self.ray.get(ready[0])
        except Exception as exc:  # the worker died past its retries, a node was lost: recorded by the driver
            result = exc
        if actor is not None:
            self.idle.append(actor)
        self._dispatch()
        return person, result

    def shutdown(self) -> None:
        self.ray.shutdown()


def check_address(address: str) -> None:
    if address not in ADDRESSES and not address.startswith("ray://"):
        raise InputError(f"--address {address!r}: use local (a Ray runtime on this machine), auto (the Ray cluster "
                         "this machine belongs to), ray://HOST:PORT (Ray Client) or inprocess (no Ray).")


def make_executor(address: str, resources: Resources):
    check_address(address)
    if address == "inprocess":
        return InProcessExecutor(resources)

    if importlib.util.find_spec("ray") is None:
        raise MissingDependencyError("facechain batch runs on Ray, which is not installed: pip install 'ray>=2.60' "
                                     "(or run with --address inprocess).")
    return RayExecutor(address, resources)


LOCK_FILE = "batch.lock"
_LOCK_TAG = "facechain batch lock"


def _lock_holder(text: str) -> dict | None:
    """The holder a batch.lock of ours names (just its pid in the earlier format ``pid N``), or None when the text is
    not one of ours (a user's file by that name)."""
    if re.fullmatch(r"pid \d+", text.strip()):
        return {"pid": int(text.split()[1])}
    try:
        holder = json.loads(text.split("\n", 1)[0])
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and holder.get("lock") == _LOCK_TAG else None


def _our_lock_or_empty(path: Path) -> bool:
    """Whether a leftover ``batch.lock.<pid>.new`` holds our lock text, or nothing (killed before writing it)."""
    with open(path, "rb") as fh:
        text = fh.read(4096).decode("utf-8", "replace")
    return not text or _lock_holder(text) is not None


class _Lock:
    """One driver per batch folder: an exclusive lock on ``batch.lock`` (released by the OS if the driver dies).

    The file is ours only while its first line is our JSON (``{"lock": "facechain batch lock", pid, host,
    started}``): it is created whole (written beside, then linked into place while the name is free) and
    rewritten in place without a moment of being empty, so a batch.lock of other content is a user's and is
    refused, untouched."""

    def __init__(self, folder: Path):
        import fcntl

        path = folder / LOCK_FILE
        sweep_leftovers(folder, LOCK_FILE, ours=_our_lock_or_empty)
        if not os.path.lexists(path):
            tmp = folder / f"{LOCK_FILE}.{os.getpid()}.new"
            tmp.write_text(self._text(), encoding="utf-8")
            try:
                os.link(tmp, path)
            except FileExistsError:  # another driver made it meanwhile: we take it like an existing one
                pass
            finally:
                tmp.unlink(missing_ok=True)
        try:  # never through a link: the lock file is rewritten with the holder's details
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise InputError(f"{path} cannot be opened as facechain batch's lock file ({exc.strerror}): a link, or not "
                             "a file. It is left untouched. Move it away, or choose another output_dir.") from None
        self.fh = os.fdopen(fd, "r+b")
        regular = stat.S_ISREG(os.fstat(fd).st_mode)  # a FIFO or device is never read (it could block)
        holder = _lock_holder(self.fh.read(4096).decode("utf-8", "replace")) if regular else None
        if holder is None:
            self.fh.close()
            raise InputError(f"{path} is not facechain batch's lock file (its content is not ours: a file of your own?). "
                             "It is left untouched. Move it away, or choose another output_dir.")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            who = f"pid {holder.get('pid')}" + (f" on {holder['host']} since {holder.get('started')}" if "host" in holder else "")
            raise InputError(f"another facechain batch is running on {folder} ({who}). Wait for it, or stop it; "
                             "then rerun with --resume.") from None
        data = self._text().encode("utf-8")  # written over the old text first, then cut: never empty
        os.pwrite(self.fh.fileno(), data, 0)
        os.ftruncate(self.fh.fileno(), len(data))

    @staticmethod
    def _text() -> str:
        return json.dumps({"lock": _LOCK_TAG, "pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"

    def release(self) -> None:
        self.fh.close()


def open_manifest(cfg: BatchConfig, resume: bool) -> Manifest:
    """The manifest (checked to be ours and readable, or created) with a row per person and stage."""
    m = Manifest(cfg.manifest_path)
    if m.exists():
        m.check()
        if not resume and any(r.state != PENDING for r in m.records()):
            raise InputError(f"{cfg.output_dir} already holds a batch ({m.path.name}). Pass --resume to continue it, "
                             "or choose a new output_dir.")
    m.create()
    for job in cfg.people:
        m.ensure(job.name, job.stages)
    return m


def _done_reason(cfg: BatchConfig, job: PersonJob, stage: str, r: StageRecord, outputs: dict) -> str | None:
    """Why a done stage must run again (its inputs or its outputs changed), or None."""
    why = changed_inputs(r.inputs, stage_inputs(job, stage, outputs))
    try:
        now = checksums(cfg.output_dir, stage_outputs(job, stage))
    except (OSError, ValueError, KeyError) as exc:
        now = {"unreadable": str(exc)}
    if now != r.outputs:
        changed = sorted(set(now.items()) ^ set(r.outputs.items()))
        why.append(f"its outputs changed since it was done ({changed[0][0]} ...)")
    return "; ".join(why) or None


def plan_resume(cfg: BatchConfig, m: Manifest) -> None:
    """Every stage that must run again set pending, with the reason in its event: interrupted or failed; done
    but its inputs (photos, settings, earlier outputs) or outputs changed; or after a stage that reruns."""
    records = {(r.person, r.stage): r for r in m.records()}
    for job in cfg.people:
        rerun = None  # once a stage runs again, every stage after it does too
        outputs = {s: records[(job.name, s)].outputs for s in job.stages}
        for stage in job.stages:
            r = records[(job.name, stage)]
            if r.state == DONE:
                own = _done_reason(cfg, job, stage, r, outputs)
                if rerun is None and own is None:
                    continue
                m.reset(job.name, stage, "; ".join(w for w in (own, rerun) if w))
            elif r.state == RUNNING:
                m.reset(job.name, stage, "interrupted (the driver or its worker stopped); running it again")
            elif r.state == FAILED:
                m.reset(job.name, stage, f"failed before ({r.error}); trying again")
            rerun = rerun or f"{stage} runs again"


def prepare_manifest(cfg: BatchConfig, resume: bool) -> Manifest:
    """The manifest with a row per person and stage; on resume, every stage that must run again is pending."""
    m = open_manifest(cfg, resume)
    if resume:
        plan_resume(cfg, m)
    return m


def run_batch(cfg: BatchConfig, address: str = "local", resume: bool = False, progress: bool = True) -> BatchResult:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    check_address(address)
    check_writable_folder(cfg.output_dir, "output_dir")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    lock = _Lock(cfg.output_dir)
    try:
        m = open_manifest(cfg, resume)
        last_event = m.last_event()  # the reasons plan_resume gives are printed with the rest
        if resume:
            plan_resume(cfg, m)
        jobs = {j.name: j for j in cfg.people}
        records = {(r.person, r.stage): r for r in m.records()}
        total = sum(len(j.stages) for j in cfg.people)
        done0 = sum(records[(j.name, s)].state == DONE for j in cfg.people for s in j.stages)
        executor = make_executor(address, cfg.resources)
        failed: list[tuple[str, str, str]] = []
        current: dict[str, str] = {}
        bar = tqdm(total=total, initial=done0, desc="batch", unit="stage", disable=not progress)

        def say():
            nonlocal last_event
            for eid, when, person, stage, state, attempt, detail in m.events(last_event):
                last_event = eid
                extra = f" (attempt {attempt})" if state == RUNNING and attempt else ""
                word = "reruns" if state == PENDING else state  # only plan_resume sets a stage back to pending
                line = f"{time.strftime('%H:%M:%S', time.localtime(when))} {person}: {stage} {word}{extra}" + \
                    (f": {detail}" if detail and state != RUNNING else "")
                bar.write(line, file=sys.stderr)

        def submit_next(name: str) -> None:
            job = jobs[name]
            stage = next((s for s in job.stages if m.get(name, s).state != DONE), None)
            if stage is None:
                current.pop(name, None)
                return
            current[name] = stage
            executor.submit(name, stage, job, str(m.path), str(cfg.output_dir))

        try:
            for name in jobs:
                submit_next(name)
                say()
            while executor.busy():
                name, result = executor.wait()
                stage = current[name]
                if isinstance(result, Exception):  # the worker was lost past its retries: nobody recorded it
                    reason = f"worker lost after {cfg.resources.max_retries} retries: {type(result).__name__}: {result}"
                    m.fail(name, stage, reason.splitlines()[0])
                    failed.append((name, stage, reason.splitlines()[0]))
                elif result["state"] == DONE:
                    bar.update(1)
                    submit_next(name)
                else:
                    failed.append((name, stage, result["error"]))
                say()
        finally:
            bar.close()
            executor.shutdown()
        return BatchResult([r for r in m.records() if r.person in jobs], failed, time.perf_counter() - t0)
    finally:
        lock.release()


def summary(result: BatchResult) -> str:
    lines = [status_table(result.records)]
    people = sorted({r.person for r in result.records})
    ok = [p for p in people if all(r.state == DONE for r in result.records if r.person == p)]
    lines.append(f"{len(ok)} of {len(people)} people finished in {result.seconds:.0f} s"
                 + (f"; failed: {', '.join(sorted({f[0] for f in result.failed}))}" if result.failed else ""))
    return "\n".join(lines)
