"""The ``facechain`` command. Argument parsing only: each subcommand module builds a typed
config and calls its stage. Subcommands live in ``facechain/cli/<name>.py`` and define
``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from facechain.errors import FacechainError

# name -> (module, one-line help). Modules import lazily so `facechain --help` is instant.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("facechain.cli.preprocess", "photos -> processed training set (crop, mask, caption, report)"),
    "train": ("facechain.cli.train", "train a face LoRA on a processed set"),
    "generate": ("facechain.cli.generate", "generate, fuse and rank portraits from a config or flags"),
    "template": ("facechain.cli.template", "put people's faces into a template photo (fixed-template portraits)"),
    "stylize": ("facechain.cli.stylize", "training-free portrait stylization after a style image"),
    "serve": ("facechain.cli.serve", "the web app and the HTTP API (Gradio + FastAPI) on one local server"),
    "batch": ("facechain.cli.batch", "many people's preprocess, train, generate and eval on Ray, resumable"),
    "eval": ("facechain.cli.eval", "likeness report of generated portraits against the person's photos"),
    "convert": ("facechain.cli.convert", "convert a trusted pickle checkpoint (.bin) to .safetensors, once"),
    "train-adapter": ("facechain.cli.train_adapter", "train an adapter (repcontrolnet) on a base model"),
    "merge-repcontrolnet": ("facechain.cli.merge_repcontrolnet", "merge a trained RepControlNet into its base model"),
    "make-tiny-model": ("facechain.cli.tiny", "build a tiny offline model for smoke tests"),
    "doctor": ("facechain.cli.doctor", "what this machine has (GPU, onnxruntime, OpenCV, face backend, cached models) and fixes"),
}


def add_output_dir_argument(parser, *, help: str, dest: str = "_output_dir", metavar: str = "OUTPUT_DIR") -> None:
    """``--output-dir`` (``--output_dir``; old: ``--out``) for a command whose output is no config field."""
    from facechain.config import OLD_FLAGS, RenamedFlag

    parser.add_argument("--output-dir", "--output_dir", dest=dest, default=None, metavar=metavar, help=help)
    for old in OLD_FLAGS["output_dir"]:
        parser.add_argument(old, dest=dest, action=RenamedFlag, new_flag="--output-dir", help=argparse.SUPPRESS)


def add_no_progress_argument(parser, *, help: str = "no progress bar", dest: str = "_no_progress") -> None:
    """``--no-progress`` (old: ``--quiet``)."""
    from facechain.config import OLD_FLAGS, RenamedFlag

    parser.add_argument("--no-progress", dest=dest, action="store_true", help=help)
    for old in OLD_FLAGS["no_progress"]:
        parser.add_argument(old, dest=dest, action=RenamedFlag, nargs=0, const=True, new_flag="--no-progress",
                            help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facechain", description="Digital-twin toolchain.", allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Build only the parser of the subcommand asked for, so one broken optional import
    # does not break the others.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SUBCOMMANDS:
        parser = argparse.ArgumentParser(prog="facechain", allow_abbrev=False)
        parser.add_argument("-v", "--verbose", action="store_true")
        sub = parser.add_subparsers(dest="command")
        module, help_text = SUBCOMMANDS[command]
        p = sub.add_parser(command, help=help_text, description=help_text, allow_abbrev=False)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except FacechainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted. Earlier results in the output folder are kept; if this run had begun swapping in its new "
              "results, the next run of the same command there completes that swap. A training run keeps its "
              "checkpoints: rerun with --resume.", file=sys.stderr)
        return 130
    except OSError as exc:  # the disk, permissions, a vanished file: one line, the traceback with -v
        if args.verbose:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}. Fix the cause (disk space, permissions) and rerun: earlier results "
              "are kept, and a swap of results this run had begun is completed by the next run. Add -v for details.",
              file=sys.stderr)
        return 1
