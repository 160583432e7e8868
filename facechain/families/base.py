"""The :class:`Family` interface: everything facechain needs to know about one base-model family.

A family answers, for its base models: how to recognise one (a diffusers folder's ``model_index.json``
and denoiser config, a hub repo's config, a single-file checkpoint's keys), which diffusers pipeline
class serves each task, how its denoiser is conditioned and trained (LoRA targets, objective, extra
conditioning), how prompts are encoded, how latents are encoded and decoded, its native size and
sampling defaults, its fast mode, its LoRA key formats, its default ControlNets and the licence of its
reference weights. Callers ask the family; nothing outside :mod:`facechain.families` branches on a
family's name. ``docs/architecture.md`` lists what each slot holds for every family, the planned ones
included.

Family modules import cheaply: diffusers and torch are imported inside the methods that need them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from facechain.errors import InputError

# The generation tasks a family may serve, each with its diffusers pipeline class.
Task = Literal["txt2img", "img2img", "inpaint", "controlnet", "controlnet_inpaint"]
TASKS: tuple[Task, ...] = ("txt2img", "img2img", "inpaint", "controlnet", "controlnet_inpaint")
TASK_LABELS = {"txt2img": "text-to-image", "img2img": "img2img", "inpaint": "inpainting",
               "controlnet": "ControlNet", "controlnet_inpaint": "ControlNet inpainting"}


@dataclass(frozen=True)
class Sampling:
    """A family's sampling defaults: the scheduler facechain picks, steps and guidance."""

    scheduler: str  # a diffusers scheduler class name
    scheduler_kwargs: dict = field(default_factory=dict)
    steps: int = 40
    guidance: float = 7.0


@dataclass(frozen=True)
class FastMode:
    """How a family samples in a few steps: an adapter (LCM-LoRA) and the scheduler it needs."""

    lora: str  # hub id (or folder) of the adapter
    scheduler: str  # a diffusers scheduler class name
    lora_bytes: int  # its size on the device (the memory plan counts it)


@dataclass(frozen=True)
class Training:
    """How a family's denoiser is trained: the objective and what a LoRA adapts."""

    objective: Literal["epsilon", "v_prediction", "flow_matching"]
    lora_target_modules: tuple[str, ...]
    text_lora_target_modules: tuple[str, ...] = ()


class Family(ABC):
    """One base-model family. Subclasses set the class attributes and implement the abstract hooks."""

    name: str  # registry key, saved in configs and manifests ("sd15")
    label: str  # for messages ("SD1.5-family")
    a_label: str  # the label with its article ("an SD1.5-family")
    licence: str  # the licence of the reference weights, with its name and where it is published
    reference_repo: str  # a hub repo whose configs describe the architecture of a single-file checkpoint
    native_size: int  # the side its reference weights were trained at (pixels)
    denoiser: str  # the pipeline attribute holding the denoiser ("unet", "transformer")
    text_encoders: tuple[str, ...]  # pipeline attributes of its text encoders, in order
    pipelines: dict[str, str]  # task -> diffusers pipeline class name; a task it lacks is absent
    sampling: Sampling
    fast: FastMode | None = None
    training: Training
    # control kind ("openpose", "canny", "depth") -> the ControlNet used when a config leaves its field empty; each
    # loads through ControlNetModel.from_pretrained from diffusers-named safetensors (tests/fixtures/hub_listings.json
    # records the published files)
    controlnets: dict[str, str]
    supports_inversion: bool = False  # DDIM inversion (stylize, DIIR) works on it
    # the denoiser's activation peak while sampling, bytes per latent pixel per image, half precision, guidance
    # included (facechain.memory's plan; measured by benchmarks/memory_bench.py, benchmarks/RESULTS.md)
    unet_activation_bytes_per_latent_pixel: int = 0

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    # ---------------------------------------------------------------- recognition
    @abstractmethod
    def matches_denoiser_config(self, config: dict) -> bool:
        """Whether a denoiser config (``unet/config.json`` or ``transformer/config.json``) is of this family."""

    @abstractmethod
    def matches_checkpoint_keys(self, keys: list[str]) -> bool:
        """Whether a single-file checkpoint with these tensor names is of this family."""

    # ---------------------------------------------------------------- pipelines
    def pipeline_class(self, task: Task = "txt2img"):
        """The diffusers pipeline class of ``task``; one clear error when the family has none."""
        import diffusers

        if task not in TASK_LABELS:
            raise ValueError(f"unknown task {task!r}; tasks: {list(TASKS)}")
        name = self.pipelines.get(task)
        if name is None:
            served = ", ".join(TASK_LABELS[t] for t in TASKS if t in self.pipelines)
            raise InputError(f"{self.label} base models have no {TASK_LABELS[task]} pipeline in facechain (they serve: "
                             f"{served}). Use a base model of another family for this feature.")
        return getattr(diffusers, name)

    def load_kwargs(self) -> dict:
        """Extra keyword arguments of ``from_pretrained`` / ``from_single_file`` (components not loaded)."""
        return {}

    # ---------------------------------------------------------------- fast mode
    def fast_lora_ref(self, override: str | None = None) -> str:
        """The fast-mode adapter to load: ``override`` (a config's ``lcm_lora``) or the family's own."""
        if override:
            return str(override)
        if self.fast is None:
            raise InputError(f"{self.label} base models have no fast mode in facechain. Turn fast mode off (fast: "
                             "false), or pass the adapter to use as lcm_lora.")
        return self.fast.lora

    def load_fast_adapter(self, pipe, override: str | None = None, *, allow_pickle: bool = False,
                          adapter_name: str = "lcm"):
        """Load the fast-mode adapter (LCM-LoRA, Luo et al. 2023) into ``pipe`` as ``adapter_name``; its path."""
        from facechain import lora as lora_io

        path = lora_io.resolve(self.fast_lora_ref(override), allow_pickle=allow_pickle, what="LCM-LoRA")
        lora_io.load_adapter(pipe, path, adapter_name, "LCM-LoRA")
        return path

    # ---------------------------------------------------------------- conditioning
    @abstractmethod
    def text_encoder_pairs(self, pipe) -> list[tuple]:
        """(tokenizer, text encoder) pairs of a loaded pipeline, in order; encoders a pipeline lacks are left out."""

    def added_conditioning(self, pooled, height: int, width: int, batch: int, device, dtype) -> dict | None:
        """The denoiser's extra inputs beside the text embeddings (``added_cond_kwargs``), or None."""
        return None

    @abstractmethod
    def text_conditioning(self, encoder_outputs: list, *, training: bool = False):
        """(prompt embeddings, pooled embedding or None) from each text encoder's output, as the family
        conditions its denoiser. ``encoder_outputs`` are transformers outputs with hidden states."""

    # ---------------------------------------------------------------- sampling, training, latents
    @abstractmethod
    def scheduler(self, config, fast: bool = False):
        """The scheduler facechain samples with (the fast mode's when ``fast``), from a pipeline's scheduler config."""

    @abstractmethod
    def objective(self, scheduler_config):
        """The training objective: an object with ``noised(x0, generator, device) -> (noisy, timesteps, target)``
        (DDPM epsilon / v-prediction for the UNet families; flow matching with the family's timestep sampling and
        shift for the transformer families)."""

    @abstractmethod
    def encode_latents(self, vae, image: np.ndarray, device=None):
        """The latents the denoiser works on, of one RGB uint8 image (fp16-safe)."""

    @abstractmethod
    def decode_latents(self, vae, latents) -> np.ndarray:
        """One RGB uint8 image of ``latents`` (fp16-safe)."""

    @abstractmethod
    def native_size_of(self, pipe) -> int:
        """A loaded pipeline's native image side."""

    @abstractmethod
    def build_tiny(self, folder: Path, seed: int = 0, tokenizer: str = "bytes") -> Path:
        """Save a tiny model of this family (real diffusers/transformers classes, seeded) to ``folder``."""

    # ---------------------------------------------------------------- LoRA key formats
    kohya_prefixes: dict[str, tuple[str, ...]]  # component -> kohya prefixes it answers to; the first is written
    kohya_unet_names: Literal["diffusers", "sgm"] = "diffusers"  # the module names a kohya file written here uses

    # ---------------------------------------------------------------- behaviour at a glance
    penultimate: bool = False  # the text encoders' penultimate hidden states condition the denoiser (else the last)
    pooled_text: bool = False  # the denoiser also takes a pooled text embedding (of the last encoder)
    validates_at_native_size: bool = False  # training validation images at native size, not the training size
    vae_upcast: bool = False  # its diffusers pipelines run an fp16 VAE in float32 when the VAE's config says so

    def describe(self) -> dict:
        """The family's slots, for ``facechain doctor`` and docs."""
        return {"name": self.name, "label": self.label, "licence": self.licence, "native_size": self.native_size,
                "denoiser": self.denoiser, "text_encoders": list(self.text_encoders),
                "tasks": [t for t in TASKS if t in self.pipelines], "objective": self.training.objective,
                "sampling": {"scheduler": self.sampling.scheduler, "steps": self.sampling.steps,
                             "guidance": self.sampling.guidance},
                "fast": None if self.fast is None else {"lora": self.fast.lora, "scheduler": self.fast.scheduler},
                "controlnets": dict(self.controlnets), "inversion": self.supports_inversion}
