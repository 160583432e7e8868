"""The fixed-template job (see the package docstring). Outputs in ``output_dir``:

* ``result.png``: the template with every assigned face edited;
* ``faces/face_K_before.png``, ``faces/face_K_after.png``, ``faces/face_K_mask.png``: each edited face's
  crop before and after, and its feathered mask (K: the template face's index);
* ``manifest.json``: the faces found (index, box, size), who went where, per face the crop, seed,
  prompt, colour correction, fusion, identity similarity to the person before and after, and the
  failures (one person's failure never loses the others' faces);
* ``contact_sheet.png``: the template, the result and each face before/after; ``template_config.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facechain.errors import FacechainError, InputError
from facechain.families import Family, get_family
from facechain.template.config import TemplateConfig
from facechain.train.artifact import TrainedLora

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TemplateResult:
    output_dir: Path
    result: Path
    faces: list[dict]  # per template face
    failures: list  # facechain.jobs.ItemFailure per person that failed

    @property
    def exit_code(self) -> int:
        from facechain.jobs import exit_code_for

        return exit_code_for(self.failures)


def _detect(image: np.ndarray, analyzer) -> list:
    faces = analyzer.detect(image, max_faces=64)
    return sorted(faces, key=lambda f: float(f.center[0]))  # left to right


def describe_faces(faces) -> list[dict]:
    return [{"index": i, "bbox": [round(float(v), 1) for v in f.bbox[:4]], "size": round(float(f.size), 1)}
            for i, f in enumerate(faces)]


def preview(image: np.ndarray, faces):
    """The template with each face's box and index drawn (PIL image)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image).copy()
    draw = ImageDraw.Draw(img)
    width = max(2, round(min(image.shape[:2]) / 200))
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = (float(v) for v in f.bbox[:4])
        draw.rectangle([x1, y1, x2, y2], outline=(255, 40, 40), width=width)
        draw.text((x1 + 3, y1 + 3), str(i), fill=(255, 255, 0))
    return img


def list_template_faces(template, analyzer):
    """(template RGB, its faces left to right, an annotated preview)."""
    from facechain.images import PHOTO_MAX_MEGAPIXELS, read_image

    image = read_image(template, "template photo", max_megapixels=PHOTO_MAX_MEGAPIXELS)
    faces = _detect(image, analyzer)
    return image, faces, preview(image, faces)


def assign(cfg: TemplateConfig, faces) -> list[tuple[int, int]]:
    """(person index, face index) pairs; a count that does not fit is one error listing the faces."""
    found = "; ".join(f"{d['index']}: box {d['bbox']}, {d['size']:.0f} px" for d in describe_faces(faces)) or "none"
    fix = ("Give each person a face index (people: [{lora_dir, face: N}], or --person LORA_DIR@N) after "
           "`facechain template TEMPLATE --list-faces`, or use a template with one face per person.")
    if not faces:
        raise InputError(f"no face was found in the template {cfg.template}. Use a photo with clearly visible faces.")
    if all(p.face is not None for p in cfg.people):
        bad = [p.face for p in cfg.people if not 0 <= p.face < len(faces)]
        if bad:
            raise InputError(f"face index {bad[0]} does not exist: the template has {len(faces)} faces ({found}). {fix}")
        pairs = [(i, p.face) for i, p in enumerate(cfg.people)]
    elif len(cfg.people) != len(faces):
        raise InputError(f"{len(cfg.people)} people for {len(faces)} faces in the template {cfg.template}: faces found "
                         f"(left to right) {found}. {fix}")
    else:
        pairs = list(enumerate(range(len(faces))))
    for _, k in pairs:
        if faces[k].size < cfg.min_face_size:
            raise InputError(f"template face {k} is {faces[k].size:.0f} px, under min_face_size {cfg.min_face_size} px: "
                             "too small to edit. Use a larger template photo, or map people to larger faces.")
    return pairs


def canny_map(crop: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Canny edges (100, 200) of the crop with the face (its mask) zeroed, as FaceChain's template pass."""
    import cv2

    edges = cv2.Canny(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), 100, 200)
    edges[alpha > 0] = 0
    return np.repeat(edges[..., None], 3, axis=2)


def control_pipeline(pipe, cfg: TemplateConfig, family: "str | Family"):
    """The ControlNet inpaint pipeline of ``pipe`` (from_pipe: the same UNet, LoRAs and VAE) with the
    configured ControlNets, or None without controls."""
    from facechain.models import dtype_kwargs, load_controlnet

    if not cfg.controls:
        return None
    family = get_family(family)
    refs = {"openpose": cfg.controlnet_openpose or family.controlnets["openpose"],
            "canny": cfg.controlnet_canny or family.controlnets["canny"]}
    nets = [load_controlnet(refs[c], dtype=pipe.unet.dtype, what=c, allow_pickle=cfg.allow_pickle) for c in cfg.controls]
    if len(nets) > 1:
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        net = MultiControlNetModel(nets)
    else:
        net = nets[0]
    cls = family.pipeline_class("controlnet_inpaint")
    control = cls.from_pipe(pipe, controlnet=net, **dtype_kwargs(pipe.unet.dtype))
    control.set_progress_bar_config(disable=True)
    return control


def place_models(pipe, control, cfg: TemplateConfig, device):
    """Put the job's models on ``device`` by the memory plan of one face at the working size (batch 1):
    ``pipe.to(device)``, or diffusers' CPU offload when the budget does not fit (facechain.memory)."""
    from facechain import memory
    from facechain.models import native_size

    nets = [] if control is None else list(getattr(control.controlnet, "nets", [control.controlnet]))
    free = memory.free_memory(device)
    size = native_size(pipe)
    plan = memory.plan_memory(memory.pipeline_parts(pipe, nets), size, size, batch=1,
                              offload=memory.offload_for(cfg.offload, device, free), free_bytes=free,
                              auto_modes=memory.AUTO_OFFLOAD)
    memory.apply_plan(control or pipe, plan, device)
    return plan


def base_model_of(cfg: TemplateConfig) -> tuple[str, str | None, str | None]:
    """``cfg.base_model``, or the one the first person's LoRA was trained on (train_config.json)."""
    if cfg.base_model:
        return cfg.base_model, cfg.revision, cfg.sub_path
    if cfg.people[0].lora_dir is None:
        raise InputError("base_model is empty and the first person has no face LoRA whose train_config.json would name "
                         "it. Pass --base-model (base_model: in the config).")
    try:
        return TrainedLora.read(cfg.people[0].lora_dir, "the first person's lora_dir").base_model_ref()
    except InputError as exc:
        raise InputError(f"base_model is empty and the first person's LoRA does not name one: {exc} Pass "
                         "--base-model, the model the people's LoRAs were trained on.") from exc


def run_template(cfg: TemplateConfig, analyzer=None) -> TemplateResult:
    """Edit each assigned template face with its person's identity; write the outputs (module docstring)."""
    from facechain.outputs import OutputDir, check_writable_folder

    check_writable_folder(Path(cfg.output_dir), "output_dir")
    from facechain.face import get_analyzer

    analyzer = analyzer or get_analyzer(cfg.face_backend)
    image, faces, _ = list_template_faces(cfg.template, analyzer)
    pairs = assign(cfg, faces)  # before any model loads
    with OutputDir.open(cfg.output_dir, "template", allow_other_files=cfg.allow_other_files, what="output_dir") as od:
        return _run(cfg, od, image, faces, pairs, analyzer)


def _run(cfg: TemplateConfig, od, image: np.ndarray, faces, pairs, analyzer) -> TemplateResult:
    import torch

    from facechain import lora as lora_io
    from facechain.config import save_config, to_dict
    from facechain.face.region import compose, face_region
    from facechain.generate.detailer import DetailerConfig
    from facechain.generate.inpaint import inpaint_pipeline, redraw_region
    from facechain.face import similarity
    from facechain.face.fusion import fusion_spec, get_fusion, match_colour
    from facechain.generate.config import DEFAULT_NEGATIVE_PROMPT
    from facechain.generate.subject import join_prompt, subject_from_metadata
    from facechain.io import save_image, write_json
    from facechain.jobs import ItemFailure
    from facechain.models import load_pipeline, native_size, resolve_device, resolve_dtype, resolve_model
    from facechain.generate.rank import contact_sheet, select_reference_face
    from facechain.generate.poses import face_keypoint_map
    from facechain.prompts import PromptEncoder

    t0 = time.perf_counter()
    model, revision, sub_path = base_model_of(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    resolved = resolve_model(model, revision, sub_path, allow_pickle=cfg.allow_pickle, dtype=dtype)
    pipe = load_pipeline(resolved, torch_dtype=dtype, single_file_config=cfg.single_file_config)
    pipe.set_progress_bar_config(disable=True)  # placed on the device (or offloaded) once every model is loaded
    ident_spec = next((p.identity for p in cfg.people if p.identity is not None and p.identity.enabled), None)
    adapter, adapter_loras = None, {}
    if ident_spec is not None:  # one adapter for the job (its weights checked before any face); photos per person
        from facechain.adapters import get_identity_adapter

        adapter = get_identity_adapter(ident_spec, resolved.family)
        adapter_loras = adapter.attach(pipe)
    steps, guidance = cfg.num_inference_steps, cfg.guidance_scale
    if cfg.fast:  # the family's fast mode (LCM-LoRA + LCMScheduler), active in every pass (mixed with each person's LoRA)
        family = get_family(resolved.family)
        steps, guidance = cfg.fast_num_inference_steps, cfg.fast_guidance_scale
        pipe.scheduler = family.scheduler(pipe.scheduler.config, fast=True)
        family.load_fast_adapter(pipe, cfg.lcm_lora, allow_pickle=cfg.allow_pickle, adapter_name="lcm")
        adapter_loras = {**adapter_loras, "lcm": 1.0}
    control = control_pipeline(pipe, cfg, resolved.family)  # a missing ControlNet fails here, before any face
    memory_plan = place_models(pipe, control, cfg, device)
    inpaint = control or inpaint_pipeline(pipe)
    encoder = PromptEncoder(inpaint, cfg.prompt_weighting)
    weights = {"openpose": cfg.openpose_weight, "canny": cfg.canny_weight}
    size = native_size(pipe)
    spec = fusion_spec(cfg.fusion)
    in_generation = spec is not None and spec.in_generation  # DIIR: each face re-drawn while its identity is active
    fusion = None if spec is None or in_generation else get_fusion(cfg.fusion, backend=analyzer.name)
    null_conditioning = encoder("", "") if in_generation else None
    dcfg = DetailerConfig(mode="always", strength=cfg.strength, num_inference_steps=steps,
                          guidance_scale=guidance, padding=min(8.0, 1.0 / cfg.crop_ratio), mask_dilation=0.06,
                          mask_feather=0.04, working_size=size)
    stage = od.stage()
    save_config(cfg, stage / "template_config.json")
    out = image.copy()
    failures: list[ItemFailure] = []
    report = [{**d, "person": None} for d in describe_faces(faces)]
    sheet, captions = [image, None], ["template", "result"]
    edited: list[tuple[int, object, np.ndarray]] = []  # (face index, region, the person's identity vector or None)
    for person_index, k in pairs:
        person = cfg.people[person_index]
        entry = report[k]
        entry.update(person=person_index, lora_dir=str(person.lora_dir) if person.lora_dir else None)
        lora_name = f"person_{person_index}"
        try:
            weights_of = dict(adapter_loras)
            if person.lora_dir is not None:
                path = lora_io.resolve(person.lora_dir, allow_pickle=cfg.allow_pickle,
                                       what=f"person {person_index}'s face LoRA")
                lora_io.load_adapter(pipe, path, lora_name, f"person {person_index}'s face LoRA")
                weights_of[lora_name] = cfg.face_lora_weight
            if weights_of:
                pipe.set_adapters(list(weights_of), adapter_weights=list(weights_of.values()))
            trigger, attribute = subject_from_metadata(person.processed_dir, "<fcsks>")
            if person.lora_dir is None:  # no LoRA learned the trigger word
                trigger = ""
            prompt = join_prompt(trigger, attribute, cfg.prompt)
            extra: dict = {}
            if adapter is not None:  # this person's photos through the job's adapter
                from facechain.adapters.ip_adapter_faceid import identity_embedding

                emb = identity_embedding(person.identity.photos, analyzer)
                adapter.check_embedding(emb)
                adapter.prepare(emb)
                adapter.before_call(1, do_cfg=guidance > 1)
                embeds = adapter.embeds(emb, do_cfg=guidance > 1, device=device, dtype=pipe.unet.dtype)
                if embeds is not None:
                    extra["ip_adapter_image_embeds"] = embeds
                entry["identity"] = adapter.describe(emb)
            conditioning = encoder(prompt, cfg.negative_prompt if cfg.negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT)
            region = face_region(faces[k], image.shape, dcfg)
            ys, xs = slice(region.y0, region.y0 + region.side), slice(region.x0, region.x0 + region.side)
            before = out[ys, xs].copy()
            seed = cfg.seed + k
            controls = dict(extra)
            if control is not None:  # the template face's pose and the crop's edges around the face
                maps = {"openpose": face_keypoint_map(faces[k], region.x0, region.y0, region.side),
                        "canny": canny_map(before, region.alpha)}
                images = [maps[c] for c in cfg.controls]
                scales = [weights[c] for c in cfg.controls]
                controls.update(control_image=images if len(images) > 1 else images[0],
                                controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0])
                for c in cfg.controls:
                    save_image(stage / "faces" / f"face_{k}_{c}.png", maps[c])
                entry["controls"] = dict(zip(cfg.controls, scales))
            new = redraw_region(inpaint, before, region.alpha > 0, size, conditioning, dcfg, seed, controls)
            if cfg.colour == "lab":  # the new face takes the template face's colour statistics
                new = match_colour(new, before, region.alpha)
            notes = []
            reference = select_reference_face(person.processed_dir, analyzer) if person.processed_dir else None
            if in_generation:  # re-drawn from its DDIM inversion with this person's identity (still active)
                from facechain.generate.diir import Identity, openpose_net, diir_faces

                # the template face's geometry: the inpaint redrew the face in its place, under its pose control
                ident = None
                if adapter is not None:
                    ident = Identity(adapter, adapter.embeds(emb, do_cfg=True, device=device, dtype=pipe.unet.dtype))
                new, restored = diir_faces(
                    pipe, new, [faces[k].shifted(-region.x0, -region.y0)], conditioning, null_conditioning, cfg.diir,
                    identity=ident, controlnet=openpose_net(control.controlnet if control is not None else None,
                                                            cfg.controls))
                entry["fusion"] = cfg.fusion
                entry["diir"] = restored[0]
            elif fusion is not None and reference is not None:
                found = analyzer.detect(new, max_faces=1)
                if found:
                    try:
                        res = fusion.fuse(new, found[0], *reference.fusion_source(), 1.0)
                        new = res.image
                        notes += list(res.notes)
                        entry["fusion"] = res.method
                    except FacechainError as exc:
                        entry["fusion"] = f"skipped: {exc}"
                else:
                    entry["fusion"] = "skipped: no face found in the edited crop"
            after = compose(before, new, region.alpha)
            out[ys, xs] = after
            edited.append((k, region, emb.vector if adapter is not None else None))
            entry.update(crop=[region.x0, region.y0, region.side], seed=seed, prompt=prompt, colour=cfg.colour,
                         notes=notes)
            if reference is not None:  # how like the person the face is, before and after
                def like(img):
                    f = analyzer.detect(img, max_faces=1)
                    return round(float(similarity(f[0], reference.face)), 3) if f else None

                entry["identity_before"], entry["identity_after"] = like(before), like(after)
            save_image(stage / "faces" / f"face_{k}_before.png", before)
            save_image(stage / "faces" / f"face_{k}_after.png", after)
            save_image(stage / "faces" / f"face_{k}_mask.png", np.round(region.alpha * 255).astype(np.uint8))
            sheet += [before, after]
            captions += [f"face {k} before", f"face {k}: person {person_index}"]
            logger.info("template face %d: person %d (%s)", k, person_index, person.lora_dir)
        except FacechainError as exc:  # one person's failure is reported; the others' faces are kept
            logger.warning("template face %d (person %d) failed: %s", k, person_index, exc)
            entry["error"] = str(exc)
            failures.append(ItemFailure(f"person {person_index} -> face {k}", str(exc)))
        finally:
            if lora_name in getattr(pipe, "get_list_adapters", lambda: {})().get("unet", []):
                pipe.delete_adapters(lora_name)
    if len(failures) == len(pairs):
        raise InputError("no face could be edited:\n  " + "\n  ".join(f"{f.item}: {f.error}" for f in failures))
    harmonization = {"ran": False}
    if not cfg.harmonize:
        harmonization["reason"] = "harmonize is off"
    elif adapter is None or not adapter.masked_multi_identity:
        harmonization["reason"] = ("needs IP-Adapter-FaceID identities (its per-image attention masks); the people's "
                                   "identities are " + (adapter.name if adapter is not None else "face LoRAs"))
    elif len(edited) < 2:
        harmonization["reason"] = "fewer than 2 faces were edited"
    else:  # MGMICA: every identity at once, each masked to its own face
        from facechain.template.multi_id import harmonize

        if adapter_loras:
            pipe.set_adapters(list(adapter_loras), adapter_weights=list(adapter_loras.values()))
        plain = inpaint_pipeline(pipe)
        neg = cfg.negative_prompt if cfg.negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT
        masks = [region.full_alpha(image.shape) > 0 for _, region, _ in edited]
        out, info, ids, ring = harmonize(plain, out, masks, [float(faces[k].size) for k, _, _ in edited],
                                         [v for _, _, v in edited], PromptEncoder(plain, cfg.prompt_weighting)(cfg.prompt, neg),
                                         size=size,
                                         steps=steps, strength=cfg.harmonize_strength,
                                         guidance=guidance, seed=cfg.seed + 1000)
        for (k, _, _), m in zip(edited, ids):
            save_image(stage / "faces" / f"identity_mask_{k}.png", m.astype(np.uint8) * 255)
        save_image(stage / "faces" / "harmonize_ring.png", ring.astype(np.uint8) * 255)
        harmonization = {"ran": True, "faces": [k for k, _, _ in edited], **info}
    result = stage / "result.png"
    save_image(result, out)
    sheet[1] = out
    save_image(stage / "contact_sheet.png", contact_sheet(sheet, captions))
    if torch.cuda.is_available() and device.type == "cuda":
        torch.cuda.synchronize()
    write_json(stage / "manifest.json", {
        "template": str(cfg.template), "base_model": resolved.to_dict(), "faces": report,
        "assignment": [{"person": p, "face": k} for p, k in pairs], "face_backend": analyzer.name,
        "fusion": cfg.fusion if in_generation else fusion.name if fusion else "off",
        "failed": [f.to_dict() for f in failures],
        "harmonization": harmonization,
        "settings": {"strength": cfg.strength, "steps": steps, "guidance_scale": guidance, "fast": cfg.fast,
                     "scheduler": type(pipe.scheduler).__name__, "prompt_weighting": cfg.prompt_weighting,
                     "working_size": size, "crop_ratio": cfg.crop_ratio, "face_lora_weight": cfg.face_lora_weight,
                     "controls": {c: weights[c] for c in cfg.controls}, "memory": memory_plan.to_dict(),
                     "diir": to_dict(cfg.diir) if in_generation else None},
        "seconds": round(time.perf_counter() - t0, 2)})
    od.commit(stage)
    return TemplateResult(od.path, od.path / "result.png", report, failures)

