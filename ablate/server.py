"""`ablate server`: the cluster's tracking store, MLflow on PostgreSQL with proxied artifacts.

One folder holds everything the head node keeps on its local disk: the PostgreSQL data folder (made
once by initdb, reused after), the generated database password, the saved settings and both logs.
`start` is idempotent: what runs already is reused, what is missing is started; while anything it
started runs, a start with other settings is refused (it would leave the first server running,
unknown to `stop`), and `stop` waits until every process of the server's group has ended and its
port is free. PostgreSQL refuses
to run as root, so under root its commands run as the `postgres` system user (`runuser`), in a
folder that user owns; it listens on 127.0.0.1 only. The MLflow server is what nodes talk to; it
serves artifacts from `--artifacts-destination` (shared storage or a bucket), so workers need no
bucket credentials. An external database (`--backend-store-uri`) replaces the local PostgreSQL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import AblateError
from .tracking import redact_uri

SETTINGS = "server.json"
PG_DIR = "postgres"  # owned by the user PostgreSQL runs as
DB_NAME, DB_USER = "mlflow", "ablate"
PG_BIN_ENV = "ABLATE_PG_BIN"
READY_TIMEOUT_S = 180.0  # a first start creates MLflow's schema in a fresh database: tens of seconds


class ServerError(AblateError, RuntimeError):
    """The tracking server or its database cannot be started, found or stopped; the message says why."""


class ServerSettings(BaseModel):
    """What `start` was asked for, kept so a later `start`, `status` or `stop` finds the same server."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 5000
    db_port: int = 5432
    artifacts: str  # --artifacts-destination: a folder (shared storage) or a bucket URI
    workers: int = 4
    backend_store_uri: str | None = None  # an external database instead of the local PostgreSQL
    pg_bin: str | None = None


def settings_path(root: Path) -> Path:
    return root / SETTINGS


def load_settings(root: Path) -> ServerSettings:
    path = settings_path(root)
    if not path.exists():
        raise ServerError(f"no tracking server was ever started in {root}; run `ablate server start --root {root}`")
    try:
        return ServerSettings.model_validate_json(path.read_text())
    except (ValidationError, ValueError, OSError) as err:
        first = str(err).splitlines()[0]
        raise ServerError(f"{path} is damaged ({first}); remove it and run `ablate server start --root {root}` "
                          "again (the database in it is kept)") from None


def write_private(path: Path, text: str) -> None:
    """A file only its owner reads: the password, the settings (an external URI holds one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # a file made before, with another mode
        out.write(text)


# ---- PostgreSQL --------------------------------------------------------------------------------

def pg_bin_dir(override: str | None = None) -> Path:
    """The folder of initdb/pg_ctl: the flag, $ABLATE_PG_BIN, `pg_config --bindir`, Debian's
    /usr/lib/postgresql/<version>/bin (newest), then PATH."""
    candidates = [override or os.environ.get(PG_BIN_ENV)]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip() if out.returncode == 0 else None)
    by_version = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(Path(p).parent.name))
    candidates += reversed(by_version)
    initdb = shutil.which("initdb")
    candidates.append(str(Path(initdb).parent) if initdb else None)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    if override or os.environ.get(PG_BIN_ENV):
        raise ServerError(f"no initdb/pg_ctl in {override or os.environ.get(PG_BIN_ENV)}; point --pg-bin "
                          f"(or {PG_BIN_ENV}) at PostgreSQL's server binaries")
    raise ServerError("PostgreSQL's server binaries (initdb, pg_ctl) were not found; install PostgreSQL "
                      "(Debian/Ubuntu: apt-get install postgresql), pass --pg-bin, or give an external "
                      "database with --backend-store-uri")


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def _as_db_owner() -> list[str]:
    """PostgreSQL refuses to run as root: root runs its commands as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    out = subprocess.run(_as_db_owner() + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise ServerError(f"{what} failed ({' '.join(cmd[:2])}): {(out.stderr or out.stdout).strip()[-800:]}")
    return out


def _pg_folder(root: Path) -> Path:
    """The folder PostgreSQL owns; under root, the `postgres` user must reach it through every parent."""
    folder = root / PG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        folder.chmod(0o700)
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(folder)])
        if probe.returncode != 0:
            raise ServerError(f"the postgres system user cannot write {folder} (a parent folder is closed to "
                              "it); use a --root under a folder every user can enter, e.g. /var/lib or /tmp")
    return folder


def database_password(root: Path) -> str:
    """Made once, kept beside the settings, readable by the owner only."""
    path = root / "db_password"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def database_uri(root: Path, settings: ServerSettings) -> str:
    """The store MLflow keeps runs in; the driver is named, since SQLAlchemy 2.1 reads a bare
    postgresql:// as psycopg 3, which the project does not ship."""
    if settings.backend_store_uri:
        return settings.backend_store_uri
    return f"postgresql+psycopg2://{DB_USER}:{database_password(root)}@127.0.0.1:{settings.db_port}/{DB_NAME}"


def postgres_running(root: Path, settings: ServerSettings) -> bool:
    data = root / PG_DIR / "data"
    if not (data / "PG_VERSION").exists():
        return False
    ctl = pg_bin_dir(settings.pg_bin) / "pg_ctl"
    return subprocess.run(_as_db_owner() + [str(ctl), "status", "-D", str(data)], capture_output=True).returncode == 0


def start_postgres(root: Path, settings: ServerSettings) -> None:
    """initdb once (local socket: trust for the owner; TCP: passwords), start it on 127.0.0.1, and create
    the MLflow role and database when missing."""
    bindir = pg_bin_dir(settings.pg_bin)
    folder = _pg_folder(root)
    data = folder / "data"
    if not (data / "PG_VERSION").exists():
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
              "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"], "initdb")
    if not postgres_running(root, settings):
        if _port_taken("127.0.0.1", settings.db_port):
            raise ServerError(f"PostgreSQL's port {settings.db_port} on 127.0.0.1 is taken by another program; "
                              "pass another --db-port")
        # pg_ctl hands -o to a shell: the socket folder is quoted (a --root with a space)
        options = f"-c listen_addresses=127.0.0.1 -p {settings.db_port} -k {shlex.quote(str(folder))}"
        log = folder / "postgres.log"
        try:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                  "start"], f"starting PostgreSQL (log: {log})")
        except ServerError as err:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise ServerError("\n".join([str(err), *tail])) from None
    _ensure_database(folder, settings.db_port, database_password(root))


def _ensure_database(socket_dir: Path, port: int, password: str) -> None:
    import psycopg2
    from psycopg2 import sql

    admin = psycopg2.connect(host=str(socket_dir), port=port, user="postgres", dbname="postgres")
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,))
            verb = "ALTER" if cur.fetchone() else "CREATE"  # the password file is the truth
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(DB_USER),
                                                                          sql.Literal(password)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB_NAME),
                                                                          sql.Identifier(DB_USER)))
    finally:
        admin.close()


def stop_postgres(root: Path, settings: ServerSettings) -> None:
    if postgres_running(root, settings):
        ctl = pg_bin_dir(settings.pg_bin) / "pg_ctl"
        _run([str(ctl), "-D", str(root / PG_DIR / "data"), "-m", "fast", "-w", "stop"], "stopping PostgreSQL")


# ---- the MLflow server --------------------------------------------------------------------------

def server_url(settings: ServerSettings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as answer:
            return answer.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _pid(root: Path) -> int | None:
    """The MLflow server's process (group) id, when the process `start` started still runs: the file
    keeps its start time too, so a PID the system gave to another process since is not taken for it."""
    import psutil

    path = root / "mlflow.pid"
    if not path.exists():
        return None
    try:
        pid, started = path.read_text().split()
        alive = _reap(int(pid))
        same = alive is not None and abs(psutil.Process(alive).create_time() - float(started)) < 0.01
        return alive if same else None
    except (ValueError, psutil.Error):  # a file from an older ablate (no start time), or the process just ended
        return None


def _save_pid(root: Path, pid: int) -> None:
    import psutil

    (root / "mlflow.pid").write_text(f"{pid} {psutil.Process(pid).create_time()!r}")


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)) == 0


def start_mlflow(root: Path, settings: ServerSettings) -> None:
    url = server_url(settings)
    if _pid(root) is not None and healthy(url):
        return
    if _port_taken(settings.host, settings.port):
        raise ServerError(f"port {settings.port} on {settings.host} is taken by another program; stop it or "
                          "pass --port")
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow) if mlflow.exists() else "mlflow", "server",
               "--artifacts-destination", settings.artifacts, "--serve-artifacts",
               "--host", settings.host, "--port", str(settings.port), "--workers", str(settings.workers)]
    # the store's URI holds the database password: through the environment, which only the server's user
    # (and root) can read, never argv, which every local user sees (`ps`, /proc/PID/cmdline)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": database_uri(root, settings)}
    log = root / "mlflow.log"
    with log.open("ab") as out:  # its own session: `stop` ends the server and its workers together
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    _save_pid(root, proc.pid)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_mlflow(root)
            tail = log.read_text(errors="replace")[-1500:]
            secret = urlsplit(database_uri(root, settings)).password
            tail = tail.replace(secret, "***") if secret else tail
            raise ServerError(f"the MLflow server did not come up at {url} (log: {log}):\n{tail}")
        time.sleep(0.5)


def stop_mlflow(root: Path, timeout: float = 30.0) -> int | None:
    """SIGTERM to the server's process group (its workers too), SIGKILL to what is left after `timeout`;
    returns once no process of the group is left (the pid it stopped; None when none ran)."""
    pid = _pid(root)
    if pid is None:
        return None
    _kill_group(pid, signal.SIGTERM)
    if not _group_ended(pid, timeout):
        _kill_group(pid, signal.SIGKILL)
        if not _group_ended(pid, 10.0):
            raise ServerError(f"the MLflow server's processes (group {pid}) outlived SIGKILL; see `ps -g {pid}`")
    (root / "mlflow.pid").unlink(missing_ok=True)
    return pid


def _group_ended(pid: int, timeout: float) -> bool:
    """Whether every process of group `pid` (the server and each worker) ended within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)  # a server this process started is a zombie, still in the group, until waited for
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _port_freed(settings: ServerSettings, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _port_taken(settings.host, settings.port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _reap(pid: int) -> int | None:
    """`pid` while it still runs; a server this process started stays a zombie until waited for."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


# ---- the commands ---------------------------------------------------------------------------------

def start(root: Path, settings: ServerSettings) -> dict:
    """Start whatever of PostgreSQL and the MLflow server is not running; returns `status`."""
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    _refuse_other_settings(root, settings)
    if settings.artifacts and "://" not in settings.artifacts:
        Path(settings.artifacts).mkdir(parents=True, exist_ok=True)
    write_private(settings_path(root), settings.model_dump_json(indent=2))
    local_db = settings.backend_store_uri is None
    database_was_up = local_db and postgres_running(root, settings)
    if local_db:
        start_postgres(root, settings)
    try:
        start_mlflow(root, settings)
    except ServerError:
        if local_db and not database_was_up:  # a failed start leaves nothing running that it started
            stop_postgres(root, settings)
        raise
    return status(root)


def _refuse_other_settings(root: Path, settings: ServerSettings) -> None:
    """ServerError naming what runs from `root` when it was started with other settings: starting anew
    would leave it running (on its port, maybe on every interface) where `stop` no longer looks."""
    try:
        old = load_settings(root)
    except ServerError:  # never started here, or a damaged file: nothing to compare with
        return
    if old == settings:
        return
    running = []
    if (pid := _pid(root)) is not None:
        running.append(f"an MLflow server at {server_url(old)} (pid {pid}, host {old.host})")
    with contextlib.suppress(ServerError):  # PostgreSQL's binaries gone: it cannot be running either
        if old.backend_store_uri is None and postgres_running(root, old):
            running.append(f"its PostgreSQL on 127.0.0.1:{old.db_port}")
    if running:
        changed = ", ".join(k for k in ServerSettings.model_fields if getattr(old, k) != getattr(settings, k))
        raise ServerError(f"{' and '.join(running)} already run{'s' if len(running) == 1 else ''} from {root} with "
                          f"other settings (changed: "
                          f"{changed}); stop them first with `ablate server stop --root {root}`, or start with "
                          "the same arguments")


def stop(root: Path, keep_database: bool = False) -> dict:
    """Stop the MLflow server (every process of its group, its port checked free) and, unless kept or
    external, PostgreSQL."""
    root = root.absolute()
    settings = load_settings(root)
    pid = stop_mlflow(root)
    if pid is not None and not _port_freed(settings):
        raise ServerError(f"port {settings.port} on {settings.host} still answers after the MLflow server from "
                          f"{root} (pid {pid}) stopped: another program listens there; `ss -ltnp` names it")
    if not keep_database and settings.backend_store_uri is None:
        stop_postgres(root, settings)
    return status(root)


def status(root: Path) -> dict:
    root = root.absolute()
    settings = load_settings(root)
    url = server_url(settings)
    local_db = settings.backend_store_uri is None
    database: Literal["running", "stopped", "external"] = (
        ("running" if postgres_running(root, settings) else "stopped") if local_db else "external")
    return {"tracking_uri": url, "server": "running" if _pid(root) and healthy(url) else "stopped",
            "database": database, "backend_store_uri": redact_uri(database_uri(root, settings)),
            "artifacts": settings.artifacts, "root": str(root), "log": str(root / "mlflow.log")}
