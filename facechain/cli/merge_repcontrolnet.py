"""`facechain merge-repcontrolnet ADAPTER_DIR --base-model M --output-dir MODEL_DIR`: a trained RepControlNet
merged into its base model (a plain diffusers model folder with the base's parameter shapes).

Every MergeConfig setting is a flag (see facechain.config.add_config_arguments)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.adapters.repcontrolnet.merge import MergeConfig
    from facechain.config import add_config_arguments, field_help

    p.add_argument("adapter_dir", help=field_help(MergeConfig)["adapter_dir"])
    add_config_arguments(p, MergeConfig, skip=("adapter_dir",), title="settings")


def run(args) -> int:
    from facechain.adapters.repcontrolnet.merge import MergeConfig, merge_repcontrolnet
    from facechain.config import from_dict, settings_from_args

    cfg = from_dict(MergeConfig, settings_from_args(MergeConfig, args), where="merge-repcontrolnet")
    out = merge_repcontrolnet(cfg.adapter_dir, cfg.base_model, cfg.output_dir, revision=cfg.revision, sub_path=cfg.sub_path,
                              single_file_config=cfg.single_file_config, allow_pickle=cfg.allow_pickle,
                              allow_other_files=cfg.allow_other_files)
    print(f"merged model written to {out} (use it as base_model)")
    return 0
