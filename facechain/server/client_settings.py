"""What a client may set, per job kind, with bounds: the allow-list.

A request's settings are checked here at submit time; a field not listed is refused with a 400 naming it,
and so is a value of the wrong type or out of bounds. Paths, model ids, pickle and folder-ownership
switches, devices and sizes come only from the server's own config (``ServeConfig``: ``train``,
``generate``, ``template``, ``stylize``); a bound may be a server setting (``max_train_steps`` ...), so an
operator raises it in the config, never a client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from facechain.errors import InputError


@dataclass(frozen=True)
class Allowed:
    """One client setting: its kind (int, float, bool, str, choice, choices), its bounds (a number, or the name
    of a ServeConfig field) and, for choice(s), the function listing what may be picked."""

    kind: str
    help: str
    lo: float | None = None
    hi: float | str | None = None
    options: Callable[[], list[str]] | None = None
    max_items: int | str | None = None  # choices: the most that may be picked

    def bound(self, value, limits) -> Any:
        return getattr(limits, value) if isinstance(value, str) else value

    def check(self, name: str, value: Any, limits) -> Any:
        where = f"setting {name!r}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise InputError(f"{where} must be true or false, not {value!r}.")
            return value
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    self.kind == "int" and not float(value).is_integer()):
                raise InputError(f"{where} must be {'an integer' if self.kind == 'int' else 'a number'}, not {value!r}.")
            if not math.isfinite(value):
                raise InputError(f"{where} must be a finite number, not {value!r}.")
            lo, hi = self.bound(self.lo, limits), self.bound(self.hi, limits)
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise InputError(f"{where} is {value!r}; this server allows {lo:g} to {hi:g}"
                                 + (f" (the server's {self.hi})." if isinstance(self.hi, str) else "."))
            return int(value) if self.kind == "int" else float(value)
        if self.kind == "str":
            if not isinstance(value, str):
                raise InputError(f"{where} must be text, not {value!r}.")
            hi = int(self.bound(self.hi, limits) or 1000)
            if len(value) > hi:
                raise InputError(f"{where} is {len(value)} characters; the most is {hi}.")
            return value
        names = self.options() if self.options else []
        if self.kind == "choice":
            if value not in names:
                raise InputError(f"{where} is {value!r}; pick one of: {', '.join(names)}.")
            return value
        # choices: a list of names
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where} must be a list of names, e.g. [{names[0]!r}].")
        most = int(self.bound(self.max_items, limits) or len(names))
        if len(value) > most:
            raise InputError(f"{where} lists {len(value)}; this server allows at most {most}.")
        unknown = [v for v in value if v not in names]
        if unknown:
            raise InputError(f"{where}: unknown {', '.join(map(repr, unknown))}; known: {', '.join(names)}.")
        return list(dict.fromkeys(value))


def _styles() -> list[str]:
    from facechain.generate.styles import DEFAULT_STYLES_DIR, load_styles

    return sorted(set(load_styles([DEFAULT_STYLES_DIR]).names()))


def _poses() -> list[str]:
    from facechain.generate.poses import named_poses

    return named_poses()


STYLIZE_METHODS = ["portrait-diffusion", "styleid", "masactrl", "diffstyle"]
SEED = Allowed("int", "seed of the run", 0, 2**31 - 1)

# every setting a client may send, per job kind; nothing else reaches a stage from a request
CLIENT_SETTINGS: dict[str, dict[str, Allowed]] = {
    "train": {
        "max_train_steps": Allowed("int", "cap on the training steps", 1, "max_train_steps"),
        "learning_rate": Allowed("float", "AdamW learning rate", 1e-6, 1e-2),
        "rank": Allowed("int", "LoRA rank", 1, 64),
        "seed": SEED,
        "restart": Allowed("bool", "start the person's training over: the old LoRA and checkpoints are removed"),
    },
    "generate": {
        "styles": Allowed("choices", "style names (GET /api/styles)", options=_styles, max_items="max_styles"),
        "num_images": Allowed("int", "images kept per style", 1, "max_images"),
        "fast": Allowed("bool", "fast mode (LCM-LoRA)"),
        "pose": Allowed("choice", "a pose by name (GET /api/poses)", options=_poses),
        "seed": SEED,
        "guidance_scale": Allowed("float", "classifier-free guidance", 1.0, 20.0),
        "num_inference_steps": Allowed("int", "sampling steps", 1, "max_inference_steps"),
        "prompt": Allowed("str", "extra words for every prompt", hi=500),
        "negative_prompt": Allowed("str", "negative prompt", hi=1000),
    },
    "template": {
        "seed": SEED,
        "num_inference_steps": Allowed("int", "sampling steps", 1, "max_inference_steps"),
    },
    "stylize": {
        "method": Allowed("choice", "stylize method", options=lambda: list(STYLIZE_METHODS)),
        "only_mask_region": Allowed("bool", "stylize inside the content mask only"),
        "fast": Allowed("bool", "LCM-LoRA: few steps"),
        "num_inference_steps": Allowed("int", "inversion and sampling steps", 1, "max_inference_steps"),
        "guidance_scale": Allowed("float", "classifier-free guidance", 1.0, 20.0),
    },
}


def check_client_settings(kind: str, settings: Any, limits) -> dict:
    """``settings`` checked against the allow-list of ``kind`` (InputError naming the first bad field), with
    ``limits`` (the ServeConfig) giving the bounds that are server settings."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise InputError("the settings must be a JSON object, e.g. {\"num_images\": 2}.")
    allowed = CLIENT_SETTINGS[kind]
    out = {}
    for name, value in settings.items():
        if name not in allowed:
            raise InputError(f"setting {name!r} cannot be set by a client of this server; a {kind} job takes: "
                             f"{', '.join(sorted(allowed)) or 'none'}. (Paths, models and devices are the server's own "
                             "settings: its --config file.)")
        out[name] = allowed[name].check(name, value, limits)
    return out
