"""TemplateConfig: one fixed-template job (``mode: template`` in a run_inference config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facechain.adapters import IdentityConfig
from facechain.config import from_dict, load_mapping, model_ref, resolve_config_paths, setting
from facechain.generate.diir import DIIRConfig
from facechain.errors import InputError
from facechain.face.fusion import fusion_spec
from facechain.prompts import WEIGHTING_HELP, check_weighting
from facechain.images import IMAGE_SUFFIXES


# template photos users drop in: `facechain template NAME` and the web app's Templates tab find them by name
TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"


def named_templates(folder: Path = TEMPLATES_DIR) -> list[str]:
    """The image files in ``templates/`` (names)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_template(ref) -> Path:
    """A template given as a path, or as the name of a photo in ``templates/``."""
    path = Path(ref)
    if not path.exists() and str(ref) in named_templates():
        return TEMPLATES_DIR / str(ref)
    return path


def load_template_config(path) -> "TemplateConfig":
    """A ``mode: template`` config file (run_inference's): its paths relative to the file's folder."""
    path = Path(path)
    data = {k: v for k, v in load_mapping(path).items() if k != "mode"}
    base = path.resolve().parent
    if isinstance(data.get("template"), str) and not (base / data["template"]).exists():
        data["template"] = str(resolve_template(data["template"]))  # a photo in templates/, by name
    return from_dict(TemplateConfig, resolve_config_paths(TemplateConfig, data, base), where=f"config {path}")


@dataclass(frozen=True)
class PersonSpec:
    """One person: their face LoRA (from `facechain train`) and processed photos (from `facechain preprocess`)."""

    lora_dir: Path | None = setting("Face LoRA folder of the person (pytorch_lora_weights.safetensors); empty when the "
                                    "identity comes from an adapter alone.", default=None, path=True)
    processed_dir: Path | None = setting("The person's processed photos: the prompt's attribute phrase and the face for "
                                         "fusion; empty = 'a person' and no fusion.", default=None, path=True)
    face: int | None = setting("Index of the template face (from --list-faces) this person goes to; empty = left to right.",
                               default=None)
    identity: IdentityConfig | None = setting("An identity adapter for this person ({adapter, photos, scale, weights}), "
                                              "with or instead of the face LoRA; every person of a job uses the same "
                                              "adapter, each with their own photos.", default=None)

    def __post_init__(self):
        if self.lora_dir is None and (self.identity is None or not self.identity.enabled):
            raise InputError("a person needs a face LoRA (lora_dir) or an identity adapter (identity), or both.")


@dataclass(frozen=True)
class TemplateConfig(model_ref(
        base_model=setting("Base model; empty = the one recorded in the first person's train_config.json.", default=""),
        allow_pickle=setting("Allow pickle LoRA/checkpoint files (tensors only). Only for files you trust.", default=False))):
    template: Path = setting("The template photo.", path=True)
    output_dir: Path = setting("Folder for result.png, faces/, manifest.json and contact_sheet.png.", path=True)
    people: list[PersonSpec] = setting("One entry per person to put in, mapped to the template's faces left to right "
                                       "or by each entry's face index.", default_factory=list)
    prompt: str = setting("Extra words for every face's prompt (AUTOMATIC1111 weights are read).",
                          default="portrait, best quality, realistic")
    negative_prompt: str | None = setting("Negative prompt; empty = generation's default (FaceChain's).", default=None)
    prompt_weighting: Literal["a1111", "compel"] = setting(WEIGHTING_HELP, default="a1111")
    num_inference_steps: int = setting("Scheduler steps of the inpaint pass (FaceChain: 40); strength x steps of them run.",
                                       default=40)
    strength: float = setting("Inpaint strength (FaceChain's template default: 0.65).", default=0.65)
    guidance_scale: float = setting("Classifier-free guidance (FaceChain: 7).", default=7.0)
    fast: bool = setting("Fast mode: LCM-LoRA + LCMScheduler, fast_num_inference_steps steps at fast_guidance_scale.",
                         default=False)
    fast_num_inference_steps: int = setting("Steps of the full schedule in fast mode; strength x steps of them run.",
                                            default=8)
    fast_guidance_scale: float = setting("Guidance in fast mode (LCM-LoRA model card: 1-2).", default=1.5)
    lcm_lora: str | None = setting("LCM-LoRA: hub id or local file/folder; empty = latent-consistency/lcm-lora-sdv1-5 or "
                                   "-sdxl by base family.", default=None, maybe_path=True)
    face_lora_weight: float = setting("Weight of each person's face LoRA (FaceChain: 0.95).", default=0.95)
    crop_ratio: float = setting("Face size / crop side (FaceChain: 0.45: the crop is 2.2x the face).", default=0.45)
    min_face_size: int = setting("Template faces smaller than this (px, Face.size) are refused: too small to edit.",
                                 default=48)
    controls: list[str] = setting("ControlNets of the inpaint pass (FaceChain's): openpose (the template face's landmarks "
                                  "drawn as OpenPose face keypoints, so the new face keeps its pose) and canny (the crop's "
                                  "edges with the face zeroed, so the hair, neck and clothes line up); [] = none.",
                                  default_factory=lambda: ["openpose", "canny"])
    openpose_weight: float = setting("Conditioning scale of the openpose control (FaceChain: 1.0).", default=1.0)
    canny_weight: float = setting("Conditioning scale of the canny control (FaceChain: 0.2).", default=0.2)
    controlnet_openpose: str | None = setting("OpenPose ControlNet: hub id or folder; empty = the family default.",
                                              default=None, maybe_path=True)
    controlnet_canny: str | None = setting("Canny ControlNet: hub id or folder; empty = the family default.", default=None, maybe_path=True)
    harmonize: bool = setting("With IP-Adapter-FaceID identities and 2+ people: a last inpaint pass over the rings around "
                              "all faces with every identity at once, each masked to its own face (MagicID's mask-guided "
                              "multi-ID attention through diffusers' ip_adapter_masks).", default=True)
    harmonize_strength: float = setting("Strength of that pass (EasyPhoto's last pass: 0.3).", default=0.3)
    colour: str = setting("Colour correction of each new face to the template's: lab (mean/std transfer) or off.",
                          default="lab")
    fusion: str = setting("Face fusion after the inpaint: auto, landmark, swapper (the person's best photo), diir "
                          "(MagicID's DDIM-inversion restoration with the person's identity; the diir block), off.",
                          default="auto")
    diir: DIIRConfig = setting(
        "DIIR settings when fusion is diir: {strength, num_inference_steps, guidance_scale, landmark_weight, "
        "...}.", default_factory=DIIRConfig)
    face_backend: str = setting("Face analysis backend: auto, insightface or dlib.", default="auto")
    seed: int = setting("Seed of face 0; face i uses seed + i.", default=42)
    device: str = setting("auto, cpu, cuda, cuda:N or mps.", default="auto")
    dtype: str = setting("auto, float32, float16 or bfloat16.", default="auto")
    offload: Literal["auto", "none", "model", "sequential"] = setting(
        "Where the models wait between uses: none (all on the GPU), model (diffusers' model CPU offload), sequential "
        "(layer by layer; only when asked), auto (none when the memory budget of one face at the working size fits "
        "the free GPU memory, else model; none on the CPU).", default="auto")
    allow_other_files: bool = setting("Write into an output folder that holds files facechain did not write.", default=False)

    def __post_init__(self):
        super().__post_init__()
        check_weighting(self.prompt_weighting)
        if not self.people:
            raise InputError("people is empty: give one entry per person ({lora_dir, processed_dir}), or pass "
                             "--person LORA_DIR[:PROCESSED_DIR] once per person.")
        faces = [p.face for p in self.people if p.face is not None]
        if faces and len(faces) != len(self.people):
            raise InputError("give a face index to every person or to none (then they go left to right).")
        if len(set(faces)) != len(faces):
            raise InputError(f"two people are given the same template face ({faces}). Give each person its own face.")
        adapters = {(p.identity.adapter, p.identity.weights, p.identity.image_encoder,
                     p.identity.image_encoder_subfolder)
                    for p in self.people if p.identity is not None and p.identity.enabled}
        if len(adapters) > 1:
            raise InputError(f"the people use different identity adapters {sorted(adapters)}; one job loads one adapter. "
                             "Give everyone the same adapter and weights (each with their own photos), or run the "
                             "template twice.")
        if adapters and any(p.identity is None or not p.identity.enabled for p in self.people):
            raise InputError("some people have an identity adapter and some do not; the adapter would act on everyone. "
                             "Give every person an identity block (their own photos), or none.")
        if not 0.0 < self.strength <= 1.0:
            raise InputError(f"strength must be in (0, 1], got {self.strength}.")
        steps = self.fast_num_inference_steps if self.fast else self.num_inference_steps
        if int(self.strength * steps) < 1:
            raise InputError(f"strength x {'fast_' if self.fast else ''}num_inference_steps runs no step; raise "
                             f"{'fast_' if self.fast else ''}num_inference_steps.")
        spec = fusion_spec(self.fusion)  # an unknown name lists the choices
        if spec is not None:
            spec.check_fast(self.fast)
        if not 0.1 <= self.crop_ratio <= 0.8:
            raise InputError(f"crop_ratio (face size / crop side) must be in [0.1, 0.8], got {self.crop_ratio}.")
        unknown = sorted(set(self.controls) - {"openpose", "canny"})
        if unknown or len(set(self.controls)) != len(self.controls):
            raise InputError(f"controls must be a list of openpose and canny (each once), got {self.controls}.")
        if self.colour not in ("lab", "off"):
            raise InputError(f"colour must be lab or off, got '{self.colour}'.")
