"""Command line: `ablate train | sweep | plan | report | world | probe | analyze | data | server`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from .errors import AblateError, ConfigError, Interrupted, MovedSetting, worker_message
from .extras import missing_extra, require
from .secret_uri import mask
from .spec import TrialConfig, format_validation_error, load_trial_config
from .tracking import bill_text, trial_table, ui_hint
from .world.dataset import WorldConfig
from .world.recipe import PretrainConfig


def _is_bool(annotation: object) -> bool:
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def train_flags() -> dict[str, str]:
    """`--flag` -> TrialConfig field: every field of a single value (not the options mappings, which come
    from --config), so a new field is a flag without editing a list."""
    return {f"--{name.replace('_', '-')}": name for name, field in TrialConfig.model_fields.items()
            if typing.get_origin(field.annotation) is not dict}


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train and evaluate one trial",
                       description="Train one method on one dataset at one label ratio; writes metrics.json.")
    p.add_argument("--config", type=Path, help="YAML file of TrialConfig fields (flags override it)")
    for flag, field in train_flags().items():  # values are checked (and converted) by TrialConfig itself
        info = TrialConfig.model_fields[field]
        action = argparse.BooleanOptionalAction if _is_bool(info.annotation) else "store"
        p.add_argument(flag, dest=field, action=action, default=None, help=(info.description or "").replace("%", "%%"))
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder (metrics.json, checkpoint)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and trainable parameter count; load no data, train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def resolve_config(args: argparse.Namespace) -> TrialConfig:
    overrides = {f: getattr(args, f) for f in train_flags().values() if getattr(args, f) is not None}
    if args.config is not None:
        return load_trial_config(args.config, overrides)
    try:
        return TrialConfig(**overrides)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "command-line flags")) from None


def dry_run(cfg: TrialConfig) -> dict:
    """Build the model with random weights (the count does not depend on them) and count parameters; the
    device and image size are checked as a real run would check them."""
    from .backbone import create_backbone
    from .data.classnames import class_names
    from .factory import check_image_size, resolve_device
    from .methods import create_method

    resolve_device(cfg.device)
    backbone = create_backbone(cfg.backbone, "none", cfg.image_size)
    check_image_size(backbone)
    method = create_method(cfg, backbone, class_names(cfg.dataset))
    return {
        "config": cfg.model_dump(mode="json"),
        "trainable_params": method.trainable_params(),
        "num_classes": method.n_classes,
        "embed_dim": backbone.info.embed_dim,
        "text_width": backbone.info.text_width,
    }


def cmd_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.dry_run:
        print(json.dumps(dry_run(cfg), indent=2))
        return 0
    from .trainer import run_trial
    from .world.checkpoints import build_for

    build_for([cfg], progress=not args.quiet)  # the world CLIP a `world-*` alias names, built once, first
    try:
        result = run_trial(cfg, args.out, progress=not args.quiet)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at epoch {_epoch_running(args.out)} of {cfg.epochs}; the epochs before it "
                          f"are kept in {args.out}: the same command resumes") from None
    print(trial_summary(result.summary()))
    print(f"wrote {args.out / 'metrics.json'} (every figure, per epoch and per class, and the resolved config)",
          file=sys.stderr)
    return 0


def trial_summary(s: dict) -> str:
    """What `ablate train` prints at the end: the headline figures as a person reads them."""
    picked = f"picked on {s['selected_on']}" + (f" (val mAP {s['best_val_map']:.2f})" if s["best_val_map"] is not None
                                                else "")
    return (f"{s['method']} on {s['dataset']}, {s['label_ratio'] * 100:g} % labels: test mAP {s['test_map']:.2f} at "
            f"the epoch {picked}; last epoch {s['last_test_map']:.2f}; {s['trainable_params']:,} trainable "
            f"parameters; {s['train_time_s']:.1f} s of training")


def _epoch_running(out: Path) -> int:
    """The epoch a trial writing its checkpoints into `out` was in: the one after its last checkpoint."""
    import torch

    from .trainer import CHECKPOINT

    try:
        return int(torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)["epoch"]) + 2
    except Exception:  # no checkpoint yet (the first epoch), or one from before this run
        return 1


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a tune_specs/*.yaml sweep on Ray Tune, tracked in MLflow",
                       description="Expand a sweep spec into trials and run them on Ray (a private local Ray "
                                   "unless --ray-address names a cluster); every trial lands in MLflow. Ctrl-C "
                                   "stops it with its state kept for --resume.")
    p.add_argument("--spec", required=True, help="spec file (relative paths: working dir, then the project)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: finished trials are kept, errored ones resume")
    p.add_argument("--tracking-uri", help="MLflow URI (default: spec, MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    p.add_argument("--storage-path", help="where Ray Tune keeps results and checkpoints (default: spec)")
    p.add_argument("--ray-address", help="`local` (start a private Ray), `auto` (join the cluster running here) "
                                         "or host:port (default: RAY_ADDRESS, else local)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trial list and its size, and (a packed "
                                                          "grid) the plan `ablate plan` prints, only")
    p.add_argument("--yes", action="store_true", help="launch a sweep of more trials than the spec's max_trials")
    _capacity_flags(p, "--dry-run: ")


def _capacity_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", type=Path, help=f"{prefix}plan for the most trials this Ray cluster config "
                       "(e.g. cluster/gpu.yaml) holds with every node up")
    where.add_argument("--slots", type=int, help=f"{prefix}plan for this many concurrent trials")
    p.add_argument("--price-per-device-hour", type=float, metavar="P", help=f"{prefix}price the device-hours")
    p.add_argument("--costs-from", metavar="EXPERIMENT",
                   help=f"{prefix}the earlier sweep whose runs price the plan (default: the spec's name)")


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan and price a sweep for the cluster it will run on, before it runs",
                       description="The packs a grid sweep will train, their waves on the cluster's concurrent "
                                   "trial slots, and the projected wall time, device-hours, price and idle "
                                   "fraction; costs from an earlier sweep's runs on the same device type, else a "
                                   "cached calibration (--calibrate), else relative costs only.")
    p.add_argument("--spec", required=True, help="spec file (relative paths: working dir, then the project)")
    _capacity_flags(p)
    p.add_argument("--tracking-uri", help="MLflow store of the earlier sweep (default: spec, MLFLOW_TRACKING_URI, "
                                          "sqlite:///mlflow.db)")
    p.add_argument("--calibrate", action="store_true",
                   help="first measure a few real steps of each distinct stream and arm shape here, and cache them")
    p.add_argument("--calibrate-steps", type=int, default=3, help="--calibrate: timed steps a shape")
    p.add_argument("--calibrate-batch", type=int, help="--calibrate: images an encoder step (default: the spec's "
                                                       "batch on a GPU, 4 on CPU, scaled to the spec's batch)")
    p.add_argument("--cache-dir", type=Path, help="where calibrations are cached (default: the spec's cache_dir)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def plan_figures(spec, args: argparse.Namespace, calibrate: bool = False):
    """The forecast `ablate plan` and `ablate sweep --dry-run` print, and the plan it is of."""
    from .sweep.arms import expand
    from .sweep.forecast import cost_table, forecast, run_calibration, slots_for
    from .sweep.packs import plan_packs

    arms = expand(spec)
    slots = slots_for(spec, args.cluster, args.slots)
    cache_dir = getattr(args, "cache_dir", None)
    if calibrate:
        steps = args.calibrate_steps
        if steps < 1:
            raise ConfigError(f"--calibrate-steps {steps}: give 1 or more")
        measured = run_calibration(spec, arms, cache_dir, steps, args.calibrate_batch)
        print(f"calibrated: {measured.source}", file=sys.stderr)
    table, passed = cost_table(spec, arms, slots.device, getattr(args, "tracking_uri", None), args.costs_from,
                               cache_dir)
    plan = plan_packs(spec, arms, slots.count, slots.source, costs=table)
    return forecast(spec, arms, slots, table, passed, args.price_per_device_hour, plan), plan


def cmd_plan(args: argparse.Namespace) -> int:
    from .sweep import resolve_spec_path
    from .sweep.forecast import text
    from .sweep.spec import load_sweep_spec

    spec = load_sweep_spec(resolve_spec_path(args.spec))
    figures, plan = plan_figures(spec, args, calibrate=args.calibrate)
    if args.cluster is not None and plan.costs is not None:  # which share of a GPU a pack, for this cluster
        from .sweep.arms import expand
        from .sweep.forecast import resource_options

        figures["resource_options"] = resource_options(spec, expand(spec), args.cluster, plan.costs)
    print(json.dumps(figures, indent=1) if args.json else text(figures))
    return 0


def print_table(rows: list[dict]) -> None:
    """A plain aligned table of the trials, sorted by data set, method, ratio and seed; the catalogue's
    "trials" columns, rounded as a person reads them."""
    from .catalogue import metrics

    columns = metrics(column="trials")
    widths = [max(9, len(c.heading)) for c in columns]
    print(f"{'dataset':<10} {'method':<13} {'ratio':>5} {'seed':>4} {'status':<9} "
          + " ".join(f"{c.heading:>{w}}" for c, w in zip(columns, widths)))
    for r in rows:
        print(f"{r['dataset'] or '-':<10} {r['method'] or '-':<13} {r['label_ratio'] or '-':>5} "
              f"{r['seed'] or '-':>4} {r['status']:<9} "
              + " ".join(f"{c.text(r[c.name]):>{w}}" for c, w in zip(columns, widths)))


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepInterrupted, describe, resolve_spec_path, run_sweep
    from .sweep.spec import load_sweep_spec
    from .tracking.store import redact_uri

    if args.dry_run:
        spec = load_sweep_spec(resolve_spec_path(args.spec))
        if not spec.packing:
            print(json.dumps(describe(spec), indent=2))
            return 0
        figures, plan = plan_figures(spec, args)  # the packs as the plan makes them for the slots asked
        print(json.dumps({**describe(spec, plan), "plan": figures}, indent=2))
        return 0
    if not args.resume and not args.yes:
        check_sweep_size(load_sweep_spec(resolve_spec_path(args.spec)))
    try:
        summary = run_sweep(args.spec, resume=args.resume, tracking_uri=args.tracking_uri,
                            storage_path=args.storage_path, ray_address=args.ray_address)
    except SweepInterrupted as stop:
        print(f"error: {stop}", file=sys.stderr)
        return stop.exit_code
    print_table(trial_table(summary["tracking_uri"], summary["experiment_id"], summary["parent_run_id"]))
    print(f"{summary['trials']} trials, {summary['errored']} errored; MLflow: parent run {summary['parent_run_id']} "
          f"in {redact_uri(summary['tracking_uri'])}; Ray Tune's results: {summary['storage']}; the sweep held "
          f"{bill_text(summary['bill'])}")
    print(ui_hint(summary["tracking_uri"], summary["experiment_id"], summary["parent_run_id"]), file=sys.stderr)
    return 0 if summary["errored"] == 0 else 1


def check_sweep_size(spec) -> None:
    """ConfigError, before anything starts, for a grid above the spec's max_trials: say the count."""
    from .sweep.arms import grid_size

    size = grid_size(spec)
    if size > spec.max_trials:
        lists = " x ".join(f"{k} {len(v)}" for k, v in spec.grid.items())
        raise ConfigError(f"sweep '{spec.name}' asks for up to {size:,} trials ({lists}"
                          f"{f' x {spec.optuna.num_samples} Optuna samples' if spec.optuna else ''}), above max_trials "
                          f"{spec.max_trials:,}; pass --yes to launch it, or raise max_trials in the spec "
                          "(`--dry-run` lists the trials)")


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables, cost-vs-mAP plots and report.html from an MLflow experiment",
                       description="Read a sweep's trial runs from MLflow and write table.md/csv, PNG plots and "
                                   "report.html; also logged to the sweep's parent run under report/.")
    p.add_argument("--experiment", required=True, help="MLflow experiment (the spec's name)")
    p.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--out", type=Path, help="output folder (default: reports/<experiment>)")
    p.add_argument("--parent-run", help="sweep run id (default: the experiment's newest sweep)")
    p.add_argument("--reference", help="method the paired differences compare against (default: dualcoop)")
    p.add_argument("--heatmap-ratio", type=float,
                   help="label ratio of the per-class AP heatmap (default: one panel per ratio)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    p.add_argument("--published", nargs="+", action="extend", default=[], metavar="NAME|FILE",
                   help="published tables to compare with (a Reproduction section): a shipped table's name "
                        "(ablate.published.shipped()) or a YAML file of that format")
    p.add_argument("--columns", nargs="+", action="extend", default=[], metavar="METRIC",
                   help="more metrics as table columns (mean per row), by their catalogue names: test_cf1, "
                        "test_of1, test_cp, test_cr, test_op, test_or, last_test_map, best_val_map, ...")


def cmd_report(args: argparse.Namespace) -> int:
    require("report")  # before the store is read
    from .pathnames import folder_name
    from .published import load_published
    from .report import write_report

    published = [load_published(p) for p in args.published]  # a bad file stops here, before anything is read
    out = args.out or Path("reports") / folder_name(args.experiment)  # one folder under reports/, whatever the name
    result = write_report(args.experiment, out, args.tracking_uri, args.parent_run, args.reference,
                          args.heatmap_ratio, log_to_mlflow=not args.no_log, published=published,
                          columns=args.columns)
    print((out / "table.md").read_text())
    for line in result["incomplete"]:
        print(f"not included: {line}", file=sys.stderr)
    print(f"wrote {out / 'report.html'}", file=sys.stderr)
    print(ui_hint(result["tracking_uri"], result["experiment_id"], result["parent_run_id"]), file=sys.stderr)
    return 0


def _world_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="the synthetic world: build it, pre-train its tiny CLIP",
                       description="ablate's own multi-label world (COCO layout + captions) and a tiny CLIP "
                                   "pre-trained on it; both are also built before use by sweeps, `ablate train` "
                                   "and `ablate probe` runs that name dataset `world` or pretrained `world-presence` / "
                                   "`world-negation`, any recipe as "
                                   "`world-<captions>@<field>=<value>...` (e.g. `world-negation@seed=1`).")
    world_sub = p.add_subparsers(dest="world_command", required=True)
    b = world_sub.add_parser("build", help="generate the world (deterministic; skipped when already complete)")
    b.add_argument("--out", type=Path, help="folder (default: <cache-dir>/world-<config hash>)")
    b.add_argument("--cache-dir", type=Path, default=Path(".ablate_cache"))
    _config_flags(b, WorldConfig())
    t = world_sub.add_parser("pretrain", help="contrastive pre-training of a tiny CLIP on the world's captions")
    t.add_argument("--captions", choices=["presence", "negation"], required=True,
                   help="presence-only captions (LAION-like) or negation-augmented ones")
    t.add_argument("--model", default="ablate-tiny-vit", help="open_clip model config to pre-train")
    t.add_argument("--cache-dir", type=Path, default=Path(".ablate_cache"))
    t.add_argument("--world-root", type=Path, help="a world made with `ablate world build --out` (default: the "
                   "embedded world, built if missing)")
    t.add_argument("--out", type=Path, help="checkpoint path (default: cached, keyed by the config and world)")
    _config_flags(t, PretrainConfig(), skip=("model", "captions"))


def _config_flags(parser: argparse.ArgumentParser, default, skip: tuple[str, ...] = ()) -> None:
    """A flag per numeric field of a config dataclass (--n-train for n_train), defaulting to unset."""
    for f in dataclasses.fields(default):
        if f.name not in skip:
            value = getattr(default, f.name)
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), help=f"default {value}")


def _config_from_flags(args: argparse.Namespace, default, **fixed):
    """`default` with the fields whose flags were given (and `fixed`) replaced."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(default) if f.name not in fixed}
    return dataclasses.replace(default, **fixed, **{k: v for k, v in given.items() if v is not None})


def cmd_world(args: argparse.Namespace) -> int:
    from .world.checkpoints import build_checkpoint
    from .world.dataset import build_world, default_world_root
    from .world.pretrain import manifest_path, pretrain

    if args.world_command == "build":
        world = _config_from_flags(args, WorldConfig())
        root = build_world(args.out or default_world_root(args.cache_dir, world), world)
        print(root)
        return 0
    cfg = _config_from_flags(args, PretrainConfig(), model=args.model, captions=args.captions)
    if args.out is None:  # cached (and locked): a checkpoint already made for this config is reused
        out = build_checkpoint(args.captions, args.cache_dir, model=args.model, world_root=args.world_root, base=cfg)
    else:
        out = args.out
        pretrain(args.world_root or build_world(default_world_root(args.cache_dir)), out, cfg)
    manifest = json.loads(manifest_path(out).read_text())
    print(json.dumps({"checkpoint": str(out), "test_zero_shot_map": manifest["test_zero_shot_map"],
                      "loss_curve": manifest["loss_curve"], "seconds": manifest["seconds"]}, indent=1))
    return 0


def _server_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="the cluster's tracking store: MLflow on PostgreSQL, proxied artifacts",
                       description="Start (idempotently: initdb once, reuse after), inspect or stop PostgreSQL and "
                                   "an MLflow server on it that serves artifacts from --artifacts. Everything "
                                   "it keeps (database, password, logs) lives in --root, on local disk.")
    p.add_argument("action", choices=["start", "status", "stop"])
    p.add_argument("--root", type=Path, default=Path(".ablate_server"), help="the server's own folder")
    from .server import ServerSettings

    defaults = ServerSettings(artifacts="")
    p.add_argument("--artifacts", help="start: --artifacts-destination, a shared folder or bucket URI "
                                       "(default: <root>/artifacts)")
    p.add_argument("--host", default=defaults.host, help="start: address the MLflow server listens on "
                                                         "(0.0.0.0 for a cluster's nodes)")
    p.add_argument("--port", type=int, default=defaults.port, help="start: MLflow server port")
    p.add_argument("--db-port", type=int, default=defaults.db_port, help="start: PostgreSQL port (127.0.0.1 only)")
    p.add_argument("--workers", type=int, default=defaults.workers, help="start: MLflow server worker processes")
    p.add_argument("--backend-store-uri", help="start: an external database instead of the local PostgreSQL")
    p.add_argument("--pg-bin", help="start: PostgreSQL's server binaries (default: found; env ABLATE_PG_BIN)")
    p.add_argument("--keep-database", action="store_true", help="stop: stop the MLflow server only")


def cmd_server(args: argparse.Namespace) -> int:
    from .server import ServerSettings, start, status, stop

    if args.action == "start":
        settings = ServerSettings(host=args.host, port=args.port, db_port=args.db_port, workers=args.workers,
                                  artifacts=args.artifacts or str((args.root / "artifacts").absolute()),
                                  backend_store_uri=args.backend_store_uri, pg_bin=args.pg_bin)
        print(json.dumps(start(args.root, settings), indent=2))
    elif args.action == "stop":
        print(json.dumps(stop(args.root, keep_database=args.keep_database), indent=2))
    else:
        print(json.dumps(status(args.root), indent=2))
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    """The parser and a handler per command."""
    from .data.commands import add_data_commands
    from .probes import add_probe_commands

    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _sweep_parser(sub)
    _plan_parser(sub)
    _report_parser(sub)
    _world_parser(sub)
    _server_parser(sub)
    handlers = {"train": cmd_train, "sweep": cmd_sweep, "plan": cmd_plan, "report": cmd_report, "world": cmd_world,
                "server": cmd_server}
    return parser, {**handlers, **add_probe_commands(sub), **add_data_commands(sub)}


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_notices(warnings.showwarning)
            return handlers[args.command](args)
    except AblateError as err:
        if args.debug:
            raise
        print(f"error: {mask(worker_message(err))}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"error: ablate {_command(args)} interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, or a fault nothing foresaw: still one line (the traceback with --debug)
        if args.debug:
            raise
        hint = missing_extra(err) if isinstance(err, ModuleNotFoundError) else None
        if hint is not None:  # an optional dependency not installed: one line naming its extra
            print(f"error: {hint}", file=sys.stderr)
            return 2
        what = mask(" ".join(f"{type(err).__name__}: {err}".split()))[:300]
        print(f"error: ablate {_command(args)} failed unexpectedly ({what}); rerun with --debug for the traceback",
              file=sys.stderr)
        return 1


def _one_line_notices(show: Callable[..., None]) -> Callable[..., None]:
    """Python's way of showing warnings, but a moved setting's notice is one `warning:` line on stderr."""
    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, MovedSetting):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def _command(args: argparse.Namespace) -> str:
    """The command's words, e.g. `data fetch`."""
    sub = [getattr(args, k) for k in vars(args) if k.endswith("_command") and isinstance(getattr(args, k), str)]
    return " ".join([args.command, *sub])


if __name__ == "__main__":
    sys.exit(main())
