"""The operations the web app and the HTTP API share: people (uploaded photos, with consent), background jobs
(train = preprocess + train, generate, template, stylize), their status and outputs, cancelling, deleting.
No pipeline logic: each job builds the stage's config and calls the library, as the CLI does
(``stages.py``), in a worker process per device (``runner.py``).

Every call names the :class:`~facechain.server.accounts.Account` asking. A person and a job belong to the
account that created them; another account gets "not found" for them (404, so ids of others' people are not
even confirmed), an admin account sees all. What a client may set is checked against the allow-list
(``client_settings.py``) and the stage's own config at submit time, so a bad setting is a 400 then.

Jobs run one at a time per GPU (one worker on a CPU machine), the rest queued. A job's state is written to
``job.json`` (atomically) at every transition, so a browser refresh or a new client sees it; a job a stopped
server left queued or running is marked failed at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import shutil
import threading
import time
from pathlib import Path

from facechain.errors import InputError
from facechain.io import write_bytes, write_json
from facechain.outputs import sha256_file
from facechain.server.accounts import Account, Accounts
from facechain.server.client_settings import check_client_settings
from facechain.server.runner import WorkerProcess
from facechain.server.stages import JOB_KINDS
from facechain.server.uploads import clean_image, sha256
from facechain.server.workdir import (CANCELLED, DONE, FAILED, FINISHED, ID_RULE, QUEUED, RUNNING, Job, LimitError,
                                      NotFoundError, ServeConfig, Workdir, check_id, inside, new_id, safe_name)

logger = logging.getLogger(__name__)

CONSENT = ("I am the person in these photos, or I have their permission, to upload them and train a model of their "
           "face on this server; I can delete the photos, the model and everything made from them at any time.")
DAY = 86400.0


def require_consent(consent) -> None:
    """InputError unless the uploader consented (:data:`CONSENT`)."""
    if consent is not True:
        raise InputError("consent is required to store a person's photos: confirm that " + CONSENT[0].lower()
                         + CONSENT[1:] + " (the API: consent=true; the web app: the consent checkbox).")


class Service(Workdir):
    def __init__(self, cfg: ServeConfig, workers: int | None = None, accounts: Accounts | None = None):
        super().__init__(cfg)
        self.accounts = accounts if accounts is not None else Accounts.load(cfg.auth_file)
        for sub in ("people", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, WorkerProcess] = {}  # a running job's worker
        self._stopping: dict[str, str] = {}  # job id -> why it is being stopped (cancel, deletion)
        self._deleting: set[str] = set()
        self._queue: queue.Queue = queue.Queue()
        self._load_jobs()
        n = workers or self._gpu_count() or 1
        self.devices = [f"cuda:{i}" for i in range(n)] if self._gpu_count() else ["auto"] * n
        self._threads = [threading.Thread(target=self._work, args=(d,), daemon=True, name=f"facechain-job-{i}")
                         for i, d in enumerate(self.devices)]
        self._threads.append(threading.Thread(target=self._retention_loop, daemon=True, name="facechain-retention"))
        for t in self._threads:
            t.start()

    @staticmethod
    def _gpu_count() -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    @staticmethod
    def _may(account: Account, owner: str | None) -> bool:
        return account.admin or (owner is not None and owner == account.name)

    # ------------------------------------------------------------------ people

    def add_person(self, name: str, files: list[tuple[str, bytes]], account: Account, consent: bool = False) -> dict:
        """Store the uploaded photos of a new person, with the uploader's consent: each file checked (size, an
        image), re-encoded without its metadata (EXIF: GPS, camera serial), names made safe."""
        require_consent(consent)
        name = (name or "").strip()[:64] or "person"
        if not files:
            raise InputError("no photos were uploaded. Upload 3-20 photos of one person, one face each.")
        if len(files) > self.cfg.max_photos:
            raise InputError(f"{len(files)} photos uploaded; the most is {self.cfg.max_photos}.")
        checked, rejected, digests, total = [], [], [], 0
        for i, (fname, data) in enumerate(files):  # one bad file is reported; the others are kept
            digests.append(sha256(data))  # what the upload was, so deletion can find any cached copy of it
            try:
                stored = clean_image(fname, data, f"photo {i}", self.cfg.max_upload_mb)
            except InputError as exc:
                rejected.append({"file": safe_name(fname, f"photo {i}"), "status": "rejected", "reason": str(exc),
                                 "output": None})
                continue
            total += len(stored[1])
            if total > self.cfg.max_person_mb * 1e6:
                raise InputError(f"the photos add up to over {self.cfg.max_person_mb:g} MB per person "
                                 "(max_person_mb); upload fewer or smaller photos.")
            checked.append(stored)
        if not checked:
            raise InputError("no uploaded file is a usable photo: " + "; ".join(r["reason"] for r in rejected))
        pid = new_id()
        used: set[str] = set()
        photos = self.workspace(pid).photos
        for fname, data in checked:  # the upload's own (safe) name; a repeated one gets _2, _3 ...
            stem, suffix, n = Path(fname).stem, Path(fname).suffix, 1
            while fname.lower() in used:
                n += 1
                fname = f"{stem}_{n}{suffix}"
            used.add(fname.lower())
            write_bytes(photos / fname, data)
        now = time.time()
        write_json(self.person_dir(pid) / "person.json", {
            "id": pid, "name": name, "created": now, "owner": account.name,
            "consent": {"account": account.name, "time": now, "statement": CONSENT},
            "photos": sorted(p.name for p in photos.iterdir()), "rejected_uploads": rejected,
            "upload_sha256": digests})
        return self.person(pid, account)

    def _record(self, pid: str, account: Account) -> dict:
        check_id(pid, "person")
        record = self.person_record(pid)
        if record is None or pid in self._deleting or not self._may(account, record.get("owner")):
            raise NotFoundError(f"no person {pid}.")
        return record

    def person(self, pid: str, account: Account) -> dict:
        info = {k: v for k, v in self._record(pid, account).items() if k != "upload_sha256"}
        info["trained"] = self.workspace(pid).is_trained
        return info

    def people(self, account: Account) -> list[dict]:
        out = []
        for d in sorted((self.root / "people").iterdir()):
            if ID_RULE.match(d.name) and (d / "person.json").is_file():
                try:
                    out.append(self.person(d.name, account))
                except NotFoundError:
                    continue
        return sorted(out, key=lambda p: p.get("created", 0))

    def person_file(self, pid: str, rel: str, account: Account) -> Path:
        """A file of the person's processed photos (thumbnails of what preprocessing kept)."""
        self._record(pid, account)
        folder = self.workspace(pid).processed
        path = inside(folder, folder / rel)
        if not path.is_file() or path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise NotFoundError(f"person {pid} has no processed photo {rel!r}.")
        return path

    def lora_file(self, pid: str, fmt: str, account: Account) -> Path:
        from facechain import lora as lora_io

        self._record(pid, account)
        name = {"diffusers": lora_io.LORA_FILE, "kohya": lora_io.KOHYA_FILE}.get(fmt)
        if name is None:
            raise InputError(f"format {fmt!r}: use diffusers or kohya.")
        path = self.workspace(pid).lora / name
        if not path.is_file():
            raise NotFoundError(f"person {pid} has no trained LoRA yet.")
        return path

    def delete_person(self, pid: str, account: Account) -> dict:
        """Remove everything of the person: photos, crops, LoRA and checkpoints, every job that used them (a
        running one is stopped first, queued ones cancelled) with its outputs, cached identity embeddings and
        the web app's cached copies. A line in deleted.jsonl records the deletion (ids, account, time)."""
        with self._lock:  # checked and marked at once: a second deletion of the same person is a 404
            record = self._record(pid, account)
            self._deleting.add(pid)
            jobs = [j for j in self._jobs.values() if pid in self._job_people(j)]
        try:
            for job in jobs:
                self._stop_job(job, f"cancelled: person {pid} was deleted")
            ws = self.workspace(pid)
            folders = [self.person_dir(pid)] + [self.job_dir(j.id) for j in jobs]
            digests = set(record.get("upload_sha256", [])) | {sha256_file(p) for f in folders for p in f.rglob("*")
                                                               if p.is_file()}
            identity = self._identity_cache_files([ws.photos, ws.processed])
            with self._lock:
                for job in jobs:
                    self._jobs.pop(job.id, None)
            for folder in folders:
                if folder.exists():
                    shutil.rmtree(folder)  # the server's own folders (people/<id>, jobs/<id>)
            for path in identity:
                path.unlink(missing_ok=True)
            purged = self._purge_web_cache(digests)
            line = {"person": pid, "account": account.name, "time": time.time(), "jobs": [j.id for j in jobs]}
            with open(self.root / "deleted.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        finally:
            with self._lock:
                self._deleting.discard(pid)
        return {"deleted": pid, "jobs": [j.id for j in jobs], "cached_copies_removed": len(purged)}

    def _identity_cache_files(self, folders: list[Path]) -> list[Path]:
        """The identity adapter's cached embeddings of these photo folders (every face backend)."""
        from facechain.adapters.ip_adapter_faceid.embedding import cached_embedding_files

        return [p for folder in folders if folder.is_dir() for p in cached_embedding_files(folder)]

    def _purge_web_cache(self, digests: set[str]) -> list[Path]:
        from facechain.server.gradio_files import purge_cache

        return purge_cache(self.root, digests)

    # ------------------------------------------------------------------ jobs

    @staticmethod
    def _job_people(job: Job) -> list[str]:
        return list(dict.fromkeys(([job.person] if job.person else []) + list(job.people)))

    def _load_jobs(self) -> None:
        for d in (self.root / "jobs").iterdir():
            if not (ID_RULE.match(d.name) and (d / "job.json").is_file()):
                continue
            try:
                job = Job(**json.loads((d / "job.json").read_text(encoding="utf-8")))
            except (ValueError, TypeError) as exc:
                logger.warning("job %s: unreadable job.json (%s); skipped", d.name, exc)
                continue
            if job.state in (QUEUED, RUNNING):  # a server stopped under it
                job.state, job.error, job.finished = FAILED, "the server stopped before this job finished", time.time()
                self.save_job(job)
            self._jobs[job.id] = job

    def _check_quota(self, kind: str, account: Account, images: int) -> None:
        mine = [j for j in self._jobs.values() if j.owner == account.name]
        waiting = [j for j in mine if j.state in (QUEUED, RUNNING)]
        if len(waiting) >= self.cfg.max_jobs_waiting:
            raise LimitError(f"account {account.name} has {len(waiting)} jobs queued or running; the most is "
                             f"{self.cfg.max_jobs_waiting} (max_jobs_waiting). Wait for one to finish or cancel one.")
        if images:
            since = time.time() - DAY
            used = sum(j.info.get("images", 0) for j in mine if j.created > since)
            if used + images > self.cfg.max_images_per_day:
                raise LimitError(f"account {account.name} asked for {used} portraits in the last 24 hours; "
                                 f"{images} more would pass the {self.cfg.max_images_per_day} a day this server "
                                 "allows (max_images_per_day).")

    def submit(self, kind: str, params: dict, account: Account, person: str | None = None,
               people: list[str] | None = None, prepare=None, images: int = 0) -> dict:
        """Queue a job of ``kind`` (a key of :data:`JOB_KINDS`) with checked ``params``; its settings are built
        into the stage's config first (a 400 now, not a failure later); ``prepare(job_dir)`` stores its inputs."""
        if kind not in JOB_KINDS:
            raise InputError(f"unknown job kind {kind!r}; kinds: {sorted(JOB_KINDS)}.")
        job = Job(new_id(), kind, QUEUED, time.time(), params, person, owner=account.name,
                  people=list(people or ([person] if person else [])), info={"images": images} if images else {})
        with self._lock:
            if any(p in self._deleting for p in job.people):
                raise NotFoundError("that person is being deleted.")
            self._check_quota(kind, account, images)
            try:
                if prepare is not None:
                    prepare(self.job_dir(job.id))
                JOB_KINDS[kind].check(self, job)
            except BaseException:
                shutil.rmtree(self.job_dir(job.id), ignore_errors=True)  # the folder this call just made
                raise
            self._jobs[job.id] = job
            self.save_job(job)
        self._queue.put(job.id)
        return self.job(job.id, account)

    def _get_job(self, jid: str, account: Account) -> Job:
        check_id(jid, "job")
        with self._lock:
            job = self._jobs.get(jid)
        if job is None or not self._may(account, job.owner):
            raise NotFoundError(f"no job {jid}.")
        return job

    def job(self, jid: str, account: Account) -> dict:
        """The job as a client sees it: its error without server paths, its outputs relative to its folder."""
        job = self._get_job(jid, account)
        with self._lock:
            out = dataclasses.asdict(job)
        if job.state == RUNNING:
            out["info"] = {**out["info"], **self.live_info(jid)}
        out["error"] = self.redact(out["error"]) if out["error"] else None
        out["info"] = self.public_json(out["info"], self.job_dir(jid))
        out["position"] = self._position(jid) if job.state == QUEUED else None
        progress = JOB_KINDS[job.kind].progress if job.kind in JOB_KINDS else None
        if progress is not None and job.person and (self.person_dir(job.person) / "person.json").is_file():
            out["progress"] = progress(self, job)
        return out

    def jobs(self, account: Account) -> list[dict]:
        with self._lock:
            ids = sorted((j for j in self._jobs if self._may(account, self._jobs[j].owner)),
                         key=lambda j: -self._jobs[j].created)
        out = []
        for jid in ids:
            try:
                out.append(self.job(jid, account))
            except NotFoundError:  # deleted meanwhile
                continue
        return out

    def _position(self, jid: str) -> int:
        with self._queue.mutex:
            pending = [j for j in self._queue.queue if self._jobs.get(j) and self._jobs[j].state == QUEUED]
        return pending.index(jid) + 1 if jid in pending else 0

    def job_file(self, jid: str, rel: str, account: Account) -> Path:
        """One of the job's recorded outputs (never another file of its folder: inputs, records, locks)."""
        job = self._get_job(jid, account)
        folder = self.job_dir(jid)
        path = inside(folder, folder / rel)
        if rel not in job.outputs or not path.is_file():
            raise NotFoundError(f"job {jid} has no output {rel!r}.")
        return path

    def job_json(self, jid: str, rel: str, account: Account) -> dict:
        """A JSON output of the job (its manifest) as a client sees it: paths relative to the job."""
        path = self.job_file(jid, rel, account)
        return self.public_json(json.loads(path.read_text(encoding="utf-8")), self.job_dir(jid))

    def cancel_job(self, jid: str, account: Account) -> dict:
        """Cancel a queued job, or stop a running one (its process is ended; its partial outputs stay in its folder)."""
        job = self._get_job(jid, account)
        if job.state in FINISHED:
            raise InputError(f"job {jid} is already {job.state}.")
        self._stop_job(job, f"cancelled by {account.name}")
        return self.job(jid, account)

    def _stop_job(self, job: Job, reason: str, wait: float = 60.0) -> None:
        with self._lock:
            if job.state == QUEUED:
                job.state, job.error, job.finished = CANCELLED, reason, time.time()
                self.save_job(job)
                return
            if job.state != RUNNING:
                return
            self._stopping[job.id] = reason
            worker = self._procs.get(job.id)
            if worker is not None:  # signalled under the lock: it is this job's worker, not the next job's
                worker.terminate()
        start = time.time()
        while job.state == RUNNING and time.time() < start + wait:  # the job's thread records the end
            if worker is not None and time.time() > start + 10:
                worker.terminate(force=True)  # SIGTERM was not enough
            time.sleep(0.05)

    def _work(self, device: str) -> None:
        worker = WorkerProcess(self.cfg, device)
        while True:
            jid = self._queue.get()
            with self._lock:
                job = self._jobs.get(jid)
                if job is None or job.state != QUEUED:  # cancelled or deleted while it waited
                    continue
                job.state, job.started = RUNNING, time.time()
                self.save_job(job)
                self._procs[jid] = worker
                try:
                    worker.start()  # under the lock: a cancel finds the job queued, or its worker started
                except Exception as exc:  # the process could not start: the job fails, the thread goes on
                    logger.exception("job %s: the worker process failed to start", jid)
                    start_error = f"the worker process failed to start ({type(exc).__name__}: {exc})"
                else:
                    start_error = None
            if start_error is None:
                ended, result = worker.run(job, self.cfg.job_timeout_s)
                if not ended:
                    worker.stop()
            else:
                ended, result = True, {"error": start_error}
            with self._lock:
                self._procs.pop(jid, None)
                reason = self._stopping.pop(jid, None)
                if reason:
                    state, error = CANCELLED, reason
                elif not ended:
                    state, error = FAILED, (f"stopped: ran past the job timeout of {self.cfg.job_timeout_s:g} s "
                                            "(job_timeout_s in the server config)")
                elif result is None:
                    state, error = FAILED, (f"the job's process ended without a result (exit code {worker.exitcode}; "
                                            "out of memory?); the server log has its output")
                else:
                    state, error = (FAILED, result["error"]) if result.get("error") else (DONE, None)
                    job.outputs = list(result.get("outputs") or [])
                    job.info = {**job.info, **(result.get("info") or {})}
                job.state, job.error, job.finished = state, error, time.time()
                if jid in self._jobs and self.job_dir(jid).is_dir():  # not deleted meanwhile
                    self.save_job(job)

    # ------------------------------------------------------------------ retention

    def expire(self, now: float | None = None) -> dict:
        """Delete the web app's cached files older than ``web_cache_hours``, and people and finished jobs older
        than ``retention_days`` (the people with everything of theirs)."""
        from facechain.server.gradio_files import expire_cache

        now = now or time.time()
        cached = expire_cache(self.root, now - self.cfg.web_cache_hours * 3600)
        if self.cfg.retention_days is None:
            return {"people": [], "jobs": [], "cached": len(cached)}
        cutoff = now - self.cfg.retention_days * DAY
        admin = Account("retention", admin=True)
        people = [p["id"] for p in self.people(admin) if p.get("created", 0) < cutoff]
        for pid in people:
            self.delete_person(pid, admin)
        with self._lock:
            old = [j for j in self._jobs.values() if j.state in FINISHED and (j.finished or j.created) < cutoff]
            for job in old:
                self._jobs.pop(job.id, None)
        for job in old:
            shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
        return {"people": people, "jobs": [j.id for j in old], "cached": len(cached)}

    def _retention_loop(self) -> None:
        while True:
            try:
                done = self.expire()
                if done["people"] or done["jobs"] or done["cached"]:
                    logger.info("retention: deleted %d people, %d jobs and %d cached web files", len(done["people"]),
                                len(done["jobs"]), done["cached"])
            except Exception:
                logger.exception("retention: a sweep failed; the next runs in an hour")
            time.sleep(3600)

    # ------------------------------------------------------------------ the stages

    def _trained(self, pid: str, account: Account) -> None:
        if not self.person(pid, account)["trained"]:
            raise InputError(f"person {pid} has no trained LoRA yet: train first.")

    def start_train(self, pid: str, params: dict | None, account: Account) -> dict:
        self._record(pid, account)
        params = check_client_settings("train", params, self.cfg)
        with self._lock:
            busy = [j.id for j in self._jobs.values() if j.kind == "train" and j.person == pid
                    and j.state in (QUEUED, RUNNING)]
        if busy:
            raise InputError(f"person {pid} is already training (job {busy[0]}); cancel that job first.")
        return self.submit("train", params, account, person=pid)

    def start_generate(self, pid: str, params: dict | None, account: Account) -> dict:
        self._trained(pid, account)
        params = check_client_settings("generate", params, self.cfg)
        styles = params.get("styles") or self.cfg.generate.get("styles") or ["one style"]
        images = len(styles) * int(params.get("num_images", self.cfg.generate.get("num_images", 3)))
        return self.submit("generate", params, account, person=pid, images=images)

    def start_template(self, template: tuple[str, bytes] | str, people: list[str], account: Account,
                       params: dict | None = None) -> dict:
        """A template job: ``template`` is an upload (name, bytes) or the name of a photo in ``templates/``."""
        from facechain.template.config import named_templates

        params = check_client_settings("template", params, self.cfg)
        if isinstance(template, str):
            names = named_templates(self.templates_dir)
            if template not in names:  # a name from the list, never a path
                raise InputError(f"no template {template!r} in templates/ (there: {names or 'none'}).")
            template = (template, (self.templates_dir / template).read_bytes())
        name, data = clean_image(*template, "template", self.cfg.max_upload_mb)
        if not people:
            raise InputError("name at least one trained person for the template's faces (people).")
        for pid in people:
            self._trained(pid, account)
        return self.submit("template", {**params, "people": list(people), "template": f"inputs/{name}"}, account,
                           people=list(people), prepare=lambda d: write_bytes(d / "inputs" / name, data))

    def start_stylize(self, content: tuple[str, bytes], style: tuple[str, bytes], params: dict | None,
                      account: Account, *, content_mask: tuple[str, bytes] | None = None,
                      style_mask: tuple[str, bytes] | None = None) -> dict:
        """A stylize job; the optional masks (white = the region) are the CLI's --content-mask / --style-mask."""
        params = check_client_settings("stylize", params, self.cfg)
        files = {"content": content, "style": style, "content_mask": content_mask, "style_mask": style_mask}
        stored = {}
        for role, upload in files.items():
            if upload is not None:
                name, data = clean_image(*upload, role.replace("_", " "), self.cfg.max_upload_mb)
                stored[role] = (f"inputs/{role}_{name}", data)

        def prepare(d: Path) -> None:
            for rel, data in stored.values():
                write_bytes(d / rel, data)

        return self.submit("stylize", {**params, **{role: rel for role, (rel, _) in stored.items()}}, account,
                           prepare=prepare)


__all__ = ["CANCELLED", "CONSENT", "DONE", "FAILED", "JOB_KINDS", "QUEUED", "RUNNING", "Job", "LimitError",
           "NotFoundError", "ServeConfig", "Service"]
