"""Registries: methods, datasets and probes are found by name here, never by matching names in code.

A registry maps a name to a small declaration (what the thing reads and needs, and where its code
is). Declarations import nothing heavy: an implementation is named as "module:attribute" and
imported on first use, so configs can be validated, and reports written, without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> declaration, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{self.kind} name {name!r}: use letters, digits, '-' and '_'")
        if len(name) > 64:  # it becomes part of file names (runs, caches, report files)
            raise ConfigError(f"{self.kind} name {name[:20]!r}...: at most 64 characters")
        if name in self._items and not replace:
            raise ConfigError(f"{self.kind} '{name}' is already registered (pass replace=True to override it)")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'; registered: {', '.join(self._items) or 'none'}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())


def resolve(ref: str | Callable[..., Any]) -> Any:
    """A callable as given, or "package.module:attribute" imported now."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def lazy_face(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for a package whose face names are each imported from its submodule
    (`names`: name -> submodule of `package`) on first use, so importing the face stays light."""
    def getattr_(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    def dir_() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *names})

    return getattr_, dir_
