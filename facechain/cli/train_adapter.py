"""`facechain train-adapter KIND --base-model M --data DIR --output-dir OUT [--no-progress] [settings]`.

KIND: ``repcontrolnet`` (facechain.adapters.repcontrolnet.train: pairs of images and condition maps)
or ``feedface`` (facechain.adapters.feedface.train: processed photo folders). Every setting of the
kind's config is a flag; ``--resume`` continues a run from its latest checkpoint.
"""

from __future__ import annotations

import argparse


def _kinds() -> dict:
    from facechain.adapters.feedface.train import FeedFaceConfig, train_feedface
    from facechain.adapters.repcontrolnet.train import RepControlNetConfig, train_repcontrolnet

    return {"repcontrolnet": (RepControlNetConfig, train_repcontrolnet, "pose (or another condition) control, merged "
                                                                        "into the base afterwards"),
            "feedface": (FeedFaceConfig, train_feedface, "an identity adapter read from one to five face photos")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.cli import add_no_progress_argument
    from facechain.config import add_config_arguments

    sub = p.add_subparsers(dest="_kind", metavar="KIND", required=True)
    for kind, (cls, _, help_text) in _kinds().items():
        k = sub.add_parser(kind, help=help_text, description=help_text, allow_abbrev=False)
        k.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON file of settings")
        add_no_progress_argument(k)
        add_config_arguments(k, cls, title="settings")


def run(args) -> int:
    from facechain.config import config_from_sources

    cls, train, _ = _kinds()[args._kind]
    cfg = config_from_sources(cls, args, args._config)
    out = train(cfg, progress=not args._no_progress)
    if args._kind == "repcontrolnet":
        print(f"RepControlNet ({cfg.condition}) trained: {out}. Merge it with "
              f"`facechain merge-repcontrolnet {out} --base-model {cfg.base_model} --output-dir MODEL_DIR`.")
    else:
        print(f"FeedFace adapter trained: {out}. Use it with identity: {{adapter: feedface, weights: {out}, photos: DIR}}.")
    return 0
