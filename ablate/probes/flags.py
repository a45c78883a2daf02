"""The flags the image-grounded probes share (data set, backbone, split, limit) and the TrialConfig they
describe. Torch-free, so the CLI's parser and the probes both import it without the other."""

from __future__ import annotations

import argparse

from ablate.errors import ProbeError
from ablate.spec import TrialConfig

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
