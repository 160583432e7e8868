"""`facechain batch JOBS.yaml [--address local|auto|ray://HOST:PORT|inprocess] [--resume]` and
`facechain batch status JOBS.yaml` (the manifest's table)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.cli import add_no_progress_argument

    p.add_argument("target", nargs="+", metavar="JOBS.yaml",
                   help="the batch file (shared settings and people; docs/batch.md), or `status JOBS.yaml`")
    p.add_argument("--address", default="local",
                   help="where to run: local (a Ray runtime on this machine, no server needed; the default), auto (the "
                        "Ray cluster this machine belongs to), ray://HOST:PORT (a remote cluster through Ray Client), "
                        "inprocess (no Ray: the stages one after another in this process)")
    p.add_argument("--resume", action="store_true",
                   help="continue the batch in output_dir from its manifest: done stages are not rerun unless their "
                        "photos, settings or earlier stages' outputs changed, a training resumes from its checkpoint, "
                        "interrupted or failed stages run again")
    add_no_progress_argument(p, dest="no_progress", help="no progress bar (the transition lines stay)")


def run(args) -> int:
    from facechain.batch import Manifest, load_batch, run_batch, status_table, summary
    from facechain.errors import InputError

    target = list(args.target)
    if target[0] == "status":
        if len(target) != 2:
            raise InputError("usage: facechain batch status JOBS.yaml")
        cfg = load_batch(target[1])
        m = Manifest(cfg.manifest_path)
        if not m.exists():
            print(f"no batch has run in {cfg.output_dir} yet (no {m.path.name})")
            return 1
        m.check()  # a file that is not our manifest, or a damaged one: what is wrong and what to do
        names = {j.name for j in cfg.people}
        print(status_table([r for r in m.records() if r.person in names]))
        return 0
    if len(target) != 1:
        raise InputError(f"one batch file expected, got {target}. Usage: facechain batch JOBS.yaml [--resume]")
    cfg = load_batch(target[0])
    result = run_batch(cfg, address=args.address, resume=args.resume, progress=not args.no_progress)
    print(summary(result))
    return result.exit_code
