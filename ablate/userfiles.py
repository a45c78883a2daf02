"""The one reader of every file a user hands ablate (sweep spec, trial config, published table, resume side
files): UTF-8 text of bounded size, YAML or JSON nested to a bounded depth, and every failure one
ConfigError naming the file and, where known, the line. Also where YAML 1.1's booleans meet a string
choice: `pack: off` arrives as False, so a config model maps it back to the word (or says how to quote it)."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_BYTES = 16 * 2**20  # far beyond any spec, config or table; a bigger file is a mistake (or an attack)
MAX_DEPTH = 64  # a spec nests about 5 levels; thousands would overflow the parsers' recursion


def read_text(path: Path, what: str = "file", limit: int = MAX_BYTES) -> str:
    """The file's text: UTF-8 (a byte-order mark is dropped), at most `limit` bytes."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        size = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"
        raise ConfigError(f"{what} {path}: larger than {size}; is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}); save it "
                          "as UTF-8") from None


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing lists and mappings nested deeper than MAX_DEPTH (its composer recurses
    per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        level = int(self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent))  # lists and mappings count
        self.depth += level
        if self.depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels at line {mark.line + 1}")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= level


def parse_yaml(text: str, source: str) -> Any:
    """`text` as YAML; ConfigError naming `source` and the line of a syntax error, of a character YAML does
    not allow, or of too deep a nesting."""
    loader = None
    try:
        loader = _DepthLimitedLoader(text)  # which already refuses characters YAML does not allow
        return loader.get_single_data()
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise ConfigError(f"{source}: not valid YAML at line {line}: character {err.character!r} is not "
                          "allowed") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path, what: str = "") -> Any:
    """The file's YAML (see read_text and parse_yaml); `what` ("published table") goes before the path."""
    return parse_yaml(read_text(path, what or "file"), f"{what} {path}".strip())


def parse_json(text: str, source: str) -> Any:
    """`text` as JSON; ConfigError naming `source` and the line of a syntax error or of too deep a nesting."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid JSON: nested more than {MAX_DEPTH} levels") from None
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"{source}: not valid JSON: nested more than {MAX_DEPTH} levels")
    return data


def read_json(path: Path, what: str = "") -> Any:
    """The file's JSON (see read_text and parse_json)."""
    return parse_json(read_text(path, what or "file"), f"{what} {path}".strip())


def _depth(data: Any) -> int:
    """How deeply lists and mappings nest in `data` (iteratively: no recursion limit to hit)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


# ---- YAML 1.1 booleans where a string choice is expected ----------------------------------------------------

def string_choices(annotation: Any) -> tuple[str, ...]:
    """The string values of the Literal in a field's annotation (through Optional, unions and Annotated);
    none when the field also takes a bool, which then needs no word."""
    if annotation is bool:
        return ()
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return tuple(a for a in typing.get_args(annotation) if isinstance(a, str))
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        args = typing.get_args(annotation)[: 1 if origin is typing.Annotated else None]
        parts = [string_choices(a) for a in args]
        if any(a is bool for a in args):
            return ()
        return tuple(c for part in parts for c in part)
    return ()


def words_for_booleans(fields: dict[str, Any], data: Any) -> Any:
    """`data` (a model's input) with each true/false given to a string-choice field read back as the word YAML
    1.1 turned into it, `on`/`off`, where that word is a choice; otherwise ValueError saying to quote it.
    `fields`: the model's model_fields."""
    if not isinstance(data, dict):
        return data
    fixed = dict(data)
    for name, value in data.items():
        if not isinstance(value, bool) or name not in fields:
            continue
        choices = string_choices(fields[name].annotation)
        if not choices:
            continue
        word = "on" if value else "off"
        if word not in choices:
            raise ValueError(f"{name}: got {str(value).lower()} (YAML reads an unquoted yes, no, on, off, true or "
                             f"false as a boolean); write one of {', '.join(map(repr, choices))} in quotes, e.g. "
                             f"{name}: \"{choices[0]}\"")
        fixed[name] = word
    return fixed
