"""The world's question with its uncertainty: does negation-captioned pre-training change a method's
test mAP, compared with presence-captioned pre-training, across pre-trained checkpoints?

How the comparison is formed. The unit is a pre-trained checkpoint (one pre-training seed of one
caption style). A checkpoint's score for a method is its mean test mAP: per training seed the
average over label ratios, then the mean over training seeds (a training seed that lacks a ratio is
left out, so every score averages the same ratios). The two caption styles are compared as two
independent samples of checkpoints, with Welch's t interval on the checkpoint scores. Checkpoints are
not paired across styles: a presence and a negation checkpoint with the same seed share their
initial weights and batch order, but they see different captions from the first step, so nothing
makes their scores move together. The checkpoint score's spread already holds both the variance
between checkpoints and the training-seed noise averaged inside each, so the interval accounts for
the pre-training variance without modelling it separately; the two spreads are reported beside it.
(With three checkpoints a style, a bootstrap over checkpoints has ten distinct resamples and no
small-sample correction: its intervals come out too narrow. The t interval's few degrees of
freedom make it wide instead, which is the honest answer for so few checkpoints.)
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from ..stats import Interval, pooled_sd, welch_interval
from .captions import STYLES, CaptionStyle  # ("presence", "negation"): the effect is the second minus the first
from .recipe import DEFAULT_PRETRAIN, alias_of, is_alias, parse_alias

LEVEL = 0.95


@dataclass(frozen=True)
class Observation:
    """One finished trial on a world checkpoint."""

    row: str  # the method and any other row field that varies (not the weights)
    pretrained: str  # the world alias of the checkpoint
    ratio: float
    training_seed: str
    test_map: float


@dataclass(frozen=True)
class Effect:
    """Negation minus presence for one row and recipe, over checkpoints."""

    row: str
    scores: dict[CaptionStyle, list[float]]  # caption style -> one score per checkpoint
    training_seeds: tuple[int, int]  # fewest and most training seeds behind a checkpoint score
    interval: Interval
    between_sd: float  # spread of checkpoint scores within a caption style
    within_sd: float  # spread of training seeds (ratio-averaged) within a checkpoint

    def mean(self, style: CaptionStyle) -> float:
        return float(np.mean(self.scores[style])) if self.scores[style] else float("nan")


def _recipe(alias: str) -> str:
    """The recipe other than the caption style and seed: what makes checkpoints comparable."""
    rest = alias_of(replace(parse_alias(alias), captions="presence", seed=DEFAULT_PRETRAIN.seed))
    return rest.removeprefix("world-presence").lstrip("@")


def checkpoint_scores(observations: Iterable[Observation]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(row, world alias) -> training seed -> test mAP per ratio, only training seeds with every ratio
    the row was run at."""
    obs = list(observations)
    ratios: dict[str, set[float]] = {}
    for o in obs:
        ratios.setdefault(o.row, set()).add(o.ratio)
    cells: dict[tuple[str, str], dict[str, dict[float, float]]] = {}
    for o in obs:
        cells.setdefault((o.row, o.pretrained), {}).setdefault(o.training_seed, {})[o.ratio] = o.test_map
    return {key: {seed: [per_ratio[r] for r in sorted(ratios[key[0]])] for seed, per_ratio in seeds.items()
                  if set(per_ratio) == ratios[key[0]]}
            for key, seeds in cells.items()}


def pretraining_effects(observations: Iterable[Observation], level: float = LEVEL) -> list[Effect]:
    """Negation minus presence per row (and per recipe, when several are in the runs)."""
    obs = [o for o in observations if is_alias(o.pretrained)]
    recipes = {_recipe(o.pretrained) for o in obs}
    groups: dict[str, dict[str, list[list[float]]]] = {}  # row -> style -> per checkpoint, training-seed means
    for (row, alias), seeds in sorted(checkpoint_scores(obs).items()):
        if not seeds:
            continue
        label = row + (f" recipe={_recipe(alias) or 'default'}" if len(recipes) > 1 else "")
        per_seed = [float(np.mean(values)) for values in seeds.values()]
        groups.setdefault(label, {s: [] for s in STYLES})[parse_alias(alias).captions].append(per_seed)
    effects = []
    for row, by_style in sorted(groups.items()):
        scores = {s: [float(np.mean(c)) for c in by_style[s]] for s in STYLES}
        counts = [c for s in STYLES for c in by_style[s]]
        if not all(scores.values()):
            continue  # one caption style only: nothing to compare
        effects.append(Effect(
            row, scores, (min(map(len, counts)), max(map(len, counts))),
            welch_interval(scores[STYLES[0]], scores[STYLES[1]], level),
            pooled_sd(list(scores.values())), pooled_sd([c for s in STYLES for c in by_style[s]])))
    return effects


def _cell(values: list[float]) -> str:
    sd = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
    return f"{np.mean(values):.1f}{sd}"


def _sd(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.1f}"


def _span(counts: tuple[int, int]) -> str:
    return str(counts[0]) if counts[0] == counts[1] else f"{counts[0]}–{counts[1]}"


def _rows(effects: list[Effect]) -> list[list[str]]:
    """Header and one row per effect."""
    head = ["method", "presence", "negation", f"difference [{effects[0].interval.level:.0%} CI]",
            "checkpoints (presence, negation) × training seeds", "sd between checkpoints",
            "sd between training seeds"]
    return [head] + [[e.row, _cell(e.scores["presence"]), _cell(e.scores["negation"]), e.interval.text(),
                      f"{e.interval.n_a}, {e.interval.n_b} × {_span(e.training_seeds)}", _sd(e.between_sd),
                      _sd(e.within_sd)] for e in effects]


def _sentences(effects: list[Effect]) -> list[str]:
    """How the numbers were formed, and which effects the intervals separate from zero."""
    apart = [e for e in effects if e.interval.excludes_zero]
    return ["Cells: test mAP averaged over label ratios, mean ± sd over pre-trained checkpoints. Unit: a "
            "checkpoint (its score averages its training seeds); the caption styles are compared as two "
            "independent samples of checkpoints (Welch t interval), not paired by pre-training seed: equal "
            "seeds share an initialisation but not a training run.",
            "Distinguishable from zero: " + (", ".join(f"{e.row} ({e.interval.text()})" for e in apart) or "none")
            + ". Not distinguishable from zero: " + (", ".join(e.row for e in effects if e not in apart) or "none")
            + "."]


TITLE = "Pre-training effect: negation − presence captions"


def effects_markdown(effects: list[Effect]) -> str:
    if not effects:
        return ""
    table = ["| " + " | ".join(r) + " |" for r in _rows(effects)]
    table.insert(1, "|" + "---|" * len(_rows(effects)[0]))
    return "\n\n".join([f"#### {TITLE}", "\n".join(table), *_sentences(effects)]) + "\n"


def effects_html(effects: list[Effect]) -> str:
    if not effects:
        return ""
    head, *rows = [[html.escape(c) for c in r] for r in _rows(effects)]
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    text = "".join(f"<p>{html.escape(p)}</p>" for p in _sentences(effects))
    return (f"<h3>{html.escape(TITLE)}</h3><table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head)
            + f"</tr></thead><tbody>{body}</tbody></table>{text}")
