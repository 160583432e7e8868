"""TrainConfig: every setting of a face-LoRA training run, validated on creation and saved
as ``train_config.json`` beside the LoRA it produced.

Defaults reproduce FaceChain's ``train_lora.sh`` (see the FaceChain reference notes): rank 4,
learning rate 1.5e-4 with a cosine schedule and no warm-up, batch 1, 512 px, 200 steps per kept
photo with no cap, seed 42, text encoder frozen, random horizontal flip and FaceCrop augmentation,
checkpoints every 100 steps (FaceChain's "validate & ensemble" interval, Aug-Sep 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from facechain.config import model_ref, setting
from facechain.errors import InputError, excerpt

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
ValidationBackend = Literal["auto", "dlib", "insightface", "none"]
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")

# Settings that may change between a killed run and its resume without changing the result.
RESUME_MUTABLE = ("resume", "checkpoints_total_limit", "allow_pickle", "single_file_config", "allow_other_files",
                  "num_threads", "compile_unet")
# FaceChain's generic face LoRA (ModelScope), the start of its default training: `--init_lora facechain`.
# It is made for FaceChain's base, ly261666/cv_portrait_model v2.0 film/film (SD1.5). Repo, revision and file as
# every FaceChain version loads it (facechain/train_text_to_image_lora.py: snapshot_download('damo/face_frombase_c4',
# revision='v1.0.0'), then face_frombase_c4.bin): an attention-processor-format tensor pickle.
FACECHAIN_INIT_LORA = "facechain"
FACECHAIN_FACE_LORA = ("damo/face_frombase_c4", "v1.0.0", "face_frombase_c4.bin")
# Paths compared by what they point to (the same folder, the same model's files), not by spelling.
RESUME_SAME_TARGET = ("base_model", "train_data_dir", "output_dir")
# accelerate's set_seed seeds numpy too, which takes seeds below 2**32; each process adds its index.
MAX_SEED = 2**32 - 1 - 1024


@dataclass(frozen=True)
class TrainConfig(model_ref(
        revision="", sub_path="", single_file_config="",
        allow_pickle=setting("allow pickle files (.ckpt/.bin/.pt) for the base model and the init LoRA; only for trusted files",
                             default=False))):
    """Settings of one face-LoRA training run (see ``docs/train.md``)."""

    RENAMED: ClassVar[dict[str, str]] = {"validation": "face_backend", "validation_inference_steps": "validation_num_inference_steps"}

    train_data_dir: str = setting("processed folder (NNN.png + metadata.jsonl) written by `facechain preprocess`", path=True)
    output_dir: str = setting("folder for the LoRA, checkpoints, train_config.json and train_log.jsonl", path=True)
    resolution: int = setting("training resolution in pixels (square; divisible by 8). FaceChain: 512", default=512)
    rank: int = setting("LoRA rank. FaceChain: 4", default=4)
    lora_alpha: float | None = setting("LoRA alpha; the update is scaled by alpha/rank. Default: equal to rank (scale 1, as FaceChain)", default=None)
    target_modules: list[str] = setting(
        "UNet attention projections that get a LoRA. FaceChain: to_q, to_k, to_v, to_out.0", default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_text_encoder: bool = setting("also train a LoRA on the text encoder(s) (q/k/v/out projections). FaceChain: off", default=False)
    init_lora: str = setting("start from this LoRA (diffusers or kohya keys, same rank): a file, a folder, or a hub/ModelScope id with "
        "--init_lora_weight_name; 'facechain' = FaceChain's generic face LoRA (damo/face_frombase_c4, for its base "
        "ly261666/cv_portrait_model v2.0 film/film), as FaceChain's default training starts", default="", maybe_path=True, keywords=(FACECHAIN_INIT_LORA,))
    init_lora_weight_name: str = setting("file name of the init LoRA inside its folder or hub repo ('' = the folder's only .safetensors file)", default="")
    learning_rate: float = setting("AdamW learning rate. FaceChain: 1.5e-4", default=1.5e-4)
    lr_scheduler: str = setting("learning-rate schedule. FaceChain: cosine", default="cosine", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = setting("warm-up steps. FaceChain: 0", default=0)
    adam_weight_decay: float = setting("AdamW weight decay (diffusers training-script default)", default=1e-2)
    max_grad_norm: float = setting("gradient clipping norm (diffusers training-script default)", default=1.0)
    train_batch_size: int = setting("images per step. FaceChain: 1", default=1)
    steps_per_image: int = setting("training steps per kept photo (FaceChain's 200 epochs at batch 1)", default=200)
    max_train_steps: int | None = setting("cap on the number of steps: steps = min(steps_per_image x photos / batch, max_train_steps); none by default "
        "(FaceChain: no cap, its min(..., 800) is never reached)", default=None)
    seed: int = setting("seed of augmentation, noise and timesteps. FaceChain: 42", default=42)
    mixed_precision: MixedPrecision = setting("'auto' (bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 elsewhere), 'no' (fp32, FaceChain), 'fp16' "
        "(GPU only) or 'bf16'; frozen UNet/text weights in that dtype, LoRA weights and the VAE in fp32", default="auto")
    num_threads: int = setting("CPU threads of the trainer; 0 = this process's share of the usable cores (CPU affinity and cgroup quota, "
        "divided among the processes on this machine), or OMP_NUM_THREADS when run without `accelerate launch` (which sets it to 1)", default=0)
    compile_unet: bool = setting("torch.compile the UNet's training forward (slow first steps; see benchmarks/RESULTS.md for when it pays)", default=False)
    gradient_checkpointing: bool = setting("recompute UNet activations in the backward pass (less memory, ~30% slower)", default=False)
    random_flip: bool = setting("horizontal flip augmentation. FaceChain: on", default=True)
    face_crop: bool = setting("FaceChain's FaceCrop augmentation (face-size ratio U[0.35,0.45], face centre y U[0.35,0.5])", default=True)
    aug_variants: int = setting("augmented variants per photo, VAE-encoded once; steps sample from this pool. FaceChain draws a fresh crop at each "
        "of its 200 steps per photo; 16 (our choice, not FaceChain's) spans the crop range at 1/12 of the VAE passes", default=16)
    checkpointing_steps: int = setting("write a resumable checkpoint (and score it) every N steps; the last step is always saved", default=100)
    checkpoints_total_limit: int | None = setting("keep at most this many checkpoints (lowest-scoring/oldest removed); None keeps all", default=None)
    resume: bool = setting("continue the run in output_dir from its latest complete checkpoint", default=False)
    face_backend: ValidationBackend = setting(
        "face analysis backend that scores checkpoints: auto, insightface, dlib, or none (no scoring, the "
        "last step is the result)", default="auto")
    validation_prompt: str = setting("prompt of the validation portraits ('': the training caption)", default="")
    num_validation_images: int = setting("validation portraits per checkpoint", default=2)
    validation_num_inference_steps: int = setting("sampling steps of each validation portrait", default=20)
    ensemble_top_k: int = setting("final LoRA = average of the k best-scoring checkpoints (FaceChain's ensemble used 10); 1 = the best", default=1)
    allow_other_files: bool = setting("write into an output folder that holds files facechain did not write (they are never touched)", default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base_model:
            raise InputError("base_model is empty. Pass a hub id, a local diffusers folder or a .safetensors checkpoint.")
        if self.resolution <= 0 or self.resolution % 8:
            raise InputError(
                f"`resolution` has to be a positive multiple of 8 (the VAE downsamples by 8) but is {self.resolution}. "
                f"Use e.g. {max(8, round(self.resolution / 8) * 8)}."
            )
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise InputError(f"`max_train_steps` has to be at least 1 (or unset for no cap) but is {self.max_train_steps}.")
        if self.num_threads < 0:
            raise InputError(f"`num_threads` has to be >= 0 (0 = automatic) but is {self.num_threads}.")
        for name in ("rank", "train_batch_size", "steps_per_image", "aug_variants",
                     "checkpointing_steps", "num_validation_images", "validation_num_inference_steps", "ensemble_top_k"):
            value = getattr(self, name)
            if value < 1:
                raise InputError(f"`{name}` has to be at least 1 but is {value}.")
        for name in ("learning_rate", "adam_weight_decay", "max_grad_norm", "lora_alpha"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InputError(f"`{name}` has to be a finite number but is {value}. Give a real number (e.g. 1.5e-4).")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"`seed` has to be between 0 and {MAX_SEED} but is {self.seed}. Pick a smaller seed.")
        if self.lr_warmup_steps < 0:
            raise InputError(f"`lr_warmup_steps` has to be >= 0 but is {self.lr_warmup_steps}.")
        if self.learning_rate <= 0:
            raise InputError(f"`learning_rate` has to be positive but is {self.learning_rate}.")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise InputError(f"`lora_alpha` has to be positive but is {self.lora_alpha}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise InputError(f"unknown lr_scheduler {excerpt(self.lr_scheduler)}. Choose between {list(LR_SCHEDULERS)}.")
        if not self.target_modules:
            raise InputError("`target_modules` is empty; name at least one UNet module, e.g. to_q.")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < self.ensemble_top_k:
            raise InputError(
                f"`checkpoints_total_limit` ({self.checkpoints_total_limit}) is below `ensemble_top_k` ({self.ensemble_top_k}); "
                "the ensemble needs that many checkpoints. Raise the limit or lower ensemble_top_k."
            )

    @property
    def alpha(self) -> float:
        return float(self.rank if self.lora_alpha is None else self.lora_alpha)

    def num_steps(self, num_images: int) -> int:
        """FaceChain rule: 200 epochs over the kept photos at batch 1, capped by ``max_train_steps`` when set."""
        per_epoch = -(-num_images // self.train_batch_size)
        steps = self.steps_per_image * per_epoch
        return max(1, steps if self.max_train_steps is None else min(steps, self.max_train_steps))
