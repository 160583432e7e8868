"""`facechain stylize --content IMG --style IMG [IMG ...] --method ... --output-dir OUT`.

Argument parsing only: builds a StylizeConfig (config file, then flags) and calls
facechain.stylize. Several styles share one loaded model and one content inversion; a style
that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# method options with a flag of their own; each applies to the methods whose options class has it
METHOD_OPTION_FLAGS = ("sac_step", "style_guidance", "plan")


def _option_names(spec) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(spec.options_cls)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.cli import add_output_dir_argument
    from facechain.config import add_config_arguments
    from facechain.stylize.config import StylizeConfig

    p.add_argument("--content", required=True, help="content image (the portrait)")
    p.add_argument("--style", required=True, nargs="+", help="style image(s); the content is inverted once for all")
    add_output_dir_argument(p, help="output folder, required (a new run's results replace the previous run's when it "
                                    "succeeds)")
    p.add_argument("--config", dest="_config", metavar="FILE", default=None, help="YAML/JSON file of StylizeConfig settings; flags override it")
    g = p.add_argument_group("masks")
    g.add_argument("--content-mask", default=None, help="mask image of the content (same size)")
    g.add_argument("--style-mask", default=None, help="mask image of the style (same size)")
    g = p.add_argument_group("method options")
    g.add_argument("--sac-step", type=int, default=None, help="portrait-diffusion: step where style guidance starts (default 35 of 50)")
    g.add_argument("--style-guidance", type=float, default=None, help="portrait-diffusion: style guidance g (default 1.2)")
    g.add_argument("--plan", default=None, help="portrait-diffusion: Chain-of-Painting plan (YAML with 'passes')")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. gamma=0.75 temperature=1.5 (styleid), hs_coeff=0.3 (diffstyle)")
    add_config_arguments(p, StylizeConfig, title="settings (override the config file)")


def build_config(args):
    """Config file (if any) + the flags that were given -> StylizeConfig."""
    from facechain.config import from_dict, settings_from_sources
    from facechain.configfile import load_yaml
    from facechain.errors import InputError
    from facechain.stylize.config import StylizeConfig
    from facechain.stylize.registry import METHODS, get_method

    data = settings_from_sources(StylizeConfig, args, args._config)
    options = dict(data.get("options") or {})
    spec = get_method(data.get("method", StylizeConfig.method))
    for key in METHOD_OPTION_FLAGS:
        value = getattr(args, key)
        if value is None:
            continue
        if key not in _option_names(spec):
            having = [m.name for m in METHODS if key in _option_names(m)]
            raise InputError(f"--{key.replace('_', '-')} applies to {', '.join(having)} only, not to --method {spec.name}.")
        options[key] = str(Path(value)) if key == "plan" else value
    if isinstance(options.get("plan"), str) and spec.load_plan is not None:  # checked now, before a model loads
        options["plan"] = [_pass_dict(p) for p in spec.load_plan(Path(options["plan"]))]
    for item in args.option:
        if "=" not in item:
            raise InputError(f"--option {item!r} must look like KEY=VALUE, e.g. --option gamma=0.75.")
        key, value = item.split("=", 1)
        options[key.strip().replace("-", "_")] = load_yaml(value, f"--option {key.strip()}")
    return from_dict(StylizeConfig, {**data, "options": options}, where=f"config {args._config}" if args._config else "stylize settings")


def _pass_dict(p) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(p).items() if v is not None}


def run(args) -> int:
    from facechain.errors import InputError
    from facechain.stylize.job import run_stylize_job

    if args._output_dir is None:
        raise InputError("facechain stylize: --output-dir is required (the folder for the stylized images and manifest.json).")
    cfg = build_config(args)
    result = run_stylize_job(args.content, args.style, cfg, args._output_dir, content_mask=args.content_mask,
                             style_mask=args.style_mask)
    for path in result.outputs:
        print(path)
    for failure in result.failures:
        print(f"failed: {failure.item}: {failure.error}", file=sys.stderr)
    return result.exit_code
