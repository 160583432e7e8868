"""`facechain train BASE_MODEL PROCESSED_DIR OUTPUT_DIR [--revision R] [--sub_path S] [flags]`.

Every TrainConfig setting is a flag of the same name (``--max_train_steps 400``; hyphens work
too: ``--allow-pickle``); ``--config file.yaml`` reads settings from a file, flags override it.
Under ``accelerate launch -m facechain train ...`` it runs on accelerate's configured devices.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from facechain.train.config import LR_SCHEDULERS, TrainConfig

POSITIONAL = ("base_model", "train_data_dir", "output_dir")


def _flag_names(name: str) -> list[str]:
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base_model", help=TrainConfig.__dataclass_fields__["base_model"].metadata["help"])
    p.add_argument("train_data_dir", help=TrainConfig.__dataclass_fields__["train_data_dir"].metadata["help"])
    p.add_argument("output_dir", help=TrainConfig.__dataclass_fields__["output_dir"].metadata["help"])
    p.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON file of TrainConfig settings (flags override it)")
    p.add_argument("--no-progress", dest="_no_progress", action="store_true", help="no progress bar")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in POSITIONAL:
            continue
        tp, help_text = hints[f.name], f.metadata.get("help", "")
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = list(args)
        elif f.name == "lr_scheduler":
            kwargs["choices"] = list(LR_SCHEDULERS)
        elif origin is list:
            kwargs["nargs"] = "+"
        else:
            base = next((a for a in args if a is not type(None)), tp) if args else tp
            kwargs["type"] = base if base in (int, float) else str
        p.add_argument(*_flag_names(f.name), **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from facechain.config import from_dict, load_mapping

    settings = load_mapping(args._config) if args._config else {}
    settings.update({k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "verbose")})
    return from_dict(TrainConfig, settings)


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
