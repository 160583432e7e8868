"""The template job's face editor: the parts one job loads once (the base pipeline with the identity
adapter and fast mode, the inpaint or ControlNet-inpaint pipeline, the prompt encoder, the fusion, the
face analyzer, the detailer settings) and the steps that edit one template face with them:

    editor = TemplateFaceEditor.load(cfg, base_model_of(cfg), analyzer)
    edit = FaceEdit(k, faces[k], person_index, cfg.people[person_index], entry)
    editor.prepare(edit)              # the person's LoRA, prompt and identity
    editor.redraw(edit, out, stage)   # crop, control maps, inpaint, colour
    editor.fuse(edit)                 # DIIR (in generation) or the fusion method with the person's photo
    editor.paste(edit, out)           # through the feathered mask
    editor.measure(edit)              # likeness to the person before and after
    editor.release(edit)              # the person's LoRA unloaded

Each step writes what it decided into ``edit.entry`` (the face's manifest entry) in the order it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facechain import lora as lora_io
from facechain.adapters import get_identity_adapter
from facechain.config import to_dict
from facechain.errors import FacechainError
from facechain.face import similarity
from facechain.face.fusion import fusion_spec, get_fusion, match_colour
from facechain.face.region import compose, face_region
from facechain.families import Family, get_family
from facechain.generate.config import DEFAULT_NEGATIVE_PROMPT
from facechain.generate.detailer import DetailerConfig
from facechain.generate.diir import Identity, diir_faces, openpose_net
from facechain.generate.inpaint import inpaint_pipeline, redraw_region
from facechain.generate.poses import face_keypoint_map
from facechain.generate.rank import select_reference_face
from facechain.generate.subject import join_prompt, subject_from_metadata
from facechain.io import save_image
from facechain.models import (
    load_pipeline,
    native_size,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from facechain.prompts import PromptEncoder
from facechain.template.config import PersonSpec, TemplateConfig
from facechain.template.multi_id import harmonize
from facechain import memory
from facechain.adapters.ip_adapter_faceid import identity_embedding
from facechain.models import dtype_kwargs, load_controlnet


def canny_map(crop: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Canny edges (100, 200) of the crop with the face (its mask) zeroed, as FaceChain's template pass."""
    import cv2

    edges = cv2.Canny(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), 100, 200)
    edges[alpha > 0] = 0
    return np.repeat(edges[..., None], 3, axis=2)


def control_pipeline(pipe, cfg: TemplateConfig, family: str | Family):
    """The ControlNet inpaint pipeline of ``pipe`` (from_pipe: the same UNet, LoRAs and VAE) with the
    configured ControlNets, or None without controls."""
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
    nets = [] if control is None else list(getattr(control.controlnet, "nets", [control.controlnet]))
    free = memory.free_memory(device)
    size = native_size(pipe)
    plan = memory.plan_memory(memory.pipeline_parts(pipe, nets), size, size, batch=1,
                              offload=memory.offload_for(cfg.offload, device, free), free_bytes=free,
                              auto_modes=memory.AUTO_OFFLOAD)
    memory.apply_plan(control or pipe, plan, device)
    return plan


@dataclass
class FaceEdit:
    """One template face as the editor's steps fill it in: who goes there, the face's manifest entry,
    and what each step made (the prompt and conditioning, the crop's region, the crop before, the new
    face, the crop after)."""

    k: int  # the template face's index
    face: object  # the template face (facechain.face.Face), in template coordinates
    person_index: int
    person: PersonSpec
    entry: dict
    prompt: str = ""
    conditioning: object = None
    extra: dict = field(default_factory=dict)  # the identity adapter's pipeline arguments
    emb: object = None  # the person's identity embedding (with an identity adapter)
    region: object = None  # facechain.face.region.FaceRegion
    before: np.ndarray | None = None
    new: np.ndarray | None = None
    after: np.ndarray | None = None
    seed: int = 0
    notes: list = field(default_factory=list)
    reference: object = None  # the person's reference face (their best processed photo), or None

    @property
    def lora_name(self) -> str:
        return f"person_{self.person_index}"

    @property
    def crop(self) -> tuple[slice, slice]:
        """The crop's rows and columns in the template."""
        r = self.region
        return slice(r.y0, r.y0 + r.side), slice(r.x0, r.x0 + r.side)


@dataclass
class TemplateFaceEditor:
    """The loaded parts of one template job, and the steps that edit one face with them (module docstring)."""

    cfg: TemplateConfig
    analyzer: object
    resolved: object  # facechain.models.ResolvedModel
    device: object  # torch.device
    pipe: object
    adapter: object  # the job's identity adapter (attached to ``pipe``), or None
    adapter_loras: dict  # adapter name -> weight active in every pass (the identity adapter's, fast mode's)
    steps: int
    guidance: float
    control: object  # the ControlNet inpaint pipeline, or None without controls
    memory_plan: object
    inpaint: object  # the pipeline every face is re-drawn with (``control`` or the inpaint twin of ``pipe``)
    encoder: PromptEncoder
    size: int  # the working size (the model's native size)
    spec: object  # the fusion's spec (facechain.face.fusion.fusion_spec), or None when fusion is off
    fusion: object  # the fusion method run after the inpaint, or None (off, or the spec runs in generation)
    null_conditioning: object  # the empty prompt's conditioning (in-generation fusion), or None
    detailer: DetailerConfig

    @classmethod
    def load(cls, cfg: TemplateConfig, model_ref: tuple, analyzer) -> TemplateFaceEditor:
        """Load the base model (``model_ref``: model, revision, sub_path), the identity adapter (its weights
        checked before any face), fast mode and the ControlNets (a missing one fails here), place them on
        the device, and build the inpaint pipeline, the prompt encoder and the fusion."""
        model, revision, sub_path = model_ref
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        resolved = resolve_model(model, revision, sub_path, allow_pickle=cfg.allow_pickle, dtype=dtype)
        pipe = load_pipeline(resolved, torch_dtype=dtype, single_file_config=cfg.single_file_config)
        pipe.set_progress_bar_config(disable=True)  # placed on the device (or offloaded) once every model is loaded
        ident_spec = next((p.identity for p in cfg.people if p.identity is not None and p.identity.enabled), None)
        adapter, adapter_loras = None, {}
        if ident_spec is not None:  # one adapter for the job; photos per person
            adapter = get_identity_adapter(ident_spec, resolved.family)
            adapter_loras = adapter.attach(pipe)
        steps, guidance = cfg.num_inference_steps, cfg.guidance_scale
        if cfg.fast:  # the family's fast mode (LCM-LoRA + LCMScheduler), active in every pass (mixed with each person's LoRA)
            family = get_family(resolved.family)
            steps, guidance = cfg.fast_num_inference_steps, cfg.fast_guidance_scale
            pipe.scheduler = family.scheduler(pipe.scheduler.config, fast=True)
            family.load_fast_adapter(pipe, cfg.lcm_lora, allow_pickle=cfg.allow_pickle, adapter_name="lcm")
            adapter_loras = {**adapter_loras, "lcm": 1.0}
        control = control_pipeline(pipe, cfg, resolved.family)
        memory_plan = place_models(pipe, control, cfg, device)
        inpaint = control or inpaint_pipeline(pipe)
        encoder = PromptEncoder(inpaint, cfg.prompt_weighting)
        size = native_size(pipe)
        spec = fusion_spec(cfg.fusion)
        in_generation = spec is not None and spec.in_generation  # DIIR: each face re-drawn while its identity is active
        fusion = None if spec is None or in_generation else get_fusion(cfg.fusion, backend=analyzer.name)
        null_conditioning = encoder("", "") if in_generation else None
        detailer = DetailerConfig(mode="always", strength=cfg.strength, num_inference_steps=steps,
                                  guidance_scale=guidance, padding=min(8.0, 1.0 / cfg.crop_ratio), mask_dilation=0.06,
                                  mask_feather=0.04, working_size=size)
        return cls(cfg, analyzer, resolved, device, pipe, adapter, adapter_loras, steps, guidance, control, memory_plan,
                   inpaint, encoder, size, spec, fusion, null_conditioning, detailer)

    @property
    def in_generation(self) -> bool:
        """Whether the fusion runs inside generation (DIIR), with the person's identity still active."""
        return self.spec is not None and self.spec.in_generation

    @property
    def negative_prompt(self) -> str:
        return self.cfg.negative_prompt if self.cfg.negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT

    @property
    def control_weights(self) -> dict[str, float]:
        return {"openpose": self.cfg.openpose_weight, "canny": self.cfg.canny_weight}

    @property
    def fusion_name(self) -> str:
        """The fusion the manifest names: the in-generation method, the fusion method, or off."""
        return self.cfg.fusion if self.in_generation else self.fusion.name if self.fusion else "off"

    def prepare(self, edit: FaceEdit) -> None:
        """The person's face LoRA (mixed with the job's adapters), their prompt (trigger word and attribute
        phrase) and, with an identity adapter, their photos' identity; then the prompt's conditioning."""
        cfg, pipe, person = self.cfg, self.pipe, edit.person
        weights_of = dict(self.adapter_loras)
        if person.lora_dir is not None:
            path = lora_io.resolve(person.lora_dir, allow_pickle=cfg.allow_pickle,
                                   what=f"person {edit.person_index}'s face LoRA")
            lora_io.load_adapter(pipe, path, edit.lora_name, f"person {edit.person_index}'s face LoRA")
            weights_of[edit.lora_name] = cfg.face_lora_weight
        if weights_of:
            pipe.set_adapters(list(weights_of), adapter_weights=list(weights_of.values()))
        trigger, attribute = subject_from_metadata(person.processed_dir, "<fcsks>")
        if person.lora_dir is None:  # no LoRA learned the trigger word
            trigger = ""
        edit.prompt = join_prompt(trigger, attribute, cfg.prompt)
        if self.adapter is not None:  # this person's photos through the job's adapter
            adapter, do_cfg = self.adapter, self.guidance > 1
            edit.emb = identity_embedding(person.identity.photos, self.analyzer)
            adapter.check_embedding(edit.emb)
            adapter.prepare(edit.emb)
            adapter.before_call(1, do_cfg=do_cfg)
            embeds = adapter.embeds(edit.emb, do_cfg=do_cfg, device=self.device, dtype=pipe.unet.dtype)
            if embeds is not None:
                edit.extra["ip_adapter_image_embeds"] = embeds
            edit.entry["identity"] = adapter.describe(edit.emb)
        edit.conditioning = self.encoder(edit.prompt, self.negative_prompt)

    def redraw(self, edit: FaceEdit, out: np.ndarray, stage) -> None:
        """The square crop around the face in ``out`` (the template with the faces edited so far), its
        control maps (the face's pose, the crop's edges around the face; saved in ``stage``/faces), the
        inpaint of the face at the working size, and the template face's colour (``colour: lab``)."""
        cfg = self.cfg
        edit.region = region = face_region(edit.face, out.shape, self.detailer)
        edit.before = out[edit.crop].copy()
        edit.seed = cfg.seed + edit.k
        controls = dict(edit.extra)
        if self.control is not None:  # the template face's pose and the crop's edges around the face
            maps = {"openpose": face_keypoint_map(edit.face, region.x0, region.y0, region.side),
                    "canny": canny_map(edit.before, region.alpha)}
            images = [maps[c] for c in cfg.controls]
            scales = [self.control_weights[c] for c in cfg.controls]
            controls.update(control_image=images if len(images) > 1 else images[0],
                            controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0])
            for c in cfg.controls:
                save_image(stage / "faces" / f"face_{edit.k}_{c}.png", maps[c])
            edit.entry["controls"] = dict(zip(cfg.controls, scales))
        new = redraw_region(self.inpaint, edit.before, region.alpha > 0, self.size, edit.conditioning, self.detailer,
                            edit.seed, controls)
        if cfg.colour == "lab":  # the new face takes the template face's colour statistics
            new = match_colour(new, edit.before, region.alpha)
        edit.new = new

    def fuse(self, edit: FaceEdit) -> None:
        """The person's reference face (their best processed photo, if any), then the in-generation fusion
        (DIIR: the crop re-drawn from its inversion with the person's identity still active) or the fusion
        method with the reference; a fusion that cannot run on this face is recorded as skipped."""
        cfg, analyzer, entry = self.cfg, self.analyzer, edit.entry
        person = edit.person
        edit.reference = select_reference_face(person.processed_dir, analyzer) if person.processed_dir else None
        if self.in_generation:
            # the template face's geometry: the inpaint redrew the face in its place, under its pose control
            ident = None
            if self.adapter is not None:
                ident = Identity(self.adapter, self.adapter.embeds(edit.emb, do_cfg=True, device=self.device,
                                                                   dtype=self.pipe.unet.dtype))
            edit.new, restored = diir_faces(
                self.pipe, edit.new, [edit.face.shifted(-edit.region.x0, -edit.region.y0)], edit.conditioning,
                self.null_conditioning, cfg.diir, identity=ident,
                controlnet=openpose_net(self.control.controlnet if self.control is not None else None, cfg.controls))
            entry["fusion"] = cfg.fusion
            entry["diir"] = restored[0]
        elif self.fusion is not None and edit.reference is not None:
            found = analyzer.detect(edit.new, max_faces=1)
            if found:
                try:
                    res = self.fusion.fuse(edit.new, found[0], *edit.reference.fusion_source(), 1.0)
                    edit.new = res.image
                    edit.notes += list(res.notes)
                    entry["fusion"] = res.method
                except FacechainError as exc:
                    entry["fusion"] = f"skipped: {exc}"
            else:
                entry["fusion"] = "skipped: no face found in the edited crop"

    def paste(self, edit: FaceEdit, out: np.ndarray) -> None:
        """The new face into ``out`` through the feathered mask (every other pixel stays the template's)."""
        edit.after = compose(edit.before, edit.new, edit.region.alpha)
        out[edit.crop] = edit.after
        region = edit.region
        edit.entry.update(crop=[region.x0, region.y0, region.side], seed=edit.seed, prompt=edit.prompt,
                          colour=self.cfg.colour, notes=edit.notes)

    def measure(self, edit: FaceEdit) -> None:
        """How like the person the face is, before and after (identity similarity to their reference face)."""
        if edit.reference is None:
            return

        def like(img):
            f = self.analyzer.detect(img, max_faces=1)
            return round(float(similarity(f[0], edit.reference.face)), 3) if f else None

        edit.entry["identity_before"], edit.entry["identity_after"] = like(edit.before), like(edit.after)

    def save(self, edit: FaceEdit, stage) -> None:
        """The crop before and after, and the feathered mask, in ``stage``/faces."""
        save_image(stage / "faces" / f"face_{edit.k}_before.png", edit.before)
        save_image(stage / "faces" / f"face_{edit.k}_after.png", edit.after)
        save_image(stage / "faces" / f"face_{edit.k}_mask.png", np.round(edit.region.alpha * 255).astype(np.uint8))

    def release(self, edit: FaceEdit) -> None:
        """The person's face LoRA unloaded (whether or not the face was edited)."""
        if edit.lora_name in getattr(self.pipe, "get_list_adapters", dict)().get("unet", []):
            self.pipe.delete_adapters(edit.lora_name)

    def harmonize(self, out: np.ndarray, edited: list[FaceEdit], stage) -> tuple[np.ndarray, dict]:
        """MGMICA over the edited faces when the adapter takes masked multiple identities (facechain.template.
        multi_id): (the image, the manifest's harmonization record, with the reason when it did not run)."""
        cfg, adapter = self.cfg, self.adapter
        if not cfg.harmonize:
            return out, {"ran": False, "reason": "harmonize is off"}
        if adapter is None or not adapter.masked_multi_identity:
            return out, {"ran": False, "reason": (
                "needs IP-Adapter-FaceID identities (its per-image attention masks); the people's identities are "
                + (adapter.name if adapter is not None else "face LoRAs"))}
        if len(edited) < 2:
            return out, {"ran": False, "reason": "fewer than 2 faces were edited"}
        # every identity at once, each masked to its own face
        if self.adapter_loras:
            self.pipe.set_adapters(list(self.adapter_loras), adapter_weights=list(self.adapter_loras.values()))
        plain = inpaint_pipeline(self.pipe)
        masks = [e.region.full_alpha(out.shape) > 0 for e in edited]
        out, info, ids, ring = harmonize(plain, out, masks, [float(e.face.size) for e in edited],
                                         [e.emb.vector for e in edited],
                                         PromptEncoder(plain, cfg.prompt_weighting)(cfg.prompt, self.negative_prompt),
                                         size=self.size, steps=self.steps, strength=cfg.harmonize_strength,
                                         guidance=self.guidance, seed=cfg.seed + 1000)
        for e, m in zip(edited, ids):
            save_image(stage / "faces" / f"identity_mask_{e.k}.png", m.astype(np.uint8) * 255)
        save_image(stage / "faces" / "harmonize_ring.png", ring.astype(np.uint8) * 255)
        return out, {"ran": True, "faces": [e.k for e in edited], **info}

    def settings(self) -> dict:
        """The manifest's settings: what every face was edited with."""
        cfg = self.cfg
        return {"strength": cfg.strength, "steps": self.steps, "guidance_scale": self.guidance, "fast": cfg.fast,
                "scheduler": type(self.pipe.scheduler).__name__, "prompt_weighting": cfg.prompt_weighting,
                "working_size": self.size, "crop_ratio": cfg.crop_ratio, "face_lora_weight": cfg.face_lora_weight,
                "controls": {c: self.control_weights[c] for c in cfg.controls}, "memory": self.memory_plan.to_dict(),
                "diir": to_dict(cfg.diir) if self.in_generation else None}

    def synchronize(self) -> None:
        """Wait for the device's queued work (so the job's seconds count it)."""
        import torch

        if torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.synchronize()
