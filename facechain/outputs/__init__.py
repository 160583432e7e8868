"""Output folders: what facechain may delete or overwrite, locks, and replace-on-success.

The rule, for every command: facechain deletes or overwrites a file only when its own earlier
run recorded it as an output (path, size and sha256) and the file still has that checksum. A
user's folder is theirs: nothing is ever cleared by file-name pattern.

Every command that writes into an output folder goes through :class:`OutputDir`::

    with OutputDir.open(out, "generate", allow_other_files=False) as od:
        stage = od.stage()            # OUT/.facechain/staging/<run id>/ (empty)
        ...write the new results into stage...
        final = od.commit(stage)      # they replace the previous run's recorded outputs

Only a run that succeeds calls :meth:`OutputDir.commit`, so a killed or failing run leaves the
previous results and their manifest as they were. A commit is journalled in the record before
any file moves; a run killed in the middle of one is completed by the next run in that folder.

``OUT/.facechain/`` (ours entirely):

* ``lock``: the holder's pid, host, command and start time. An exclusive ``flock`` on it is held
  for the run's lifetime, so the kernel frees it when the holder dies (a stale lock file is no
  lock); where flock is unsupported, a lock whose pid is gone on this host is taken over.
* ``<command>.json``: the record of that command's outputs in this folder (``files``), and the
  commit in progress (``pending``).
* ``staging/``: runs' results before they are committed. ``tmp/``: temporary files. Both are
  swept when the next run takes the lock (what a killed run left there).

A folder holding files that this command did not record (the user's photos, another command's
outputs) is refused unless ``allow_other_files`` is set; even then those files are never touched,
and a result that would land on one of them stops the commit before anything moves.

Its modules: :mod:`~facechain.outputs.folder` (:class:`OutputDir`: taking a folder, staging, the journalled
commit, recovery), :mod:`~facechain.outputs.record` (the ownership record and its parsing) and
:mod:`~facechain.outputs.lock` (the writer's and the readers' locks). Import from ``facechain.outputs``.
"""

from facechain.outputs.folder import (
    OutputCommitError,
    OutputConflictError,
    OutputDir,
    check_writable_folder,
    same_or_nested,
)
from facechain.outputs.lock import OutputInUseError, check_settled, hold_for_reading
from facechain.outputs.record import RECORD_VERSION, STATE_DIR, FileRecord, sha256_file
