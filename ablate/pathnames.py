"""Names that become one folder or file name (a sweep's name, an experiment's report folder, registered
methods, datasets and probes, a report section's files): checked, or mapped, to stay one component under
their parent, never `..`, a separator, an absolute path, NUL or a name the file system refuses."""

from __future__ import annotations

import re

# file systems refuse names over 255 bytes; Ray Tune and ablate add suffixes to a sweep's name
MAX_COMPONENT_BYTES = 128


def component_problem(name: str) -> str | None:
    """Why `name` cannot be one path component, or None when it can."""
    if not name or not name.strip():
        return "must not be empty"
    if name in (".", ".."):
        return f"'{name}' is not a folder name"
    if "/" in name or "\\" in name:
        return "must be one folder name, without '/' or '\\'"
    if "\0" in name or any(ord(c) < 32 for c in name):
        return "must not contain NUL or control characters"
    if len(name.encode()) > MAX_COMPONENT_BYTES:
        return f"is {len(name.encode())} bytes long; at most {MAX_COMPONENT_BYTES}"
    return None


def check_component(name: str) -> str:
    """`name` if it is one path component; else ValueError saying why (pydantic names the field)."""
    problem = component_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def folder_name(name: str) -> str:
    """A component that stands for `name` (e.g. an experiment named outside ablate): characters other than
    letters, digits, '.', '-' and '_' become '_', and no leading dot (so never '.' or '..')."""
    mapped = re.sub(r"[^\w.-]", "_", name).lstrip(".")[:MAX_COMPONENT_BYTES] or "_"
    return mapped
