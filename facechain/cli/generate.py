"""`facechain generate --config configs/<user>.yaml [--field value ...]`.

Every GenerateConfig field is also a flag (``num_images`` -> ``--num-images`` or ``--num_images``;
see facechain.config.add_config_arguments); a flag overrides the config file. Paths given as flags are relative to the working directory, paths inside the
config file relative to the config file's folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.config import add_config_arguments
    from facechain.generate.config import GenerateConfig

    p.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON job config (see configs/example.yaml)")
    p.add_argument("--list-styles", dest="_list_styles", action="store_true", help="print the styles usable with the base model and exit")
    add_config_arguments(p, GenerateConfig, title="settings (override the config file)")


def overrides_from_args(args) -> dict:
    from facechain.config import settings_from_args
    from facechain.generate.config import GenerateConfig

    return settings_from_args(GenerateConfig, args)


def run(args) -> int:
    from facechain.generate import load_generate_config, run_job

    if args._config is not None:
        from facechain.config import load_mapping

        if load_mapping(args._config).get("mode") == "template":  # a fixed-template job (facechain template)
            from facechain.template import run_template
            from facechain.template.config import load_template_config

            result = run_template(load_template_config(args._config))
            print(f"result: {result.result} (faces, manifest.json and contact_sheet.png in {result.output_dir})")
            for f in result.failures:
                print(f"failed: {f.item}: {f.error}", file=sys.stderr)
            return result.exit_code
    overrides = overrides_from_args(args)
    if args._list_styles:
        return _list_styles(args, overrides)
    if args._config is None and "base_model" not in overrides:
        from facechain.errors import InputError

        raise InputError("facechain generate: pass --config FILE, or at least --base-model and --output-dir.")
    cfg = load_generate_config(args._config, overrides)
    result = run_job(cfg)
    print(f"{len(result.outputs)} images, manifest.json and contact_sheet.png in {result.output_dir}")
    for path in result.outputs:
        print(f"  {path}")
    for failure in result.failures:
        print(f"failed: style '{failure.item}': {failure.error}", file=sys.stderr)
    return result.exit_code


def _list_styles(args, overrides: dict) -> int:
    from facechain.config import load_mapping, resolve_config_paths
    from facechain.generate.config import GenerateConfig
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    data = {}
    if args._config:
        data = resolve_config_paths(GenerateConfig, load_mapping(args._config), Path(args._config).resolve().parent)
    data.update(overrides)
    registry = load_styles([DEFAULT_STYLES_DIR, *data.get("style_dirs", [])])
    for style in registry:
        lora = f"LoRA {style.model_id}" if style.has_lora else "prompt only"
        print(f"{style.family:5s}  {style.name:28s} {lora}")
    return 0
