"""A config file's text to Python values, refusing two things ``yaml.safe_load`` and ``json.loads`` let pass:

* a key given twice in one mapping: both parsers keep the last value and drop the first without a word;
  here it is an error naming the key (and, in YAML, both lines);
* YAML aliases that expand past :data:`MAX_ALIAS_VALUES` values. Each ``*name`` stands for the whole value
  anchored as ``&name``, so a few hundred bytes of aliases of aliases stand for billions of values (the
  "billion laughs"): harmless while shared, but any code that walks, prints or saves the value pays for all
  of them. The count is made on the composed node graph, before any value is built.

:func:`load_mapping` reads a config file (YAML, or JSON by its suffix) with these rules.

A merge key (``<<: *defaults``) is no duplicate: the keys written beside it override the merged ones, as YAML
defines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from facechain.errors import InputError, excerpt

# Values that aliases may add to a document, in all: far more than any config repeats with anchors (a batch
# file's defaults merged into a few hundred people), far fewer than an alias bomb expands to.
MAX_ALIAS_VALUES = 10_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(Exception):
    def __init__(self, key, first_line: int, second_line: int):
        super().__init__(key)
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a key given twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    given = key in first
                except TypeError:  # an unhashable key: the base constructor says so
                    continue
                if given:
                    raise _DuplicateKey(key, first[key], line)
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def _alias_values(root: yaml.Node) -> int:
    """How many values the aliases in the document under ``root`` add (the expanded count minus the distinct
    nodes), counted once per node. Raises ValueError for an alias inside the value it names (endless)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ValueError(f"line {node.start_mark.line + 1}: an alias stands for a value that holds it")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        open_nodes.discard(key)
        sizes[key] = n
        return n

    return size(root) - len(sizes)


def load_yaml(text: str, source: str):
    """The one YAML document in ``text`` (None when empty). ``source`` names it in errors (the file, a flag).
    Raises InputError for a syntax error, a duplicate key, or aliases past :data:`MAX_ALIAS_VALUES`."""
    loader = _Loader(text)
    loader.name = source  # syntax errors say where: 'in "config file x.yaml", line 3'
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise InputError(f"{source} could not be parsed: {exc}") from exc
        except RecursionError as exc:
            raise InputError(f"{source} could not be parsed: its values are nested too deeply.") from exc
        if node is None:
            return None
        try:
            added = _alias_values(node)
        except ValueError as exc:
            raise InputError(f"{source}: {exc}. Write the value out instead of the alias.") from exc
        if added > MAX_ALIAS_VALUES:
            raise InputError(f"{source}: its aliases (*name) expand to {added:,} more values, over the limit of "
                             f"{MAX_ALIAS_VALUES:,} (a file of aliases of aliases can stand for billions). Write the "
                             "values out, or anchor and reuse fewer of them.")
        try:
            return loader.construct_document(node)
        except _DuplicateKey as dup:
            lines = (f"on line {dup.first_line} and line {dup.second_line}" if dup.first_line != dup.second_line
                     else f"on line {dup.first_line}")
            raise InputError(f"{source}: key {excerpt(dup.key, 60)} is given twice in one mapping, {lines}; only one "
                             "value can hold. Delete one of them.") from None
        except yaml.YAMLError as exc:
            raise InputError(f"{source} could not be parsed: {exc}") from exc
        except (ValueError, TypeError, OverflowError) as exc:  # a scalar its tag cannot hold (2001-13-45, !!int x)
            raise InputError(f"{source} could not be parsed: a value is not what it looks like or is tagged as "
                             f"({str(exc)[:200]}).") from exc
    finally:
        loader.dispose()


def _refuse_duplicates(source: str):
    def pairs_to_dict(pairs: list) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise InputError(f"{source}: key {excerpt(key, 60)} is given twice in one object; only one value can "
                                 "hold. Delete one of them.")
            out[key] = value
        return out

    return pairs_to_dict


def load_json(text: str, source: str):
    """The JSON value in ``text``; ``source`` names it in errors. Raises InputError for a syntax error or a key
    given twice in one object."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates(source))
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} could not be parsed: {exc}") from exc
    except RecursionError as exc:
        raise InputError(f"{source} could not be parsed: its values are nested too deeply.") from exc


def load_mapping(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON file into a dict, with a clear error for a missing or malformed file, a key given twice
    or a YAML alias bomb."""
    from facechain.io import not_regular_kind

    path = Path(path)
    kind = not_regular_kind(path)
    if kind is not None:
        raise InputError(f"config file {path} is {kind}, not a regular file. Pass the path of a .yaml or .json config.")
    if not path.is_file():
        raise InputError(f"config file {path} does not exist. Pass the path of a .yaml or .json config.")
    source = f"config file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as UTF-8.") from exc
    data = load_json(text, source) if path.suffix.lower() == ".json" else load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of settings at the top level.")
    data.pop("_type", None)
    return data
