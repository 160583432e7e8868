"""What runs on a worker: one person's stage, recorded in the manifest by the worker itself.

Each stage marks itself running (one more attempt) when it starts and done, with its outputs' sha256,
when its outputs are committed; a bad input (FacechainError) or any other error is recorded as failed
with its reason and returned, so one person's failure is data, not a crash. A worker that dies leaves
the record running; the driver (or Ray's retry of the task) takes it from there.

* preprocess: ``facechain.preprocess.preprocess`` photos -> ``<name>/processed``;
* train: ``facechain.train.train`` with ``resume=True``: a re-run continues from the last checkpoint;
* generate: :class:`GenerationWorker`, a long-lived worker (a Ray actor) that keeps the base pipeline
  loaded and swaps the face LoRA between people (:meth:`PortraitGenerator.switch_person`);
* template (when the batch file has a ``template:`` block): ``facechain.template.run_template`` with the
  person in the template photo (a task: it loads its own pipeline);
* eval: ``facechain.evaluate.evaluate`` portraits against the processed photos.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from facechain.batch.config import PersonJob
from facechain.batch.manifest import Manifest
from facechain.errors import FacechainError
from facechain.generate.manifest import MANIFEST_FILE, GenerationManifest
from facechain.evaluate import evaluate
from facechain.outputs import sha256_file
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

    @property
    def on_worker(self) -> bool:
        return self.run is None


# every batch stage, in the order a person's stages run (batch.config.STAGES names the same)
STAGE_TABLE: dict[str, Stage] = {s.name: s for s in (
    Stage("preprocess", _run_preprocess, _processed_outputs),
    Stage("train", _run_train, _lora_outputs, _train_threads),
    Stage("generate", None, _portrait_outputs),
    Stage("template", _run_template, _template_outputs),
    Stage("eval", _run_eval, _eval_outputs),
)}


def record(manifest_path: str, batch_root: str, job: PersonJob, stage: str, work) -> dict:
    """Run ``work()`` as ``job``'s ``stage``, recording it in the manifest; returns {state, attempt, error}."""
    manifest = Manifest(manifest_path)
    attempt = manifest.start(job.name, stage)
    t0 = time.perf_counter()
    try:
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
    job = spec.on_machine(job)
    return record(manifest_path, batch_root, job, stage, lambda: spec.run(job))


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

        return {**record(manifest_path, batch_root, job, "generate", work), "loads": self.loads}
