"""Fixed templates: put N people's faces into a template photo (a wedding shot, a team photo).

    faces, preview = list_template_faces("team.jpg", analyzer)          # numbered, left to right
    result = run_template(TemplateConfig(template="team.jpg", people=[PersonSpec(lora_dir=...), ...],
                                         output_dir="out"))

Per face (FaceChain's inpaint recipe, on our detailer's parts): a square crop around the face
(side = face size / crop_ratio), an inpaint pass at the model's native size with that person's face
LoRA active and their prompt (trigger word + attribute phrase), Lab colour correction of the new face
to the template's, face fusion with the person's best photo, and a paste back through a feathered mask.
Pixels outside every face's mask are the template's, bit for bit. See docs/template.md.
"""

from facechain.template.config import PersonSpec, TemplateConfig
from facechain.template.job import TemplateResult, list_template_faces, run_template

__all__ = ["PersonSpec", "TemplateConfig", "TemplateResult", "list_template_faces", "run_template"]
