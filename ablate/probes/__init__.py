"""Diagnostics that explain the results: negation, presence and hard-positive probes of a backbone,
and the analysis of a trained method's learned prompts.

A probe is one module (its metric functions on tensors / arrays, a runner that calls the real
encoders, and the hooks its registration names) plus one `ProbeInfo` in the registry. This face
imports only the registry, so specs and reports can ask which probes exist and which columns they
report without importing torch; everything else is imported on first access.
"""

from __future__ import annotations

from typing import Any

from ablate.errors import ProbeError
from ablate.registry import lazy_face

from .registry import PROBES, ProbeInfo, probe_columns, probe_names, register_probe

# name -> the submodule that defines it, imported when the name is first read
_LAZY = {
    **dict.fromkeys(("describe", "format_stats", "write_json", "probe_backbone", "probe_images", "image_loader",
                     "encode_images", "encode_texts"), "common"),
    **dict.fromkeys(("ProbeContext", "run_probes_for_trial", "flat_metrics", "probe_markdown"), "trial"),
    "add_probe_commands": "cli",
    **dict.fromkeys(("add_config_flags", "config_from_args", "PROBE_FLAGS"), "flags"),
}

__all__ = ["PROBES", "PROBE_COLUMNS", "PROBE_FLAGS", "ProbeContext", "ProbeError", "ProbeInfo", "add_config_flags",
           "add_probe_commands", "config_from_args", "describe", "encode_images", "encode_texts", "flat_metrics",
           "format_stats", "image_loader", "probe_backbone", "probe_columns", "probe_images", "probe_markdown",
           "probe_names", "register_probe", "run_probes_for_trial", "write_json"]


_lazy_getattr, __dir__ = lazy_face(__name__, _LAZY)


def __getattr__(name: str) -> Any:
    if name == "PROBE_COLUMNS":  # computed on each read: it follows registrations
        return probe_columns()
    return _lazy_getattr(name)
