"""`ablate probe <name>` for every registered probe that has a command, and `ablate analyze`.

The subcommands come from the registry: each probe adds its own flags (`ProbeInfo.add_arguments`)
and runs from them (`ProbeInfo.command`); the flags the image-grounded probes share are in flags.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ablate.registry import resolve

from .registry import PROBES


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
    _build_world_clip(args)
    print(resolve(command)(args))
    if getattr(args, "out", None) is not None:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _build_world_clip(args: argparse.Namespace) -> None:
    """The world CLIP a probe's `--pretrained world-*` names, built first (loading only looks it up)."""
    from ablate.spec import TrialConfig
    from ablate.world.checkpoints import DEFAULT_CACHE, build_checkpoint
    from ablate.world.recipe import is_alias

    pretrained = getattr(args, "pretrained", None)
    if pretrained and is_alias(pretrained):
        model = getattr(args, "backbone", None) or TrialConfig.model_fields["backbone"].default
        build_checkpoint(pretrained, Path(getattr(args, "cache_dir", None) or DEFAULT_CACHE), model=model)


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
