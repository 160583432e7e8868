"""`facechain doctor [--json] [--only SECTION,...] [--fix]`: what this machine really has (torch/CUDA,
onnxruntime builds and providers, OpenCV wheels, the face backend `auto` picks, cached default models,
free disk), each problem with its fix. Exit code 0 when nothing is a problem, 1 otherwise."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.doctor import SECTIONS

    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--only", metavar="SECTION,...", default=None,
                   help=f"check only these sections, comma-separated: {','.join(SECTIONS)}")
    p.add_argument("--fix", action="store_true",
                   help="run the pip commands that fix the onnxruntime and OpenCV problems found (exactly one build "
                        "of each: the CUDA onnxruntime on a GPU machine, opencv-python-headless), then check again")


def _print_text(report) -> None:
    section = None
    for f in report.findings:
        if f.section != section:
            section = f.section
            print(f"{section}:")
        print(f"  [{f.status}] {f.check}: {f.detail}")
        if f.fix and f.status != "ok":
            print(f"      fix: {f.fix}")
    n = len(report.problems)
    print("no problems found" if not n else f"{n} problem{'s' if n > 1 else ''} found")


def run(args) -> int:
    from facechain.doctor import fix_commands, run_doctor

    sections = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    report = run_doctor(sections)
    if args.fix:
        commands = fix_commands(report)
        for cmd in commands:
            argv = [sys.executable, "-m", "pip", *cmd]
            print("facechain doctor --fix: " + shlex.join(argv[1:]), file=sys.stderr)
            done = subprocess.run(argv)
            if done.returncode:
                print(f"error: `{shlex.join(argv[1:])}` failed (exit {done.returncode}; pip's message is above). Fix "
                      "its cause (network, disk, permissions) and rerun `facechain doctor --fix`, which starts again "
                      "from what is installed now.", file=sys.stderr)
                return 1
        if commands:
            # check again in a fresh interpreter: this one has the old onnxruntime / cv2 loaded
            again = [sys.executable, "-m", "facechain", "doctor"] + (["--json"] if args.json else [])
            return subprocess.call(again + (["--only", args.only] if args.only else []))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_text(report)
    return report.exit_code
