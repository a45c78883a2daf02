"""The tracking store: which URI, probing it before a sweep, the client, experiments, and the retries every
call gets (a locked sqlite file, a server that stops answering)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..errors import TrackingError
from ..files import file_lock
from ..secret_uri import SecretURI, mask, reveal

# A sqlite store allows one writer; another process (a backup, `sqlite3`, a report) may hold it for a
# while. Every call waits up to this long before the lock counts as a fault.
LOCK_PATIENCE_S = 60.0
PROBE_TIMEOUT_S = 5.0
# A tracking server that stops answering (restarted, its database failing over) is waited for this
# long by every call before the trial fails with a TrackingError (and Tune retries it from its last
# checkpoint). Bounded from below: MLflow's own HTTP retries are cut to a few seconds (below) so that
# this deadline, not MLflow's minutes of backoff, decides.
SERVER_PATIENCE_S = float(os.environ.get("ABLATE_TRACKING_PATIENCE_S", 300))
# MLflow's defaults retry one request 7 times with doubling back-off (minutes) and wait 120 s for an
# answer; these bound one MLflow call to about 2 + 4 s of back-off or 2 x 30 s of a silent server.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# MLflow's client prints "View run ... at: <server URI>" as it ends each run on a server, password and all;
# ablate prints the UI's address itself, without one
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# What a retry waited for, by kind ("lock", "server"): the load benchmark reports them.
retries_done: Counter[str] = Counter()
from .names import DEFAULT_DB


def resolve_tracking_uri(flag: str | None = None, spec: str | None = None) -> SecretURI:
    """Flag, then spec, then MLFLOW_TRACKING_URI, then a sqlite file in the working directory; its password
    (if any) masked wherever it is shown or kept."""
    uri = reveal(flag or spec or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Trials run in other working directories: pin the file to an absolute path.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().absolute())
    return SecretURI(uri)


def redact_uri(uri: str) -> str:
    """The URI with its password (if any) replaced by ***: what messages and logs may show."""
    return mask(uri)


def connect(uri: str) -> MlflowClient:
    """A client whose store answers (for sqlite: the schema exists afterwards). Opening a sqlite store
    creates or migrates its schema, and two processes doing that at once collide in alembic ("table
    _alembic_tmp_metrics already exists"), so for sqlite one process at a time opens it, under a lock."""
    probe_store(uri)
    db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    with file_lock(Path(f"{db}.lock")) if db else contextlib.nullcontext():
        try:
            client = open_client(uri)
            retried(client.search_experiments, max_results=1)
        except Exception as err:  # the store raises many types; all mean "not usable"
            if is_locked(err):
                raise TrackingError(f"MLflow tracking store {redact_uri(uri)} stayed locked by another process for "
                                    f"{LOCK_PATIENCE_S:.0f} s; close what holds it and run again") from err
            raise TrackingError(f"MLflow tracking store {redact_uri(uri)} is not reachable: {mask(str(err))}") from err
    return client


# tables every MLflow store has; a database without them is not one (and a reading command must not make it one)
MLFLOW_TABLES = frozenset({"experiments", "runs", "alembic_version"})


def connect_existing(uri: str) -> MlflowClient:
    """For reading commands (report, analyze): a client of a store that already exists and is MLflow's.
    Opening a database makes MLflow create (or for a newer MLflow, migrate) its tables in it: a mistyped
    --tracking-uri would put 65 tables into another application's database, or an empty new file."""
    tables = _existing_tables(uri)
    if tables is not None and not MLFLOW_TABLES <= tables:
        missing = ", ".join(sorted(MLFLOW_TABLES - tables))
        raise TrackingError(f"{redact_uri(uri)} is not an MLflow tracking store (no {missing} table); check "
                            "--tracking-uri (reading commands never create a store)")
    return connect(uri)


def _existing_tables(uri: str) -> set[str] | None:
    """The tables of a database URI's store, read without creating or changing anything; None for a server."""
    if uri.startswith("sqlite:///"):
        import sqlite3

        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise TrackingError(f"no MLflow tracking store at {path} (no such file); check --tracking-uri or "
                                "MLFLOW_TRACKING_URI (reading commands never create a store)")
        try:
            with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
                return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as err:
            raise TrackingError(f"{path} is not an MLflow tracking store (not an sqlite database: {err}); check "
                                "--tracking-uri") from None
    if "://" in uri and not uri.startswith(("http://", "https://", "file:", "databricks")):
        import sqlalchemy

        probe_database(uri)
        engine = sqlalchemy.create_engine(reveal(uri), poolclass=sqlalchemy.pool.NullPool)
        try:
            return set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    return None


def probe_store(uri: str) -> None:
    """A tracking server or database that does not answer, or refuses the password, is said in seconds;
    a sqlite file is left alone (probing would create it)."""
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    elif "://" in uri and not uri.startswith(("sqlite:", "file:")):
        probe_database(uri)


def probe_database(uri: str, timeout: float = PROBE_TIMEOUT_S, what: str = "tracking URI") -> None:
    """One connection attempt to a database URI (postgresql://, mysql://): MLflow's store retries a
    failing connection ten times over about 100 s; a refused password or a closed port is said at once."""
    import sqlalchemy

    shown = redact_uri(uri)
    args = {"connect_timeout": int(timeout)} if uri.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(reveal(uri), connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ModuleNotFoundError as err:
        raise TrackingError(f"no driver for {shown} ({err.name} is missing); the cluster extra (pip install "
                            "'ablate[cluster]') brings psycopg2: write the URI as postgresql+psycopg2://...") from None
    except sqlalchemy.exc.ArgumentError as err:
        raise TrackingError(f"{what} {shown} is not a database URI ({mask(str(err))})") from None
    except sqlalchemy.exc.OperationalError as err:
        reason = mask(" ".join(line.strip() for line in str(err.orig or err).splitlines() if line.strip()))
        if "password" in reason or "authentication" in reason:
            raise TrackingError(f"the database of {what} {shown} refuses the password ({reason}); fix "
                                "the user or password in the URI") from None
        raise TrackingError(f"the database of {what} {shown} is not reachable ({reason}); is it running "
                            "and reachable from here?") from None


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """MLflow's own client retries an unreachable server for minutes; a short probe says so at once.
    Any HTTP answer (even 401 or 404) means a server is there. A `user:password@` in the URI is sent as
    HTTP basic authentication, as MLflow's client sends it."""
    try:
        urllib.request.urlopen(_health_request(reveal(uri)), timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as err:  # URLError, refused, timeout, bad URL
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise TrackingError(f"MLflow tracking server {redact_uri(uri)} did not answer within {timeout:.0f} s; "
                                "is it running and reachable from here?") from None
        raise TrackingError(f"MLflow tracking server {redact_uri(uri)} is not reachable ({mask(str(reason))}); "
                            "is it running and reachable from here?") from None


def _health_request(uri: str) -> urllib.request.Request:
    """GET <server>/health, its URI's credentials (if any) moved into an Authorization header."""
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=host)).rstrip("/") + "/health")
    if parts.username is not None:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def artifact_location(tracking_uri: str, name: str) -> str | None:
    """Where a new experiment's artifacts go: beside a sqlite store's file (MLflow's default, `./mlruns`,
    would follow whatever the working directory is), else the server's or store's own default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///")).absolute()
    return (db.parent / "mlruns" / re.sub(r"[^\w.-]", "_", name)).as_uri()


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = retried(client.get_experiment_by_name, name)
    if exp is None:
        try:
            return retried(client.create_experiment, name,
                          artifact_location=artifact_location(client.tracking_uri, name))
        except MlflowException as err:  # another process created it since we looked
            exp = retried(client.get_experiment_by_name, name)
            if exp is None:
                raise TrackingError(f"cannot create experiment '{name}': {err}") from err
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment '{name}' is deleted; restore it in MLflow or rename the spec")
    return exp.experiment_id


@dataclass(frozen=True)
class TrackingContext:
    """What a trial needs to find its run; plain data so it travels to Ray workers."""

    uri: str
    experiment_id: str
    parent_run_id: str


def is_locked(err: BaseException) -> bool:
    return "locked" in str(err).lower()


def open_client(uri: str) -> MlflowClient:
    """Opening a sqlite store reads its schema, which a lock holds up too. The one place the real tracking
    URI (its password) is read."""
    return retried(MlflowClient, tracking_uri=reveal(uri))


def server_unavailable(err: BaseException) -> bool:
    """A tracking server that did not answer, or answered with a transient 5xx (MLflow's client gave up
    its own retries): the server is restarting or overloaded, not refusing the request."""
    from requests import exceptions

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, exceptions.ConnectionError | exceptions.Timeout):
            return True
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    return "Max retries exceeded" in text or bool(re.search(r"error code 5\d\d|too many 5\d\d error", text))


def retried(fn, *args, **kwargs):
    """Wait out what passes instead of failing the trial or the sweep: a sqlite store locked by another
    writer (up to LOCK_PATIENCE_S) and a tracking server that is down or answers 5xx (up to
    SERVER_PATIENCE_S; past it a TrackingError says for how long). A logged batch carries its own
    timestamps, so one sent again after a lost answer is recognised by the store, never stored twice."""
    started = time.monotonic()
    for attempt in itertools.count():
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            kind = "lock" if is_locked(err) else "server" if server_unavailable(err) else None
            if kind is None:
                raise
            patience = LOCK_PATIENCE_S if kind == "lock" else SERVER_PATIENCE_S
            pause = min(0.2 * 2**attempt, 4.0 if kind == "lock" else 10.0)
            if time.monotonic() + pause - started > patience:
                if kind == "lock":
                    raise
                raise TrackingError(f"the MLflow tracking server did not answer for {patience:.0f} s "
                                    f"({type(err).__name__}: {mask(str(err))[:300]}); a sweep's trial fails here and "
                                    "Ray Tune retries it from its last checkpoint, a command can be run again once the "
                                    "server answers") from err
            retries_done[kind] += 1
            time.sleep(pause)


def is_duplicate(err: BaseException) -> bool:
    """Another writer inserted the same row between the store's look-up and its insert (sqlite's and
    PostgreSQL's wording, directly or relayed by a tracking server)."""
    text = str(err)
    return "UNIQUE constraint failed" in text or "duplicate key value violates unique constraint" in text


def _retry_duplicate(fn, *args, attempts: int = 5, **kwargs):
    """MLflow stores a dataset once per experiment by looking it up, then inserting it: trials that log the
    same split at once race, and the loser's insert fails. Asked again, the store finds the winner's row."""
    for attempt in range(attempts):
        try:
            return retried(fn, *args, **kwargs)
        except Exception as err:
            if not is_duplicate(err) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
