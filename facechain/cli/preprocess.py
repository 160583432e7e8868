"""`facechain preprocess INPUT_DIR OUTPUT_DIR [options]`."""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.config import field_help
    from facechain.preprocess.config import PreprocessConfig

    p.add_argument("input_dir", help="folder with the person's photos")
    p.add_argument("output_dir", help="folder for the processed set (NNN.png, metadata.jsonl, report.json)")
    helps = field_help(PreprocessConfig)
    for f in dataclasses.fields(PreprocessConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helps[f.name])
        else:
            conv = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            p.add_argument(flag, type=conv, default=None, help=f"{helps[f.name]} (default: {f.default})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from facechain.config import from_dict
    from facechain.preprocess import PreprocessConfig, preprocess, summary_line

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(PreprocessConfig) if getattr(args, f.name) is not None}
    cfg = from_dict(PreprocessConfig, overrides)
    result = preprocess(args.input_dir, args.output_dir, cfg, progress=not args.quiet)
    print(summary_line(result))
    return 0
