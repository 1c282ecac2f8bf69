"""Entry of `python -m cifar_dist.train` and `accelerate launch -m cifar_dist.train` (see cifar_dist.cli.train)."""

import os
import signal
import sys

from cifar_dist.cli.train import main
from cifar_dist.errors import EXIT_STOPPED

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
    sys.exit(exit_status)
