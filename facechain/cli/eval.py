"""`facechain eval GENERATED_DIR --reference PHOTOS_DIR [--backend auto|dlib|insightface] [--output-dir DIR]`.

Every EvalConfig setting is a flag (see facechain.config.add_config_arguments)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.config import add_config_arguments
    from facechain.evaluate import EvalConfig

    p.add_argument("generated_dir", help="folder of generated portraits (e.g. the output folder of facechain generate)")
    p.add_argument("--reference", dest="_reference", metavar="PHOTOS_DIR", required=True,
                   help="folder of the person's photos (or the output folder of facechain preprocess)")
    p.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON file of settings; flags override it")
    add_config_arguments(p, EvalConfig, title="settings")


def run(args) -> int:
    from facechain.config import config_from_sources
    from facechain.evaluate import EvalConfig, evaluate, summary_lines

    cfg = config_from_sources(EvalConfig, args, args._config)
    result = evaluate(args.generated_dir, args._reference, cfg)
    report = result.report
    for line in summary_lines(report):
        print(line)
    for e in report.images:
        if e.status == "unreadable":
            print(f"unreadable: {e.file}: {e.reason}", file=sys.stderr)
    for e in report.references:
        if e.status == "unreadable":
            print(f"unreadable reference photo: {e.file}: {e.reason}", file=sys.stderr)
    for caveat in report.caveats:
        print(f"caveat: {caveat}", file=sys.stderr)
    print(f"report.json and report.png in {result.output_dir}")
    return result.exit_code
