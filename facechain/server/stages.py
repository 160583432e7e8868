"""What each kind of server job runs, in a worker process (``runner.py``): the stage's config built from
the server's settings and the job's checked client settings, then the library call, as the CLI does.

A run function takes (the :class:`Workdir`, the :class:`Job`, the device) and sets ``job.outputs`` (paths
relative to the job's folder); ``wd.report(job, ...)`` publishes its live report. The server's own settings
(model, folders, device) are applied last, so a client setting can never replace them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facechain.config import from_dict
from facechain.errors import InputError
from facechain.generate.manifest import MANIFEST_FILE, GenerationManifest
from facechain.train.artifact import TrainProgress
from facechain.server.workdir import Job, Workdir


def _device(settings: dict, device: str) -> dict:
    if device != "auto":
        settings["device"] = device
    return settings


def train_settings(wd: Workdir, job: Job) -> dict:
    """The TrainConfig settings of a train job: the server's, then the client's, then the folders."""
    ws = wd.workspace(job.person)
    params = {k: v for k, v in job.params.items() if k != "restart"}
    return {"face_backend": wd.cfg.face_backend, **wd.cfg.train, **params,
            "base_model": wd.cfg.base_model, "revision": wd.cfg.revision, "sub_path": wd.cfg.sub_path,
            "train_data_dir": str(ws.processed), "output_dir": str(ws.lora), "resume": True}


def run_train(wd: Workdir, job: Job, device: str) -> None:
    from facechain.preprocess import PreprocessConfig, preprocess
    from facechain.train import TrainConfig, train

    ws = wd.workspace(job.person)
    if job.params.get("restart") and ws.lora.exists():
        shutil.rmtree(ws.lora)  # the server's own folder: the person's old LoRA and checkpoints
    result = preprocess(ws.photos, ws.processed, PreprocessConfig(face_backend=wd.cfg.face_backend, workers=1),
                        progress=False)
    record = wd.person_record(job.person) or {}
    wd.report(job, preprocess=record.get("rejected_uploads", []) + [
        {"file": Path(e.input).name, "status": e.status,
         "reason": " ".join(x for x in (e.reason, e.detail) if x) or None,
         "output": Path(e.output).name if e.output else None} for e in result.entries])
    cfg = from_dict(TrainConfig, train_settings(wd, job), where="training settings")
    try:
        train(cfg, progress=False)
    except InputError as exc:
        if "settings differ" in str(exc):
            raise InputError("this person was trained with other settings; to train again with these, start over "
                             "(restart: true; the web app: 'Start over').") from None
        raise
    job.outputs = []


def train_progress(wd: Workdir, job: Job) -> dict:
    progress = TrainProgress.read(wd.workspace(job.person).lora)
    return {"step": progress.step, "total": progress.total, "loss": progress.losses[-500:]}


def generate_settings(wd: Workdir, job: Job, device: str = "auto") -> dict:
    ws = wd.workspace(job.person)
    if ws.is_trained:
        base_model, revision, sub_path = ws.trained_lora().base_model_ref()
    else:  # checked at submit time before training finished: the model training uses
        base_model, revision, sub_path = wd.cfg.base_model, wd.cfg.revision, wd.cfg.sub_path
    settings = {"face_backend": wd.cfg.face_backend, **wd.cfg.generate, **job.params,
                "base_model": base_model, "revision": revision, "sub_path": sub_path, "lora_dir": ws.lora,
                "processed_dir": ws.processed, "output_dir": wd.job_dir(job.id) / "out"}
    if "num_candidates" not in job.params and settings.get("num_images", 3) > settings.get("num_candidates", 10):
        settings["num_candidates"] = settings.get("num_images", 3)  # more images asked than the default candidates
    return _device(settings, device)


def run_generate(wd: Workdir, job: Job, device: str) -> None:
    from facechain.generate import GenerateConfig, run_job

    result = run_job(from_dict(GenerateConfig, generate_settings(wd, job, device), where="generation settings"))
    kept = [{"file": f"out/{k.file}", "score": k.score, "style": s.style}
            for s, k in GenerationManifest.read(result.output_dir).kept_images()]
    job.outputs = [k["file"] for k in kept] + [f"out/{MANIFEST_FILE}", "out/contact_sheet.png"]
    wd.report(job, gallery=kept)
    if result.failures:
        raise InputError("; ".join(f"{f.item}: {f.error}" for f in result.failures))


def template_settings(wd: Workdir, job: Job, device: str = "auto") -> dict:
    from facechain.template import PersonSpec

    params = dict(job.params)
    people = [PersonSpec(lora_dir=wd.workspace(p).lora, processed_dir=wd.workspace(p).processed, face=i)
              for i, p in enumerate(params.pop("people"))]
    folder = wd.job_dir(job.id)
    settings = {"face_backend": wd.cfg.face_backend, **wd.cfg.template, **params,
                "template": folder / params.pop("template"), "people": people, "output_dir": folder / "out"}
    return _device(settings, device)


def run_template(wd: Workdir, job: Job, device: str) -> None:
    from facechain.template import TemplateConfig, run_template as run

    result = run(from_dict(TemplateConfig, template_settings(wd, job, device), where="template settings"))
    job.outputs = ["out/result.png", "out/manifest.json", "out/contact_sheet.png"]
    wd.report(job, faces=result.faces)


STYLIZE_FILES = ("content", "style", "content_mask", "style_mask")


def stylize_settings(wd: Workdir, job: Job, device: str = "auto") -> dict:
    params = {k: v for k, v in job.params.items() if k not in STYLIZE_FILES}
    settings = {"base_model": wd.cfg.base_model, "revision": wd.cfg.revision,
                "sub_path": wd.cfg.sub_path, **wd.cfg.stylize, **params}
    return _device(settings, device)


def run_stylize(wd: Workdir, job: Job, device: str) -> None:
    from facechain.stylize import StylizeConfig
    from facechain.stylize.job import run_stylize_job

    folder = wd.job_dir(job.id)
    masks = {k: folder / job.params[k] for k in ("content_mask", "style_mask") if job.params.get(k)}
    result = run_stylize_job(folder / job.params["content"], [folder / job.params["style"]],
                             from_dict(StylizeConfig, stylize_settings(wd, job, device), where="stylize settings"),
                             folder / "out", progress=False, **masks)
    job.outputs = [str(Path(p).resolve().relative_to(folder.resolve())) for p in result.outputs]


def warm_up(face_backend: str) -> None:
    """What every job needs, loaded once by a worker process before its first job: the stages' modules (torch,
    diffusers) and the face models of the server's backend."""
    import logging

    import facechain.generate  # noqa: F401
    import facechain.preprocess  # noqa: F401
    import facechain.train  # noqa: F401
    from facechain.errors import FacechainError
    from facechain.face import get_analyzer

    try:
        get_analyzer(face_backend)
    except FacechainError as exc:  # the job that needs them says so, with the fix
        logging.getLogger(__name__).warning("worker: the face models did not load (%s)", exc)


def _check(cls_path: str, build: Callable[[Workdir, Job], dict]) -> Callable[[Workdir, Job], None]:
    """Build the stage's config at submit time, so a bad setting is a 400 then, never a failure later."""
    def check(wd: Workdir, job: Job) -> None:
        import importlib

        module, name = cls_path.rsplit(".", 1)
        from_dict(getattr(importlib.import_module(module), name), build(wd, job), where=f"{job.kind} settings")
    return check


@dataclass(frozen=True)
class JobKind:
    """One kind of server job: how it runs (in the job's process, with the device), how its settings are
    checked at submit time, and how it reports progress."""

    run: Callable[[Workdir, Job, str], None]
    check: Callable[[Workdir, Job], None]
    progress: Callable[[Workdir, Job], dict] | None = None


# every job the server runs, by kind: the one table the queue, the worker and the job view read
JOB_KINDS: dict[str, JobKind] = {
    "train": JobKind(run_train, _check("facechain.train.TrainConfig", train_settings), train_progress),
    "generate": JobKind(run_generate, _check("facechain.generate.GenerateConfig", generate_settings)),
    "template": JobKind(run_template, _check("facechain.template.TemplateConfig", template_settings)),
    "stylize": JobKind(run_stylize, _check("facechain.stylize.StylizeConfig", stylize_settings)),
}
