"""`ablate server`: no secret in any process's argv or in a file others can read, a root with a space,
a stale pid file, a taken port, a damaged settings file. Real PostgreSQL, real `mlflow server`."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sweep_helpers import free_port

from ablate.cli import main
from ablate.server import (
    ServerError,
    ServerSettings,
    database_password,
    database_uri,
    pg_bin_dir,
    postgres_running,
    start,
    status,
    stop,
)


@pytest.fixture()
def spaced_root() -> Iterator[Path]:
    """A server folder whose path has a space, under a folder the postgres system user can enter (pytest's
    own folders are closed to other users)."""
    try:
        pg_bin_dir()
    except ServerError as err:
        pytest.skip(f"no PostgreSQL server binaries on this machine: {err}")
    top = Path(tempfile.mkdtemp(prefix="ablate-server-"))
    top.chmod(0o755)
    root = top / "lab server"
    try:
        yield root
    finally:
        for folder in (root, top / "external"):
            with contextlib.suppress(ServerError):
                stop(folder)
        shutil.rmtree(top, ignore_errors=True)


def server_argv(root: Path) -> list[str]:
    """The command lines of the MLflow server `start` ran in `root` and of every process it started."""
    pid = int((root / "mlflow.pid").read_text().split()[0])
    parent = psutil.Process(pid)
    return [" ".join(p.cmdline()) for p in [parent, *parent.children(recursive=True)]]


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_no_password_in_any_argv_and_secret_files_are_private(spaced_root):
    settings = ServerSettings(port=free_port(), db_port=free_port(), workers=1, artifacts=str(spaced_root / "art"))
    assert start(spaced_root, settings)["server"] == "running"  # `-k <root>/postgres` with a space works
    password = database_password(spaced_root)
    argv = server_argv(spaced_root)
    assert len(argv) >= 2 and any("mlflow" in a for a in argv)
    assert not [a for a in argv if password in a]
    assert mode(spaced_root / "db_password") == 0o600 and mode(spaced_root / "server.json") == 0o600

    # an external database (here the same PostgreSQL): its URI with the password is kept in server.json
    external = spaced_root.parent / "external"
    uri = database_uri(spaced_root, settings)
    ext = ServerSettings(port=free_port(), workers=1, artifacts=str(external / "art"), backend_store_uri=uri)
    assert start(external, ext)["database"] == "external"
    assert password in (external / "server.json").read_text() and mode(external / "server.json") == 0o600
    assert not [a for a in server_argv(external) if password in a]
    assert "***" in status(external)["backend_store_uri"]


def test_taken_ports_are_named_and_a_failed_start_leaves_nothing_running(spaced_root):
    artifacts = str(spaced_root / "art")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        clash = ServerSettings(port=free_port(), db_port=port, workers=1, artifacts=artifacts)
        with pytest.raises(ServerError, match=f"PostgreSQL's port {port} on 127.0.0.1 is taken.*--db-port"):
            start(spaced_root, clash)
        settings = ServerSettings(port=port, db_port=free_port(), workers=1, artifacts=artifacts)
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is taken"):
            start(spaced_root, settings)
    assert not postgres_running(spaced_root, settings)  # started for this start, stopped with its failure


def test_a_second_start_with_other_settings_is_refused_and_stop_ends_every_process(spaced_root, capsys):
    """`start --port P1`, then `start --port P2` while the first runs: refused in one line naming the running
    server and how to stop it (it used to start a second server, and `stop` then left the first running)."""
    first, second, db = free_port(), free_port(), free_port()
    args = ["server", "start", "--root", str(spaced_root), "--db-port", str(db), "--workers", "1"]
    assert main([*args, "--port", str(first)]) == 0
    pid = int((spaced_root / "mlflow.pid").read_text().split()[0])
    group = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    capsys.readouterr()
    assert main([*args, "--port", str(second)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: an MLflow server at http://127.0.0.1:{first} (pid {pid}, "), err
    assert "changed: port" in err and f"`ablate server stop --root {spaced_root.absolute()}`" in err
    assert not socket_answers(second) and f'"port": {first}' in (spaced_root / "server.json").read_text()
    assert main([*args, "--port", str(first)]) == 0  # the same arguments: what runs is reused
    assert int((spaced_root / "mlflow.pid").read_text().split()[0]) == pid
    assert main(["server", "stop", "--root", str(spaced_root)]) == 0
    assert not [p for p in group if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not socket_answers(first) and not postgres_running(spaced_root, ServerSettings(artifacts="", db_port=db))


def socket_answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_stop_with_a_stale_pid_file_kills_nothing_else(tmp_path):
    """The server is long gone and its PID now belongs to another process (group): `stop` leaves it alone."""
    (tmp_path / "server.json").write_text(ServerSettings(artifacts=str(tmp_path / "art"),
                                                         backend_store_uri="sqlite:///x.db").model_dump_json())
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (tmp_path / "mlflow.pid").write_text(str(other.pid))  # an older ablate's file: the PID alone
        assert stop(tmp_path)["server"] == "stopped"
        time.sleep(0.5)
        assert other.poll() is None  # not killed
        (tmp_path / "mlflow.pid").write_text(f"{other.pid} 12345.0")  # the PID, with the old server's start time
        stop(tmp_path)
        time.sleep(0.5)
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_a_damaged_settings_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "server.json").write_text('{"host": "127.0.0.1", "port": ')
    assert main(["server", "status", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "server.json is damaged" in err
    assert "remove it and run `ablate server start" in err
