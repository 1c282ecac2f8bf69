"""Entry of `python -m cifar_dist.train` and `accelerate launch -m cifar_dist.train` (see cifar_dist.cli.train)."""

import os
import signal
import sys

from cifar_dist.cli.train import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    exit_status = main()
    # Only exiting from here: ignore further stop signals (the scripts repeat theirs until the launcher is
    # gone), as Python resets the handlers it installed to SIG_DFL at exit and a late one would kill us.
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(exit_status)
