"""The operations the web app and the HTTP API share: people (uploaded photos), background jobs
(train = preprocess + train, generate, template, stylize), their status and outputs. No pipeline logic:
each job builds the stage's config and calls the library, as the CLI does.

Everything lives in the workdir::

    people/<id>/person.json, photos/, processed/, lora/
    jobs/<id>/job.json, out/ (the stage's output folder), inputs/ (uploaded template / style images)

Ids are random (``secrets.token_urlsafe``: not guessable) and checked against their pattern before they
touch a path; a file is served only when its resolved path is inside its job's or person's folder.
Jobs run on worker threads, one per GPU (one on a CPU machine): one GPU job at a time per GPU, the rest
queued. A job's state is written to ``job.json`` (atomically) at every transition, so a browser refresh
or a new client sees it; a job a stopped server left queued or running is marked failed at start-up.
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

from facechain.config import model_ref, setting
from facechain.errors import FacechainError, InputError
from facechain.generate.manifest import MANIFEST_FILE, GenerationManifest
from facechain.train.artifact import TrainProgress
from facechain.workspace import PersonWorkspace
import dataclasses
import io
import json
from facechain.config import from_dict
from facechain.images import IMAGE_SUFFIXES
from facechain.io import write_json
from facechain.preprocess import PreprocessConfig, preprocess

logger = logging.getLogger(__name__)

ID_RULE = re.compile(r"^[A-Za-z0-9_-]{16}$")
NAME_RULE = re.compile(r"[^A-Za-z0-9._ -]+")
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class ServeConfig(model_ref(
        "base_model", "revision", "sub_path",
        base_model=setting("Base model for training (hub id, ModelScope id, folder or .safetensors).",
                           default="ly261666/cv_portrait_model"),
        revision="v2.0", sub_path="film/film")):
    """The server's settings; the jobs' defaults are the config files' (``configs/example.yaml``)."""

    workdir: Path = setting("Folder for people, jobs and their outputs; nothing outside it is read or written "
                            "on a request's behalf.", default=Path("facechain-workdir"))
    face_backend: str = setting("Face backend of preprocessing, ranking and eval: auto, insightface or dlib.",
                                default="auto")
    train: dict = setting("Trainer settings for every training (TrainConfig fields), e.g. {max_train_steps: 400}.",
                          default_factory=dict)
    generate: dict = setting("Generation settings for every portrait job (GenerateConfig fields).",
                             default_factory=dict)
    template: dict = setting("Template settings for every template job (TemplateConfig fields).", default_factory=dict)
    stylize: dict = setting("Stylize settings for every stylize job (StylizeConfig fields).", default_factory=dict)
    templates_dir: Path | None = setting("Folder of template photos offered by name; empty = the repository's templates/.",
                                         default=None)
    max_upload_mb: float = setting("Largest accepted upload file, in MB.", default=20.0)
    max_photos: int = setting("Most photos per person.", default=30)


@dataclass
class Job:
    id: str
    kind: str  # a key of JOB_KINDS: train | generate | template | stylize
    state: str
    created: float
    params: dict
    person: str | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    outputs: list[str] = field(default_factory=list)  # paths relative to the job's folder
    info: dict = field(default_factory=dict)  # the stage's report (preprocess report, ranking scores ...)


class NotFoundError(InputError):
    """No such person, job or file (HTTP 404); other InputErrors are bad requests (400)."""


def new_id() -> str:
    return secrets.token_urlsafe(12)  # 16 URL-safe characters, 96 random bits


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID_RULE.match(value):
        raise InputError(f"{what} {value!r} is not a valid id.")
    return value


def safe_name(name: str, fallback: str) -> str:
    """An uploaded file's name reduced to its last component and safe characters (never a path)."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = NAME_RULE.sub("_", base).strip(" .")
    return base[:80] or fallback


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, or InputError when it leaves ``root`` (symlinks included)."""
    root_r, p = root.resolve(), path.resolve()
    if p != root_r and root_r not in p.parents:
        raise InputError("that path is outside the server's workdir.")
    return p


class Service:
    def __init__(self, cfg: ServeConfig, workers: int | None = None):
        self.cfg = cfg
        self.root = Path(cfg.workdir).resolve()
        from facechain.template.config import TEMPLATES_DIR

        self.templates_dir = Path(cfg.templates_dir or TEMPLATES_DIR).resolve()
        for sub in ("people", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._load_jobs()
        n = workers or self._gpu_count() or 1
        self.devices = [f"cuda:{i}" for i in range(n)] if self._gpu_count() else ["auto"] * n
        self._threads = [threading.Thread(target=self._work, args=(d,), daemon=True, name=f"facechain-job-{i}")
                         for i, d in enumerate(self.devices)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _gpu_count() -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    # ------------------------------------------------------------------ people

    def person_dir(self, pid: str) -> Path:
        return self.root / "people" / check_id(pid, "person")

    def workspace(self, pid: str) -> PersonWorkspace:
        """The person's folders (photos/, processed/, lora/), beside their person.json."""
        return PersonWorkspace(self.person_dir(pid))

    def add_person(self, name: str, files: list[tuple[str, bytes]]) -> dict:
        """Store the uploaded photos of a new person: each file checked (size, an image), names made safe."""
        from facechain.io import write_bytes, write_json

        name = (name or "").strip()[:64] or "person"
        if not files:
            raise InputError("no photos were uploaded. Upload 3-20 photos of one person, one face each.")
        if len(files) > self.cfg.max_photos:
            raise InputError(f"{len(files)} photos uploaded; the most is {self.cfg.max_photos}.")
        checked, rejected = [], []
        for i, (fname, data) in enumerate(files):  # one bad file is reported; the others are kept
            try:
                checked.append(self._check_image_upload(fname, data, f"photo {i}"))
            except InputError as exc:
                rejected.append({"file": safe_name(fname, f"photo {i}"), "status": "rejected", "reason": str(exc),
                                 "output": None})
        if not checked:
            raise InputError("no uploaded file is a usable photo: " + "; ".join(r["reason"] for r in rejected))
        pid = new_id()
        folder = self.person_dir(pid)
        used: set[str] = set()
        for fname, data in checked:  # the upload's own (safe) name; a repeated one gets _2, _3 ...
            stem, suffix, n = Path(fname).stem, Path(fname).suffix, 1
            while fname.lower() in used:
                n += 1
                fname = f"{stem}_{n}{suffix}"
            used.add(fname.lower())
            write_bytes(self.workspace(pid).photos / fname, data)
        write_json(folder / "person.json", {"id": pid, "name": name, "created": time.time(),
                                            "photos": sorted(p.name for p in self.workspace(pid).photos.iterdir()),
                                            "rejected_uploads": rejected})
        return self.person(pid)

    def _check_image_upload(self, fname: str, data: bytes, what: str) -> tuple[str, bytes]:
        from PIL import Image

        limit = self.cfg.max_upload_mb * 1e6
        if len(data) > limit:
            raise InputError(f"{what} ({safe_name(fname, '?')}) is {len(data) / 1e6:.1f} MB; the limit is "
                             f"{self.cfg.max_upload_mb:g} MB.")
        name = safe_name(fname, "photo.png")
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{what} ({name}) is not an image file ({', '.join(IMAGE_SUFFIXES)}).")
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except Exception as exc:
            raise InputError(f"{what} ({name}) is not an image PIL can read ({type(exc).__name__}).") from None
        return name, data

    def person(self, pid: str) -> dict:
        folder = self.person_dir(pid)
        if not (folder / "person.json").is_file():
            raise NotFoundError(f"no person {pid}.")
        info = json.loads((folder / "person.json").read_text(encoding="utf-8"))
        info["trained"] = self.workspace(pid).is_trained
        return info

    def people(self) -> list[dict]:
        out = []
        for d in sorted((self.root / "people").iterdir()):
            if ID_RULE.match(d.name) and (d / "person.json").is_file():
                out.append(self.person(d.name))
        return sorted(out, key=lambda p: p.get("created", 0))

    def person_file(self, pid: str, rel: str) -> Path:
        """A file of the person's processed photos (thumbnails of what preprocessing kept)."""
        folder = self.workspace(pid).processed
        path = inside(folder, folder / rel)
        if not path.is_file():
            raise NotFoundError(f"person {pid} has no processed file {rel!r}.")
        return path

    def lora_file(self, pid: str, fmt: str) -> Path:
        from facechain import lora as lora_io

        name = {"diffusers": lora_io.LORA_FILE, "kohya": lora_io.KOHYA_FILE}.get(fmt)
        if name is None:
            raise InputError(f"format {fmt!r}: use diffusers or kohya.")
        path = self.workspace(pid).lora / name
        if not path.is_file():
            raise NotFoundError(f"person {pid} has no trained LoRA yet.")
        return path

    # ------------------------------------------------------------------ jobs

    def job_dir(self, jid: str) -> Path:
        return self.root / "jobs" / check_id(jid, "job")

    def _save(self, job: Job) -> None:
        write_json(self.job_dir(job.id) / "job.json", dataclasses.asdict(job))

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
                self._save(job)
            self._jobs[job.id] = job

    def submit(self, kind: str, params: dict, person: str | None = None, prepare=None) -> dict:
        """Queue a job of ``kind`` (a key of :data:`JOB_KINDS`); ``prepare(job_dir)`` stores its inputs first (uploads)."""
        if kind not in JOB_KINDS:
            raise InputError(f"unknown job kind {kind!r}; kinds: {sorted(JOB_KINDS)}.")
        job = Job(new_id(), kind, QUEUED, time.time(), params, person)
        if prepare is not None:
            prepare(self.job_dir(job.id))
        with self._lock:
            self._jobs[job.id] = job
            self._save(job)
        self._queue.put(job.id)
        return self.job(job.id)

    def job(self, jid: str) -> dict:
        check_id(jid, "job")
        with self._lock:
            job = self._jobs.get(jid)
            if job is None:
                raise NotFoundError(f"no job {jid}.")
            out = dataclasses.asdict(job)
        out["position"] = self._position(jid) if job.state == QUEUED else None
        progress = JOB_KINDS[job.kind].progress if job.kind in JOB_KINDS else None
        if progress is not None:
            out["progress"] = progress(self, job)
        return out

    def jobs(self) -> list[dict]:
        with self._lock:
            ids = sorted(self._jobs, key=lambda j: -self._jobs[j].created)
        return [self.job(j) for j in ids]

    def _position(self, jid: str) -> int:
        with self._queue.mutex:
            pending = list(self._queue.queue)
        return pending.index(jid) + 1 if jid in pending else 0

    def job_file(self, jid: str, rel: str) -> Path:
        folder = self.job_dir(jid)
        path = inside(folder, folder / rel)
        if not path.is_file():
            raise NotFoundError(f"job {jid} has no file {rel!r}.")
        return path

    def _train_progress(self, job: Job) -> dict:
        progress = TrainProgress.read(self.workspace(job.person).lora)
        return {"step": progress.step, "total": progress.total, "loss": progress.losses[-500:]}

    def _work(self, device: str) -> None:
        while True:
            jid = self._queue.get()
            with self._lock:
                job = self._jobs[jid]
                job.state, job.started = RUNNING, time.time()
                self._save(job)
            try:
                JOB_KINDS[job.kind].run(self, job, device)
                state, error = DONE, None
            except FacechainError as exc:  # a bad input: shown in the UI, the server goes on
                state, error = FAILED, str(exc)
            except Exception as exc:  # anything else: logged with its traceback, the server goes on
                logger.error("job %s (%s) failed:\n%s", jid, job.kind, traceback.format_exc())
                state, error = FAILED, f"{type(exc).__name__}: {exc}"
            with self._lock:
                job.state, job.error, job.finished = state, error, time.time()
                self._save(job)

    def _set_info(self, job: Job, **info) -> None:
        with self._lock:
            job.info.update(info)
            self._save(job)

    # ------------------------------------------------------------------ the stages

    def start_train(self, pid: str, params: dict | None = None) -> dict:
        self.person(pid)
        return self.submit("train", dict(params or {}), person=pid)

    def _run_train(self, job: Job, device: str) -> None:
        from facechain.train import TrainConfig, train

        ws = self.workspace(job.person)
        result = preprocess(ws.photos, ws.processed, PreprocessConfig(face_backend=self.cfg.face_backend),
                            progress=False)
        self._set_info(job, preprocess=self.person(job.person).get("rejected_uploads", []) + [{"file": Path(e.input).name, "status": e.status,
                                         "reason": " ".join(x for x in (e.reason, e.detail) if x) or None,
                                         "output": Path(e.output).name if e.output else None} for e in result.entries])
        settings = {"face_backend": self.cfg.face_backend, **self.cfg.train, **job.params,
                    "base_model": self.cfg.base_model, "revision": self.cfg.revision, "sub_path": self.cfg.sub_path,
                    "train_data_dir": str(ws.processed), "output_dir": str(ws.lora), "resume": True}
        train(from_dict(TrainConfig, settings, where="training settings"), progress=False)

    def start_generate(self, pid: str, params: dict) -> dict:
        if not self.person(pid)["trained"]:
            raise InputError(f"person {pid} has no trained LoRA yet: train first.")
        return self.submit("generate", dict(params), person=pid)

    def _run_generate(self, job: Job, device: str) -> None:
        from facechain.generate import GenerateConfig, run_job

        ws = self.workspace(job.person)
        base_model, revision, sub_path = ws.trained_lora().base_model_ref()
        settings = {"face_backend": self.cfg.face_backend, **self.cfg.generate, **job.params,
                    "base_model": base_model, "revision": revision, "sub_path": sub_path, "lora_dir": ws.lora,
                    "processed_dir": ws.processed, "output_dir": self.job_dir(job.id) / "out"}
        if "num_candidates" not in job.params and settings.get("num_images", 3) > settings.get("num_candidates", 10):
            settings["num_candidates"] = settings.get("num_images", 3)  # more images asked than the default candidates
        if device != "auto":
            settings["device"] = device
        result = run_job(from_dict(GenerateConfig, settings, where="generation settings"))
        kept = [{"file": f"out/{k.file}", "score": k.score, "style": s.style}
                for s, k in GenerationManifest.read(result.output_dir).kept_images()]
        job.outputs = [k["file"] for k in kept] + [f"out/{MANIFEST_FILE}", "out/contact_sheet.png"]
        self._set_info(job, gallery=kept)
        if result.failures:
            raise InputError("; ".join(f"{f.item}: {f.error}" for f in result.failures))

    def start_template(self, template: tuple[str, bytes] | str, people: list[str], params: dict | None = None) -> dict:
        """A template job: ``template`` is an upload (name, bytes) or the name of a photo in ``templates/``."""
        from facechain.io import write_bytes
        from facechain.template.config import named_templates

        if isinstance(template, str):
            names = named_templates(self.templates_dir)
            if template not in names:  # a name from the list, never a path
                raise InputError(f"no template {template!r} in {self.templates_dir} (there: {names or 'none'}).")
            template = (template, (self.templates_dir / template).read_bytes())
        name, data = self._check_image_upload(*template, "template")
        for pid in people:
            if not self.person(pid)["trained"]:
                raise InputError(f"person {pid} has no trained LoRA yet: train first.")
        return self.submit("template", {**(params or {}), "people": list(people), "template": f"inputs/{name}"},
                           prepare=lambda d: write_bytes(d / "inputs" / name, data))

    def _run_template(self, job: Job, device: str) -> None:
        from facechain.template import PersonSpec, TemplateConfig, run_template

        params = dict(job.params)
        people = [PersonSpec(lora_dir=self.workspace(p).lora, processed_dir=self.workspace(p).processed, face=i)
                  for i, p in enumerate(params.pop("people"))]
        folder = self.job_dir(job.id)
        settings = {"face_backend": self.cfg.face_backend, **self.cfg.template, **params,
                    "template": folder / params.pop("template"),
                    "people": people, "output_dir": folder / "out"}
        if device != "auto":
            settings["device"] = device
        result = run_template(from_dict(TemplateConfig, settings, where="template settings"))
        job.outputs = ["out/result.png", "out/manifest.json", "out/contact_sheet.png"]
        self._set_info(job, faces=result.faces)

    def start_stylize(self, content: tuple[str, bytes], style: tuple[str, bytes], params: dict | None = None, *,
                      content_mask: tuple[str, bytes] | None = None, style_mask: tuple[str, bytes] | None = None) -> dict:
        """A stylize job; the optional masks (white = the region) are the CLI's --content-mask / --style-mask."""
        from facechain.io import write_bytes

        files = {"content": content, "style": style, "content_mask": content_mask, "style_mask": style_mask}
        stored = {}
        for role, upload in files.items():
            if upload is not None:
                name, data = self._check_image_upload(*upload, role.replace("_", " "))
                stored[role] = (f"inputs/{role}_{name}", data)

        def prepare(d: Path) -> None:
            for rel, data in stored.values():
                write_bytes(d / rel, data)

        return self.submit("stylize", {**(params or {}), **{role: rel for role, (rel, _) in stored.items()}},
                           prepare=prepare)

    def _run_stylize(self, job: Job, device: str) -> None:
        from facechain.stylize import StylizeConfig
        from facechain.stylize.job import run_stylize_job

        params = dict(job.params)
        folder = self.job_dir(job.id)
        content, style = folder / params.pop("content"), folder / params.pop("style")
        masks = {k: folder / params.pop(k) for k in ("content_mask", "style_mask") if params.get(k)}
        settings = {"base_model": self.cfg.base_model, "revision": self.cfg.revision,
                    "sub_path": self.cfg.sub_path, **self.cfg.stylize, **params}
        if device != "auto":
            settings["device"] = device
        result = run_stylize_job(content, [style], from_dict(StylizeConfig, settings, where="stylize settings"),
                                 folder / "out", progress=False, **masks)
        job.outputs = [str(Path(p).resolve().relative_to(folder.resolve())) for p in result.outputs]


@dataclass(frozen=True)
class JobKind:
    """One kind of server job: how it runs (on the worker thread, with the device) and how it reports progress."""

    run: Callable[[Service, Job, str], None]
    progress: Callable[[Service, Job], dict] | None = None


# every job the server runs, by kind: the one table the queue, the worker and the job view read
JOB_KINDS: dict[str, JobKind] = {
    "train": JobKind(Service._run_train, Service._train_progress),
    "generate": JobKind(Service._run_generate),
    "template": JobKind(Service._run_template),
    "stylize": JobKind(Service._run_stylize),
}
