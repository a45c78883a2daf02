"""Passwords in URIs stay secret: a real sweep on local Ray with a password in --tracking-uri (PostgreSQL,
and an MLflow server reached as http://user:password@), in optuna.storage, and the report of each: no file
under the storage path, the working folder, the MLflow artifacts or the report, no run's tags or params and
no line of console output holds a password. Real PostgreSQL and `mlflow server` (`ablate server`)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sweep_helpers import free_port, write_spec

from ablate.secret_uri import SECRETS_ENV, SecretURI, mask, reveal
from ablate.server import ServerError, ServerSettings, database_password, database_uri, pg_bin_dir, start, stop
from ablate.sweep.control import STATE_FILE
from ablate.tracking import connect

OPTUNA_PASSWORD = "optuna-Pw-4k7Q"
HTTP_PASSWORD = "http-Pw-9zX2"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process, as a user runs it (its whole console output is what it printed)."""
    env = {k: v for k, v in os.environ.items() if k not in (SECRETS_ENV, "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "ablate.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Path, ServerSettings]]:
    """`ablate server` (PostgreSQL and an MLflow server on it) in a folder the postgres user can enter, plus a
    second database and role for Optuna's studies."""
    try:
        pg_bin_dir()
    except ServerError as err:
        pytest.skip(f"no PostgreSQL server binaries on this machine: {err}")
    top = Path(tempfile.mkdtemp(prefix="ablate-secrets-"))
    top.chmod(0o755)
    root = top / "server"
    settings = ServerSettings(port=free_port(), db_port=free_port(), workers=1, artifacts=str(top / "artifacts"))
    try:
        start(root, settings)
        _optuna_database(root, settings.db_port)
        yield root, settings
    finally:
        with contextlib.suppress(ServerError):
            stop(root)
        shutil.rmtree(top, ignore_errors=True)


def _optuna_database(root: Path, port: int) -> None:
    import psycopg2

    admin = psycopg2.connect(host=str(root / "postgres"), port=port, user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE optuna LOGIN PASSWORD '{OPTUNA_PASSWORD}'")
            cur.execute("CREATE DATABASE optuna OWNER optuna")
    finally:
        admin.close()


def leaks(secrets: list[str], *folders: Path, texts: tuple[str, ...] = ()) -> list[str]:
    """Every file under `folders` and every text that holds one of `secrets`."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    found += [f"console/store: {s} in ...{t[max(0, t.find(s) - 120):t.find(s) + 40]!r}"
              for t in texts for s in secrets if s in t]
    return found


def store_text(uri: str) -> str:
    """Every tag, param and description of every run and experiment in the store, as one text."""
    client = connect(uri)
    parts = []
    for exp in client.search_experiments():
        parts.append(json.dumps(exp.tags))
        for run in client.search_runs([exp.experiment_id]):
            parts += [json.dumps(run.data.tags), json.dumps(run.data.params), run.info.artifact_uri or ""]
    return "\n".join(parts)


@pytest.mark.slow
def test_no_password_is_printed_or_stored_by_a_sweep_or_its_report(server, tmp_path, cache_dir):
    root, settings = server
    db_password = database_password(root)
    secrets = [db_password, OPTUNA_PASSWORD, HTTP_PASSWORD]
    postgres = database_uri(root, settings)  # postgresql+psycopg2://ablate:<password>@127.0.0.1:<port>/mlflow
    optuna_db = f"postgresql+psycopg2://optuna:{OPTUNA_PASSWORD}@127.0.0.1:{settings.db_port}/optuna"
    http = f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{settings.port}"
    work = tmp_path / "work"
    work.mkdir()

    # 1. tracked in PostgreSQL directly, an Optuna search whose studies live in another PostgreSQL database
    spec = write_spec(work, cache_dir, name="pg", base={"epochs": 1}, tracking_uri=None,
                      optuna={"num_samples": 2, "storage": optuna_db,
                              "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}})
    out = [cli("sweep", "--spec", str(spec), "--tracking-uri", postgres, cwd=work)]
    assert out[-1].returncode == 0, out[-1].stderr[-3000:]
    summary = out[-1].stdout.splitlines()[-1]  # the one summary line names the store, masked
    assert f"in {mask(postgres)};" in summary and "ablate:***@" in summary
    assert f"--backend-store-uri {mask(postgres)}" in out[-1].stderr  # the hint, masked
    state = work / "ray" / "pg" / STATE_FILE
    assert state.stat().st_mode & 0o777 == 0o600
    # the parent's spec.yaml artifact shows optuna.storage masked
    spec_artifact = next((work / "mlruns").rglob("spec.yaml"))
    assert yaml.safe_load(spec_artifact.read_text())["optuna"]["storage"] == mask(optuna_db)

    # 2. tracked through the MLflow server, reached with credentials in the URI
    spec2 = write_spec(work, cache_dir, name="http", base={"epochs": 1}, tracking_uri=None)
    out.append(cli("sweep", "--spec", str(spec2), "--tracking-uri", http, cwd=work))
    assert out[-1].returncode == 0, out[-1].stderr[-3000:]
    assert f"in {mask(http)};" in out[-1].stdout.splitlines()[-1]

    # 3. the reports of both, through the server and through the database
    out.append(cli("report", "--experiment", "http", "--tracking-uri", http, "--out", str(work / "r1"), cwd=work))
    assert out[-1].returncode == 0, out[-1].stderr[-3000:]
    out.append(cli("report", "--experiment", "pg", "--tracking-uri", postgres, "--out", str(work / "r2"), cwd=work))
    assert out[-1].returncode == 0, out[-1].stderr[-3000:]
    assert mask(optuna_db) in (work / "r2" / "report.html").read_text()

    # 4. a resume gets the password where the launch did, never from a file
    out.append(cli("sweep", "--spec", str(spec), "--resume", cwd=work))
    assert out[-1].returncode == 2 and "give that URI again with --tracking-uri" in out[-1].stderr

    # 5. a server or database that does not answer: the error names the URI, masked
    closed = free_port()
    out.append(cli("sweep", "--spec", str(spec2), "--tracking-uri", f"http://alice:{HTTP_PASSWORD}@127.0.0.1:{closed}",
                   cwd=work))
    assert out[-1].returncode == 2 and f"alice:***@127.0.0.1:{closed} is not reachable" in out[-1].stderr
    down = postgres.replace(f":{settings.db_port}/", f":{closed}/")
    out.append(cli("sweep", "--spec", str(spec2), "--tracking-uri", down, cwd=work))
    assert out[-1].returncode == 2 and "ablate:***@" in out[-1].stderr and "not reachable" in out[-1].stderr

    console = tuple(p.stdout + p.stderr for p in out)
    assert len(list((work / "ray").rglob("tuner.pkl"))) >= 2  # what Ray pickled is searched too
    assert leaks(secrets, work, Path(settings.artifacts), texts=(*console, store_text(postgres))) == []


def test_a_secret_uri_shows_pickles_and_dumps_masked_and_reveals_where_it_connects(monkeypatch):
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    uri = SecretURI("postgresql+psycopg2://ablate:Pw-1@db.example:5432/mlflow")
    assert str(uri) == f"{uri}" == "postgresql+psycopg2://ablate:***@db.example:5432/mlflow" and "Pw-1" not in repr(uri)
    assert "Pw-1" not in json.dumps({"uri": uri}) and b"Pw-1" not in pickle.dumps(uri)
    assert reveal(pickle.loads(pickle.dumps(uri))) == "postgresql+psycopg2://ablate:Pw-1@db.example:5432/mlflow"
    # a process started from here finds the real URI in its environment; one that was not, says so
    code = ("import pickle, sys; from ablate.secret_uri import reveal; "
            "print(reveal(pickle.loads(sys.stdin.buffer.read())))")
    child = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(uri), capture_output=True)
    assert child.stdout.decode().strip().endswith("ablate:Pw-1@db.example:5432/mlflow")
    env = {k: v for k, v in os.environ.items() if k != SECRETS_ENV}
    child = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(uri), capture_output=True, env=env)
    assert child.returncode != 0 and b"did not reach this process" in child.stderr and b"Pw-1" not in child.stderr
    assert mask("storage: 'mysql://u:p@ss@h/db' and http://x@h") == "storage: 'mysql://u:***@h/db' and http://x@h"
