"""The one shape of a multi-output job (generate's styles, stylize's style images, later template
faces and batch people): run every requested item, let one bad item never sink the others, and
end with a typed :class:`JobResult` whose :attr:`~JobResult.exit_code` follows one rule for every
command:

* ``0``: every requested output was written;
* ``1``: some requested output failed (the others were written; the failures are in the
  manifest), or every one failed (then :class:`JobFailed` is raised, and the previous results in
  the output folder are left as they were, beside a ``failed_manifest.json``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

from facechain.errors import FacechainError
from facechain.io import write_json

logger = logging.getLogger(__name__)

FAILED_MANIFEST = "failed_manifest.json"
EXIT_OK, EXIT_SOME_FAILED = 0, 1

Item = TypeVar("Item")
Out = TypeVar("Out")


def exit_code_for(failures: list) -> int:
    """The rule of every command: 0 when nothing requested failed, else 1."""
    return EXIT_SOME_FAILED if failures else EXIT_OK


class JobFailed(FacechainError):
    """Every requested output of a job failed; the message has the first error and where the details are."""


@dataclass(frozen=True)
class ItemFailure:
    """One requested output that failed: which item, and the error message (with the fix)."""

    item: str
    error: str

    def to_dict(self) -> dict:
        return {"item": self.item, "error": self.error}


@dataclass(frozen=True)
class ItemsOutcome(Generic[Out]):
    """Per requested item, in the order requested: its result, or its :class:`ItemFailure`."""

    results: list = field(default_factory=list)

    @property
    def done(self) -> list[Out]:
        return [r for r in self.results if not isinstance(r, ItemFailure)]

    @property
    def failed(self) -> list[ItemFailure]:
        return [r for r in self.results if isinstance(r, ItemFailure)]


@dataclass(frozen=True)
class JobResult:
    """What a job wrote: the folder, the files a user looks at first (kept images), the requested
    items that failed, and the manifest written beside them."""

    output_dir: Path
    outputs: list[Path]
    failures: list[ItemFailure]
    manifest: dict

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.failures)

    @property
    def kept(self) -> list[Path]:  # generate's name for its outputs
        return self.outputs


def run_items(items: Iterable[Item], run_one: Callable[[Item], Out], name: Callable[[Item], str],
              what: str = "item") -> ItemsOutcome[Out]:
    """``run_one`` on every item. A :class:`FacechainError` (a bad input, with its fix) is logged in
    one line; any other exception with its traceback; both become an :class:`ItemFailure` and the
    next item runs. KeyboardInterrupt and SystemExit stop the job."""
    outcome: ItemsOutcome[Out] = ItemsOutcome()
    for item in items:
        label = name(item)
        try:
            outcome.results.append(run_one(item))
        except FacechainError as exc:
            logger.error("%s '%s' failed: %s", what, label, exc)
            outcome.results.append(ItemFailure(label, str(exc)))
        except Exception as exc:  # an unexpected error in one item: reported with its type, the job goes on
            logger.exception("%s '%s' failed with an unexpected error", what, label)
            outcome.results.append(ItemFailure(label, f"{type(exc).__name__}: {exc}"))
    return outcome


def fail_whole_job(od, manifest: dict, failures: list[ItemFailure], what: str) -> JobFailed:
    """Every item failed: write ``failed_manifest.json`` beside the previous results (which stay
    as they were) and return the error to raise."""
    stage = od.stage()
    write_json(stage / FAILED_MANIFEST, manifest)
    od.commit(stage, replace=False)
    first = failures[0].error if failures else "nothing was requested"
    return JobFailed(f"every {what} failed; first error: {first} (details in {od.path / FAILED_MANIFEST}; earlier "
                     f"results in {od.path} were left as they were)")
