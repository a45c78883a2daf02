"""Which Ray a sweep runs on (a private local one, or a running cluster), what it offers, and what every
node can reach: the tracking server's address and the shared storage."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..secret_uri import SECRETS_ENV, SecretURI, reveal
from ..spec import ConfigError
from .quiet import quiet_private_ray_token

# how Ray words an actor that died with its node (ActorDiedError's text)
NODE_DIED = re.compile(r"node (has )?died|node \S+ (is )?dead|NodeDiedError", re.IGNORECASE)


def ray_address(flag: str | None = None) -> str:
    """--ray-address, else RAY_ADDRESS, else `local`: a sweep never silently joins another job's cluster."""
    return flag or os.environ.get("RAY_ADDRESS") or "local"


def init_ray(address: str | None = None) -> None:
    """Start a private local Ray (`local`) or join a running cluster (`auto`, `host:port`); one line says which."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(address)
    if address == "local":
        quiet_private_ray_token()
        with _loopback_only():
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        # a URI's password reaches the cluster's trial processes in their environment, never in a pickle
        secrets = {SECRETS_ENV: os.environ[SECRETS_ENV]} if SECRETS_ENV in os.environ else {}
        try:
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": secrets} if secrets else None)
        except (ConnectionError, ValueError) as err:  # nothing there / not an address
            raise ConfigError(f"no Ray cluster answers at --ray-address {address} ({err}); start one with "
                              "`ray start --head`, or use --ray-address local for a private one") from None
    print(cluster_line(address), file=sys.stderr)


def require_resources(cpu: float, gpu: float, address: str | None, wait_s: float) -> None:
    """Ray started or joined, and a node that offers one trial's `cpu` and `gpu`: else Tune would wait for
    it forever. A private Ray never grows, so it is refused at once; a joined cluster may be adding nodes
    (autoscaling), so it is given `wait_s`, counted again each time a node joins, then refused."""
    import ray

    init_ray(address)
    private = ray_address(address) == "local"
    deadline, seen = time.monotonic() + wait_s, 0
    while True:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu for n in nodes):
            return
        if len(nodes) > seen:  # a node came up: an autoscaler may still be adding the right one
            deadline, seen = time.monotonic() + wait_s, len(nodes)
        if private or time.monotonic() > deadline:
            break
        time.sleep(min(2.0, wait_s))
    offered = "; ".join(f"{n['Resources'].get('CPU', 0):g} CPUs, {n['Resources'].get('GPU', 0):g} GPUs"
                        for n in nodes) or "no node"
    where = "the private local Ray" if private else f"no node of the Ray cluster after {wait_s:g} s"
    raise ConfigError(f"resources: a trial asks for {cpu:g} CPUs and {gpu:g} GPUs, which {where} offers "
                      f"(nodes: {offered}); lower resources.cpu / resources.gpu, or run on a cluster with such a "
                      "node" + ("" if private else " (resources.wait_s sets how long to wait for one)"))


# Ray's own switch for a Ray that stays on this machine (its default on macOS and Windows)
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """A private Ray binds to 127.0.0.1 only. On Linux Ray otherwise listens on every interface (its GCS,
    raylet, workers and agents on `*:PORT` and the LAN address), although nothing needs them off this
    machine. Ray has no bind-address option for these; its supported switch is
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which makes the node's address loopback for every process of the
    new Ray (they inherit the environment). Ray reads it once at import, into `ray_constants`, hence both;
    both are put back once the Ray is up, so joining a cluster later from this process is unaffected."""
    from ray._private import ray_constants

    saved = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _ray_is_up() -> bool:
    import ray

    return ray.is_initialized()


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def cluster_line(address: str) -> str:
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    where = "a private local Ray" if address == "local" else f"the Ray cluster at {address}"
    return (f"ray: {where} ({ray.get_runtime_context().gcs_address}): {nodes} node(s), "
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def reachable_from_workers(uri: str, address: str | None = None) -> str:
    """The tracking URI every trial gets. On a joined cluster (`auto`, `host:port`) a loopback host means
    the driver's node, always: workers the autoscaler adds after the driver started would otherwise call
    their own localhost, so this is decided by how the driver joined, never by the nodes alive now. The
    driver must reach the address it hands out (a server listening on 127.0.0.1 only would not answer
    workers); one line says which address trials use."""
    import ray

    from ..server import healthy
    from ..tracking import redact_uri

    parsed = urlparse(uri)
    if ray_address(address) == "local":
        return uri
    if parsed.hostname not in LOOPBACK_HOSTS:
        print(f"tracking: trials log to {redact_uri(uri)}", file=sys.stderr)
        return uri
    node = ray.util.get_node_ip_address()
    rewritten = SecretURI(_on_host(reveal(uri), node))
    if parsed.scheme in ("http", "https") and not healthy(rewritten.rstrip("/"), timeout=5.0):
        raise ConfigError(f"the tracking server at {redact_uri(uri)} answers this driver on loopback only, but "
                          f"trials on other nodes would call {redact_uri(rewritten)}, which does not answer; "
                          "start it listening on the node's address (`ablate server start --host 0.0.0.0`) "
                          "or give --tracking-uri an address every node reaches")
    print(f"tracking: trials log to {redact_uri(rewritten)} ({parsed.hostname} in the tracking URI means this "
          f"driver's node, {node})", file=sys.stderr)
    return rewritten


def _on_host(uri: str, host: str) -> str:
    """`uri` with its host replaced (user, password and port kept)."""
    parsed = urlparse(uri)
    credentials = parsed.netloc.rsplit("@", 1)[0] + "@" if "@" in parsed.netloc else ""
    port = f":{parsed.port}" if parsed.port else ""
    return parsed._replace(netloc=credentials + (f"[{host}]" if ":" in host else host) + port).geturl()


def lost_with_its_node(error: BaseException | None) -> bool:
    """The trial's process went with its node (spot preemption, a removed node), not because the trial
    raised or its process died on a live node. Ray says so two ways: the actor is unreachable (its node's
    raylet is gone before the cluster has declared the node dead) or it died with a dead node."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(error, ActorUnavailableError) or (
        isinstance(error, RayActorError) and bool(NODE_DIED.search(str(error))))


def check_storage_on_nodes(storage: str, name: str) -> None:
    """Every live Ray node (the driver's too) writes and removes a file in the sweep's results folder:
    a storage path that is not shared storage, or that a node cannot write, fails here, before anything
    is recorded, instead of as failing checkpoints in every trial. Bucket URIs are left to Tune."""
    if "://" in storage:
        return
    folder = str(Path(storage) / name)
    nodes, answers = _on_every_node(_write_probe, folder)
    failed = [(n, err) for n, err in zip(nodes, answers) if err]
    if failed:
        node, err = failed[0]
        raise ConfigError(f"storage path {folder} is not writable on {len(failed)} of {len(nodes)} Ray node(s) "
                          f"(node {node['NodeManagerAddress']}: {err}); storage_path (or --storage-path) must be "
                          "shared storage that every node mounts and can write")


def check_files_on_nodes(paths: list[Path], what: str, fix: str) -> None:
    """Every live Ray node sees each of `paths` (files the driver made for the trials, e.g. the world CLIPs'
    checkpoints): one on a node-local disk fails here, naming `what` and `fix`, not in every trial on
    that node."""
    if not paths:
        return
    nodes, answers = _on_every_node(_missing_files, [str(p) for p in paths])
    missing = [(n, m) for n, m in zip(nodes, answers) if m]
    if missing:
        node, files = missing[0]
        raise ConfigError(f"{what} {files[0]} is not there on {len(missing)} of {len(nodes)} Ray node(s) (node "
                          f"{node['NodeManagerAddress']}); {fix}")


def _on_every_node(task: Callable[..., Any], *args: Any) -> tuple[list[dict], list]:
    """(the live Ray nodes, `task(*args)` run on each of them: a zero-CPU task pinned to the node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    remote = ray.remote(num_cpus=0, max_retries=0)(task)
    pending = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
               .remote(*args) for n in nodes]
    return nodes, ray.get(pending, timeout=300)


def _missing_files(paths: list[str]) -> list[str]:
    """Ray task: those of `paths` this node does not see."""
    return [p for p in paths if not Path(p).is_file()]


def _write_probe(folder: str) -> str | None:
    """Ray task: None when this node can create `folder` and write a file in it, else why not."""
    probe = Path(folder) / f".ablate-write-probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


def cluster_slots(spec, address: str | None = None) -> tuple[int, str, str]:
    """How many of the spec's trials the Ray this driver runs on holds at once, from what, and on which
    device type. max_concurrent_trials wins; on a cluster that `ray up` started (its autoscaler's config
    is on the head), the config's capacity with every node up, since nodes come as trials ask; else what
    the Ray offers now."""
    import ray

    from .capacity import BOOTSTRAP_CONFIG, cluster_capacity
    from .packs import local_slots

    res = ray.cluster_resources()
    gpu = spec.resources.gpu > 0
    kinds = sorted(k.removeprefix("accelerator_type:") for k in res if k.startswith("accelerator_type:"))
    device = (kinds[0] if kinds else "gpu") if gpu else "cpu"
    config = BOOTSTRAP_CONFIG.expanduser()
    if not spec.max_concurrent_trials and ray_address(address) != "local" and config.is_file():
        try:
            capacity = cluster_capacity(config, spec.resources)
            return capacity.slots, f"the autoscaler's {capacity.source}", capacity.gpu_name or device
        except ConfigError as err:  # a config it cannot size: what the cluster offers now, said so
            print(f"warning: {err}; planning for what the Ray cluster offers now", file=sys.stderr)
    slots, source = local_slots(spec, float(res.get("CPU", 0)), float(res.get("GPU", 0)), "in the Ray cluster now")
    return slots, source, device
