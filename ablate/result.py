"""The one record of a finished trial: produced by the trainer, written by the CLI as metrics.json,
logged by the sweep through tracking, and (as the MLflow metrics `catalogue` names) read by the report.
mAPs are percentages (x 100)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .catalogue import final_values


@dataclass
class TrialResult:
    method: str
    dataset: str
    label_ratio: float
    trainable_params: int
    selected_on: str  # "val" or "test": the split that picked the reported epoch
    best_val_map: float | None  # val mAP at the selected epoch (None without a validation split)
    best_epoch: int  # 1-based; 0 when nothing was trained
    test_map: float  # at the selected epoch
    last_test_map: float  # at the last epoch
    last_val_map: float | None
    train_time_s: float  # training + validation passes, not the test-selection passes
    epochs: int
    # the part of train_time_s spent on the image stream (loading, augmentation, frozen encoder): in a pack
    # it is shared with the other arms, and counted for each as if it ran alone
    shared_time_s: float = 0.0
    test_metrics: dict[str, Any] = field(default_factory=dict)  # mAP, CP ... OF1, classes scored
    per_class_ap: dict[str, float | None] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    split_sizes: dict[str, int] = field(default_factory=dict)
    split_digests: dict[str, str] = field(default_factory=dict)  # what each split held (LabelledImages.digest)
    split_labels: dict[str, list[int]] = field(default_factory=dict)  # split -> [known labels, image x class pairs]
    dropped_empty_images: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    backbone: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    def summary(self) -> dict[str, Any]:
        """The headline numbers (what `ablate train` prints)."""
        keys = ("method", "dataset", "label_ratio", "trainable_params", "selected_on", "best_val_map", "test_map",
                "last_test_map", "train_time_s")
        return {k: getattr(self, k) for k in keys}

    def final_metrics(self) -> dict[str, float]:
        """The end-of-trial metrics a tracking run records: every catalogue entry the result carries."""
        return final_values(self)

    @property
    def last_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")
