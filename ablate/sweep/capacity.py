"""How many of a spec's trials a Ray cluster holds at once when the autoscaler has started every node its
config allows: per node type, the node's CPUs and GPUs (its `resources`, else its instance type's) at the
spec's resources a trial, times its `max_workers` (the cluster's `max_workers` caps the workers in all).
No Ray, no cloud calls: a node type that leaves `resources: {}` is looked up in a small table of known
instance types, else one line asks for `--slots`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..spec import read_yaml
from .spec import Resources

# the config the autoscaler runs from, on a head node started by `ray up` (cluster/gpu.yaml names it)
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


@dataclass(frozen=True)
class Machine:
    cpus: float
    gpus: float
    gpu_name: str = ""  # as torch names it (a substring of torch.cuda.get_device_name)


# AWS instance types: vCPUs, GPUs, GPU
AWS: dict[str, Machine] = {
    **{f"g4dn.{s}": Machine(c, g, "T4") for s, c, g in (
        ("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1), ("8xlarge", 32, 1), ("12xlarge", 48, 4),
        ("16xlarge", 64, 1), ("metal", 96, 8))},
    **{f"{family}.{s}": Machine(c, g, gpu) for family, gpu in (("g5", "A10G"), ("g6", "L4"), ("g6e", "L40S"))
       for s, c, g in (("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1), ("8xlarge", 32, 1),
                       ("12xlarge", 48, 4), ("16xlarge", 64, 1), ("24xlarge", 96, 4), ("48xlarge", 192, 8))},
    "p3.2xlarge": Machine(8, 1, "V100"), "p3.8xlarge": Machine(32, 4, "V100"), "p3.16xlarge": Machine(64, 8, "V100"),
    "p4d.24xlarge": Machine(96, 8, "A100"), "p5.48xlarge": Machine(192, 8, "H100"),
    **{f"{family}.{s}": Machine(c, 0) for family in ("m5", "m6i", "c5", "c6i", "r5")
       for s, c in (("large", 2), ("xlarge", 4), ("2xlarge", 8), ("4xlarge", 16), ("8xlarge", 32),
                    ("12xlarge", 48), ("16xlarge", 64), ("24xlarge", 96))},
}
# GCP: vCPUs of a machine type's standard shapes (GPUs come from guestAccelerators), and the GPU names
GCP_GPU = {"nvidia-tesla-t4": "T4", "nvidia-l4": "L4", "nvidia-tesla-v100": "V100", "nvidia-tesla-a100": "A100",
           "nvidia-a100-80gb": "A100", "nvidia-h100-80gb": "H100", "nvidia-tesla-p100": "P100"}
GCP_BUILT_IN = {"a2-highgpu-1g": Machine(12, 1, "A100"), "a2-highgpu-2g": Machine(24, 2, "A100"),
                "a2-highgpu-4g": Machine(48, 4, "A100"), "a2-highgpu-8g": Machine(96, 8, "A100"),
                "g2-standard-4": Machine(4, 1, "L4"), "g2-standard-8": Machine(8, 1, "L4"),
                "g2-standard-12": Machine(12, 1, "L4"), "g2-standard-16": Machine(16, 1, "L4")}


@dataclass(frozen=True)
class NodeType:
    name: str
    machine: Machine
    max_workers: int
    head: bool
    detected: str  # where the node's CPUs and GPUs come from

    def fit(self, res: Resources) -> int:
        """Trials of `res` one such node holds."""
        fit = self.machine.cpus / res.cpu
        if res.gpu > 0:
            fit = min(fit, self.machine.gpus / res.gpu)
        return max(0, math.floor(fit + 1e-9))


@dataclass(frozen=True)
class Capacity:
    slots: int
    source: str
    gpu_name: str  # the GPU of the node type holding most trials ("" for a CPU cluster)


def node_types(path: Path) -> list[NodeType]:
    """The config's node types with their machines; a ConfigError when one cannot be sized."""
    config = read_yaml(path)
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise ConfigError(f"{path}: no `available_node_types` to size the cluster from (an on-premise config's "
                          "machines set their resources with `ray start`); pass --slots N, the trials it holds at once")
    head = config.get("head_node_type")
    types = []
    for name, node in config["available_node_types"].items():
        node = node or {}
        machine, detected = _machine(path, name, node, config.get("provider") or {})
        count = 1 if name == head else int(node.get("max_workers", config.get("max_workers", 0)) or 0)
        types.append(NodeType(name, machine, count, name == head, detected))
    return types


def _machine(path: Path, name: str, node: dict[str, Any], provider: dict[str, Any]) -> tuple[Machine, str]:
    given = node.get("resources") or {}
    cfg = node.get("node_config") or {}
    known = _instance(cfg, provider.get("type"))
    if {"CPU", "GPU"} <= set(given):
        return Machine(float(given["CPU"]), float(given["GPU"]), known[0].gpu_name if known else ""), "its resources"
    if known is None:
        kind = cfg.get("InstanceType") or cfg.get("machineType") or "an unnamed instance type"
        raise ConfigError(f"{path}: node type {name} leaves its CPUs and GPUs to be detected on {kind}, which ablate's "
                          "instance table does not know; pass --slots N (the trials the cluster holds at once), or "
                          f"set resources: {{CPU: n, GPU: n}} on {name}")
    machine, what = known
    cpus, gpus = float(given.get("CPU", machine.cpus)), float(given.get("GPU", machine.gpus))
    return Machine(cpus, gpus, machine.gpu_name), f"{what}: {machine.cpus:g} CPUs, {machine.gpus:g} GPU(s) " \
        f"{machine.gpu_name}".rstrip()


def _instance(cfg: dict[str, Any], provider: str | None) -> tuple[Machine, str] | None:
    """The machine an AWS or GCP node config asks for, and its name; None when not in the table."""
    if "InstanceType" in cfg:
        kind = str(cfg["InstanceType"])
        return (AWS[kind], kind) if kind in AWS else None
    kind = str(cfg.get("machineType", ""))
    if kind in GCP_BUILT_IN:
        return GCP_BUILT_IN[kind], kind
    family, _, cpus = kind.rpartition("-")
    if not family.startswith(("n1-", "n2-", "e2-")) or not cpus.isdigit():
        return None
    gpus, name = 0.0, ""
    for acc in cfg.get("guestAccelerators") or []:
        gpus += float(acc.get("acceleratorCount", 1))
        name = GCP_GPU.get(str(acc.get("acceleratorType", "")), str(acc.get("acceleratorType", "")))
    return Machine(float(cpus), gpus, name), kind


def cluster_capacity(path: Path, res: Resources) -> Capacity:
    """Trials of `res` the cluster holds with every node up: worker types filled greediest first (most
    trials a node) up to the cluster's max_workers, plus the head's."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"cluster config not found: {path}")
    config = read_yaml(path)
    budget = int((config or {}).get("max_workers", 10**9) if isinstance(config, dict) else 0)
    types = node_types(path)
    slots, parts, best = 0, [], (0, "")
    for node in sorted(types, key=lambda t: (not t.head, -t.fit(res))):
        count = node.max_workers if node.head else min(node.max_workers, budget)
        if not node.head:
            budget -= count
        fit = node.fit(res)
        if count and fit:
            slots += count * fit
            parts.append(f"{count} {node.name} ({node.detected}) x {fit}")
            best = max(best, (count * fit, node.machine.gpu_name))
    if slots == 0:
        raise ConfigError(f"{path}: no node type holds a trial of {res.cpu:g} CPUs and {res.gpu:g} GPUs; lower the "
                          "spec's resources or add such a node type")
    where = " + ".join(parts)
    return Capacity(slots, f"{path.name} at its max_workers: {where} trial(s) of {res.cpu:g} CPU, {res.gpu:g} GPU",
                    best[1] if res.gpu > 0 else "")
