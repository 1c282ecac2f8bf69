"""`cifar-dist`: the single entry for the project's commands. A thin shell, no logic.

    cifar-dist prepare SOURCE --out data      convert CIFAR-10/100 or an image folder to .beton files
    cifar-dist train --preset=NAME [...]      train one configuration (same flags as -m cifar_dist.train)
    cifar-dist models                         the model zoo: parameters, MACs, receptive field
    cifar-dist presets                        the named recipes
    cifar-dist sweep plan|submit|status|run GRID   ablation grids (SLURM job arrays or local)
    cifar-dist report runs/<sweep>            mean +- std table and plots of a sweep
    cifar-dist --version                      the installed version

Every subcommand checks all its flags before it runs (`cifar_dist.cli.flags`); `COMMAND --help` prints
its help. Exit status: 0 done, 2 bad input (one `error:` line on stderr), others as the command says.
"""

from __future__ import annotations

import sys

from cifar_dist.cli.flags import run_command
from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_OK

USAGE = __doc__


def version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("cifar_dist")
    except PackageNotFoundError:
        from cifar_dist import __version__

        return __version__


def models() -> int:
    """Print the model zoo: name, parameters, MACs, receptive field, default input size."""
    from cifar_dist.models.info import print_models

    print_models()
    return EXIT_OK


def presets() -> int:
    """Print the presets with the first line of their docstrings."""
    from cifar_dist.presets import PRESETS

    for name, fn in sorted(PRESETS.items()):
        print(f"{name:24s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return EXIT_OK


COMMANDS = {"models": models, "presets": presets}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK
    if argv[0] in ("--version", "-V"):
        print(f"cifar-dist {version()}")
        return EXIT_OK
    cmd, rest = argv[0], argv[1:]
    if cmd == "prepare":  # the one conversion parser, shared with `python -m data_prep`
        from data_prep.cli import main as prepare_main

        return prepare_main(rest, prog="cifar-dist prepare")
    if cmd == "train":
        from cifar_dist.cli.train import main as train_main

        return train_main(rest, prog="cifar-dist train")
    if cmd == "sweep":
        from cifar_dist.cli.sweep import main as sweep_main

        return sweep_main(rest)
    if cmd == "report":
        from cifar_dist.cli.report import main as report_main

        return report_main(rest)
    if cmd not in COMMANDS:
        print(f"error: unknown command {cmd!r}; expected one of prepare, train, models, presets, sweep, report",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_command(COMMANDS[cmd], rest, f"cifar-dist {cmd}")


if __name__ == "__main__":
    sys.exit(main())
