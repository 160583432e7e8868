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

from facechain.config import save_config
from facechain.errors import FacechainError, InputError
from facechain.generate.rank import contact_sheet
from facechain.io import save_image, write_json
from facechain.jobs import ItemFailure, exit_code_for
from facechain.template.config import TemplateConfig
from facechain.template.editor import FaceEdit, TemplateFaceEditor
from facechain.train.artifact import TrainedLora
from facechain.images import PHOTO_MAX_MEGAPIXELS, read_image
from facechain.outputs import OutputDir, check_writable_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TemplateResult:
    output_dir: Path
    result: Path
    faces: list[dict]  # per template face
    failures: list  # facechain.jobs.ItemFailure per person that failed

    @property
    def exit_code(self) -> int:
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
    check_writable_folder(Path(cfg.output_dir), "output_dir")
    from facechain.face import get_analyzer

    analyzer = analyzer or get_analyzer(cfg.face_backend)
    image, faces, _ = list_template_faces(cfg.template, analyzer)
    pairs = assign(cfg, faces)  # before any model loads
    with OutputDir.open(cfg.output_dir, "template", allow_other_files=cfg.allow_other_files, what="output_dir") as od:
        return _run(cfg, od, image, faces, pairs, analyzer)


def _run(cfg: TemplateConfig, od, image: np.ndarray, faces, pairs, analyzer) -> TemplateResult:
    t0 = time.perf_counter()
    # 1. load: the base model, the identity adapter, fast mode, the ControlNets (a missing one fails here), the fusion
    editor = TemplateFaceEditor.load(cfg, base_model_of(cfg), analyzer)
    stage = od.stage()
    save_config(cfg, stage / "template_config.json")
    out = image.copy()
    failures: list[ItemFailure] = []
    report = [{**d, "person": None} for d in describe_faces(faces)]
    sheet, captions = [image, None], ["template", "result"]
    edited: list[FaceEdit] = []  # the faces pasted into ``out``, in order
    # 2. per person and face: prepare (LoRA, prompt, identity) ▸ redraw (crop, controls, inpaint, colour) ▸ fuse ▸
    #    paste ▸ measure ▸ save; one person's failure is reported, the others' faces are kept
    for person_index, k in pairs:
        person = cfg.people[person_index]
        entry = report[k]
        entry.update(person=person_index, lora_dir=str(person.lora_dir) if person.lora_dir else None)
        edit = FaceEdit(k, faces[k], person_index, person, entry)
        try:
            editor.prepare(edit)
            editor.redraw(edit, out, stage)
            editor.fuse(edit)
            editor.paste(edit, out)
            edited.append(edit)
            editor.measure(edit)
            editor.save(edit, stage)
            sheet += [edit.before, edit.after]
            captions += [f"face {k} before", f"face {k}: person {person_index}"]
            logger.info("template face %d: person %d (%s)", k, person_index, person.lora_dir)
        except FacechainError as exc:
            logger.warning("template face %d (person %d) failed: %s", k, person_index, exc)
            entry["error"] = str(exc)
            failures.append(ItemFailure(f"person {person_index} -> face {k}", str(exc)))
        finally:
            editor.release(edit)
    if len(failures) == len(pairs):
        raise InputError("no face could be edited:\n  " + "\n  ".join(f"{f.item}: {f.error}" for f in failures))
    # 3. harmonise: every identity at once, each masked to its own face (when the adapter allows it)
    out, harmonization = editor.harmonize(out, edited, stage)
    # 4. write: the result, the contact sheet and the manifest
    result = stage / "result.png"
    save_image(result, out)
    sheet[1] = out
    save_image(stage / "contact_sheet.png", contact_sheet(sheet, captions))
    editor.synchronize()
    write_json(stage / "manifest.json", {
        "template": str(cfg.template), "base_model": editor.resolved.to_dict(), "faces": report,
        "assignment": [{"person": p, "face": k} for p, k in pairs], "face_backend": analyzer.name,
        "fusion": editor.fusion_name, "failed": [f.to_dict() for f in failures], "harmonization": harmonization,
        "settings": editor.settings(), "seconds": round(time.perf_counter() - t0, 2)})
    od.commit(stage)
    return TemplateResult(od.path, od.path / "result.png", report, failures)
