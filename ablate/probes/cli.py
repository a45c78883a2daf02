"""`ablate probe <name>` for every registered probe that has a command, and `ablate analyze`.

The subcommands come from the registry: each probe adds its own flags (`ProbeInfo.add_arguments`)
and runs from them (`ProbeInfo.command`); the flags the image-grounded probes share are here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ablate.errors import ProbeError
from ablate.registry import resolve
from ablate.spec import TrialConfig

from .registry import PROBES

# flag -> TrialConfig field, for the image-grounded probes
PROBE_FLAGS: dict[str, tuple[str, type]] = {
    "--dataset": ("dataset", str),
    "--data-root": ("data_root", str),
    "--backbone": ("backbone", str),
    "--pretrained": ("pretrained", str),
    "--image-size": ("image_size", int),
    "--cache-dir": ("cache_dir", str),
    "--device": ("device", str),
    "--batch-size": ("batch_size", int),
    "--num-workers": ("num_workers", int),
}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """The data set / backbone flags (`PROBE_FLAGS`) plus --split and --limit."""
    for flag, (field, typ) in PROBE_FLAGS.items():
        p.add_argument(flag, dest=field, type=typ, default=None, help=TrialConfig.model_fields[field].description)
    p.add_argument("--split", choices=("test", "val"), default="test", help="images to probe")
    p.add_argument("--limit", type=int, default=None, help="probe only the first N images of the split")


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    """The TrialConfig that `add_config_flags`' flags describe (defaults for the rest)."""
    from pydantic import ValidationError

    from ablate.spec import format_validation_error

    overrides = {f: getattr(args, f) for f, _ in PROBE_FLAGS.values() if getattr(args, f) is not None}
    try:
        return TrialConfig(**overrides)
    except ValidationError as err:
        raise ProbeError(format_validation_error(err, "command-line flags")) from None


def add_probe_commands(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add `probe <name>` per registered probe with a command, and `analyze`; returns {command: handler}."""
    probe = sub.add_parser("probe", help="diagnostic probes of a backbone (negation, presence, hard-positive...)",
                           description="Diagnostics of a frozen backbone: each prints a table and writes JSON.")
    kinds = probe.add_subparsers(dest="probe_command", required=True)
    for name, info in PROBES.items():
        if info.add_arguments is not None:
            p = kinds.add_parser(info.command_name, help=info.help)
            resolve(info.add_arguments)(p)
            p.set_defaults(probe_name=name)

    ana = sub.add_parser("analyze", help="learned-prompt similarities and similarity maps of a trained method",
                         description="Cosine between learned positive and negative class features (and across "
                                     "seeds), plus positive/negative similarity maps as PNG; logged to the run.")
    src = ana.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="MLflow run id of a trial (its trained.pt artifact is analysed)")
    src.add_argument("--trained", type=Path, help="a local trained.pt instead of a run")
    ana.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    ana.add_argument("--out", type=Path, default=None, help="output folder (default: runs/analyze/<run or file>)")
    ana.add_argument("--images", type=int, default=4, help="test images to draw similarity maps for")
    ana.add_argument("--no-log", action="store_true", help="do not log the outputs to the MLflow run")
    return {"probe": _cmd_probe, "analyze": _cmd_analyze}


def _cmd_probe(args: argparse.Namespace) -> int:
    command = PROBES.get(args.probe_name).command
    assert command is not None  # only probes with a command get a subcommand (add_probe_commands)
    print(resolve(command)(args))
    if getattr(args, "out", None) is not None:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_run, analyze_trained, format_analysis

    if args.run:
        out = args.out or Path("runs/analyze") / args.run
        result = analyze_run(args.run, args.tracking_uri, out, n_images=args.images, log=not args.no_log)
    else:
        out = args.out or Path("runs/analyze") / args.trained.stem
        result = analyze_trained(args.trained, out, n_images=args.images)
    print(format_analysis(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0
