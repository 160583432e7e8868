"""`facechain preprocess INPUT_DIR OUTPUT_DIR [--config FILE] [--no-progress] [--setting value ...]`.

Every PreprocessConfig setting is a flag (see facechain.config.add_config_arguments)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.cli import add_no_progress_argument
    from facechain.config import add_config_arguments
    from facechain.preprocess.config import PreprocessConfig

    p.add_argument("input_dir", help="folder with the person's photos")
    p.add_argument("output_dir", help="folder for the processed set (NNN.png, metadata.jsonl, report.json)")
    p.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON file of settings; flags override it")
    add_no_progress_argument(p)
    add_config_arguments(p, PreprocessConfig, title="settings")


def run(args) -> int:
    from facechain.config import config_from_sources
    from facechain.preprocess import PreprocessConfig, preprocess, summary_line

    cfg = config_from_sources(PreprocessConfig, args, args._config)
    result = preprocess(args.input_dir, args.output_dir, cfg, progress=not args._no_progress)
    print(summary_line(result))
    return result.exit_code
