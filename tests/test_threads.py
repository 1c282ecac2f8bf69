"""Torch threads follow the CPUs a process may use, not the machine's core count."""

import os
import shutil
import subprocess
import sys

import pytest

PROBE = "from cifar_dist.data import compute_threads; print(compute_threads())"


def threads(prefix=(), **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE",
                                                              "SLURM_CPUS_PER_TASK")}
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True,
                         text=True, check=True, timeout=120)
    return int(out.stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a machine with 2 or more usable CPUs")
@pytest.mark.slow
def test_threads_follow_affinity_slurm_cpus_and_local_processes():
    cpus = len(os.sched_getaffinity(0))
    assert threads() == cpus
    assert shutil.which("taskset"), "taskset (util-linux) is part of every Debian system"
    assert threads(prefix=("taskset", "-c", "0")) == 1
    assert threads(SLURM_CPUS_PER_TASK="1") == 1
    assert threads(LOCAL_WORLD_SIZE="2") == max(1, cpus // 2)
    assert threads(OMP_NUM_THREADS="3") == 3
