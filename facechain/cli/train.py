"""`facechain train BASE_MODEL PROCESSED_DIR OUTPUT_DIR [--revision R] [--sub_path S] [flags]`.

Every TrainConfig setting is a flag (``--max_train_steps 400`` or ``--max-train-steps 400``; see
facechain.config.add_config_arguments); ``--config file.yaml`` reads settings from a file, flags
override it.
Under ``accelerate launch -m facechain train ...`` it runs on accelerate's configured devices.
"""

from __future__ import annotations

import argparse

from facechain.train.config import TrainConfig

POSITIONAL = ("base_model", "train_data_dir", "output_dir")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.cli import add_no_progress_argument
    from facechain.config import add_config_arguments, field_help

    helps = field_help(TrainConfig)
    for name in POSITIONAL:
        p.add_argument(name, help=helps[name])
    p.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON file of TrainConfig settings (flags override it)")
    add_no_progress_argument(p)
    add_config_arguments(p, TrainConfig, skip=POSITIONAL, title="settings")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from facechain.config import config_from_sources

    return config_from_sources(TrainConfig, args, args._config)


def stop_with_launcher() -> bool:
    """Under ``accelerate launch`` the trainer is a child of the launcher, which does not pass
    signals on: a launcher killed by ``kill`` left the trainer training (and holding the GPU and the
    output folder). On Linux, ask the kernel to send the trainer SIGTERM when its launcher dies.
    Only under a launcher (it sets ACCELERATE_DYNAMO_BACKEND): a trainer started from a shell with
    ``nohup`` must outlive that shell. Returns True when set."""
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux") or "ACCELERATE_DYNAMO_BACKEND" not in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from facechain.train import train

    stop_with_launcher()
    cfg = config_from_args(args)
    artifact = train(cfg, progress=not args._no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary under a multi-process launch
        print(f"LoRA: {artifact.lora_path}\nkohya LoRA: {artifact.kohya_path}\ncheckpoints used: {artifact.selected_steps}")
    return 0
