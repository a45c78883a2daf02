"""How close `ablate plan`'s projection comes to what a sweep then measures, on this machine: an augmented
grid of 12 arms (3 methods x 2 label ratios x 2 seeds: two image streams) on the synthetic set and the
tiny ViT, at max_concurrent_trials 2 on a private local Ray, planned after `ablate plan --calibrate`; the
report's Cost section puts the stored plan against the measured wall time, device-hours and idle fraction.
Then the same grid again as a second sweep of the experiment, planned from the first one's runs (what a
calibration cannot see, a Ray trial's start, MLflow logging, checkpoints, is in them). Everything lives in
a temporary folder.

    python benchmarks/plan_accuracy.py [--epochs 3] [--images 120] [--arms-per-pack-cap 32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import yaml

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private Ray on 127.0.0.1 only


def spec_file(folder: Path, epochs: int, images: int, cap: int, run: str) -> Path:
    spec = {"name": "plan_accuracy", "max_concurrent_trials": 2, "max_pack_arms": cap,
            "resources": {"cpu": 1}, "storage_path": str(folder / run),
            "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
            "base": {"dataset": "synthetic", "dataset_options": {"synthetic_images": images},
                     "backbone": "ablate-tiny-vit", "n_ctx": 4, "epochs": epochs, "warmup_epochs": 0,
                     "batch_size": 16, "num_workers": 1, "augment": True, "augment_recipe": "reference",
                     "lr": 3e-4, "device": "cpu", "cache_dir": str(folder / "cache")},
            "per_method": {"baseline": {"lr": 2e-2}},
            "grid": {"method": ["dualcoop", "positivecoop", "baseline"], "label_ratio": [0.3, 0.7],
                     "seed": [0, 1]}}
    path = folder / f"{run}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=120, help="synthetic images (train + test)")
    parser.add_argument("--arms-per-pack-cap", type=int, default=32, help="the spec's max_pack_arms")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from ablate.cli import main as ablate
    from ablate.report import write_report
    from ablate.sweep import run_sweep

    with tempfile.TemporaryDirectory(prefix="ablate-plan-accuracy-") as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        for run in ("calibrated", "from_runs"):  # the second sweep is planned from the first one's runs
            spec = spec_file(folder, args.epochs, args.images, args.arms_per_pack_cap, run)
            if run == "calibrated":
                calibrate = ["--calibrate", "--calibrate-steps", "3", "--calibrate-batch", "16"]
                assert ablate(["plan", "--spec", str(spec), *calibrate]) == 0
            summary = run_sweep(spec)
            result = write_report("plan_accuracy", folder / run / "report", summary["tracking_uri"],
                                  parent_run_id=summary["parent_run_id"], log_to_mlflow=False)
            total = result["cost"]["total"]
            print(json.dumps({"bench": "plan_accuracy", "planned": run, "arms": 12, "trials": summary["trials"],
                              "errored": summary["errored"], **total,
                              "wall_predicted_over_measured": ratio(total, "wall_s"),
                              "device_hours_predicted_over_measured": ratio(total, "device_hours"),
                              "packs": result["cost"]["packs"]}), flush=True)


def ratio(total: dict, what: str) -> float:
    return (total[f"predicted_{what}"] or 0.0) / total[f"measured_{what}"]

if __name__ == "__main__":
    main()
