"""Style registry over ``styles/**/*.json``.

One JSON file per style, in FaceChain's style format (modelscope/facechain ``styles/<base>/*.json``)::

    {
      "name": "Cyberpunk",                 # what users pick in a config (``styles: [Cyberpunk]``)
      "img": "",                           # preview image (path or URL); informational only
      "model_id": null,                    # style LoRA: hub/ModelScope repo id, or a local file/folder; null = prompt-only
      "revision": null,                    # hub revision / ModelScope version (e.g. "v1.0.0")
      "bin_file": null,                    # LoRA file name inside model_id
      "multiplier_style": 0.35,            # adapter weight of the style LoRA
      "multiplier_human": 0.95,            # adapter weight of the face LoRA
      "add_prompt_style": "neon lights, ...", # appended to the prompt
      "weight_rule": "linear"              # optional: how multiplier_style becomes the LoRA's strength
    }

``weight_rule`` (not in FaceChain's files; default ``linear``): ``linear`` gives the style LoRA
``multiplier_style`` as its adapter weight (FaceChain's SD1.5 path, ``merge_lora``: W += m * alpha/r *
up @ down). ``facechain_sdxl`` reproduces FaceChain's SDXL path, which multiplies every tensor of the
style file by the multiplier before loading it (see :func:`facechain_sdxl_weight`); the styles shipped
from FaceChain's SDXL set use it, so they look as FaceChain drew them, and a user's own style keeps
linear weights unless its file asks for the rule.

Styles are grouped by base-model family in folders: a file under a folder named ``sd15`` or
``sdxl`` belongs to that family; a file elsewhere (a user's own folder) is usable with any base.
A relative ``model_id`` that exists beside the style file is a local LoRA. A user adds a style by
dropping a file in a folder; :func:`load_styles` validates every file and refuses duplicate names.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from facechain.errors import InputError
from facechain.families import FAMILIES
from facechain.registry import Registry

logger = logging.getLogger(__name__)

StyleFamily = str  # a model family's name (facechain.families), or "any"

# The 8 fields of FaceChain's style format, with the JSON types each accepts.
STYLE_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "img": (str, type(None)),
    "model_id": (str, type(None)),
    "revision": (str, type(None)),
    "bin_file": (str, type(None)),
    "multiplier_style": (int, float),
    "multiplier_human": (int, float),
    "add_prompt_style": (str,),
}

# Optional fields of ours, with their JSON types and defaults.
OPTIONAL_FIELDS: dict[str, tuple[tuple[type, ...], object]] = {"weight_rule": ((str,), "linear")}

DEFAULT_STYLES_DIR = Path(__file__).resolve().parents[2] / "styles"


# --------------------------------------------------------------------------- weight rules


def _linear_weight(multiplier: float, lora_path: Path) -> float:
    """The adapter weight is the multiplier (FaceChain's SD1.5 ``merge_lora``: W += m * alpha/r * up @ down)."""
    return multiplier


_LORA_DOWN = re.compile(r"^(.*?)\.(?:lora_down|lora_A|lora\.down|lora_linear_layer\.down)(?:\.[^.]+)?\.weight$")


def facechain_sdxl_weight(multiplier: float, lora_path: Path) -> float:
    """FaceChain's SDXL strength for a style LoRA file, as one adapter weight.

    FaceChain (modelscope/facechain, ``facechain/inference.py``, ``main_diffusion_inference``, its
    ``'xl-base'`` branch, from SDXL support in #436 until FACT replaced it in #554) multiplies *every* tensor of the style's state dict by
    ``multiplier_style`` and then calls ``pipe.load_lora_weights`` on it. A LoRA module's update is
    alpha/r * up @ down, so with up, down and alpha each scaled by m it is m**3 times the file's update
    (kohya files, which carry an ``alpha`` per module: 0.55 -> 0.166), and m**2 for a file without
    alphas. A file where only some modules carry an alpha cannot be given one weight and is refused.

    Not reproduced: FaceChain loads the style and then the face LoRA with two un-named
    ``load_lora_weights`` calls (diffusers >= 0.23, < 0.26), which do not leave both active on the layers
    they share (read from the code, not run: with peft 0.6/0.7 an existing LoRA layer keeps its first
    adapter active, ``LoraLayer.update_layer``; without peft the second load replaces the first). Here both
    are active, mixed by ``set_adapters``, with the style at the strength FaceChain's code gave it."""
    from facechain.lora import read_tensors

    path = Path(lora_path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    else:
        keys = list(read_tensors(path))
    modules = {m.group(1) for m in map(_LORA_DOWN.match, keys) if m}
    with_alpha = {k[: -len(".alpha")] for k in keys if k.endswith(".alpha")} & modules
    if not modules:
        raise InputError(f"weight_rule facechain_sdxl: LoRA file {path} has no LoRA down/up weights to scale.")
    if with_alpha and with_alpha != modules:
        raise InputError(
            f"weight_rule facechain_sdxl: LoRA file {path} has an alpha on {len(with_alpha)} of its {len(modules)} "
            "modules, so FaceChain's rule (every tensor times the multiplier) gives no single adapter weight. Use "
            "weight_rule linear for this style.")
    return float(multiplier) ** (3 if with_alpha else 2)


# name -> (multiplier_style, LoRA file) -> adapter weight
WEIGHT_RULES: Registry = Registry("style weight_rule")
WEIGHT_RULES.register("linear", _linear_weight)
WEIGHT_RULES.register("facechain_sdxl", facechain_sdxl_weight)


@dataclass(frozen=True)
class Style:
    """A validated style. ``lora`` is None for prompt-only styles."""

    name: str
    img: str | None
    model_id: str | None
    revision: str | None
    bin_file: str | None
    multiplier_style: float
    multiplier_human: float
    add_prompt_style: str
    family: StyleFamily
    path: Path  # the JSON file it came from
    weight_rule: str = "linear"  # a WEIGHT_RULES name: how multiplier_style becomes the LoRA's adapter weight

    @property
    def has_lora(self) -> bool:
        return self.model_id is not None

    def lora_reference(self) -> str | None:
        """``model_id`` as a path when it names a file or folder beside the style file, else as given (a hub id)."""
        if self.model_id is None:
            return None
        local = Path(self.model_id).expanduser()
        if not local.is_absolute():
            beside = self.path.parent / local
            if beside.exists():
                return str(beside)
        return self.model_id

    def style_weight(self, lora_path: str | os.PathLike) -> float:
        """The adapter weight of this style's LoRA file under its ``weight_rule``."""
        return WEIGHT_RULES.get(self.weight_rule)(self.multiplier_style, Path(lora_path))

    def to_dict(self) -> dict:
        return {
            "name": self.name, "img": self.img, "model_id": self.model_id, "revision": self.revision,
            "bin_file": self.bin_file, "multiplier_style": self.multiplier_style,
            "multiplier_human": self.multiplier_human, "add_prompt_style": self.add_prompt_style,
            "weight_rule": self.weight_rule, "family": self.family, "path": str(self.path),
        }


def _family_of(path: Path, root: Path) -> StyleFamily:
    try:
        parts = path.resolve().relative_to(root.resolve()).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    for part in reversed(parts):
        if part in FAMILIES:  # a folder named after a model family
            return part  # type: ignore[return-value]
    return "any"


def parse_style(data: object, path: Path, family: StyleFamily = "any") -> Style:
    """Validate one style mapping. Every problem names the file, the field and the fix."""
    where = f"style file {path}"
    if not isinstance(data, dict):
        raise InputError(f"{where}: must hold a JSON object with the fields {list(STYLE_FIELDS)}.")
    missing = [k for k in STYLE_FIELDS if k not in data]
    if missing:
        raise InputError(
            f"{where}: missing field(s) {missing}. A style file needs all of {list(STYLE_FIELDS)} "
            "(use null for model_id/revision/bin_file in a prompt-only style)."
        )
    unknown = sorted(set(data) - set(STYLE_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown}. Valid fields: {list(STYLE_FIELDS)}, optional: "
                         f"{list(OPTIONAL_FIELDS)}.")
    data = {**{k: default for k, (_, default) in OPTIONAL_FIELDS.items()}, **data}
    for key, types in [*STYLE_FIELDS.items(), *((k, t) for k, (t, _) in OPTIONAL_FIELDS.items())]:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise InputError(f"{where}: field '{key}' must be {names}, got {value!r}.")
    if not data["name"].strip():
        raise InputError(f"{where}: field 'name' is empty; give the style a name users can pick.")
    for key in ("multiplier_style", "multiplier_human"):
        if not 0.0 <= float(data[key]) <= 2.0:
            raise InputError(f"{where}: field '{key}' must be between 0 and 2 (adapter weight), got {data[key]}.")
    if data["model_id"] is not None and not data["model_id"].strip():
        raise InputError(f"{where}: field 'model_id' is an empty string; use null for a prompt-only style.")
    if data["model_id"] is not None and data["bin_file"] is None:
        local = Path(data["model_id"]).expanduser()
        if not local.is_absolute():
            local = path.parent / local
        if not local.is_file():
            raise InputError(
                f"{where}: 'model_id' {data['model_id']!r} is not a local LoRA file, so 'bin_file' must name the "
                "LoRA file inside it (e.g. \"style.safetensors\")."
            )
    if data["weight_rule"] not in WEIGHT_RULES:
        raise InputError(f"{where}: field 'weight_rule' is {data['weight_rule']!r}; choose one of {WEIGHT_RULES.names()} "
                         "(linear: multiplier_style is the LoRA's weight; facechain_sdxl: FaceChain's SDXL strength).")
    if "(" in data["add_prompt_style"] and ":" in data["add_prompt_style"]:
        logger.debug("%s: prompt uses A1111 weighting; it is converted at generation time", where)
    return Style(
        name=data["name"].strip(), img=data["img"], model_id=data["model_id"], revision=data["revision"],
        bin_file=data["bin_file"], multiplier_style=float(data["multiplier_style"]),
        multiplier_human=float(data["multiplier_human"]), add_prompt_style=data["add_prompt_style"],
        family=family, path=path, weight_rule=data["weight_rule"],
    )


def load_style_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Style:
    from facechain.configfile import load_json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"style file {path} does not exist.") from exc
    data = load_json(text, f"style file {path}")  # a syntax error or a key given twice: an InputError naming the file
    return parse_style(data, path, _family_of(path, Path(root) if root else path.parent))


class StyleRegistry:
    """Styles by (family, name), on the shared :class:`~facechain.registry.Registry` type.
    :meth:`register` refuses a duplicate name within a family; :meth:`get` also finds a style by
    its file name and says when a style exists only for the other family."""

    def __init__(self) -> None:
        self._styles: Registry[Style] = Registry("style")

    @staticmethod
    def _key(family: str, name: str) -> str:
        return f"{family}/{name.casefold()}"

    def register(self, style: Style) -> None:
        key = self._key(style.family, style.name)
        if key in self._styles:
            other = self._styles.get(key)
            raise InputError(
                f"style name '{style.name}' ({style.family}) is defined twice: {other.path} and {style.path}. "
                "Rename one of them."
            )
        self._styles.register(key, style)

    def __len__(self) -> int:
        return len(self._styles)

    def __iter__(self):
        return iter(sorted(self._styles, key=lambda s: (s.family, s.name)))

    def names(self, family: str | None = None) -> list[str]:
        return sorted(s.name for s in self if family is None or s.family in (family, "any"))

    def get(self, name: str, family: str) -> Style:
        """The style called ``name`` (or whose file is ``name.json``) usable on a ``family`` base."""
        want = name.strip().casefold()
        matches = [
            s for s in self
            if s.family in (family, "any") and (s.name.casefold() == want or s.path.stem.casefold() == want)
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InputError(f"style '{name}' is ambiguous: {[str(s.path) for s in matches]}. Use the exact name.")
        elsewhere = [s for s in self if s.name.casefold() == want or s.path.stem.casefold() == want]
        if elsewhere:
            raise InputError(
                f"style '{name}' is for {elsewhere[0].family} base models ({elsewhere[0].path}), but the base model is "
                f"{family}. Styles for {family}: {self.names(family)}"
            )
        raise InputError(
            f"unknown style '{name}' for a {family} base model. Available: {self.names(family)}. "
            "Add a style by dropping a JSON file in a styles folder (see docs/generate.md)."
        )


def load_styles(dirs: Iterable[str | os.PathLike] | None = None) -> StyleRegistry:
    """Load and validate every ``*.json`` under each folder (recursively) into a registry."""
    registry = StyleRegistry()
    for root in list(dirs) if dirs is not None else [DEFAULT_STYLES_DIR]:
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"styles folder {root} does not exist. Pass an existing folder in style_dirs.")
        for path in sorted(root.rglob("*.json")):
            registry.register(load_style_file(path, root))
    return registry
