"""The trainer's true exit status, recorded in the run directory: `<run_dir>/status.json`.

A launcher hides the trainer's status: `accelerate launch` exits 1 whenever its trainer exits non-zero
(the 1-process path raises CalledProcessError; torchrun reports a ChildFailedError), so a stop after a
checkpoint (3) looks like a crash (1). The main process (global rank 0) therefore writes

    {"exit": 3, "state": "stopped", "time": 1767225600}

atomically when it ends; slurm/sweep.sh, slurm/train.sh and `sweep status` read it from there.
Other ranks write nothing (on node-local run directories only rank 0's node has the file).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NONFINITE, EXIT_OK, EXIT_STOPPED
from cifar_dist.files import atomic_write_json, read_json_or_none

STATUS_FILE = "status.json"
STATES = {EXIT_OK: "finished", EXIT_FAILED: "failed", EXIT_BAD_INPUT: "bad_input", EXIT_STOPPED: "stopped",
          EXIT_NONFINITE: "nonfinite"}


def is_main_process(env: dict[str, str] | None = None) -> bool:
    """Global rank 0, from the launcher's environment (torchrun sets RANK; no RANK = a single process)."""
    return (os.environ if env is None else env).get("RANK", "0") == "0"


def write_status(run_dir: str | os.PathLike[str], exit_status: int) -> None:
    """Record the trainer's exit status in run_dir/status.json (main process only; atomic)."""
    if not is_main_process():
        return
    record = {"exit": exit_status, "state": STATES.get(exit_status, "failed"), "time": int(time.time())}
    atomic_write_json(Path(run_dir) / STATUS_FILE, record, indent=None)


def read_status(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The recorded status ({"exit", "state", "time"}), or None when the run recorded none (killed,
    still running, or not started)."""
    record = read_json_or_none(Path(run_dir) / STATUS_FILE)
    if not isinstance(record, dict) or not isinstance(record.get("exit"), int):
        return None
    return record
