"""`facechain template TEMPLATE --person LORA_DIR[:PROCESSED_DIR][@FACE] ... --output-dir DIR [settings]`.

``--list-faces`` prints the template's faces (index, box, size; left to right) and writes
``DIR/faces_preview.png`` (or ``TEMPLATE_faces.png`` beside nothing: with no --output-dir, only prints).
Every other TemplateConfig setting is a flag; ``run_inference.py --config C`` with ``mode: template``
runs the same job from a config file.
"""

from __future__ import annotations

import argparse
import re


def add_arguments(p: argparse.ArgumentParser) -> None:
    from facechain.config import add_config_arguments
    from facechain.template.config import TemplateConfig

    p.add_argument("template", help="the template photo (a path, or the name of a photo in templates/)")
    p.add_argument("--person", dest="_person", action="append", default=[], metavar="LORA_DIR[:PROCESSED_DIR][@FACE]",
                   help="one per person, left to right (or @FACE: the template face's index from --list-faces)")
    p.add_argument("--list-faces", dest="_list_faces", action="store_true",
                   help="print the template's faces with their indexes (and write an annotated preview) and exit")
    add_config_arguments(p, TemplateConfig, title="settings", skip=("template", "people"))


def parse_person(text: str) -> dict:
    m = re.fullmatch(r"(?P<lora>[^:@]+)(?::(?P<processed>[^@]+))?(?:@(?P<face>\d+))?", text)
    if not m:
        from facechain.errors import InputError

        raise InputError(f"--person {text!r}: expected LORA_DIR[:PROCESSED_DIR][@FACE], e.g. runs/alice/lora:runs/alice/processed@0")
    out = {"lora_dir": m["lora"]}
    if m["processed"]:
        out["processed_dir"] = m["processed"]
    if m["face"]:
        out["face"] = int(m["face"])
    return out


def run(args) -> int:
    from pathlib import Path

    from facechain.config import from_dict, settings_from_args
    from facechain.template import TemplateConfig, list_template_faces, run_template
    from facechain.template.config import resolve_template

    if args._list_faces:
        from facechain.face import get_analyzer
        from facechain.io import save_image
        from facechain.template.job import describe_faces

        settings = settings_from_args(TemplateConfig, args)
        _, faces, preview = list_template_faces(resolve_template(args.template), get_analyzer(settings.get("face_backend", "auto")))
        for d in describe_faces(faces):
            print(f"face {d['index']}: box {d['bbox']}, size {d['size']:.0f} px")
        if settings.get("output_dir"):  # written through the folder's record, like every output
            from facechain.outputs import OutputDir

            with OutputDir.open(settings["output_dir"], "template", what="output_dir") as od:
                stage = od.stage()
                save_image(stage / "faces_preview.png", preview)
                od.commit(stage, replace=False)
            print(f"annotated preview: {Path(settings['output_dir']) / 'faces_preview.png'}")
        return 0
    settings = settings_from_args(TemplateConfig, args)
    settings.update(template=resolve_template(args.template), people=[parse_person(p) for p in args._person])
    result = run_template(from_dict(TemplateConfig, settings))
    print(f"result: {result.result} (faces, manifest.json and contact_sheet.png in {result.output_dir})")
    for f in result.failures:
        print(f"failed: {f.item}: {f.error}")
    return result.exit_code
