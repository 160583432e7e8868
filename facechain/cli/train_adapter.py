"""`facechain train-adapter KIND --base-model M --data DIR --output-dir OUT [settings]`.

KIND: ``repcontrolnet`` (every RepControlNetConfig setting is a flag; see
facechain.adapters.repcontrolnet.train). ``--resume`` continues a run from its latest checkpoint.
"""

from __future__ import annotations

import argparse

KINDS = ("repcontrolnet",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.adapters.repcontrolnet.train import RepControlNetConfig
    from facechain.config import add_config_arguments

    p.add_argument("kind", choices=KINDS, help="the adapter to train")
    p.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON file of settings")
    p.add_argument("--quiet", dest="_quiet", action="store_true", help="no progress bar")
    add_config_arguments(p, RepControlNetConfig, title="settings")


def run(args) -> int:
    from facechain.adapters.repcontrolnet.train import RepControlNetConfig, train_repcontrolnet
    from facechain.config import config_from_sources

    cfg = config_from_sources(RepControlNetConfig, args, args._config)
    out = train_repcontrolnet(cfg, progress=not args._quiet)
    print(f"RepControlNet ({cfg.condition}) trained: {out}. Merge it with "
          f"`facechain merge-repcontrolnet {out} --base-model {cfg.base_model} --out MODEL_DIR`.")
    return 0
