"""Multi-label metrics through scikit-learn: mAP, per-class AP, CP/CR/CF1 and OP/OR/OF1.

Targets use 1 / 0 and -1 for unknown; unknown entries are left out of every metric, so the same
functions score the partially labelled validation split and the fully labelled test split.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_score, recall_score


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Non-interpolated AP x 100 per class; NaN where a class has no known positive."""
    ap = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        known = targets[:, c] >= 0
        y = targets[known, c]
        if y.sum() > 0:
            ap[c] = 100.0 * average_precision_score(y, scores[known, c])
    return ap


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


CF1 = ("f1_of_means", "mean_of_f1")


def threshold_metrics(
    scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5, cf1: str = "f1_of_means"
) -> dict[str, float]:
    """CP/CR (per class, then averaged) and OP/OR/OF1 (over all known entries), x 100. CF1 is the F1 of
    CP and CR (`f1_of_means`, the literature's usual definition) or the mean of per-class F1s
    (`mean_of_f1`, the DualCoOp / PositiveCoOp evaluation)."""
    if cf1 not in CF1:
        raise ValueError(f"cf1 must be one of {CF1}, got {cf1!r}")
    preds = (scores >= threshold).astype(int)
    cp, cr = [], []
    for c in range(targets.shape[1]):
        known = targets[:, c] >= 0
        if targets[known, c].sum() == 0:
            continue  # recall undefined; matches the mAP exclusion
        cp.append(precision_score(targets[known, c], preds[known, c], zero_division=0))
        cr.append(recall_score(targets[known, c], preds[known, c], zero_division=0))
    known = targets >= 0
    op = precision_score(targets[known], preds[known], zero_division=0)
    orr = recall_score(targets[known], preds[known], zero_division=0)
    CP, CR = (float(np.mean(cp)), float(np.mean(cr))) if cp else (0.0, 0.0)
    CF = _f1(CP, CR) if cf1 == "f1_of_means" else (float(np.mean([_f1(p, r) for p, r in zip(cp, cr)])) if cp else 0.0)
    return {
        "CP": 100 * CP, "CR": 100 * CR, "CF1": 100 * CF,
        "OP": 100 * op, "OR": 100 * orr, "OF1": 100 * _f1(op, orr),
    }


def multilabel_metrics(
    scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5, cf1: str = "f1_of_means"
) -> dict:
    """Everything a trial reports for one split. `scores` are probabilities in [0, 1]."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    ap = per_class_ap(scores, targets)
    scored = ~np.isnan(ap)
    return {
        "mAP": float(ap[scored].mean()) if scored.any() else float("nan"),
        "per_class_ap": [None if np.isnan(a) else float(a) for a in ap],
        "classes_scored": int(scored.sum()),
        "classes_without_positives": int((~scored).sum()),
        **threshold_metrics(scores, targets, threshold, cf1),
    }
