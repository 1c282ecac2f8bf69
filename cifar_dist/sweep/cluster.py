"""The GPUs and CPUs a sweep task asks for, from what the partition's nodes offer (`sinfo`).

slurm/sweep.sh asks for nothing beyond SLURM's defaults (one CPU, no GPU), so it runs on any cluster;
`cifar-dist sweep submit` adds what the partition can give:

- `--gpus-per-node=1` only when the partition has nodes with GPUs (a cluster without GPU gres rejects
  any GPU request: "Invalid generic resource (gres) specification");
- `--cpus-per-task=N` with N = GPU_TASK_CPUS beside a GPU, CPU_TASK_CPUS without one, never more than
  the smallest node that could run the task has (a larger request is refused or pends forever), and small
  enough that the sweep's `parallel` tasks fit on the partition's nodes at once (2 tasks on one 2-CPU node:
  1 CPU each; asking 2 would run them one after the other).

Options the spec's `sbatch:` list (or the command line) already gives win: a GPU option (--gpus*, -G,
--gres) or a CPU option (--cpus-per-task, -c) there turns the matching default off (a GPU option asking
for 0 makes it a CPU task for the CPU count). Without `sinfo`, or when it does not answer, nothing is
added.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

GPU_TASK_CPUS = 8  # data loading beside one GPU
CPU_TASK_CPUS = 2  # one training process on the CPU (threads follow the CPUs)
SINFO_FORMAT = "%N|%P|%c|%G"  # node | partition (default marked *) | CPUs | generic resources


@dataclass(frozen=True)
class Node:
    name: str
    partition: str
    default: bool  # the partition is the cluster's default one
    cpus: int
    gpus: int


def gpu_count(gres: str) -> int:
    """GPUs in a gres string as sinfo prints it: "gpu:a100:4(S:0-1)" -> 4, "gpu:2,gpu:v100:1" -> 3,
    "gpu" -> 1, "(null)" or "" -> 0; other resources (e.g. "shard:8") are not GPUs."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def parse_sinfo(text: str) -> list[Node]:
    """Rows of `sinfo -h -N -o '%N|%P|%c|%G'` (one per node and partition); malformed rows are skipped."""
    nodes = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[2].rstrip("+").isdigit():
            continue
        name, part, cpus, gres = parts
        nodes.append(Node(name, part.rstrip("*"), part.endswith("*"), int(cpus.rstrip("+")), gpu_count(gres)))
    return nodes


def ask(cmd: list[str], timeout: float = 30) -> str | None:
    """The output of a SLURM query (sinfo, squeue, scontrol), or None when the command is missing, fails or
    does not answer within `timeout` seconds."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _option_values(args: list[str], long: str, short: str) -> list[str]:
    """Values of `--long=V`, `--long V` and (short != "") `-sV`, `-s V` in an sbatch argument list."""
    values = []
    for i, a in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if a.startswith(f"--{long}="):
            values.append(a.split("=", 1)[1])
        elif a == f"--{long}" or (short and a == f"-{short}"):
            values.append(nxt)
        elif short and a.startswith(f"-{short}") and not a.startswith("--"):
            values.append(a[2:])
    return values


def _gpu_request(args: list[str]) -> int | None:
    """None when `args` ask nothing about GPUs; else 0 (all GPU options say 0) or 1 (some GPU asked for)."""
    values = [v for long in ("gpus", "gpus-per-node", "gpus-per-task", "gres") for v in _option_values(args, long, "")]
    values += _option_values(args, "gpus", "G")
    if not values:
        return None
    return int(any(v.split(":")[-1].split("(")[0] not in ("0", "") for v in values))


def task_resources(given: list[str], sinfo_text: str | None, parallel: int = 1) -> list[str]:
    """The sbatch options to add for one sweep task (see the module docstring); `given`: the options the spec
    and command line already pass, `sinfo_text`: the output of `sinfo -h -N -o SINFO_FORMAT`, `parallel`: the
    array tasks meant to run at once (the CPUs: the smallest node's over the tasks each node gets, at least 1)."""
    nodes = parse_sinfo(sinfo_text or "")
    wanted = {p for v in _option_values(given, "partition", "p") for p in v.split(",") if p}
    nodes = [n for n in nodes if n.partition in wanted] if wanted else [n for n in nodes if n.default]
    if not nodes:
        return []
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    asked = _gpu_request(given)
    out = []
    if asked is None and gpu_nodes:
        out.append("--gpus-per-node=1")
    on_gpu = bool(gpu_nodes) and asked != 0
    if not (_option_values(given, "cpus-per-task", "c")):
        pool = gpu_nodes if on_gpu else nodes
        per_node = -(-max(parallel, 1) // len(pool))  # tasks each node runs at once
        if on_gpu:  # one GPU each: a node never runs more tasks than it has GPUs
            per_node = min(per_node, min(n.gpus for n in pool))
        fit = max(1, min(n.cpus for n in pool) // per_node)
        out.append(f"--cpus-per-task={min(GPU_TASK_CPUS if on_gpu else CPU_TASK_CPUS, fit)}")
    return out
