"""Nothing a local sweep starts listens beyond loopback: its private Ray (GCS, raylet, workers, agents)
and its driver, watched from outside while the sweep runs, as `ss -ltnp` would show them."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
from sweep_helpers import runs, write_spec


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def listening(root: int) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every TCP/UDP socket bound by `root` or a process under it."""
    try:
        tree = psutil.Process(root)
        procs = {p.pid: p for p in [tree, *tree.children(recursive=True)]}
        sockets = psutil.net_connections("inet")
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for conn in sockets:
        if conn.pid in procs and (conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM) and conn.laddr:
            try:
                name = procs[conn.pid].name()
            except psutil.NoSuchProcess:
                continue
            found.add((name, conn.laddr.ip, conn.laddr.port))
    return found


def test_a_local_sweep_listens_on_loopback_only(tmp_path, cache_dir):
    if os.geteuid() != 0:
        pytest.skip("reading other processes' sockets needs root")
    spec = write_spec(tmp_path, cache_dir, grid={"method": ["baseline", "dualembed"]})
    # Ray's switch as a user's shell has it: unset (the test session sets it for every other test)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", "--spec", str(spec)], cwd=tmp_path,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    seen: set[tuple[str, str, int]] = set()
    try:
        while proc.poll() is None:
            seen |= listening(proc.pid)
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert len(runs(tmp_path)[1]) == 2
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, seen  # the watch saw the private Ray's sockets
    beyond = sorted(s for s in seen if not loopback(s[1]))
    assert not beyond, f"listening beyond loopback: {beyond}"
    print(f"\nlocal sweep: {len(seen)} sockets, all on loopback: {sorted(seen)}")
