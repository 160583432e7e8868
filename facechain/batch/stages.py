"""What runs on a worker: one person's stage, recorded in the manifest by the worker itself.

Each stage marks itself running (one more attempt, with its inputs: :func:`stage_inputs`) when it starts
and done, with its outputs' sha256, when its outputs are committed; a bad input (FacechainError) or any other error is recorded as failed
with its reason and returned, so one person's failure is data, not a crash. A worker that dies leaves
the record running; the driver (or Ray's retry of the task) takes it from there.

* preprocess: ``facechain.preprocess.preprocess`` photos -> ``<name>/processed``;
* train: ``facechain.train.train`` with ``resume=True``: a re-run with the same inputs continues from the
  last checkpoint; a first attempt with other inputs (photos, settings) starts over (:func:`_restart_training`);
* generate: :class:`GenerationWorker`, a long-lived worker (a Ray actor) that keeps the base pipeline
  loaded and swaps the face LoRA between people (:meth:`PortraitGenerator.switch_person`);
* template (when the batch file has a ``template:`` block): ``facechain.template.run_template`` with the
  person in the template photo (a task: it loads its own pipeline);
* eval: ``facechain.evaluate.evaluate`` portraits against the processed photos.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facechain.batch.config import OWNED, PersonJob
from facechain.batch.manifest import Manifest
from facechain.config import to_dict
from facechain.errors import FacechainError
from facechain.generate.manifest import MANIFEST_FILE, GenerationManifest
from facechain.evaluate import evaluate
from facechain.models import files_fingerprint
from facechain.outputs import STATE_DIR, OutputDir, sha256_file
from facechain.preprocess import preprocess

logger = logging.getLogger(__name__)


def checksums(root: Path, files) -> dict[str, str]:
    """{path relative to ``root``: sha256} of ``files``."""
    return {str(Path(f).resolve().relative_to(root.resolve())): sha256_file(Path(f)) for f in sorted(set(files))}


def _processed_outputs(job: PersonJob) -> list[Path]:
    processed = job.workspace.processed_set()
    return [processed.metadata_path] + [processed.path(p) for p in processed.photos]


def _lora_outputs(job: PersonJob) -> list[Path]:
    lora = job.workspace.trained_lora()
    return [lora.weights, lora.config_path]


def _portrait_outputs(job: PersonJob) -> list[Path]:
    manifest = GenerationManifest.read(job.portraits_dir)
    return [job.portraits_dir / MANIFEST_FILE] + [job.portraits_dir / Path(k.file).name for _, k in manifest.kept_images()]


def _template_outputs(job: PersonJob) -> list[Path]:
    return [job.template_dir / "result.png", job.template_dir / "manifest.json"]


def _eval_outputs(job: PersonJob) -> list[Path]:
    return [job.eval_dir / "report.json"]


def stage_outputs(job: PersonJob, stage: str) -> list[Path]:
    """The files that make a stage's result (what the manifest's checksums cover)."""
    return STAGE_TABLE[stage].outputs(job)


def _run_preprocess(job: PersonJob) -> None:
    preprocess(job.photos, job.processed_dir, job.preprocess, progress=False)


def _restart_training(job: PersonJob) -> None:
    """Training's first attempt with new inputs starts over: the earlier run's outputs in ``lora/`` (the train
    record's: checkpoints, LoRA, config, log; each only while still as recorded) are removed, so that
    ``train(resume=True)`` starts at step 0 instead of refusing the new settings or keeping the old LoRA."""
    if not (job.lora_dir / STATE_DIR / "train.json").is_file():
        return  # no training ran here
    with OutputDir.open(job.lora_dir, "train", allow_other_files=job.train.allow_other_files,
                        what="the person's lora folder") as od:
        n = od.remove(list(od.files))
    logger.info("%s: train starts over with its new inputs; removed %d file(s) of the earlier training", job.name, n)


def _run_train(job: PersonJob) -> None:
    from facechain.train import train

    train(job.train, progress=False)


def _train_threads(job: PersonJob) -> PersonJob:
    """Training's thread count resolved on the worker (0: the worker machine's cores; Ray sets OMP_NUM_THREADS to
    the task's logical CPUs, which would leave a CPU training on one core)."""
    from facechain.runtime import usable_cpus

    if job.train.num_threads:
        return job
    return dataclasses.replace(job, train=dataclasses.replace(job.train, num_threads=usable_cpus()))


def _run_eval(job: PersonJob) -> None:
    evaluate(job.portraits_dir, job.processed_dir, job.eval)


def _run_template(job: PersonJob) -> None:
    from facechain.template import run_template

    result = run_template(job.template)
    if result.failures:
        raise FacechainError("; ".join(f"{f.item}: {f.error}" for f in result.failures))


@dataclass(frozen=True)
class Stage:
    """One batch stage: how it runs for a person and which files make its result.

    ``run`` is a plain task (a Ray task, or a call in process); None for a stage that runs on a long-lived
    worker keeping its pipeline loaded across people (:class:`GenerationWorker`). ``on_machine(job)``: the job
    as the machine that runs it sees it (training's thread count 0 becomes that machine's cores)."""

    name: str
    run: Callable[[PersonJob], None] | None
    outputs: Callable[[PersonJob], list[Path]]
    on_machine: Callable[[PersonJob], PersonJob] = lambda job: job
    # before an attempt whose inputs differ from the previous attempt's: clear what a resume would continue
    restart: Callable[[PersonJob], None] | None = None

    @property
    def on_worker(self) -> bool:
        return self.run is None


# every batch stage, in the order a person's stages run (batch.config.STAGES names the same)
STAGE_TABLE: dict[str, Stage] = {s.name: s for s in (
    Stage("preprocess", _run_preprocess, _processed_outputs),
    Stage("train", _run_train, _lora_outputs, _train_threads, _restart_training),
    Stage("generate", None, _portrait_outputs),
    Stage("template", _run_template, _template_outputs),
    Stage("eval", _run_eval, _eval_outputs),
)}


def _without_owned(value):
    """Settings without the folders the batch sets per person (``output_dir/<name>/...``, also inside nested
    settings such as the template's person): they follow the output folder, not the batch file."""
    if isinstance(value, dict):
        return {k: _without_owned(v) for k, v in value.items() if k not in OWNED}
    if isinstance(value, list):
        return [_without_owned(v) for v in value]
    return value


def stage_settings(job: PersonJob, stage: str) -> dict:
    """The stage's settings as the batch file resolved them (JSON-ready)."""
    return _without_owned(to_dict(getattr(job, stage)))


def outputs_digest(outputs: dict[str, str]) -> str:
    """One sha256 over a stage's recorded outputs (their paths and checksums)."""
    return hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()


def stage_inputs(job: PersonJob, stage: str, outputs: dict[str, dict[str, str]]) -> dict:
    """What ``stage`` is given: its settings; for preprocess the photos' fingerprint (their names, sizes and
    sha256, :func:`facechain.models.files_fingerprint`); for the later stages the outputs of every earlier
    stage (``outputs``: stage -> its recorded checksums). A stage is done only for the inputs it ran with."""
    inputs: dict = {"settings": stage_settings(job, stage)}
    if stage == "preprocess":  # a folder that cannot be read: preprocessing then says why
        try:
            inputs["photos"] = files_fingerprint(job.photos) if job.photos.is_dir() else f"missing: {job.photos}"
        except OSError as exc:
            inputs["photos"] = f"unreadable: {exc.strerror}"
    stages = job.stages
    inputs["upstream"] = {s: outputs_digest(outputs.get(s) or {}) for s in stages[:stages.index(stage)]}
    return inputs


def changed_inputs(before: dict | None, now: dict) -> list[str]:
    """Why ``now`` is not what a stage ran with (``before``), in words; [] when it is the same."""
    if before is None:
        return ["its inputs were not recorded"]
    why = []
    if before.get("photos") != now.get("photos"):
        why.append("photos changed")
    old, new = before.get("settings") or {}, now["settings"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if keys:
        why.append(f"settings changed ({', '.join(keys)})")
    ups = [s for s in now["upstream"] if (before.get("upstream") or {}).get(s) != now["upstream"][s]]
    if ups:
        why.append(f"the outputs of {', '.join(ups)} changed")
    return why


def record(manifest_path: str, batch_root: str, job: PersonJob, stage: str, work, inputs: dict) -> dict:
    """Run ``work()`` as ``job``'s ``stage`` with ``inputs``, recording it in the manifest; returns
    {state, attempt, error}. A first attempt with other inputs than the previous attempt's runs the stage's
    ``restart`` first (a Ray retry of the same attempt, or a resume after a crash, continues instead)."""
    manifest = Manifest(manifest_path)
    attempt, before = manifest.start(job.name, stage, inputs)
    t0 = time.perf_counter()
    try:
        restart = STAGE_TABLE[stage].restart
        if restart is not None and before != inputs:
            restart(job)
        work()
        outputs = checksums(Path(batch_root), stage_outputs(job, stage))
    except FacechainError as exc:  # a bad input, with its fix: this person's stage fails, the batch goes on
        manifest.fail(job.name, stage, str(exc))
        return {"state": "failed", "attempt": attempt, "error": str(exc)}
    except Exception as exc:  # an unexpected error in one person's stage: reported with its type
        logger.exception("%s: %s failed with an unexpected error", job.name, stage)
        manifest.fail(job.name, stage, f"{type(exc).__name__}: {exc}")
        return {"state": "failed", "attempt": attempt, "error": f"{type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - t0
    manifest.finish(job.name, stage, outputs, seconds)
    return {"state": "done", "attempt": attempt, "error": None, "seconds": seconds}


def run_stage(manifest_path: str, batch_root: str, job: PersonJob, stage: str) -> dict:
    """A preprocess, train or eval stage (a Ray task, or a call in the in-process executor)."""
    spec = STAGE_TABLE[stage]
    inputs = stage_inputs(job, stage, _done_outputs(manifest_path, job))  # as the batch file resolved the job
    job = spec.on_machine(job)
    return record(manifest_path, batch_root, job, stage, lambda: spec.run(job), inputs)


def _done_outputs(manifest_path: str, job: PersonJob) -> dict[str, dict[str, str]]:
    """{stage: its recorded outputs} of ``job``'s person."""
    return {r.stage: r.outputs for r in Manifest(manifest_path).records() if r.person == job.name}


class GenerationWorker:
    """Keeps one portrait pipeline loaded across people (a Ray actor in a cluster). A person whose job needs
    the same pipeline (base model, pose, identity ... :meth:`PortraitGenerator.pipeline_key`) gets their
    face LoRA swapped in; another pipeline is loaded when it differs."""

    def __init__(self, threads: int = 0):
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.generator = None
        self.key = None
        self.loads = 0  # pipelines loaded by this worker (the batch benchmark reads it)

    def run(self, manifest_path: str, batch_root: str, job: PersonJob) -> dict:
        def work():
            from facechain.generate import run_job
            from facechain.generate.pipeline import PortraitGenerator

            cfg = job.generate
            key = PortraitGenerator.pipeline_key(cfg)
            if self.generator is not None and key == self.key:
                self.generator.switch_person(cfg)
            else:
                self.generator = None  # the old pipeline goes before the new one loads
                self.generator = PortraitGenerator(cfg)
                self.key = key
                self.loads += 1
            result = run_job(cfg, generator=self.generator)
            if result.failures:
                raise FacechainError(f"{len(result.failures)} style(s) failed: "
                                     + "; ".join(f"{f.item}: {f.error}" for f in result.failures))

        inputs = stage_inputs(job, "generate", _done_outputs(manifest_path, job))
        return {**record(manifest_path, batch_root, job, "generate", work, inputs), "loads": self.loads}
