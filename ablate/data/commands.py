"""`ablate data fetch | check`: the command-line face of fetch.py and check.py (cli.py adds it)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .manifest import MANIFESTS, MIRROR_ENV, DatasetManifest, fetchable, manifest_for


def add_data_commands(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """The `data` command and its handler."""
    p = sub.add_parser("data", help="fetch a real dataset (COCO 2014, VOC 2007) or check that a root is complete",
                       description="Download, verify and lay out the official archives, or check a dataset "
                                   "root against its official split sizes.")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    f = data_sub.add_parser("fetch", help="download, verify and extract a dataset into the layout ablate reads",
                            description="Resumable, verified, atomic; a second run returns at once. Two runs into "
                                        "one root (e.g. two nodes on shared storage) download once.")
    f.add_argument("dataset", choices=fetchable())
    f.add_argument("--root", type=Path, help="data root (default: where the shipped specs point: "
                   + ", ".join(f"{m.dataset} {m.default_root}" for m in MANIFESTS.values() if m.default_root) + ")")
    f.add_argument("--mirror", help=f"base URL serving the archives under their official names (default: "
                   f"${MIRROR_ENV}, else the official addresses)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    c = data_sub.add_parser("check", help="is a dataset root complete? (exit 0 only when it is)",
                            description="Layout, annotations parsed, image counts against the official split "
                                        "sizes, every class in every split; --deep decodes every image.")
    c.add_argument("dataset", choices=list(MANIFESTS))
    c.add_argument("--root", type=Path, help="data root (default: as for fetch)")
    c.add_argument("--deep", action="store_true", help="decode every image and list the unreadable ones")
    c.add_argument("--json", action="store_true", help="print the findings as JSON (every problem listed)")
    c.add_argument("--quiet", action="store_true", help="no progress bar while decoding")
    return {"data": cmd_data}


def cmd_data(args: argparse.Namespace) -> int:
    manifest = manifest_for(args.dataset)
    if args.data_command == "fetch":
        return _fetch(manifest, args)
    return _check(manifest, args)


def _fetch(manifest: DatasetManifest, args: argparse.Namespace) -> int:
    from ..errors import Interrupted
    from .fetch import fetch_dataset
    from .progress import ProgressBars

    bars = ProgressBars(enabled=not args.quiet)
    try:
        result = fetch_dataset(manifest, args.root, args.mirror, progress=bars)
    except KeyboardInterrupt:
        raise Interrupted(f"fetch of {manifest.dataset} interrupted; what was downloaded is kept: the same command "
                          "resumes from there") from None
    finally:
        bars.close()
    print(result.line())
    return 0


def _check(manifest: DatasetManifest, args: argparse.Namespace) -> int:
    from .base import DataError
    from .check import check_dataset
    from .progress import ProgressBars

    root = args.root or manifest.default_root
    if root is None:
        raise DataError(f"{manifest.dataset} has no default root; pass --root DIR")
    bars = ProgressBars(enabled=args.deep and not args.quiet and not args.json)
    try:
        report = check_dataset(manifest, root, deep=args.deep, progress=bars)
    finally:
        bars.close()
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.table())
    sys.stdout.flush()
    return 0 if report.complete else 1
