"""Entry of `python -m cifar_dist.train` and `accelerate launch -m cifar_dist.train` (see cifar_dist.cli.train)."""

import os
import signal
import sys

from cifar_dist.cli.train import main
from cifar_dist.errors import EXIT_STOPPED


def leave(exit_status: int) -> None:
    """End a trainer process that was one rank of several without the interpreter's teardown.

    A DistributedDataParallel model keeps its process group alive after `destroy_process_group` (torch
    2.14: the gloo loop and worker threads still run when the trainer returns), so the interpreter's and the
    C++ runtime's teardown meet running gloo threads and, now and then, abort ("terminate called without an
    active exception", SIGABRT) after a finished run; a launcher then reports the rank as failed. Everything
    the run keeps is written and closed by the time `main` returns: flush the streams and leave at once."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_status)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    exit_status = main()
    if exit_status == EXIT_STOPPED and os.environ.get("CIFAR_DIST_STOP_EXIT_0") == "1":
        # Set by slurm/sweep.sh and train.sh, which read the true status (3) from <run>/status.json: a launcher
        # (torchrun, srun) takes any non-zero exit for a crash and prints failure reports over a normal stop.
        exit_status = 0
    # Only exiting from here: ignore further stop signals (the scripts repeat theirs until the launcher is
    # gone), as Python resets the handlers it installed to SIG_DFL at exit and a late one would kill us.
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        leave(exit_status)
    sys.exit(exit_status)
