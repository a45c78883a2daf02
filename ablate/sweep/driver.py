"""The sweep's driver: one Tuner for the grid (or one per arm with Optuna), the MLflow parent run, and
the end of a sweep, finished or interrupted."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import AblateError, worker_message
from ..secret_uri import MASK, mask
from ..spec import ConfigError
from ..tracking import (
    RUNNING_NOTE,
    TrackingContext,
    TrialRun,
    children_filter,
    close_running_children,
    connect,
    end_parent_run,
    ensure_experiment,
    flatten_config,
    note_sweep_stopped,
    probe_database,
    probe_store,
    reopen_parent_run,
    resolve_tracking_uri,
    retried,
    save_view,
    set_sweep_note,
    start_parent_run,
    sweep_bill,
    sweep_note,
    tag_pareto_fronts,
    trial_table,
    trials_markdown,
    ui_address,
)
from .arms import Arm, expand, resolve_spec_path
from .cluster import (
    _ray_is_up,
    _shutdown_ray,
    check_files_on_nodes,
    check_storage_on_nodes,
    cluster_slots,
    lost_with_its_node,
    reachable_from_workers,
    require_resources,
)
from .control import STATE_FILE, Signals, SweepInterrupted, SweepState, _sha, resume_command
from .forecast import PLAN_ARTIFACT, Slots, cost_table, forecast, forecast_line
from .packs import Plan, plan_packs
from .preflight import fetch_data, prepare_data
from .quiet import quiet_libraries
from .resume import check_side_files, load_state
from .spec import SweepSpec, load_sweep_spec
from .trial import ray_trial, work_root

# One checkpoint per epoch is the design; Tune's warning about frequent snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _tracker_callback(ctx: TrackingContext):
    """Driver-side: close runs whose trial never got to (trials stopped by ASHA, killed workers), and give
    back the retry a lost node took (Ray counts only autoscaler-drained nodes as preemptions)."""
    import cloudpickle
    from ray.tune import Callback

    class CloseRuns(Callback):
        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            """Tune counted the failure and decided to retry; a node loss is not the trial's failure."""
            try:
                with open(trial.pickled_error_file, "rb") as f:
                    error = cloudpickle.load(f)
            except (OSError, TypeError, EOFError):  # no error file: Tune saw no exception to pickle
                return
            if lost_with_its_node(error) and trial.run_metadata.num_failures > 0:
                trial.run_metadata.num_failures -= 1
                for run in TrialRun.find_all(ctx, trial.trial_id):
                    run.count_node_loss()

        def _close(self, trial, status: str, reason: str) -> None:
            for run in TrialRun.find_all(ctx, trial.trial_id):  # its own run, or each arm's of its pack
                if run.status() == "RUNNING":
                    run.close(status, reason)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._close(trial, "KILLED", "stopped early by the scheduler")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._close(trial, "FAILED", f"trial errored; see {trial.local_path}")

    return CloseRuns()


def _tuner(spec: SweepSpec, arm: Arm | None, arms: list[Arm], ctx: TrackingContext, storage: str,
           resume: bool, workroot: Path, state_dir: Path, packs: list[list[int]] | None = None):
    from ray import tune

    from . import search as sample_search  # Ray-importing: Optuna (seeds, objectives, storage) and ASHA

    res = spec.resources
    members = arms if arm is None else [arm]
    trainable = tune.with_resources(
        tune.with_parameters(ray_trial, arms=[a.config.model_dump(mode="json") for a in members],
                             labels=[a.overrides for a in members], names=[a.name(spec) for a in members],
                             tracking=ctx, gpus=res.gpu, cpus=res.cpu, packs=packs or [],
                             workroot=str(workroot), probes=list(spec.probes), probe_limit=spec.probe_limit,
                             plugins=list(spec.plugins)),
        {"cpu": res.cpu, "gpu": res.gpu},
    )
    name = spec.name if arm is None else f"{spec.name}--{arm.slug}"[:200]
    path = os.path.join(storage, name)
    if resume and tune.Tuner.can_restore(path):
        try:
            return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        except Exception as err:  # Tune's own files (tuner.pkl, experiment state) damaged
            raise ConfigError(f"cannot resume sweep '{spec.name}': Ray Tune's state in {path} cannot be restored "
                              f"({type(err).__name__}: {mask(str(err))[:300]}); start the sweep over (another "
                              f"`name`, or remove {Path(path).parent / spec.name} and its runs in MLflow)") from None
    search = arm.search if arm is not None else {}
    opt = spec.optuna if search else None
    if opt is not None:  # metrics and modes live on the searcher and the scheduler, not in TuneConfig
        space = {k: _domain(p) for k, p in search.items()}
        search_alg = sample_search.searcher(spec, sample_search.study_storage_url(spec, state_dir),
                                            sample_search.study_name(ctx.parent_run_id, name),
                                            arm.slug if arm else name)
        samples = opt.num_samples * opt.seed_count
    else:
        space = {} if arm is not None else {"pack": tune.grid_search(list(range(len(packs))))} if packs \
            else {"arm": tune.grid_search(list(range(len(arms))))}
        search_alg, samples = None, 1
    scheduler = sample_search.scheduler(spec, max(max(a.config.epochs for a in members), 1),
                                        sample_search.rungs_path(state_dir, name),
                                        opt.seed_count if opt else 1) if spec.asha else None
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler,
                                    num_samples=samples, max_concurrent_trials=spec.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=[_tracker_callback(ctx)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def _domain(p):
    from ray import tune

    if p.type == "categorical":
        return tune.choice(p.choices)
    if p.type == "int":
        return (tune.lograndint if p.log else tune.randint)(int(p.low), int(p.high) + 1)
    return (tune.loguniform if p.log else tune.uniform)(p.low, p.high)


def _storage_root(spec: SweepSpec, override: str | None) -> str:
    root = override or spec.storage_path
    return root if "://" in root else str(Path(root).expanduser().absolute())


def _store_uri(spec: SweepSpec, state_path: Path, resume: bool, flag: str | None) -> str:
    """The tracking URI: --tracking-uri, the spec's, MLFLOW_TRACKING_URI or the default; for --resume the
    sweep's own, whose password its state does not keep: that comes from where the launch got it."""
    given = resolve_tracking_uri(flag, spec.tracking_uri)
    if not (resume and state_path.exists()):
        return given
    kept = load_state(state_path, spec.name).tracking_uri
    if given == kept:  # the masked texts: the same store, and `given` knows its password
        return given
    if MASK not in kept:
        return resolve_tracking_uri(kept)
    raise ConfigError(f"sweep '{spec.name}' is tracked in {kept}, whose password is not kept on disk; give that URI "
                      "again with --tracking-uri (or the spec's tracking_uri, or MLFLOW_TRACKING_URI) to resume it")


def _open_sweep(spec: SweepSpec, path: Path, state_path: Path, storage: str, resume: bool,
                uri: str, packs: list[list[int]] | None = None, arms: int = 0):
    """The sweep's MLflow parent run: created (and its state saved, with its packs), or re-opened for
    --resume (the packs it was launched with: Tune restores trials by pack index)."""
    if resume:
        if not state_path.exists():
            raise ConfigError(f"nothing to resume: no sweep '{spec.name}' under {storage}")
        state = load_state(state_path, spec.name)
        if state.spec_sha256 != _sha(path):
            raise ConfigError(f"{path} changed since sweep '{spec.name}' started; resume needs the same spec "
                              "(restore the file, or start a new sweep under another name)")
        if state.packs is not None and sorted(i for pack in state.packs for i in pack) != list(range(arms)):
            raise ConfigError(f"sweep '{spec.name}' was launched with {sum(map(len, state.packs))} arms and its spec "
                              f"now expands into {arms} (this release reads it differently); start it anew under "
                              "another name")
        state.tracking_uri = uri  # the masked one it kept, with its password
        client = connect(uri)
        with ends_parent_on_failure(client, state):
            reopen_parent_run(client, state.parent_run_id)
            set_sweep_note(client, state.experiment_id, state.parent_run_id, sweep_note(spec.description,
                                                                                        RUNNING_NOTE))
        return state, client
    if state_path.exists():
        raise ConfigError(f"sweep '{spec.name}' already exists under {storage}; pass --resume to continue "
                          "it, or change `name` / --storage-path for a new sweep")
    client = connect(uri)
    experiment_id = ensure_experiment(client, spec.name)
    parent = start_parent_run(client, experiment_id, spec.name, path, path.read_text(), spec.description)
    state = SweepState(uri, experiment_id, parent, _sha(path), packs)
    with ends_parent_on_failure(client, state):
        state.save(state_path)
    return state, client


@contextlib.contextmanager
def ends_parent_on_failure(client, state: SweepState) -> Iterator[None]:
    """Once the parent run exists, a failure ends it FAILED with the reason (ERROR_TAG), and the trial runs it
    cut off KILLED: a sweep is never left RUNNING in MLflow. An interrupt is the caller's (KILLED, resumable)."""
    try:
        yield
    except Exception as err:
        reason = f"sweep failed: {mask(worker_message(err)) if isinstance(err, AblateError) else mask(repr(err))}"
        with contextlib.suppress(Exception):  # the store may be what failed: the sweep's own error goes first
            close_running_children(client, state.experiment_id, state.parent_run_id, reason)
            end_parent_run(client, state.parent_run_id, "FAILED", {}, reason=reason)
        raise


def _fit(tuners: list, signals: Signals, packs: list[list[int]] | None, ctx: TrackingContext) -> tuple[int, int]:
    """(trainings, errored) over the tuners, stopping after the one a signal interrupted: a Ray trial that
    trains a pack counts each of its arms, errored when the arm failed in it (or the trial errored before
    the arm's run finished)."""
    errored = total = 0
    for tuner in tuners:
        with signals.tune():
            results = tuner.fit()
        for result in results:
            arms = len(packs[result.config["pack"]]) if packs and "pack" in (result.config or {}) else 1
            total += arms
            errored += _errored_arms(result, arms, ctx)
        if signals.received:
            break
    return total, errored


def _errored_arms(result, arms: int, ctx: TrackingContext) -> int:
    """How many of a Ray trial's arms failed: a pack's arms fail alone, so an errored pack counts the arms
    whose runs did not finish."""
    metrics = result.metrics or {}
    if not result.error:
        return int(metrics.get("arms_failed", 0))
    if arms == 1 or "trial_id" not in metrics:
        return arms
    return arms - sum(run.status() == "FINISHED" for run in TrialRun.find_all(ctx, metrics["trial_id"]))


def _interrupted(client, state: SweepState, signals: Signals, command: str) -> SweepInterrupted:
    """Record an interrupted sweep: the parent and the trials it cut off as KILLED, with how to resume."""
    name = signal.Signals(signals.signum).name
    reason = f"sweep interrupted ({name}); resume with: {command}"
    close_running_children(client, state.experiment_id, state.parent_run_id, reason)
    end_parent_run(client, state.parent_run_id, "KILLED", {}, resume_command=command, reason=reason)
    note_sweep_stopped(client, state.experiment_id, state.parent_run_id, command)
    return SweepInterrupted(f"sweep interrupted ({name}); finished trials are kept, resume with: {command}",
                            signals.signum)


def run_sweep(spec_path: str | Path, *, resume: bool = False, tracking_uri: str | None = None,
              storage_path: str | None = None, ray_address: str | None = None) -> dict:
    """Launch (or continue) every trial of a spec; returns counts and the MLflow ids. SIGINT / SIGTERM
    raise SweepInterrupted once the state for --resume is saved."""
    path = resolve_spec_path(spec_path)
    spec = load_sweep_spec(path)  # validated before anything starts or is recorded
    quiet_libraries()
    storage = _storage_root(spec, storage_path)
    # beside the Tune results; for bucket storage in the launching directory
    state_path = (Path(storage) if "://" not in storage else Path(".ablate_sweeps")) / spec.name / STATE_FILE
    arms = expand(spec)
    command = resume_command(path, storage_path, ray_address)
    ray_was_up = _ray_is_up()
    with Signals().installed() as signals:
        try:
            state, client, worker_uri = _preflight(spec, arms, path, state_path, storage, resume, tracking_uri,
                                                   ray_address)
        except BaseException as err:
            if not ray_was_up:  # a caller in the same process gets back the Ray it had: none
                _shutdown_ray()
            if isinstance(err, KeyboardInterrupt):
                raise SweepInterrupted(f"sweep '{spec.name}' interrupted before any trial started; run it "
                                       "again (with --resume if it was recorded)", signals.signum) from None
            raise
        try:
            with ends_parent_on_failure(client, state):
                workroot = work_root(storage, spec.name, state.parent_run_id)
                shutil.rmtree(workroot, ignore_errors=True)  # left by trials killed in an earlier run
                ctx = TrackingContext(worker_uri, state.experiment_id, state.parent_run_id)
                tuners = [_tuner(spec, arm, arms, ctx, storage, resume, workroot, state_path.parent)
                          for arm in arms] if spec.optuna else \
                    [_tuner(spec, None, arms, ctx, storage, resume, workroot, state_path.parent, state.packs)]
                total, errored = _fit(tuners, signals, state.packs, ctx)
        except KeyboardInterrupt:
            signals.received = signals.received or [signal.SIGINT]
        finally:
            shutil.rmtree(work_root(storage, spec.name, state.parent_run_id), ignore_errors=True)
        if signals.received:
            raise _interrupted(client, state, signals, command)
    with ends_parent_on_failure(client, state):
        if spec.optuna and spec.optuna.multi_objective:
            tag_pareto_fronts(state.tracking_uri, state.experiment_id, state.parent_run_id, spec.optuna.objectives)
        bill = sweep_bill(_bill_rows(client, state))
        end_parent_run(client, state.parent_run_id, "FINISHED" if errored == 0 else "FAILED",
                       {"trials": total, "trials_errored": errored, "sweep_device_hours": bill["device_hours"],
                        "sweep_wall_time_s": bill["wall_time_s"]},
                       reason=f"{errored} of {total} trials errored" if errored else None)
    note_finished_sweep(client, state, spec, total, errored)
    return {"tracking_uri": state.tracking_uri, "experiment_id": state.experiment_id,
            "parent_run_id": state.parent_run_id,
            "trials": total, "errored": errored, "storage": storage, "bill": bill,
            "ui": ui_address(state.tracking_uri, state.experiment_id, state.parent_run_id)}


def _preflight(spec: SweepSpec, arms: list[Arm], path: Path, state_path: Path, storage: str, resume: bool,
               tracking_uri: str | None, ray_address: str | None):
    """Everything that can refuse the sweep, before anything is recorded: the tracking store, the data, the
    resources a trial asks for, the shared storage and the address trials will log to; then the parent run
    (and the packs) are opened. Returns (state, client, the tracking URI the trials get)."""
    # a tracking server or database that is down or refuses the password stops here, before Ray
    store_uri = _store_uri(spec, state_path, resume, tracking_uri)
    probe_store(store_uri)
    if spec.optuna and spec.optuna.storage:  # likewise the database of the Optuna studies
        probe_database(spec.optuna.storage, what="optuna.storage")
    if resume and state_path.exists():  # what --resume reads besides Tune's state, before the run is re-opened
        check_side_files(state_path.parent, spec.name, study_in_folder=bool(spec.optuna and not spec.optuna.storage))
    # a bad data root stops here, before anything is recorded
    fetch_data(spec, arms, ray_address)
    clips = prepare_data(arms, spec.resources, spec.plugins, ray_address, spec.optuna.space if spec.optuna else None)
    res = spec.resources  # a trial no node can ever hold stops here, instead of waiting forever
    require_resources(res.cpu, res.gpu, ray_address, res.wait_s)
    check_storage_on_nodes(storage, spec.name)
    check_files_on_nodes(clips, "the world CLIP checkpoint", "cache_dir must be shared storage that every node "
                         "mounts (trials load the checkpoints the driver built there)")
    worker_uri = reachable_from_workers(store_uri, ray_address)  # refused here, before anything is recorded
    slots = Slots(*cluster_slots(spec, ray_address))
    table, passed = cost_table(spec, arms, slots.device, store_uri) if spec.packing else (None, [])
    plan = plan_packs(spec, arms, slots.count, slots.source, costs=table)
    state, client = _open_sweep(spec, path, state_path, storage, resume, store_uri,
                                plan.packs if spec.packing else None, len(arms))
    # the view's parallel axes are those every trial has: known from the arms before any run exists
    save_view(client, state.experiment_id, state.parent_run_id, [flatten_config(a.config) for a in arms])
    if state.packs is not None:  # a resume keeps the packs its Ray trials were launched with
        print(Plan(state.packs, "kept from the launch" if resume else plan.reason).line(len(arms)), file=sys.stderr)
    if table is not None and not resume:  # what the report's Cost section compares the measured figures with
        figures = forecast(spec, arms, slots, table, passed, plan=plan)
        retried(client.log_dict, state.parent_run_id, figures, PLAN_ARTIFACT)
        print(f"plan: {forecast_line(figures)}", file=sys.stderr)
    return state, client, worker_uri


def _bill_rows(client, state: SweepState) -> list[tuple[dict, dict, int, int]]:
    """(tags, metrics, start, end) of every trial run of the sweep: what its bill is counted from."""
    runs = retried(client.search_runs, [state.experiment_id], filter_string=children_filter(state.parent_run_id),
                   max_results=50000)
    return [(r.data.tags, r.data.metrics, r.info.start_time or 0, r.info.end_time or 0) for r in runs]


def note_finished_sweep(client, state: SweepState, spec: SweepSpec, total: int, errored: int) -> None:
    """The parent's and experiment's description: the spec's, the trials table, and how to get the report
    (`ablate report` replaces this table with the report's and links it)."""
    table = trials_markdown(trial_table(state.tracking_uri, state.experiment_id, state.parent_run_id))
    set_sweep_note(client, state.experiment_id, state.parent_run_id, sweep_note(
        spec.description, f"**{total} trials, {errored} errored.**", table,
        f"Report: `ablate report --experiment {spec.name}` writes it and logs it to this run under `report/`."))
