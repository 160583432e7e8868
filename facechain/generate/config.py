"""GenerateConfig: everything one portrait job needs, one YAML file per user.

``load_generate_config(path)`` reads YAML/JSON, resolves relative paths against the config file's
folder (so ``configs/alice.yaml`` can say ``lora_dir: ../runs/alice/lora``), applies overrides
(CLI flags) and validates. Defaults reproduce FaceChain's inference settings where they exist;
each cites its source in the field help.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from facechain.adapters import IdentityConfig
from facechain.config import (from_dict, load_mapping, merge_settings, model_ref, resolve_config_paths, setting,
                              upgrade_names)
from facechain.generate.diir import DIIRConfig
from facechain.errors import InputError, excerpt
from facechain.face.fusion import fusion_spec
from facechain.lora import LORA_FILE
from facechain.models import DEVICE_HELP, DTYPE_HELP, HUB_REF_HELP, VARIANT_HELP
from facechain.prompts import WEIGHTING_HELP, check_weighting
from facechain.face.registry import available_backends

# FaceChain's negative prompt, word for word (its app.py / run_inference.py ``neg_prompt``, typos such as
# "lowers" included), AUTOMATIC1111 weights and all: facechain.prompts reads the weights and encodes the
# whole text (well past CLIP's 77 tokens, where diffusers alone would cut it off).
DEFAULT_NEGATIVE_PROMPT = (
    "(nsfw:2), paintings, sketches, (worst quality:2), (low quality:2), "
    "lowers, normal quality, ((monochrome)), ((grayscale)), logo, word, character, bad hand, tattoo, "
    "(username, watermark, signature, time signature, timestamp, artist name, copyright name, copyright),"
    "low res, ((monochrome)), ((grayscale)), skin spots, acnes, skin blemishes, age spot, glans, extra fingers, "
    "fewer fingers, strange fingers, bad hand, mole, ((extra legs)), ((extra hands))"
)

# FaceChain's LoRA for prompt-only styles (its inference merges it at the style's weight, 0.25 by default):
# ModelScope repo, revision, file. Name it with default_style_lora: facechain.
FACECHAIN_STYLE_LORA = ("Cherrytest/zjz_mj_jiyi_small_addtxt_fromleo", "v1.0.0",
                        "zjz_mj_jiyi_small_addtxt_fromleo.safetensors")
FACECHAIN_STYLE_LORA_FAMILY = "sd15"  # the model family it was made for


# torch generators take 64-bit seeds.
MAX_SEED = 2**64 - 1
# Candidates of one style are held in memory together until ranking; past this a job is refused.
MAX_CANDIDATES = 256


@dataclass(frozen=True)
class GenerateConfig(model_ref(
        "base_model", "revision", "sub_path", "single_file_config", "variant", "allow_pickle",
        variant=setting(f"Base model and ControlNet {VARIANT_HELP}.", default="auto"),
        allow_pickle=setting("Allow pickle LoRA/checkpoint files (.bin/.ckpt). Only for files you trust.", default=False))):
    """One portrait job: which model, whose face, which styles, how many images, where to."""

    RENAMED: ClassVar[dict[str, str]] = {"steps": "num_inference_steps", "fast_steps": "fast_num_inference_steps",
                                         "rank": "rank_candidates"}

    # --- what to generate from
    output_dir: Path = setting("Folder for the kept PNGs, candidates/, manifest.json and contact_sheet.png.", path=True)
    lora_dir: Path | None = setting("Face LoRA folder from `facechain train` (pytorch_lora_weights.safetensors). "
                                    "Empty: no face LoRA (likeness then comes from fusion only).", default=None, path=True)
    lora_file: str = setting("File name of the face LoRA inside lora_dir.", default=LORA_FILE)
    processed_dir: Path | None = setting("Processed photos folder from `facechain preprocess`: gives the prompt's "
                                         "attribute phrase (metadata.jsonl) and the template face for fusion and ranking.",
                                         default=None, path=True)
    identity: IdentityConfig = setting("Identity adapter (no training): {adapter: ip-adapter-faceid, photos: DIR, scale: 0.6}. With lora_dir: the "
        "adapter's identity plus the face LoRA; without: the adapter alone. Flags: --identity-adapter, ...", default_factory=IdentityConfig)
    trigger_word: str = setting("Identity token of the face LoRA; used when metadata.jsonl does not start with it.",
                                default="<fcsks>")
    styles: list[str] = setting("Style names (files in styles/ or style_dirs). Each style gets its own candidates.",
                                default_factory=lambda: ["Business suit"])
    style_dirs: list[Path] = setting("Extra folders of style JSON files, searched together with the shipped styles/.",
                                     default_factory=list, path=True)
    default_style_lora: str | None = setting(
        "LoRA merged into prompt-only styles (styles with no LoRA of their own), as FaceChain does: 'facechain' = "
        f"FaceChain's {FACECHAIN_STYLE_LORA[0]} (ModelScope, SD1.5), or a LoRA file, folder or hub id; empty = none.",
        default=None, maybe_path=True, keywords=("facechain",))
    default_style_lora_weight: float = setting(
        "Weight of default_style_lora when the style's own multiplier_style is 0 (FaceChain: 0.25).", default=0.25)
    prompt: str = setting("Extra words appended to every prompt (AUTOMATIC1111 weights such as (word:1.2) are read).",
                          default="")
    negative_prompt: str = setting("Negative prompt (FaceChain's, weights included; any length: nothing is cut at "
                                   "CLIP's 77 tokens).", default=DEFAULT_NEGATIVE_PROMPT)
    prompt_weighting: Literal["a1111", "compel"] = setting(WEIGHTING_HELP, default="a1111")
    # --- how many
    num_images: int = setting("Images kept per style after ranking (FaceChain's UI allows up to 6).", default=3)
    num_candidates: int = setting("Candidates generated per style before ranking (FaceChain: 10).", default=10)
    batch_size: int | Literal["auto"] = setting(
        "Candidates per pipeline call. auto: the largest batch up to 5 (FaceChain generates 2 x 5) whose memory "
        "budget (facechain.memory) fits the GPU's free memory; 5 on the CPU.", default="auto")
    seed: int = setting("Seed of candidate 0; candidate i uses seed + i, so every image is reproducible alone.", default=42)
    # --- sampling
    num_inference_steps: int = setting("Sampling steps with DPM-Solver++ (FaceChain: 40).", default=40)
    guidance_scale: float = setting("Classifier-free guidance (FaceChain: 7).", default=7.0)
    height: int | None = setting("Image height; empty = the model's native size (512 SD1.5, 1024 SDXL).", default=None)
    width: int | None = setting("Image width; empty = the model's native size.", default=None)
    fast: bool = setting("Fast mode: LCM-LoRA + LCMScheduler in fast_steps steps.", default=False)
    fast_num_inference_steps: int = setting("Steps in fast mode (LCM-LoRA paper/model card: 2-8; FaceChain's LCM option: 8).", default=6)
    fast_guidance_scale: float = setting("Guidance in fast mode (LCM-LoRA model card: 1-2).", default=1.5)
    lcm_lora: str | None = setting("LCM-LoRA: hub id or local file/folder; empty = latent-consistency/lcm-lora-sdv1-5 "
                                   "or -sdxl by base family.", default=None, maybe_path=True)
    fuse_loras: bool = setting("Fuse face+style(+LCM) LoRAs into the weights for speed (unfused after each style).",
                               default=True)
    # --- pose / depth
    pose: str | None = setting("Pose: a pose name from poses/ (e.g. upper_body_front), an OpenPose skeleton map, or a "
                               "photo (converted with controlnet_aux when its annotator weights are available).",
                               default=None, maybe_path=True)
    pose_control: Literal["auto", "controlnet", "repcontrolnet"] = setting(
        "How the pose steers generation: controlnet (an OpenPose ControlNet beside the UNet), repcontrolnet (base_model "
        "is a model merged with `facechain merge-repcontrolnet`: its condition encoder runs once per job and the UNet "
        "costs what the base costs), auto (repcontrolnet when base_model is such a merged openpose model, else "
        "controlnet).", default="auto")
    depth: bool = setting("Add a depth ControlNet together with pose (FaceChain weights: pose 1.0, depth 0.5).",
                          default=False)
    depth_image: Path | None = setting("A ready depth map to use instead of estimating one from the pose photo.",
                                       default=None, path=True)
    pose_weight: float = setting("ControlNet conditioning scale of the pose (FaceChain: 1.0).", default=1.0)
    depth_weight: float = setting("ControlNet conditioning scale of depth (FaceChain: 0.5).", default=0.5)
    controlnet_openpose: str | None = setting(f"OpenPose ControlNet: a local folder or file, or {HUB_REF_HELP}; empty = "
                                              "the family default.", default=None, maybe_path=True)
    controlnet_depth: str | None = setting(f"Depth ControlNet: a local folder or file, or {HUB_REF_HELP}; empty = the family "
                                           "default.", default=None, maybe_path=True)
    depth_estimator: str = setting("Depth estimation model (transformers) for a pose photo.", default="Intel/dpt-large", maybe_path=True)
    pose_annotator: str = setting("controlnet_aux OpenPose annotator weights (hub id or folder) for a pose photo.",
                                  default="lllyasviel/Annotators", maybe_path=True)
    # --- post-processing
    fusion: Literal["auto", "swapper", "landmark", "diir", "off"] = setting(
        "Face fusion: swapper (insightface inswapper_128.onnx), landmark (offline warp + Poisson blend), "
        "diir (MagicID's DDIM-inversion restoration: each face inverted and regenerated with the face LoRA / identity "
        "adapter and landmark control; settings in the diir block), "
        "auto (swapper when its model file is present, else landmark), off.", default="auto")
    diir: DIIRConfig = setting("DIIR settings when fusion is diir: {strength: 0.6, num_inference_steps: 30, guidance_scale: 5, "
        "landmark_weight: 0.6, ...}. Flags: --diir-strength, ...", default_factory=DIIRConfig)
    fusion_strength: float = setting("Fusion strength in [0, 1]: 0 keeps the generated face, 1 fully fuses.", default=1.0)
    swapper_model: Path | None = setting("Path of inswapper_128.onnx; empty = ~/.insightface/models/inswapper_128.onnx.",
                                         default=None, path=True)
    restore_model: Path | None = setting(
        "Optional face restoration after fusion: a GFPGAN / RestoreFormer (or other spandrel) weights file; "
        ".pth files need allow_pickle (read weights-only). Empty = no restoration. See docs/restore.md.",
        default=None, path=True)
    restore_strength: float = setting("Blend of the restored face in [0, 1] (0.5: GFPGAN users' usual weight).",
                                      default=0.5)
    detailer: Literal["auto", "always", "off"] = setting(
        "Face detailer: re-draw faces with a face-only inpaint pass while the face LoRA is active. auto: only "
        "faces smaller than 0.23 of the short side, the ones min_face_frac would drop (full-body poses); always: "
        "every face; off. A face the detailer re-drew is not dropped by min_face_frac. The dlib backend finds no "
        "face under about 80 px.",
        default="auto")
    detailer_strength: float = setting("Inpaint strength of the face detailer in (0, 1] (ADetailer's default: 0.4).",
                                       default=0.4)
    face_backend: str = setting("Face analysis backend: auto, insightface or dlib.", default="auto")
    rank_candidates: bool = setting("Rank candidates by likeness to the template face and keep the top num_images. Off: keep the "
                    "first num_images (needs no face in the images).", default=True)
    min_face_frac: float = setting("Smallest usable face size (Face.size: FaceChain's max side of the SCRFD box) as a "
                                   "fraction of the image's short side (FaceChain keeps faces of 120-300 px at 512 px: 0.23).",
                                   default=0.23)
    max_face_frac: float = setting("Largest usable face side as a fraction of the short side (FaceChain: 300/512).",
                                   default=0.59)
    upscale: Literal["off", "lanczos"] = setting("Optional upscaling of kept images: off, or plain Lanczos resampling "
                                                 "(no new detail).", default="off")
    upscale_factor: int = setting("Upscaling factor when upscale is on.", default=2)
    contact_sheet: bool = setting("Write contact_sheet.png with every candidate and its score.", default=True)
    # --- runtime
    device: str = setting(DEVICE_HELP, default="auto")
    offload: Literal["auto", "none", "model", "sequential"] = setting(
        "Where the models wait between uses: none (all on the GPU), model (diffusers' model CPU offload: one model "
        "on the GPU at a time, the UNet with its ControlNets), sequential (layer by layer: smallest, slowest; only when "
        "asked, not verified on a GPU), auto (none when the memory budget fits the free GPU memory, else model; none "
        "on the CPU).",
        default="auto")
    vae_slicing: bool = setting("Decode the batch one image at a time (the SDXL VAE in float32 needs ~3.8 GiB per "
                                "1024 px image); the images are the same.", default=True)
    vae_tiling: Literal["auto", "on", "off"] = setting(
        "Decode in 512 px tiles (blended seams, less memory). auto: on only when one image's decode would not "
        "fit the free GPU memory otherwise.", default="auto")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = setting(DTYPE_HELP, default="auto")
    allow_other_files: bool = setting("Write into an output folder that holds files facechain did not write (they are "
                                      "never touched).", default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        def positive(name: str) -> None:
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")

        for name in ("num_images", "num_candidates", "num_inference_steps", "fast_num_inference_steps", "upscale_factor"):
            positive(name)
        if self.batch_size != "auto":
            if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool):
                raise InputError(f"batch_size must be a whole number or auto, got {excerpt(self.batch_size)}.")
            positive("batch_size")
        if not self.base_model:
            raise InputError("base_model is empty. Name a hub id, a local diffusers folder or a .safetensors file.")
        if self.num_images > self.num_candidates:
            raise InputError(
                f"num_images ({self.num_images}) is more than num_candidates ({self.num_candidates}); ranking keeps "
                "the best num_images of num_candidates. Raise num_candidates or lower num_images."
            )
        if not self.styles:
            raise InputError("styles is empty. Name at least one style (see `facechain generate --list-styles`).")
        for dim in ("height", "width"):
            v = getattr(self, dim)
            if v is not None and (v < 8 or v % 8):
                raise InputError(f"{dim} must be a positive multiple of 8, got {v}.")
        spec = fusion_spec(self.fusion)
        if spec is not None:
            spec.check_fast(self.fast)
        if not 0.0 <= self.fusion_strength <= 1.0:
            raise InputError(f"fusion_strength must be in [0, 1], got {self.fusion_strength}.")
        if not (math.isfinite(self.restore_strength) and 0.0 <= self.restore_strength <= 1.0):
            raise InputError(f"restore_strength must be in [0, 1], got {self.restore_strength}.")
        check_weighting(self.prompt_weighting)
        if not (math.isfinite(self.detailer_strength) and 0.0 < self.detailer_strength <= 1.0):
            raise InputError(f"detailer_strength must be in (0, 1], got {self.detailer_strength}.")
        if not 0.0 < self.min_face_frac < self.max_face_frac <= 1.0:
            raise InputError(
                f"need 0 < min_face_frac < max_face_frac <= 1, got {self.min_face_frac} and {self.max_face_frac}."
            )
        if not (math.isfinite(self.default_style_lora_weight) and 0.0 <= self.default_style_lora_weight <= 2.0):
            raise InputError(f"default_style_lora_weight must be in [0, 2], got {self.default_style_lora_weight}.")
        for name in ("guidance_scale", "fast_guidance_scale", "fusion_strength", "pose_weight", "depth_weight",
                     "min_face_frac", "max_face_frac"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if self.guidance_scale < 0 or self.fast_guidance_scale < 0:
            raise InputError("guidance_scale and fast_guidance_scale must be >= 0.")
        if not 0 <= self.seed <= MAX_SEED - (self.num_candidates - 1):
            raise InputError(
                f"seed must be between 0 and {MAX_SEED - (self.num_candidates - 1)} (candidate i uses seed + i, and seeds "
                f"are 64-bit), got {self.seed}. Pick a smaller seed."
            )
        if self.num_candidates > MAX_CANDIDATES:
            raise InputError(
                f"num_candidates {self.num_candidates} is over the limit of {MAX_CANDIDATES} per style: every candidate of "
                "a style is held in memory until it is ranked (about 3 MB each at 512 px, 12 MB at 1024 px). Lower it, "
                "or run several jobs with different seeds."
            )
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise InputError(f"device must be auto, cpu, cuda, cuda:N or mps, got '{self.device}'.")

        backends = ["auto", *available_backends()]
        if self.face_backend not in backends:
            raise InputError(f"face_backend must be one of {backends}, got '{self.face_backend}'.")
        if self.depth_image is not None and not self.depth:
            raise InputError("depth_image is set but depth is off, so it would be ignored. Set depth: true (with a "
                             "pose), or remove depth_image.")
        if self.pose_control == "repcontrolnet" and self.depth:
            raise InputError("pose_control repcontrolnet steers the pose only; depth needs a ControlNet. Turn depth off, "
                             "or set pose_control: controlnet.")
        if self.depth and self.pose is None:
            raise InputError("depth is on but pose is empty: the depth ControlNet is used together with a pose.")


def load_generate_config(path: str | os.PathLike | None = None, overrides: dict | None = None,
                         base_dir: str | os.PathLike | None = None) -> GenerateConfig:
    """Config from a YAML/JSON file (paths relative to its folder) updated with ``overrides``
    (paths relative to ``base_dir``, default the working directory)."""
    data: dict = {}
    where = f"config {path}" if path is not None else "generate settings"
    if path is not None:
        path = Path(path)
        data = resolve_config_paths(GenerateConfig, upgrade_names(GenerateConfig, load_mapping(path), where),
                                    path.resolve().parent)
    if overrides:
        data = merge_settings(data, resolve_config_paths(GenerateConfig, upgrade_names(GenerateConfig, overrides, "settings"),
                                                         Path(base_dir or os.getcwd())))
    return from_dict(GenerateConfig, data, where=where)
