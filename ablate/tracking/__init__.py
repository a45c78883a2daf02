"""MLflow tracking: one experiment per sweep name, a parent run per sweep, a child run per trial.

Everything goes through `MlflowClient` with explicit experiment and run ids (never the global
`mlflow.set_experiment`, which redirects other integrations). Child runs are keyed by a hash of
(parent run, canonical trial config): a resumed or retried trial re-attaches to its run instead of
creating a duplicate. The driver creates the store schema, experiment and parent run before any
trial starts, so parallel trials never race to create them.

One job a module: `store` (URI, probes, client, retries), `names` (tags, run names, params), `runs`
(parent and trial runs), `notes` (descriptions, the trials' table, UI addresses), `view` (the prepared UI
view), `fronts` (Pareto tags).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import lazy_face

if TYPE_CHECKING:  # type checkers see the real names
    from .fronts import tag_pareto_fronts  # noqa: F401
    from .names import (  # noqa: F401
        ARM_FIELDS,
        BATCH_LIMIT,
        DEFAULT_DB,
        EPOCH_METRICS,
        ERROR_TAG,
        FINAL_STEP,
        NAME_ORDER,
        NODE_LOSSES_TAG,
        NOT_READ,
        NOTE_TAG,
        RESUME_TAG,
        ROLE_TAG,
        SOURCE_TAGS,
        STEP_LOSS,
        STOPPED_TAG,
        SWEEP_TAG,
        SYSTEM_METRICS_INTERVAL_S,
        TRIAL_KEY,
        UI_DEFAULT,
        axis_label,
        children_filter,
        flatten_config,
        parent_run_name,
        run_name,
        trial_key,
    )
    from .notes import (  # noqa: F401
        RUNNING_NOTE,
        bill_text,
        note_sweep_stopped,
        report_link,
        set_sweep_note,
        sweep_bill,
        sweep_note,
        trial_table,
        trials_markdown,
        ui_address,
        ui_hint,
    )
    from .runs import (  # noqa: F401
        TrialRun,
        close_running_children,
        end_parent_run,
        git_commit,
        reopen_parent_run,
        source_tags,
        start_parent_run,
    )
    from .store import (  # noqa: F401
        LOCK_PATIENCE_S,
        PROBE_TIMEOUT_S,
        SERVER_PATIENCE_S,
        TrackingContext,
        _retry_duplicate,
        artifact_location,
        connect,
        connect_existing,
        ensure_experiment,
        is_duplicate,
        is_locked,
        open_client,
        probe_database,
        probe_server,
        probe_store,
        redact_uri,
        resolve_tracking_uri,
        retried,
        retries_done,
        server_unavailable,
    )
    from .view import VIEW_TAG_PREFIX, save_view, view_key, view_state  # noqa: F401

# exported name -> its module, imported on first use (the naming half needs no MLflow)
_LAZY = {
    "ARM_FIELDS": "names",
    "BATCH_LIMIT": "names",
    "DEFAULT_DB": "names",
    "EPOCH_METRICS": "names",
    "ERROR_TAG": "names",
    "FINAL_STEP": "names",
    "NAME_ORDER": "names",
    "NODE_LOSSES_TAG": "names",
    "NOTE_TAG": "names",
    "NOT_READ": "names",
    "RESUME_TAG": "names",
    "ROLE_TAG": "names",
    "SOURCE_TAGS": "names",
    "STEP_LOSS": "names",
    "STOPPED_TAG": "names",
    "SWEEP_TAG": "names",
    "SYSTEM_METRICS_INTERVAL_S": "names",
    "TRIAL_KEY": "names",
    "UI_DEFAULT": "names",
    "axis_label": "names",
    "children_filter": "names",
    "flatten_config": "names",
    "parent_run_name": "names",
    "run_name": "names",
    "trial_key": "names",
    "tag_pareto_fronts": "fronts",
    "RUNNING_NOTE": "notes",
    "note_sweep_stopped": "notes",
    "report_link": "notes",
    "set_sweep_note": "notes",
    "sweep_note": "notes",
    "bill_text": "notes",
    "sweep_bill": "notes",
    "trial_table": "notes",
    "trials_markdown": "notes",
    "ui_address": "notes",
    "ui_hint": "notes",
    "TrialRun": "runs",
    "close_running_children": "runs",
    "end_parent_run": "runs",
    "git_commit": "runs",
    "reopen_parent_run": "runs",
    "source_tags": "runs",
    "start_parent_run": "runs",
    "LOCK_PATIENCE_S": "store",
    "PROBE_TIMEOUT_S": "store",
    "SERVER_PATIENCE_S": "store",
    "TrackingContext": "store",
    "retried": "store",
    "_retry_duplicate": "store",
    "artifact_location": "store",
    "connect": "store",
    "connect_existing": "store",
    "ensure_experiment": "store",
    "is_duplicate": "store",
    "is_locked": "store",
    "open_client": "store",
    "probe_database": "store",
    "probe_server": "store",
    "probe_store": "store",
    "redact_uri": "store",
    "resolve_tracking_uri": "store",
    "retries_done": "store",
    "server_unavailable": "store",
    "VIEW_TAG_PREFIX": "view",
    "save_view": "view",
    "view_key": "view",
    "view_state": "view",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_face(__name__, _LAZY)
