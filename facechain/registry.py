"""One small registry type for every pluggable part: face backends, fusion methods, stylization
methods and styles. Names are unique (a duplicate is refused), an unknown name is an InputError
listing the choices, and built-in entries are registered on first use (so importing a registry
never imports the heavy packages behind its entries).

The behaviour that differs between entries lives on the registered object (a backend's
similarity calibration, a fusion method's required face backend, a stylization method's mask and
plan support), never in ``if name == ...`` branches elsewhere.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from facechain.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, *, reserved: tuple[str, ...] = (), builtins: Callable[["Registry[T]"], None] | None = None):
        """``kind`` names the entries in messages ("face backend"); ``reserved`` names that mean
        something else (``auto``, ``off``) and cannot be registered; ``builtins(registry)``
        registers the shipped entries, once, on first use."""
        self.kind = kind
        self.reserved = reserved
        self._entries: dict[str, T] = {}
        self._builtins = builtins

    def _load(self) -> None:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None
            load(self)

    def register(self, name: str, entry: T) -> None:
        self._load()
        if name in self._entries or name in self.reserved:
            raise ValueError(f"{self.kind} '{name}' is already registered" if name in self._entries
                             else f"'{name}' is reserved and cannot name a {self.kind}")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise InputError(f"unknown {self.kind} '{name}'. Choose one of {[*self.reserved, *self.names()]}.")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter([self._entries[k] for k in sorted(self._entries)])

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
