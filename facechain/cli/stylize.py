"""`facechain stylize --content IMG --style IMG [IMG ...] --method ... --out OUT`.

Argument parsing only: builds a StylizeConfig (config file, then flags) and calls
facechain.stylize. Several styles share one loaded model and one content inversion; a style
that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

METHOD_FLAGS = {"sac_step": "portrait-diffusion", "style_guidance": "portrait-diffusion", "plan": "portrait-diffusion"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.stylize.config import DEFAULT_MODEL

    p.add_argument("--content", required=True, help="content image (the portrait)")
    p.add_argument("--style", required=True, nargs="+", help="style image(s); the content is inverted once for all")
    p.add_argument("--method", default=None, help="portrait-diffusion (default) | styleid | masactrl | diffstyle")
    p.add_argument("--out", required=True, help="output folder (a new run's results replace the previous run's when it succeeds)")
    p.add_argument("--allow-other-files", action="store_true",
                   help="write into an output folder that holds files facechain did not write (they are never touched)")
    p.add_argument("--config", default=None, help="YAML/JSON file of StylizeConfig settings; flags override it")
    g = p.add_argument_group("masks")
    g.add_argument("--content-mask", default=None, help="mask image of the content (same size)")
    g.add_argument("--style-mask", default=None, help="mask image of the style (same size)")
    g.add_argument("--only-mask-region", action="store_true", default=None,
                   help="stylize inside the content mask only; outside pixels stay the content's exactly")
    g = p.add_argument_group("control")
    g.add_argument("--steps", type=int, default=None, help="inversion and sampling steps (default 50; 4 with --fast)")
    g.add_argument("--start-step", type=int, default=None, help="first controlled step (default: the method's)")
    g.add_argument("--end-step", type=int, default=None, help="controlled steps stop before this one")
    g.add_argument("--start-layer", type=int, default=None, help="first controlled self-attention layer (default 10 of 16 on SD1.5)")
    g.add_argument("--sac-step", type=int, default=None, help="portrait-diffusion: step where style guidance starts (default 35 of 50)")
    g.add_argument("--style-guidance", type=float, default=None, help="portrait-diffusion: style guidance g (default 1.2)")
    g.add_argument("--plan", default=None, help="portrait-diffusion: Chain-of-Painting plan (YAML with 'passes')")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. gamma=0.75 temperature=1.5 (styleid), hs_coeff=0.3 (diffstyle)")
    g.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default 1 = off)")
    g.add_argument("--inversion-refine", type=int, default=None,
                   help="fixed-point refinements per inversion step (default 0; 2-4 = closer reconstruction, more UNet passes)")
    g.add_argument("--prompt", default=None, help="prompt for inversion and sampling (default: the method's)")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--resolution", type=int, default=None, help="long side in pixels (default 512 for SD1.5, 1024 for SDXL)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=f"base model (default {DEFAULT_MODEL})")
    g.add_argument("--revision", default=None)
    g.add_argument("--subfolder", default=None)
    g.add_argument("--allow-pickle", action="store_true", default=None, help="allow pickle checkpoints you trust")
    g.add_argument("--lora", action="append", default=None, metavar="FILE", help="LoRA file/folder, e.g. your face LoRA (repeatable)")
    g.add_argument("--lora-scale", action="append", type=float, default=None, help="weight per --lora (repeatable)")
    g.add_argument("--fast", action="store_true", default=None, help="LCM-LoRA with LCM inversion and sampling")
    g.add_argument("--fast-lora", default=None, help="LCM-LoRA file/folder/hub id")
    g.add_argument("--cache-dir", default=None, help="keep inversions on disk here (safetensors)")
    g.add_argument("--device", default=None)
    g.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])


def build_config(args):
    """Config file (if any) + the flags that were given -> StylizeConfig."""
    import yaml

    from facechain.config import from_dict, load_mapping
    from facechain.errors import InputError
    from facechain.stylize.config import StylizeConfig

    data = load_mapping(args.config) if args.config else {}
    flags = {
        "method": args.method, "only_mask_region": args.only_mask_region, "steps": args.steps,
        "start_step": args.start_step, "end_step": args.end_step, "start_layer": args.start_layer,
        "guidance_scale": args.guidance_scale, "inversion_refine": args.inversion_refine, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
        "resolution": args.resolution, "model": args.model, "revision": args.revision, "subfolder": args.subfolder,
        "allow_pickle": args.allow_pickle, "loras": args.lora, "lora_scales": args.lora_scale, "fast": args.fast,
        "fast_lora": args.fast_lora, "cache_dir": args.cache_dir, "device": args.device, "dtype": args.dtype,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    options = dict(data.get("options") or {})
    method = data.get("method", "portrait-diffusion")
    for key in ("sac_step", "style_guidance", "plan"):
        value = getattr(args, key)
        if value is None:
            continue
        if method != METHOD_FLAGS[key]:
            raise InputError(f"--{key.replace('_', '-')} applies to {METHOD_FLAGS[key]} only, not to --method {method}.")
        options[key] = str(Path(value)) if key == "plan" else value
    if "plan" in options and isinstance(options["plan"], str):
        from facechain.stylize.methods.portrait_diffusion import load_plan

        plan_path = Path(options["plan"])
        load_plan(plan_path)  # check it now, before loading a model
        options["plan"] = [_pass_dict(p) for p in load_plan(plan_path)]
    for item in args.option:
        if "=" not in item:
            raise InputError(f"--option {item!r} must look like KEY=VALUE, e.g. --option gamma=0.75.")
        key, value = item.split("=", 1)
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    data["options"] = options
    return from_dict(StylizeConfig, data)


def _pass_dict(p) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(p).items() if v is not None}


def run(args) -> int:
    from facechain.errors import InputError
    from facechain.stylize import build_engine, get_method

    cfg = build_config(args)
    get_method(cfg.method)  # unknown method: fail before loading the model
    inputs = [("--content", args.content), ("--content-mask", args.content_mask), ("--style-mask", args.style_mask),
              *[("--style", s) for s in args.style]]
    for what, path in inputs:
        if path is not None and Path(path).is_dir():
            raise InputError(f"{what} {path} is a folder, not an image file. Pass image files (several --style files "
                             f"may follow one flag, e.g. --style {Path(path) / '*.png'}).")
        if path is not None and not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist.")
    from facechain.outputs import OutputDir, check_writable_folder, same_or_nested

    check_writable_folder(Path(args.out), "--out")
    for what, path in inputs:
        if path is not None and same_or_nested(Path(os.path.realpath(path)).parent, Path(args.out)) in (
                "the same folder as", "inside"):
            raise InputError(f"{what} {path} is inside --out {args.out}, whose previous results a new run replaces. Copy "
                             "the image out of that folder first, or choose another --out.")
    if cfg.cache_dir and same_or_nested(Path(cfg.cache_dir), Path(args.out)):
        raise InputError(f"--cache-dir {cfg.cache_dir} overlaps --out {args.out}; keep the inversion cache in a folder of "
                         "its own (it is reused across runs).")
    with OutputDir.open(args.out, "stylize", allow_other_files=args.allow_other_files, what="--out") as od:
        engine = build_engine(cfg)
        engine.schedule(cfg.num_steps)  # a step count the schedule refuses fails every style: say so once
        return _run_styles(args, cfg, engine, od)


def _run_styles(args, cfg, engine, od) -> int:
    from facechain.errors import FacechainError
    from facechain.io import write_json
    from facechain.stylize import save_stylization, stylize

    stage = od.stage()  # results replace the previous run's only when at least one style succeeded
    results, failed = [], []
    content_stem = Path(args.content).stem
    used: set[str] = set()
    for index, style in enumerate(args.style):
        base = f"{content_stem}__{Path(style).stem}__{cfg.method}"
        name, k = base, index + 1
        while name in used:  # same file name in another folder: suffix the style's position (1-based)
            name, k = f"{base}__{k}", k + 1
        used.add(name)
        try:
            result = stylize(args.content, style, cfg, content_mask=args.content_mask, style_mask=args.style_mask, engine=engine)
        except FacechainError as exc:
            logger.error("style %s failed: %s", style, exc)
            failed.append({"style": style, "error": str(exc)})
            continue
        path = save_stylization(result, stage, name)
        results.append({"style": style, "image": path.name, **result.stats})
        print(f"{od.path / path.name}  ({result.stats['unet_passes']} UNet passes, {result.stats['seconds']:.1f} s)")
    manifest = {"content": args.content, "method": cfg.method, "results": results, "failed": failed,
                "inversion_cache": engine.cache.stats()}
    if failed and not results:
        failed_stage = od.stage()
        write_json(failed_stage / "failed_manifest.json", manifest)
        od.commit(failed_stage, replace=False)  # the previous run's results stay as they were
        raise FacechainError(f"every style failed; first error: {failed[0]['error']} (details in "
                             f"{od.path / 'failed_manifest.json'}; earlier results in {od.path} were left as they were)")
    write_json(stage / "manifest.json", manifest)
    od.commit(stage)
    return 1 if failed else 0
