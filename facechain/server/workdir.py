"""The server's settings and its workdir: where people and jobs live, and their records.

    people/<id>/person.json, photos/ (re-encoded, EXIF stripped), processed/, lora/
    jobs/<id>/job.json, out/ (the stage's output folder), inputs/ (uploaded template / style images),
             info.json (the running job's live report, written by the worker process)
    deleted.jsonl   one line per deletion (ids, account, time; no face data)

Ids are random (``secrets.token_urlsafe``: not guessable) and checked against their pattern before they touch
a path. Everything under ``people/`` and ``jobs/`` was written by the server, so deleting a person's or a
job's folder removes only the server's own files.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from facechain.config import model_ref, setting
from facechain.errors import InputError
from facechain.io import write_json
from facechain.workspace import PersonWorkspace

ID_RULE = re.compile(r"^[A-Za-z0-9_-]{16}$")
NAME_RULE = re.compile(r"[^A-Za-z0-9._ -]+")
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


@dataclass(frozen=True)
class ServeConfig(model_ref(
        "base_model", "revision", "sub_path",
        base_model=setting("Base model for training (hub id, ModelScope id, folder or .safetensors).",
                           default="ly261666/cv_portrait_model"),
        revision="v2.0", sub_path="film/film")):
    """The server's settings; the jobs' defaults are the config files' (``configs/example.yaml``). What a client
    may set on top of them is the allow-list in ``client_settings.py``, bounded by the limits below."""

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
    auth_file: Path | None = setting("Tokens file: one 'name:token[:admin]' per line (docs/serve.md). Also "
                                     "$FACECHAIN_SERVE_TOKEN (one admin token). Required off localhost.", default=None)
    allowed_hosts: list[str] = setting("Host names this server answers to besides its bind address (the names a "
                                       "reverse proxy or the LAN uses); any other Host header is refused.",
                                       default_factory=list)
    allowed_origins: list[str] = setting("Other web origins (scheme://host:port) allowed to send requests; none "
                                         "by default.", default_factory=list)
    max_upload_mb: float = setting("Largest accepted upload file, in MB.", default=20.0)
    max_request_mb: float = setting("Largest request body, in MB (refused as it streams in).", default=200.0)
    max_photos: int = setting("Most photos per person (and per upload request).", default=30)
    max_person_mb: float = setting("Most stored photo bytes per person, in MB.", default=200.0)
    max_train_steps: int = setting("Most training steps a client may ask for.", default=2000)
    max_images: int = setting("Most images per style a client may ask for in one job.", default=6)
    max_styles: int = setting("Most styles in one portrait job.", default=8)
    max_inference_steps: int = setting("Most sampling steps a client may ask for.", default=100)
    max_jobs_waiting: int = setting("Most queued or running jobs per account.", default=4)
    max_images_per_day: int = setting("Most portraits (styles x images) an account may ask for in 24 hours.",
                                      default=500)
    job_timeout_s: float = setting("A job still running after this many seconds is stopped and failed.",
                                   default=6 * 3600.0)
    web_cache_hours: float = setting("Delete the web app's cached uploads and copies older than this many hours "
                                     "(checked hourly).", default=24.0)
    retention_days: float | None = setting("Delete people and jobs older than this many days (checked hourly); "
                                           "empty = keep until deleted.", default=None)


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
    owner: str | None = None  # the account that submitted it
    people: list[str] = field(default_factory=list)  # every person the job uses (template: several)


class NotFoundError(InputError):
    """No such person, job or file, or not the asking account's (HTTP 404); other InputErrors are 400."""


class LimitError(InputError):
    """An account's queue or daily limit is reached (HTTP 429)."""


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
    if len(base) > 80:  # a long name: the stem is shortened, the extension kept (it says what the file is)
        stem, dot, ext = base.rpartition(".")
        base = f"{stem[:80 - len(ext) - 1]}.{ext}" if dot and stem and 0 < len(ext) <= 10 else base[:80]
    return base or fallback


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, or InputError when it leaves ``root`` (symlinks included)."""
    root_r, p = root.resolve(), path.resolve()
    if p != root_r and root_r not in p.parents:
        raise InputError("that path is outside the server's workdir.")
    return p


class Workdir:
    """The workdir's paths and records; what a job's process needs (no queue, no threads)."""

    def __init__(self, cfg: ServeConfig):
        from facechain.template.config import TEMPLATES_DIR

        self.cfg = cfg
        self.root = Path(cfg.workdir).resolve()
        self.templates_dir = Path(cfg.templates_dir or TEMPLATES_DIR).resolve()

    def person_dir(self, pid: str) -> Path:
        return self.root / "people" / check_id(pid, "person")

    def workspace(self, pid: str) -> PersonWorkspace:
        """The person's folders (photos/, processed/, lora/), beside their person.json."""
        return PersonWorkspace(self.person_dir(pid))

    def person_record(self, pid: str) -> dict | None:
        path = self.person_dir(pid) / "person.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def job_dir(self, jid: str) -> Path:
        return self.root / "jobs" / check_id(jid, "job")

    def save_job(self, job: Job) -> None:
        write_json(self.job_dir(job.id) / "job.json", dataclasses.asdict(job))

    def report(self, job: Job, **info) -> None:
        """The running job's live report (its process writes it; the server shows it while the job runs)."""
        job.info.update(info)
        write_json(self.job_dir(job.id) / "info.json", job.info)

    def live_info(self, jid: str) -> dict:
        path = self.job_dir(jid) / "info.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except ValueError:  # never torn (written atomically); unreadable = not written yet
            return {}

    def redact(self, text: str) -> str:
        """A message with the server's paths taken out (the workdir and the home folder)."""
        text = str(text)
        for path, name in ((self.root, "<workdir>"), (Path.home(), "~")):
            text = text.replace(str(path), name)
        return text

    def public_json(self, obj, job_dir: Path):
        """A manifest or record as a client sees it: every path inside the job's folder relative to it, any other
        path of the server cut down to its last part (a model's name, not where it lives)."""
        base = str(job_dir.resolve())
        if isinstance(obj, dict):
            return {k: self.public_json(v, job_dir) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.public_json(v, job_dir) for v in obj]
        if isinstance(obj, str) and obj.startswith(("/", "~")) or (isinstance(obj, str) and re.match(r"^[A-Za-z]:[\\/]", obj)):
            if obj == base or obj.startswith(base + "/"):
                return obj[len(base) + 1:] or "."
            return "<server>/" + re.split(r"[\\/]", obj.rstrip("/\\"))[-1]
        if isinstance(obj, str):
            return self.redact(obj)
        return obj
