"""The tensors of a TorchScript archive (OpenAI's released CLIP files), read without running any of it.

`torch.jit.load` compiles the archive's code and runs each class's `__setstate__`, so a crafted file can
do anything while it loads. Here `<root>/data.pkl` is unpickled with only tensor rebuilding allowed: every
`__torch__.*` object is an inert record of its state, storages are read from `<root>/data/<key>`, and
the parameter / buffer names come from the `__parameters__` / `__buffers__` lines of each class in
`<root>/code/` (matched as text: the code is never compiled or run). The result has the keys
`torch.jit.load(path).state_dict()` gives.
"""

from __future__ import annotations

import ast
import functools
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# torch.<name>Storage -> the dtype of its elements
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
_CLASS_LINE = re.compile(r"class (\w+)\(Module\):")
_FIELD_LINE = re.compile(r"\s+(__parameters__|__buffers__) = (\[.*\])")
_KEY = re.compile(r"\w+")


class ArchiveError(Exception):
    """The archive cannot be read without running its code (or is damaged); the message says why."""


def is_torchscript(path: Path) -> bool:
    """A zip with `<root>/constants.pkl`: what `torch.jit.save` writes (a plain `torch.save` zip has none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):  # not a zip (or a damaged one): torch.load's error says more
        return False


def read_torchscript(path: Path) -> dict[str, Tensor]:
    """The archive's state dict (parameters and buffers of every module); raises ArchiveError."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = _root(archive)
            _check_byteorder(archive, root)
            modules = _module_fields(archive, root)
            obj = _ScriptUnpickler(archive, root).load()
        state: dict[str, Tensor] = {}
        _flatten(obj, modules, "", state, ())
    except ArchiveError:
        raise
    except Exception as exc:  # damaged zip, truncated pickle, bad tensor geometry...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise ArchiveError(f"{type(exc).__name__}: {first[:200]}") from None
    return state


def _root(archive: zipfile.ZipFile) -> str:
    roots = {n.split("/")[0] for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")}
    if len(roots) != 1:
        raise ArchiveError("no single <root>/data.pkl (an older TorchScript format?)")
    return roots.pop()


def _check_byteorder(archive: zipfile.ZipFile, root: str) -> None:
    name = f"{root}/byteorder"
    order = archive.read(name).decode().strip() if name in archive.namelist() else "little"
    if order != sys.byteorder:
        raise ArchiveError(f"its tensors are {order}-endian, this machine is {sys.byteorder}-endian")


def _module_fields(archive: zipfile.ZipFile, root: str) -> dict[str, tuple[list[str], list[str]]]:
    """Module class name -> (parameter names, buffer names), from the class headers of the archive's
    code, read as text lines: what makes an attribute part of the state dict is declared only there."""
    fields: dict[str, tuple[list[str], list[str]]] = {}
    prefix = f"{root}/code/"
    for name in archive.namelist():
        if name.startswith(prefix) and name.endswith(".py"):
            module = name[len(prefix):-3].replace("/", ".")
            _read_declarations(archive.read(name).decode(), module, fields)
    return fields


def _read_declarations(text: str, module: str, fields: dict[str, tuple[list[str], list[str]]]) -> None:
    current: tuple[list[str], list[str]] | None = None
    for line in text.splitlines():
        if match := _CLASS_LINE.fullmatch(line):
            current = fields[f"{module}.{match[1]}"] = ([], [])
        elif current is not None and (match := _FIELD_LINE.fullmatch(line)):
            names = ast.literal_eval(match[2])  # a list of string literals; nothing is evaluated
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ArchiveError(f"unexpected {match[1]} declaration in {module}")
            current[0 if match[1] == "__parameters__" else 1].extend(names)
        elif line and not line[0].isspace():
            current = None  # past the class


class _ScriptObject:
    """An object of one of the archive's own classes: its state is recorded, none of its code runs."""

    qualname = ""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD lands here, not in the archive's __setstate__
        self.state = state


@functools.cache
def _script_class(qualname: str) -> type[_ScriptObject]:
    return type(qualname.rsplit(".", 1)[-1], (_ScriptObject,), {"qualname": qualname})


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_: object) -> Tensor:
    """torch._utils._rebuild_tensor(_v2) on a flat tensor over the storage; hooks and metadata ignored."""
    return torch.empty(0, dtype=storage.dtype).set_(storage.untyped_storage(), offset, size, stride)


def _rebuild_parameter(data: Tensor, *_: object) -> Tensor:
    return data


def _as_list(values: list[Any]) -> list[Any]:
    return list(values)


def _restore_type_tag(value: Any, _type: str) -> Any:
    return value


_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    **{("torch.jit._pickle", f"build_{kind}list"): _as_list for kind in ("int", "double", "bool", "tensor")},
}


class _ScriptUnpickler(pickle.Unpickler):
    """data.pkl with only tensors, containers and inert `__torch__` records; anything else is refused."""

    def __init__(self, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(archive.open(f"{root}/data.pkl"))
        self.archive, self.root = archive, root
        self.storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise ArchiveError(f"its data.pkl calls {module}.{name}, which ablate does not run")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _KEY.fullmatch(pid[2])
                and isinstance(pid[4], int)):
            raise ArchiveError(f"unexpected persistent id {str(pid)[:80]}")
        _, kind, key, _, numel = pid
        if key not in self.storages:
            self.storages[key] = self._storage(key, kind.dtype, numel)
        return self.storages[key]

    def _storage(self, key: str, dtype: torch.dtype, numel: int) -> Tensor:
        """The blob `<root>/data/<key>` as a flat tensor of `numel` elements."""
        name = f"{self.root}/data/{key}"
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        if self.archive.getinfo(name).file_size != nbytes:
            raise ArchiveError(f"{name} does not hold {numel} {dtype} values")
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(bytearray(self.archive.read(name)), dtype=dtype)


def _flatten(obj: Any, modules: dict[str, tuple[list[str], list[str]]], prefix: str,
             out: dict[str, Tensor], above: tuple[int, ...]) -> None:
    """A module's parameters and buffers, then its submodules', as nn.Module.state_dict names them."""
    where = prefix.rstrip(".") or "the root module"
    if not isinstance(obj, _ScriptObject) or obj.qualname not in modules:
        raise ArchiveError(f"{where} is not a module the archive declares")
    if not isinstance(obj.state, dict):
        raise ArchiveError(f"{where} ({obj.qualname}) sets its own state with code (__setstate__)")
    if id(obj) in above:
        raise ArchiveError(f"{where} contains itself")
    params, buffers = modules[obj.qualname]
    for name in (*params, *buffers):
        value = obj.state.get(name)
        if isinstance(value, Tensor):
            out[prefix + name] = value
        elif value is not None or name not in obj.state:
            raise ArchiveError(f"{prefix}{name} is declared but holds no tensor")
    for name, value in obj.state.items():
        if isinstance(value, _ScriptObject) and value.qualname in modules:
            _flatten(value, modules, f"{prefix}{name}.", out, (*above, id(obj)))
