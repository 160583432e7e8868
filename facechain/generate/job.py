"""One portrait job end to end: check inputs, generate every style, fuse, rank, write outputs.

Output folder layout::

    out/
      <style-slug>_<rank>.png       kept images, best first
      candidates/<style-slug>_<i>.png every candidate (after fusion), for inspection
      contact_sheet.png             every candidate with its score or drop reason
      manifest.json                 prompts, seeds, multipliers, scores, dropped + reasons, timings
      generate_config.json          the config of this job

A style that fails (e.g. its LoRA cannot be downloaded) is reported in the manifest and the job
goes on with the other styles; the job fails only when every style failed. A candidate that
cannot be fused is dropped (ranking) or kept unfused, with the reason in the manifest.

Outputs are written into a staging folder and replace the previous job's outputs only when the
job succeeded (:class:`facechain.outputs.OutputDir`): a killed or failing job leaves the previous
images and their manifest as they were (a failed job writes ``failed_manifest.json`` beside them).
Only files an earlier generate job recorded are ever deleted or overwritten; the folder is locked
while a job runs.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from facechain.config import save_config, to_dict
from facechain.errors import InputError
from facechain.face.fusion import check_backend, fusion_spec
from facechain.generate.config import GenerateConfig
from facechain.generate.manifest import MANIFEST_FILE, GenerationManifest, KeptImage, RankingInfo, StyleRecord
from facechain.io import save_image
from facechain.jobs import FAILED_MANIFEST, ItemFailure, JobResult, fail_whole_job, run_items
from facechain.adapters import get_identity_adapter
from facechain.face.fusion import get_fusion
from facechain.face.restore import RestoreConfig, load_restorer
from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles
from facechain.models import resolve_device, resolve_dtype, resolve_model
from facechain.outputs import check_settled, OutputDir, check_writable_folder

logger = logging.getLogger(__name__)


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    return s or "style"



def unique_names(styles) -> list[str]:
    """File-name stems for ``styles``: the slug of the style file's name, with _2, _3... when two
    style files in different folders share a name."""
    names: list[str] = []
    for style in styles:
        base = name = slug(style.path.stem)
        k = 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def check_inputs(cfg: GenerateConfig):
    """Everything that can be checked before loading a model.

    Returns (resolved model, styles, subject, control) where control is check_control_inputs' result."""
    from facechain.generate.pipeline import check_control_inputs, check_face_lora
    from facechain.generate.subject import subject_from_metadata

    registry = load_styles([DEFAULT_STYLES_DIR, *cfg.style_dirs])
    if cfg.lora_dir is not None and Path(cfg.lora_dir).is_dir():
        check_settled(cfg.lora_dir, "train", "lora_dir")
    if cfg.processed_dir is not None and Path(cfg.processed_dir).is_dir():
        check_settled(cfg.processed_dir, "preprocess", "processed_dir")
    check_face_lora(cfg)
    spec = fusion_spec(cfg.fusion)
    if cfg.processed_dir is None and (cfg.rank_candidates or (spec is not None and spec.needs_reference)):
        raise InputError(
            "rank and fusion need the template face from processed_dir, which is empty. Set processed_dir to the "
            "output folder of `facechain preprocess`, or set rank: false and fusion: off."
        )
    if spec is not None and spec.needs_identity and cfg.lora_dir is None and not cfg.identity.enabled:
        raise InputError(f"fusion: {cfg.fusion} regenerates each face with the person's identity, and there is none: set lora_dir "
                         "(a face LoRA) or an identity adapter (identity: {adapter, photos}), or use fusion: landmark.")
    if spec is not None and spec.factory is not None and cfg.face_backend != "auto":  # before any model loads
        check_backend(cfg.fusion, cfg.face_backend)
    control = check_control_inputs(cfg)  # a pose with no person fails here, before any model loads
    subject = subject_from_metadata(cfg.processed_dir, cfg.trigger_word)
    resolved = resolve_model(cfg.base_model, cfg.revision, cfg.sub_path, allow_pickle=cfg.allow_pickle,
                             dtype=resolve_dtype(cfg.dtype, resolve_device(cfg.device)), variant=cfg.variant)
    styles = [registry.get(name, resolved.family) for name in cfg.styles]
    if cfg.identity.enabled:  # the adapter's weights (safetensors, this family) and photos, before any model loads
        from facechain.images import list_images

        get_identity_adapter(cfg.identity, resolved.family)
        list_images(Path(cfg.identity.photos), "identity.photos folder")
        if cfg.lora_dir is None:  # adapter only: no LoRA learned the trigger word, so it is left out of the prompt
            subject = ("", subject[1])
    return resolved, styles, subject, control


def run_job(cfg: GenerateConfig, generator=None) -> JobResult:
    """Generate, fuse and rank portraits for every style of ``cfg``; write the outputs.

    ``generator``: what makes each style's candidates, ``generate(style, subject) -> StyleBatch``
    with a ``load_seconds`` attribute; default a :class:`~facechain.generate.pipeline.PortraitGenerator`
    for ``cfg``. Another candidate source (an adapter pipeline, a template pass) plugs in here and
    gets the same fusion, ranking, outputs and manifest."""
    t_job = time.perf_counter()
    check_writable_folder(Path(cfg.output_dir), "output_dir")
    resolved, styles, subject, control = check_inputs(cfg)
    with OutputDir.open(cfg.output_dir, "generate", allow_other_files=cfg.allow_other_files, what="output_dir") as od:
        return _run(cfg, od, resolved, styles, subject, control, t_job, generator)


def _run(cfg: GenerateConfig, od, resolved, styles, subject, control, t_job: float, generator) -> JobResult:
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.rank import contact_sheet, fuse_and_rank, save_style_outputs, select_reference_face

    out = od.path
    names = unique_names(styles)
    od.check_free([MANIFEST_FILE, "generate_config.json", "contact_sheet.png", FAILED_MANIFEST]
                  + [f"{n}_{r:02d}.png" for n in names for r in range(cfg.num_images)]
                  + [f"candidates/{n}_{i:03d}.png" for n in names for i in range(cfg.num_candidates)])
    stage = od.stage()  # everything goes here first; it replaces the previous outputs on success only
    save_config(cfg, stage / "generate_config.json")

    timings: dict[str, float] = {}
    analyzer = reference = fusion = restorer = None
    spec = fusion_spec(cfg.fusion)
    in_generation = spec is not None and spec.in_generation  # DIIR: the generator's, inside sampling
    if cfg.rank_candidates or spec is not None:
        from facechain.face import get_analyzer

        t0 = time.perf_counter()
        analyzer = get_analyzer(cfg.face_backend)
        reference = select_reference_face(cfg.processed_dir, analyzer) if cfg.processed_dir is not None else None
        # get_fusion refuses a method whose required face backend is not the one loaded (auto -> dlib)
        if spec is not None and not in_generation:
            fusion = get_fusion(cfg.fusion, swapper_model=cfg.swapper_model, backend=analyzer.name)
        if fusion is None and cfg.restore_model is not None:
            logger.warning("restore_model is set but fusion is off: faces are restored after fusion only, so not at all")
        if fusion is not None and cfg.restore_model is not None:
            restorer = load_restorer(RestoreConfig(model=cfg.restore_model, strength=cfg.restore_strength,
                                                   device=cfg.device, allow_pickle=cfg.allow_pickle))
        timings["template_s"] = time.perf_counter() - t0

    generator = generator or PortraitGenerator(cfg, resolved, control=control, analyzer=analyzer)
    timings["load_s"] = generator.load_seconds
    header = {  # the manifest's fields known before any style runs
        "base_model": resolved.to_dict(),
        "face_lora": str(cfg.lora_dir) if cfg.lora_dir else None,
        "identity_adapter": cfg.identity.adapter or None,
        "subject": {"trigger": subject[0], "attribute": subject[1]},
        "reference": {"file": reference.file, "reason": reference.reason,
                   "fusion_source": reference.fusion_file or reference.file,
                   "fusion_source_size": int(reference.fusion_source()[0].shape[0])} if reference else None,
        "fusion": {"method": cfg.fusion if in_generation else fusion.name if fusion else "off",
                "strength": cfg.fusion_strength, "diir": to_dict(cfg.diir) if in_generation else None,
                "restore": {"model": str(cfg.restore_model), "architecture": restorer.architecture,
                            "strength": cfg.restore_strength} if restorer else None},
        "ranking": RankingInfo(on=cfg.rank_candidates, backend=getattr(analyzer, "name", None),
                            usable_face_frac=[cfg.min_face_frac, cfg.max_face_frac],
                            # a face the detailer re-drew is not dropped by min_face_frac (postprocess.check_face)
                            small_face_kept_when_detailed=cfg.detailer != "off"),
        "upscale": {"method": cfg.upscale, "factor": cfg.upscale_factor if cfg.upscale != "off" else 1},
    }
    kept_files: list[Path] = []
    sheet_images: list[np.ndarray] = []
    sheet_captions: list[str] = []

    def one_style(pair) -> StyleRecord:
        style, name = pair
        batch = generator.generate(style, subject)
        t0 = time.perf_counter()
        images = [np.asarray(c.image.convert("RGB")) for c in batch.candidates]
        detailer_info = [getattr(c, "detailer", None) for c in batch.candidates]
        scored = fuse_and_rank(
            images, reference, analyzer, fusion=fusion, strength=cfg.fusion_strength, rank=cfg.rank_candidates,
            min_face_frac=cfg.min_face_frac, max_face_frac=cfg.max_face_frac,
            detailed=[any(f.get("detailed") for f in info or []) for info in detailer_info], restorer=restorer,
        )
        post_s = time.perf_counter() - t0
        saved = save_style_outputs(
            stage, name, style.name, scored, [c.seed for c in batch.candidates], cfg.num_images,
            upscale_factor=cfg.upscale_factor if cfg.upscale == "lanczos" else 1,
        )
        entries, keep, usable = saved.entries, saved.kept_scored, saved.usable
        for entry in entries:  # the face detailer's and DIIR's per-face reports (None: it did not run)
            entry["detailer"] = detailer_info[entry["index"]]
            entry["diir"] = batch.candidates[entry["index"]].diir
        kept_files.extend(out / p.relative_to(stage) for p in saved.kept_files)
        sheet_images.extend(saved.sheet_images)
        sheet_captions.extend(saved.sheet_captions)
        if len(keep) < cfg.num_images:
            logger.warning(
                "style '%s': kept %d of %d images; %d of %d candidates were dropped (reasons in manifest.json)",
                style.name, len(keep), cfg.num_images, len(scored) - len(usable), len(scored),
            )
        return StyleRecord(
            style=style.name, style_file=str(style.path), prompt=batch.prompt, negative_prompt=batch.negative_prompt,
            multipliers={"human": style.multiplier_human if cfg.lora_dir else None,
                         "style": style.multiplier_style if style.has_lora else None},
            adapters=batch.adapters, style_lora=style.model_id, settings=batch.settings,
            kept=[KeptImage(**k) for k in saved.kept], candidates=entries,
            dropped=[{"index": e["index"], "seed": e["seed"], "reason": e["dropped"]}
                     for e in entries if e["dropped"]],
            timings={"generate_s": batch.seconds, "postprocess_s": post_s,
                     "seconds_per_candidate": batch.seconds / max(1, len(batch.candidates))},
        )

    pairs = list(zip(styles, names))
    outcome = run_items(pairs, one_style, name=lambda pair: pair[0].name, what="style")
    manifest = GenerationManifest(
        **header, timings=timings, failed=[f.to_dict() for f in outcome.failed], config=to_dict(cfg),
        # one entry per requested style, in the order asked for
        styles=[StyleRecord(style=r.item, error=r.error) if isinstance(r, ItemFailure) else r
                for r in outcome.results])
    if not outcome.done:
        raise fail_whole_job(od, manifest.to_dict(), outcome.failed, "style")
    if cfg.contact_sheet and sheet_images:
        save_image(stage / "contact_sheet.png", contact_sheet(sheet_images, sheet_captions))
    timings["total_s"] = time.perf_counter() - t_job
    manifest.write(stage)
    od.commit(stage)
    logger.info("wrote %d images, manifest.json and contact_sheet.png to %s", len(kept_files), out)
    return JobResult(out, kept_files, outcome.failed, manifest.to_dict())
