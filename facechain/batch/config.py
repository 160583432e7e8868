"""The batch file (JOBS.yaml): shared settings, per-stage blocks and a list of people.

    base_model: ...                  # shared: any trainer / generation setting at the top level
    output_dir: batch-out            # each person's work in batch-out/<name>/{processed,lora,portraits,eval}
    preprocess: {face_backend: dlib}
    train: {max_train_steps: 400, resolution: 512}
    generate: {styles: [Business suit], num_images: 3}
    template: {template: team.jpg, face: 0}   # optional: each person put into a template photo (face: its index)
    eval: {}                         # optional: the eval stage's settings (null: no eval stage)
    resources: {train_gpus: 1.0, generate_gpus: 1.0, ...}
    people:
      - {name: alice, photos: photos/alice}
      - {name: bob, photos: photos/bob, generate: {styles: [Cyberpunk]}}   # per-person overrides

A top-level key that is a setting of the trainer or of generation (``base_model``, ``seed``,
``device``, ``face_backend``, ``num_images``...) applies to every stage that has it (preprocess and eval
included), so a per-user generate config
lifted into the batch unchanged keeps working; the per-stage blocks, then each person's blocks,
override it. The folders a stage reads and writes (``lora_dir``, ``processed_dir``,
``output_dir``, ``train_data_dir``) are the batch's, per person: given in a block they are an error.
Relative paths are resolved against the batch file's folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from facechain.config import resolve_config_paths, resolve_path, setting
from facechain.errors import InputError
from facechain.workspace import PersonWorkspace
from facechain.config import renamed, from_dict, load_mapping, merge_settings
from facechain.evaluate import EvalConfig
from facechain.preprocess import PreprocessConfig
from facechain.train.config import TrainConfig

logger = logging.getLogger(__name__)

STAGES = ("preprocess", "train", "generate", "template", "eval")
# folders the batch sets per person; a block that sets them would point two people at one folder
OWNED = ("lora_dir", "processed_dir", "output_dir", "train_data_dir")
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOP_LEVEL = ("output_dir", "people", "preprocess", "train", "generate", "template", "eval", "resources")


@dataclass(frozen=True)
class Resources:
    """What each stage asks Ray for. GPU fractions let several SD1.5 jobs share one large GPU (e.g. 0.25:
    four trainings on one 80 GB card); on a cluster without GPUs the GPU requests are dropped (logged)."""

    preprocess_cpus: float = setting("Logical CPUs of a preprocess task.", default=1.0)
    train_cpus: float = setting("Logical CPUs of a training task.", default=1.0)
    train_gpus: float = setting("GPUs of a training task: 1 = a whole GPU, 0.5 = two trainings share one.", default=1.0)
    train_threads: int = setting("torch threads of a training task; 0 = this machine's usable cores.", default=0)
    generate_gpus: float = setting("GPUs of a generation actor (it keeps the base pipeline loaded).", default=1.0)
    generate_cpus: float = setting("Logical CPUs of a generation actor.", default=1.0)
    generate_workers: int = setting("Generation actors; 0 = one per generate_gpus share of the cluster's GPUs "
                                    "(1 without GPUs).", default=0)
    template_gpus: float = setting("GPUs of a template task.", default=1.0)
    template_cpus: float = setting("Logical CPUs of a template task.", default=1.0)
    eval_cpus: float = setting("Logical CPUs of an eval task.", default=1.0)
    max_retries: int = setting("Times a task whose worker died (killed, node lost, spot preemption) is re-run; a "
                               "training re-run resumes from its last checkpoint.", default=2)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise InputError(f"resources.{f.name} must be a number >= 0, got {v!r}.")
        for name in ("train_gpus", "generate_gpus", "template_gpus"):
            v = getattr(self, name)
            if v > 1 and v != int(v):
                raise InputError(f"resources.{name} must be a fraction of one GPU (<= 1) or a whole number, got {v}.")


@dataclass(frozen=True)
class PersonJob:
    """Everything the stages of one person need (picklable: it travels to Ray workers)."""

    name: str
    photos: Path
    root: Path  # output_dir/<name>
    preprocess: object  # PreprocessConfig
    train: object  # TrainConfig
    generate: object  # GenerateConfig
    template: object | None  # TemplateConfig (this person alone in the template photo), None: no template stage
    eval: object | None  # EvalConfig, None: no eval stage

    @property
    def workspace(self) -> PersonWorkspace:
        return PersonWorkspace(self.root)

    @property
    def processed_dir(self) -> Path:
        return self.workspace.processed

    @property
    def lora_dir(self) -> Path:
        return self.workspace.lora

    @property
    def portraits_dir(self) -> Path:
        return self.workspace.portraits

    @property
    def template_dir(self) -> Path:
        return self.workspace.template

    @property
    def eval_dir(self) -> Path:
        return self.workspace.eval

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if getattr(self, s, True) is not None)


@dataclass(frozen=True)
class BatchConfig:
    source: Path  # the batch file
    output_dir: Path
    people: list[PersonJob]
    resources: Resources

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / "batch.sqlite"


def _block(data: dict, key: str, where: str) -> dict:
    v = data.get(key) or {}
    if not isinstance(v, dict):
        raise InputError(f"{where}.{key} must be a mapping of settings, got {type(v).__name__}.")
    owned = sorted(set(v) & set(OWNED))
    if owned:
        raise InputError(f"{where}.{key} sets {owned}: the batch sets these folders per person "
                         f"(output_dir/<name>/processed, lora, portraits). Remove them.")
    return v


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} | set(renamed(cls))


def _build(cls, data: dict, where: str):
    """``from_dict`` whose every error names the person and block (a dataclass's own checks included)."""
    try:
        return from_dict(cls, data, where=where)
    except InputError as exc:
        if str(exc).startswith(where):
            raise
        raise InputError(f"{where}: {exc}") from None


def _template_config(settings: dict, ws: PersonWorkspace, base: Path, train_cfg, where: str):
    """The person alone in the template photo (``face``: the template face's index; empty = its only face),
    with their LoRA and processed photos, on the model the LoRA was trained on."""
    from facechain.template import PersonSpec, TemplateConfig

    if not settings.get("template"):
        raise InputError(f"{where}: template (the template photo) is missing.")
    settings = resolve_config_paths(TemplateConfig, settings, base)
    face = settings.pop("face", None)
    settings["people"] = [PersonSpec(lora_dir=ws.lora, processed_dir=ws.processed, face=face)]
    settings["output_dir"] = ws.template
    for key in ("base_model", "revision", "sub_path"):  # the model the person's LoRA was trained on
        settings[key] = getattr(train_cfg, key)
    return _build(TemplateConfig, settings, where)


def load_batch(path: str | os.PathLike) -> BatchConfig:
    """Read and check a batch file; every person's stage configs are built here, so a bad setting is one
    error naming the person and the setting before any work starts."""
    from facechain.generate.config import GenerateConfig
    from facechain.template import TemplateConfig

    path = Path(path).resolve()
    data = load_mapping(path)
    base = path.parent
    where = str(path)
    train_fields, gen_fields = _fields(TrainConfig), _fields(GenerateConfig)
    unknown = sorted(k for k in data if k not in TOP_LEVEL and k not in train_fields | gen_fields)
    if unknown:
        raise InputError(f"{where}: unknown settings {unknown}. The top level takes {list(TOP_LEVEL)} and any trainer "
                         "or generation setting (shared by every person).")
    owned = sorted(set(data) & (set(OWNED) - {"output_dir"}))
    if owned:
        raise InputError(f"{where}: {owned} is set per person by the batch (output_dir/<name>/...). Remove it.")
    if not data.get("output_dir"):
        raise InputError(f"{where}: output_dir is missing: the folder for every person's work and the manifest.")
    out = Path(resolve_path(data["output_dir"], base))
    shared = {k: v for k, v in data.items() if k not in TOP_LEVEL}
    resources = _build(Resources, _block(data, "resources", where), f"{where}.resources")
    people = data.get("people")
    if not isinstance(people, list) or not people:
        raise InputError(f"{where}: people must be a non-empty list of {{name, photos}}.")
    blocks = {s: _block(data, s, where) for s in ("preprocess", "train", "generate", "template")}
    eval_on = "eval" not in data or data["eval"] is not None
    blocks["eval"] = _block(data, "eval", where) if eval_on else {}
    jobs, seen = [], {}  # casefolded name -> (index, name)
    for i, person in enumerate(people):
        pw = f"{where}: people[{i}]"
        if not isinstance(person, dict):
            raise InputError(f"{pw} must be a mapping {{name, photos, ...}}, got {person!r}.")
        extra = sorted(set(person) - {"name", "photos", "preprocess", "train", "generate", "template", "eval"})
        if extra:
            raise InputError(f"{pw} has unknown keys {extra}; a person takes name, photos and per-person "
                             "preprocess/train/generate/template/eval blocks.")
        name = person.get("name")
        if not isinstance(name, str) or not NAME_RULE.match(name):
            raise InputError(f"{pw}: name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (it names the "
                             "person's folder), starting with a letter or digit.")
        same = seen.get(name.casefold())
        if same is not None and same[1] == name:
            raise InputError(f"{pw}: name {name!r} is used twice; each person needs their own name (their folder).")
        if same is not None:  # one folder on a case-insensitive disk (macOS, Windows): two people in it
            raise InputError(f"{pw}: name {name!r} and people[{same[0]}]'s name {same[1]!r} differ only in case; on a "
                             "case-insensitive disk they name the same folder. Give them names that differ otherwise.")
        seen[name.casefold()] = (i, name)
        if not person.get("photos"):
            raise InputError(f"{pw} ({name}): photos is missing: the folder of the person's photos.")
        ws = PersonWorkspace(out / name)
        pw = f"{where}: person {name}"

        def settings(stage: str, fields: set[str]) -> dict:
            s = {k: v for k, v in shared.items() if k in fields}
            s = merge_settings(s, blocks[stage])
            return merge_settings(s, _block(person, stage, pw))

        pre = _build(PreprocessConfig, settings("preprocess", _fields(PreprocessConfig)), f"{pw}.preprocess")
        tr = resolve_config_paths(TrainConfig, settings("train", train_fields), base)
        tr.update(train_data_dir=str(ws.processed), output_dir=str(ws.lora), resume=True)
        tr.setdefault("num_threads", resources.train_threads)
        if "base_model" not in tr:
            raise InputError(f"{pw}: base_model is not set (top level or train block).")
        train_cfg = _build(TrainConfig, tr, f"{pw}.train")
        gen = resolve_config_paths(GenerateConfig, settings("generate", gen_fields), base)
        gen.update(lora_dir=ws.lora, processed_dir=ws.processed, output_dir=ws.portraits)
        for key in ("base_model", "revision", "sub_path"):  # generation uses the model the LoRA was trained on
            gen.setdefault(key, getattr(train_cfg, key))
        gen_cfg = _build(GenerateConfig, gen, f"{pw}.generate")
        tpl = None
        if data.get("template") is not None:
            tpl = _template_config(settings("template", _fields(TemplateConfig) | {"face"}), ws, base, train_cfg,
                                   f"{pw}.template")
        ev = None
        if eval_on:
            ev = _build(EvalConfig, {**settings("eval", _fields(EvalConfig)), "output_dir": ws.eval}, f"{pw}.eval")
        jobs.append(PersonJob(name, Path(resolve_path(person["photos"], base)), ws.root, pre, train_cfg, gen_cfg, tpl, ev))
    return BatchConfig(path, out, jobs, resources)
