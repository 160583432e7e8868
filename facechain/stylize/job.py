"""A stylization job: one content image after several style images, into one output folder.

The content is inverted once (the engine's cache) and each style is one requested output; a style
that fails is reported in the manifest and the others still run (:mod:`facechain.jobs`). Results
replace the folder's previous results only when at least one style succeeded.

    from facechain.stylize import StylizeConfig
    from facechain.stylize.job import run_stylize_job
    result = run_stylize_job("me.jpg", ["a.jpg", "b.jpg"], StylizeConfig(), "out/")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from facechain.errors import InputError
from facechain.io import write_json
from facechain.jobs import JobResult, fail_whole_job, run_items
from facechain.stylize.config import StylizeConfig
from facechain.outputs import check_writable_folder, same_or_nested, OutputDir

logger = logging.getLogger(__name__)


def output_names(content: str | os.PathLike, styles: list, method: str) -> list[str]:
    """``<content>__<style>__<method>`` per style; a style file name seen before (from another
    folder) gets its 1-based position appended."""
    stem = Path(content).stem
    used: set[str] = set()
    names = []
    for index, style in enumerate(styles):
        base = f"{stem}__{Path(style).stem}__{method}"
        name, k = base, index + 1
        while name in used:
            name, k = f"{base}__{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def check_job_inputs(content, styles: list, output_dir, cfg: StylizeConfig, content_mask=None, style_mask=None) -> None:
    """Everything checkable before a model loads: inputs are files, none inside the output folder
    (whose previous results a run replaces), the inversion cache in a folder of its own."""
    inputs = [("content image", content), ("content mask", content_mask), ("style mask", style_mask),
              *[("style image", s) for s in styles]]
    for what, path in inputs:
        if path is not None and Path(path).is_dir():
            raise InputError(f"{what} {path} is a folder, not an image file. Pass image files (several styles may "
                             f"be given at once, e.g. --style {Path(path) / '*.png'}).")
        if path is not None and not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist.")
    out = Path(output_dir)
    check_writable_folder(out, "output_dir")
    for what, path in inputs:
        if path is not None and same_or_nested(Path(os.path.realpath(path)).parent, out) in ("the same folder as", "inside"):
            raise InputError(f"{what} {path} is inside output_dir {out}, whose previous results a new run replaces. Copy "
                             "the image out of that folder first, or choose another output_dir.")
    if cfg.cache_dir and same_or_nested(Path(cfg.cache_dir), out):
        raise InputError(f"cache_dir {cfg.cache_dir} overlaps output_dir {out}; keep the inversion cache in a folder of "
                         "its own (it is reused across runs).")


def run_stylize_job(content: str | os.PathLike, styles: list, cfg: StylizeConfig, output_dir: str | os.PathLike, *,
                    content_mask=None, style_mask=None, engine=None, progress: bool = True) -> JobResult:
    """Stylize ``content`` after each of ``styles`` into ``output_dir`` (images, per-image configs,
    ``manifest.json``). Raises :class:`~facechain.jobs.JobFailed` when every style failed."""
    from facechain.stylize.api import build_engine, save_stylization, stylize
    from facechain.stylize.registry import get_method

    get_method(cfg.method)  # unknown method: fail before loading the model
    styles = [str(s) for s in styles]
    check_job_inputs(content, styles, output_dir, cfg, content_mask, style_mask)
    with OutputDir.open(output_dir, "stylize", allow_other_files=cfg.allow_other_files, what="output_dir") as od:
        engine = engine or build_engine(cfg)
        engine.schedule(cfg.num_steps)  # a step count the schedule refuses fails every style: say so once
        stage = od.stage()  # results replace the previous run's only when at least one style succeeded
        outputs: list[Path] = []

        def one_style(pair) -> dict:
            style, name = pair
            result = stylize(content, style, cfg, content_mask=content_mask, style_mask=style_mask, engine=engine,
                             progress=progress)
            path = save_stylization(result, stage, name)
            outputs.append(od.path / path.name)
            logger.info("%s  (%d UNet passes, %.1f s)", od.path / path.name, result.stats["unet_passes"],
                        result.stats["seconds"])
            return {"style": style, "image": path.name, **result.stats}

        outcome = run_items(list(zip(styles, output_names(content, styles, cfg.method))), one_style,
                            name=lambda pair: pair[0], what="style")
        manifest = {"content": str(content), "method": cfg.method, "results": outcome.done,
                    "failed": [{"style": f.item, "error": f.error} for f in outcome.failed],
                    "inversion_cache": engine.cache.stats()}
        if not outcome.done:
            raise fail_whole_job(od, manifest, outcome.failed, "style")
        write_json(stage / "manifest.json", manifest)
        od.commit(stage)
        return JobResult(od.path, outputs, outcome.failed, manifest)
