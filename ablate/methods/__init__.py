"""The compared methods. This face holds the registry (no torch): `create_method`, `method_info`,
`register_method`; the implementations (one module per family: two_sided, baseline, zeroshot) are
imported when a method is built, and `Method`, `FREE`, `LINEAR` on first access."""

from __future__ import annotations

import importlib
from typing import Any

from .registry import (
    METHODS,
    Kind,
    MethodInfo,
    create_method,
    method_info,
    method_names,
    register_method,
)

__all__ = ["FREE", "Kind", "LINEAR", "METHODS", "Method", "MethodInfo", "create_method", "method_info",
           "method_names", "register_method"]

_LAZY = {"Method": "ablate.methods.base", "FREE": "ablate.methods.base", "LINEAR": "ablate.methods.base"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ablate.methods' has no attribute {name!r}")
