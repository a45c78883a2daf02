"""Probes are found by name here: a probe is one declaration (`ProbeInfo`) plus one module.

This module imports no torch: specs validate `probes:` and reports title their diagnostics columns
from these declarations alone; a probe's code is named as "module:attribute" and imported only when
it runs. The four built-in probes are registered at the bottom; a plugin calls `register_probe`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ablate.errors import ConfigError
from ablate.registry import Registry

Ref = str | Callable[..., Any]  # a callable, or "package.module:attribute" imported on first use


@dataclass(frozen=True)
class ProbeInfo:
    """What ablate needs to know about a probe without importing it."""

    name: str
    columns: Mapping[str, str]
    """Flat metric -> column title in the report's diagnostics table (in table order). `flat` may
    return more metrics (logged to MLflow, not tabulated)."""
    run: Ref
    """(trial.ProbeContext) -> result dict, or None when the probe does not apply to the trial (it is skipped)."""
    flat: Ref
    """(result dict) -> flat metric name -> value; non-finite values are dropped by the caller."""
    needs_trained: bool = False
    """True: the probe reads the trained method, so running it without a trained.pt is an error."""
    help: str = ""
    """One line for `ablate probe --help`."""
    add_arguments: Ref | None = None
    """(argparse.ArgumentParser) -> None: the flags of `ablate probe <name>`; None: no such command."""
    command: Ref | None = None
    """(argparse.Namespace) -> the text `ablate probe <name>` prints; imported only when it runs."""

    def __post_init__(self) -> None:
        if not self.columns:
            raise ConfigError(f"probe '{self.name}' declares no columns for the report")
        if (self.add_arguments is None) != (self.command is None):
            raise ConfigError(f"probe '{self.name}': give both add_arguments and command, or neither")
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    @property
    def command_name(self) -> str:
        """The `ablate probe` subcommand: the name, spelt with hyphens."""
        return self.name.replace("_", "-")


PROBES: Registry[ProbeInfo] = Registry("probe")


def register_probe(info: ProbeInfo, replace: bool = False) -> ProbeInfo:
    """Make a probe available to specs, sweeps, reports and the CLI; its columns must be its own."""
    taken = {col: name for name, other in PROBES.items() if name != info.name for col in other.columns}
    clash = sorted(col for col in info.columns if col in taken)
    if clash:
        raise ConfigError(f"probe '{info.name}': column(s) {', '.join(clash)} already belong to probe "
                          f"'{taken[clash[0]]}'")
    return PROBES.register(info.name, info, replace=replace)


def probe_names() -> list[str]:
    """Registered probes, in registration order."""
    return PROBES.names()


def probe_columns() -> dict[str, str]:
    """Flat metric -> column title of every registered probe: the report's diagnostics columns, in order."""
    return {col: title for _, info in PROBES.items() for col, title in info.columns.items()}


# ---- built-in probes ------------------------------------------------------------------------------

for _info in (
    ProbeInfo(
        name="negation",
        columns={"probe_negation_paraphrase_cos": "cos(P, paraphrase)",
                 "probe_negation_negation_cos": "cos(P, negation)",
                 "probe_negation_inter_class_cos": "cos(P, other class)",
                 "probe_negation_farther_pct": "negation farther %"},
        run="ablate.probes.negation:run_for_trial", flat="ablate.probes.negation:flat",
        help="text only: cosine of a prompt to its paraphrases and negations",
        add_arguments="ablate.probes.negation:add_arguments", command="ablate.probes.negation:command"),
    ProbeInfo(
        name="presence",
        columns={"probe_presence_balanced_acc": "presence bal. acc",
                 "probe_presence_delta_map": "ΔmAP (pos−neg vs pos)"},
        run="ablate.probes.presence:run_for_trial", flat="ablate.probes.presence:flat",
        help="zero-shot presence vs absence: balanced accuracy and ΔmAP",
        add_arguments="ablate.probes.presence:add_arguments", command="ablate.probes.presence:command"),
    ProbeInfo(
        name="hard_positive",
        columns={"probe_hp_accuracy": "acc", "probe_hp_hard_positive_acc": "hard-pos acc",
                 "probe_hp_augmented_acc": "aug. acc", "probe_hp_brittleness": "brittleness"},
        run="ablate.probes.hard_positive:run_for_trial", flat="ablate.probes.hard_positive:flat",
        help="seed-003 metrics on triples from multi-label ground truth",
        add_arguments="ablate.probes.hard_positive:add_arguments", command="ablate.probes.hard_positive:command"),
    ProbeInfo(
        name="prompts",  # its command is `ablate analyze`: it reads a trained method, not a backbone
        columns={"analysis_pos_neg_cos": "cos(learned pos, neg)",
                 "analysis_cross_seed_cos": "cos(pos, pos) seeds",
                 "analysis_map_correlation": "r(pos map, neg map)"},
        run="ablate.probes.analyze:run_for_trial", flat="ablate.probes.analyze:flat", needs_trained=True),
):
    register_probe(_info)
del _info
