"""Config helpers shared by every stage, and the one bridge from a config to command-line flags.

Stage configs are frozen dataclasses whose fields are declared with :func:`setting` (help, default, and
whether the field holds a path); the model-reference block (base_model, revision, ...) is declared once,
in :func:`model_ref`, and relative paths are resolved against a config file's folder by
:func:`resolve_config_paths`.
:func:`from_dict` builds one from a mapping (YAML/JSON/CLI), checking every field's type and
refusing unknown keys with the list of valid ones; :func:`save_config` writes the config as
JSON beside the artifact it produced.

Renamed settings: a config class lists ``RENAMED = {"old_name": "new_name"}`` (a ClassVar). The
old name still works in config files and as a flag, with a one-line deprecation note.

Flags (:func:`add_config_arguments`, :func:`settings_from_args`), the way transformers'
``HfArgumentParser`` does it: every field is ``--field-name`` (the ``--field_name`` spelling works
too), its type, choices and help come from the annotation and the field's metadata, and its
default is shown from the dataclass, never written twice. Only flags the user gave are set, so
they override a config file field by field.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from facechain.configfile import load_mapping  # noqa: F401 (the config files' reader, used as config.load_mapping)
from facechain.errors import InputError, excerpt
from facechain.io import write_json
from facechain.models import VARIANT_HELP, VARIANTS

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int->float and str->Path. Raise InputError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {excerpt(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{where}: must be one of {list(args)}, got {excerpt(value)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {type(value).__name__} {excerpt(value)}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {type(value).__name__} {excerpt(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping for {tp.__name__}, got {excerpt(value)}")
        return from_dict(tp, value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{where}: expected true or false, got {excerpt(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise InputError(f"{where}: must be a finite number, got {excerpt(value)}. Give a real number (e.g. 7.5).")
            return float(value)
        raise InputError(f"{where}: expected a number, got {excerpt(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(f"{where}: expected an integer, got {excerpt(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(f"{where}: expected a string, got {excerpt(value)}")
    if tp in (Path, os.PathLike):
        if isinstance(value, (str, Path)):
            return Path(value)
        raise InputError(f"{where}: expected a path, got {excerpt(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise InputError(f"{where}: expected {tp.__name__}, got {excerpt(value)}")
    return value


def renamed(cls: type) -> dict[str, str]:
    """Old setting name -> new name for ``cls`` (its ``RENAMED`` class attribute)."""
    return dict(getattr(cls, "RENAMED", {}) or {})


def upgrade_names(cls: type, data: dict, where: str, warn: bool = True) -> dict:
    """``data`` with renamed settings under their new names (a one-line deprecation note each when
    ``warn``). Both spellings at once is an error."""
    table = renamed(cls)
    out = dict(data)
    for old, new in table.items():
        if old not in out:
            continue
        if new in out:
            raise InputError(f"{where}: '{old}' and '{new}' are the same setting ('{old}' is its old name); give only '{new}'.")
        out[new] = out.pop(old)
        if warn:
            logger.warning("%s: setting '%s' is now called '%s'; the old name still works but is deprecated.", where, old, new)
    return out


def from_dict(cls: type[T], data: dict, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, type-checking every field.

    Unknown keys are refused (a typo is an error, not a silently ignored option); renamed ones
    are accepted with a deprecation note."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    data = upgrade_names(cls, data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {excerpt(unknown, 300)}. Valid settings: {sorted(fields)}")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise InputError(f"{where}: required setting(s) {missing} not given. Set them in the config file or as flags "
                         f"({', '.join('--' + n.replace('_', '-') for n in missing)}).")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required field
        raise InputError(f"{where}: {exc}") from exc


def to_dict(cfg: Any) -> dict:
    """Dataclass -> JSON-ready dict (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as JSON (atomically) beside the artifact it produced."""
    return write_json(path, {"_type": type(cfg).__name__, **to_dict(cfg)})


def field_help(cls: type) -> dict[str, str]:
    """Field name -> help text, for CLI and docs."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


# --------------------------------------------------------------------------- declaring settings


def setting(help: str, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            path: bool = False, maybe_path: bool = False, keywords: tuple[str, ...] = (),
            choices: Any = None, flags: tuple[str, ...] = ()) -> Any:
    """A config field: its help (the flag's help, with the default appended) and what it holds.

    ``path``: a file or folder (a list of them), made absolute against the config file's folder when relative
    (:func:`resolve_config_paths`); ``maybe_path``: a path or a hub id (``base_model``, a ControlNet), resolved
    only when it starts with ``./`` or ``../`` or names something in that folder; ``keywords``: values that name
    a known model, never a path (``facechain``); ``choices``: the values a ``str`` flag takes, for a list kept
    elsewhere; ``flags``: extra flag spellings (``--lora``)."""
    if path and maybe_path:
        raise ValueError("a setting is either a path or maybe a path, not both")
    metadata: dict[str, Any] = {"help": help}
    if path or maybe_path:
        metadata["path"] = "path" if path else "maybe"
    if keywords:
        metadata["keywords"] = tuple(keywords)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if flags:
        metadata["flags"] = tuple(flags)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# The model-reference block: declared here once, inherited by every config that names a base model
# (as peft's configs inherit ``base_model_name_or_path`` and ``revision`` from PeftConfig). Name -> (type,
# help, default, setting() keywords). An empty revision / sub_path / single_file_config means "none".
MODEL_REF_FIELDS: dict[str, tuple[Any, str, Any, dict]] = {
    "base_model": (str, "Base model: hub id (owner/name), ModelScope id, local diffusers folder or .safetensors file.",
                   dataclasses.MISSING, {"maybe_path": True}),
    "revision": (str | None, "Hub revision / ModelScope version of base_model (e.g. v2.0); empty = the default.",
                 None, {}),
    "sub_path": (str | None, "Sub folder inside base_model (FaceChain's film/film); empty = none.", None, {}),
    "single_file_config": (str | None, "Diffusers folder (or hub id) describing a single-file checkpoint's "
                           "architecture; empty = the family's reference repo.", None, {"maybe_path": True}),
    "variant": (typing.Literal[VARIANTS], f"Base model {VARIANT_HELP}.", "auto", {}),
    "allow_pickle": (bool, "Allow pickle weight files (.bin/.ckpt/.pt, loaded tensors-only). Only for files you trust.",
                     False, {}),
}
MODEL_REF_DEFAULT = ("base_model", "revision", "sub_path", "single_file_config", "allow_pickle")
_EMPTY_MEANS_NONE = ("revision", "sub_path", "single_file_config")


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is typing.Literal}


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of the stage configs: a ``Literal`` field is checked when the config is built in code too, with
    :func:`from_dict`'s message, so no config checks its choices again by hand."""

    def __post_init__(self) -> None:
        for name, choices in _literal_fields(type(self)).items():
            if getattr(self, name) not in choices:
                raise InputError(f"{type(self).__name__}.{name}: must be one of {list(choices)}, got {excerpt(getattr(self, name))}")


@dataclasses.dataclass(frozen=True)
class ModelRef(Config):
    """Base of every config holding the model-reference block; build the block with :func:`model_ref`.

    An empty revision, sub_path or single_file_config is spelled one way per config: its default's
    spelling ('' in TrainConfig, whose train_config.json has always said '', None elsewhere), so a value
    handed from one config to another needs no ``or None``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in _EMPTY_MEANS_NONE:
            f = self.__dataclass_fields__.get(name)  # type: ignore[attr-defined]
            if f is None:
                continue
            empty = f.default if f.default in ("", None) else None
            if getattr(self, name) in ("", None):
                object.__setattr__(self, name, empty)


def model_ref(*names: str, **overrides: Any) -> type:
    """A frozen, keyword-only dataclass base holding the model-reference settings ``names`` (default: base_model,
    revision, sub_path, single_file_config, allow_pickle), with the types and help of :data:`MODEL_REF_FIELDS`.

    ``overrides`` give a config its own default (``revision="v2.0"``), or its own help and default
    (``base_model=setting("Base model; empty = ...", default="")``); the type stays the shared one."""
    names = names or MODEL_REF_DEFAULT
    unknown = sorted(set(names) - set(MODEL_REF_FIELDS)) + sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"model_ref: unknown or unselected model-reference settings {unknown}")
    specs = []
    for name in names:
        tp, text, default, extra = MODEL_REF_FIELDS[name]
        if isinstance(overrides.get(name), dataclasses.Field):
            text, default = overrides[name].metadata["help"], overrides[name].default
        elif name in overrides:
            default = overrides[name]
        specs.append((name, tp, setting(text, default, **extra)))
    return dataclasses.make_dataclass("ModelRefBlock", specs, bases=(ModelRef,), frozen=True, kw_only=True,
                                      namespace={"__module__": __name__})


# --------------------------------------------------------------------------- paths against the config file


def resolve_path(value: str | os.PathLike, base: Path) -> str:
    """``value`` (``~`` expanded) when absolute, else made absolute against ``base``."""
    p = os.path.expanduser(str(value))
    return p if os.path.isabs(p) else str((base / p).resolve())


def looks_relative_path(value: str, base: Path) -> bool:
    """A setting that may be a path or a hub id is a path when it says so (``./``, ``../``) or names
    something under ``base``."""
    return value.startswith(("./", "../")) or (not os.path.isabs(value) and (base / value).exists())


def _resolve_value(value: Any, base: Path, kind: str, keywords: tuple[str, ...]) -> Any:
    if isinstance(value, list):
        return [_resolve_value(v, base, kind, keywords) for v in value]
    if not isinstance(value, str) or not value or value in keywords:
        return value
    if kind == "path":
        return resolve_path(value, base)
    return str((base / value).resolve()) if looks_relative_path(value, base) else value


def resolve_config_paths(cls: type, data: dict, base: Path) -> dict:
    """``data`` (settings of ``cls``) with its relative paths made absolute against ``base`` (the config file's
    folder), as each field's :func:`setting` says; nested blocks and lists of blocks too."""
    out = dict(data)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        value = out[f.name]
        if "path" in f.metadata:
            out[f.name] = _resolve_value(value, base, f.metadata["path"], f.metadata.get("keywords", ()))
            continue
        tp = hints[f.name]
        nested = _nested_config(tp)
        if nested is not None and isinstance(value, dict):
            out[f.name] = resolve_config_paths(nested, value, base)
        elif typing.get_origin(tp) is list and isinstance(value, list):
            inner = _nested_config(typing.get_args(tp)[0]) if typing.get_args(tp) else None
            if inner is not None:
                out[f.name] = [resolve_config_paths(inner, v, base) if isinstance(v, dict) else v for v in value]
    return out


# --------------------------------------------------------------------------- config -> flags


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return " (required: a flag or the config file)"
    if value is None or value == "" or value == [] or value == {}:
        return " (default: none)"
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return f" (default: {value})"


def _int_or_word(text: str) -> int | str:
    """The value of an ``int | Literal[...]`` flag: an integer, else the word as given (the config checks it)."""
    try:
        return int(text)
    except ValueError:
        return text


def _flag_kwargs(tp: Any) -> dict:
    """argparse keyword arguments for a field annotation; None for types no flag can hold."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if int in inner and all(a is int or typing.get_origin(a) is typing.Literal for a in inner):
            return {"type": _int_or_word}  # batch_size: 3 or auto
        return _flag_kwargs(inner[0]) if len(inner) == 1 else {"type": str}
    if origin is typing.Literal:
        return {"choices": list(args)}
    if origin in (list, tuple):
        inner = args[0] if args else str
        return {"nargs": "+", "action": "extend", "type": inner if inner in (int, float) else str}
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):  # a nested config: see add_config_arguments
        return None
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float):
        return {"type": tp}
    return {"type": str}


class RenamedFlag(argparse.Action):
    """An old flag spelling: stores under the new name, with a deprecation note."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        logger.warning("%s is now %s; the old flag still works but is deprecated.", option_string, self.new_flag)
        if self.nargs == 0:  # a yes/no flag: the constant of its spelling
            values = self.const
        elif isinstance(values, list) and isinstance(getattr(namespace, self.dest, None), list):
            values = getattr(namespace, self.dest) + values
        setattr(namespace, self.dest, values)


# One flag vocabulary: a command's output folder is --output-dir, its progress switch --no-progress. The old
# spellings still parse (hidden, with a deprecation note). Parsers are built with allow_abbrev=False, so a
# prefix (--out of --output-dir / --output_dir) is never taken for a flag, let alone an ambiguous one.
OLD_FLAGS: dict[str, tuple[str, ...]] = {"output_dir": ("--out",), "no_progress": ("--quiet",)}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                         title: str | None = None) -> None:
    """One flag per field of dataclass ``cls`` (fields in ``skip`` and mappings excepted):
    ``--field-name`` and ``--field_name``, plus hidden old spellings from ``RENAMED`` and any
    ``metadata["flags"]`` aliases. The value lands in ``args.<field_name>``; an absent flag leaves
    no attribute, so :func:`settings_from_args` returns only what was given."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    old_names: dict[str, list[str]] = {}
    for old, new in renamed(cls).items():
        old_names.setdefault(new, []).append(old)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        nested = _nested_config(hints[f.name])
        if nested is not None:  # an ``identity:`` block: --identity-adapter, --identity-scale, ...
            for sub in dataclasses.fields(nested):
                kw = _flag_kwargs(typing.get_type_hints(nested)[sub.name])
                if kw is None or not sub.init:
                    continue
                if "type" in kw:
                    kw = {**kw, "metavar": f"{f.name}_{sub.name}".upper()}
                name = f"{f.name}-{sub.name}".replace("_", "-")
                group.add_argument(f"--{name}", f"--{f.name}_{sub.name}", dest=f"{f.name}.{sub.name}",
                                   default=argparse.SUPPRESS, help=f"{f.name}.{sub.name}: " + sub.metadata.get("help", "")
                                   + _default_text(sub), **kw)
            continue
        kwargs = _flag_kwargs(hints[f.name])
        if kwargs is None:
            continue
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        flags += list(f.metadata.get("flags", ()))
        if "choices" in f.metadata:  # a str field checked against a list kept elsewhere
            kwargs = {**kwargs, "choices": list(f.metadata["choices"])}
        if "type" in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = f.name.upper()
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS,
                           help=f.metadata.get("help", "") + _default_text(f), **kwargs)
        for old in OLD_FLAGS.get(f.name, ()):
            group.add_argument(old, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, action=RenamedFlag,
                               new_flag=flags[0], **{k: v for k, v in kwargs.items() if k not in ("action", "metavar")})
        for old in old_names.get(f.name, ()):
            spell = lambda prefix: sorted({f"--{prefix}{old.replace('_', '-')}", f"--{prefix}{old}"})  # noqa: E731
            hidden = {"dest": f.name, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS, "action": RenamedFlag}
            if kwargs.get("action") is argparse.BooleanOptionalAction:
                group.add_argument(*spell(""), nargs=0, const=True, new_flag=flags[0], **hidden)
                group.add_argument(*spell("no-"), nargs=0, const=False, new_flag="--no-" + flags[0][2:], **hidden)
            else:
                group.add_argument(*spell(""), new_flag=flags[0], **hidden,
                                   **{k: v for k, v in kwargs.items() if k not in ("action", "metavar")})


def _nested_config(tp: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), or None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = inner[0] if len(inner) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def settings_from_args(cls: type, args: argparse.Namespace) -> dict:
    """The settings of ``cls`` that were given as flags (see :func:`add_config_arguments`); a nested
    config's flags (``--identity-scale``) come back as a mapping (``{"identity": {"scale": ...}}``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict = {}
    for k, v in vars(args).items():
        if k in names:
            out[k] = v
        elif "." in k and k.split(".", 1)[0] in names:
            top, sub = k.split(".", 1)
            out.setdefault(top, {})[sub] = v
    return out


def merge_settings(base: dict, over: dict) -> dict:
    """``base`` updated with ``over``; a nested block (a mapping in both) is merged key by key, so
    ``--identity-scale 0.8`` keeps the config file's ``identity.adapter``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out



def settings_from_sources(cls: type, args: argparse.Namespace, config_file: str | os.PathLike | None = None) -> dict:
    """The settings of a config file (if any, old names upgraded), overridden by the flags the user gave."""
    data = upgrade_names(cls, load_mapping(config_file), f"config {config_file}") if config_file else {}
    return merge_settings(data, settings_from_args(cls, args))


def config_from_sources(cls: type[T], args: argparse.Namespace, config_file: str | os.PathLike | None = None) -> T:
    """``cls`` from a config file (if any), then the flags the user gave."""
    where = f"config {config_file}" if config_file else cls.__name__
    return from_dict(cls, settings_from_sources(cls, args, config_file), where=where)
