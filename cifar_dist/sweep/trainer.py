"""Starting a trainer as a subprocess: the one way the local runner and a search worker start theirs, and
forward their signals to it; and the host name their records carry."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

from cifar_dist.resources import root


def host() -> str:
    """This machine's short name, as sweep_task.json and a trial's lease record it."""
    return socket.gethostname().split(".")[0]


def trainer_env() -> dict[str, str]:
    """This environment with the checkout (or share/cifar_dist of an install) first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root()), os.environ.get("PYTHONPATH")) if p)}


def local_command(flags: list[str], procs: int, number: int) -> list[str]:
    """`python -m cifar_dist.train FLAGS`, or with procs > 1 the same under accelerate launch (launch/cpu.yaml),
    on a port of its own for run or trial `number` of this process."""
    if procs <= 1:
        return [sys.executable, "-m", "cifar_dist.train", *flags]
    port = 29500 + (os.getpid() + number) % 20000
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root() / "launch" / "cpu.yaml"),
            "--num_processes", str(procs), "--main_process_port", str(port), "-m", "cifar_dist.train", *flags]


@contextlib.contextmanager
def handling(handler, *signums: signal.Signals):
    """`handler` receives `signums` while the block runs (it forwards them to the trainers); the old handlers
    are restored after."""
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def start_trainer(cmd: list[str], log_path: Path, env: dict[str, str], note: str = "",
                  preexec_fn=None) -> subprocess.Popen:
    """Start `cmd` with its output appended to `log_path` after a `$ COMMAND{note}` line, in a session of its
    own (a terminal's Ctrl-C reaches only the caller, which forwards SIGTERM)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {shlex.join(cmd)}{note}\n")
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=preexec_fn)
