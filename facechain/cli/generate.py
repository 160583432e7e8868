"""`facechain generate --config configs/<user>.yaml [--field value ...]`.

Every GenerateConfig field is also a flag (``num_images`` -> ``--num-images``); a flag overrides
the config file. Paths given as flags are relative to the working directory, paths inside the
config file relative to the config file's folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path


def _flag_type(tp):
    """(argparse kwargs) for a dataclass field annotation."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin is list:
        inner = typing.get_args(tp)[0]
        return {"nargs": "+", "type": str if inner is Path else inner}
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(tp))}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float):
        return {"type": tp}
    return {"type": str}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.generate.config import GenerateConfig

    p.add_argument("--config", help="YAML/JSON job config (see configs/example.yaml)")
    p.add_argument("--list-styles", action="store_true", help="print the styles usable with the base model and exit")
    hints = typing.get_type_hints(GenerateConfig)
    group = p.add_argument_group("settings (override the config file)")
    for f in dataclasses.fields(GenerateConfig):
        kwargs = _flag_type(hints[f.name])
        if "action" not in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = f.name.upper()
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"set_{f.name}", default=None,
                           help=f.metadata.get("help", ""), **kwargs)


def overrides_from_args(args) -> dict:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("set_") and v is not None}


def run(args) -> int:
    from facechain.generate import load_generate_config, run_job

    overrides = overrides_from_args(args)
    if args.list_styles:
        return _list_styles(args, overrides)
    if args.config is None and "base_model" not in overrides:
        from facechain.errors import InputError

        raise InputError("facechain generate: pass --config FILE, or at least --base-model and --output-dir.")
    cfg = load_generate_config(args.config, overrides)
    result = run_job(cfg)
    print(f"{len(result.kept)} images, manifest.json and contact_sheet.png in {result.output_dir}")
    for path in result.kept:
        print(f"  {path}")
    return 0


def _list_styles(args, overrides: dict) -> int:
    from facechain.config import load_mapping
    from facechain.generate.config import resolve_paths
    from facechain.styles import DEFAULT_STYLES_DIR, load_styles

    data = {}
    if args.config:
        data = resolve_paths(load_mapping(args.config), Path(args.config).resolve().parent)
    data.update(overrides)
    registry = load_styles([DEFAULT_STYLES_DIR, *data.get("style_dirs", [])])
    for style in registry:
        lora = f"LoRA {style.model_id}" if style.has_lora else "prompt only"
        print(f"{style.family:5s}  {style.name:28s} {lora}")
    return 0
