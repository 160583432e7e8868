"""Batch jobs for many people: every person's preprocess -> train -> generate -> eval on Ray (a local
runtime, a cluster, or in-process), with a durable SQLite manifest that ``--resume`` continues from.

``load_batch(JOBS.yaml)`` reads the batch file (:mod:`facechain.batch.config`), ``run_batch(cfg, address,
resume)`` runs it (:mod:`facechain.batch.runner`), :class:`Manifest` reads the record
(:mod:`facechain.batch.manifest`). See docs/batch.md.
"""

from facechain.batch.config import BatchConfig, PersonJob, Resources, load_batch
from facechain.batch.manifest import Manifest, status_table
from facechain.batch.runner import BatchResult, run_batch, summary

__all__ = ["BatchConfig", "PersonJob", "Resources", "load_batch", "Manifest", "status_table", "BatchResult",
           "run_batch", "summary"]
