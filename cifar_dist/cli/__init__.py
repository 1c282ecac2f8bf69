"""usage: cifar-dist COMMAND [ARGUMENTS] [--flag=value ...]

Train CIFAR-10 models on a CPU, one or several GPUs or a SLURM cluster, and look at the results.

commands:
  prepare SOURCE --out DIR     convert CIFAR-10/100 (archive or batches folder) or an image folder to .beton files
  train --preset=NAME          train one configuration; everything it writes lands in runs/<name>/
  evaluate RUN_DIR             test accuracy, overall and per class, of a trained run's weights
  predict RUN_DIR IMAGES...    the most likely classes of image files under a trained run's weights
  models                       the model zoo: parameters, MACs, receptive field
  presets                      the named recipes
  sweep plan|submit|status|run SPEC
                               grids and searches of runs, on a SLURM cluster or on this machine
  report RUNS_DIR              tables and plots of a sweep's runs (mean ± std over seeds)

`cifar-dist COMMAND --help` explains a command and its flags; `cifar-dist --version` prints the version.
Exit status: 0 done, 2 bad input (one line starting with `error:`), others as the command's help says.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from cifar_dist.cli.dispatch import dispatch, subcommands
from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_OK, did_you_mean
from cifar_dist.resources import checkout_warning
from cifar_dist.runner import run_schema

USAGE = __doc__  # the module's docstring is the top-level help; each command's own help comes from its schema


def version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("cifar_dist")
    except PackageNotFoundError:
        from cifar_dist import __version__

        return __version__


@dataclass(frozen=True)
class ModelsArgs:
    """Print the model zoo: name, parameters, MACs, receptive field, default input size."""


@dataclass(frozen=True)
class PresetsArgs:
    """Print the presets (named recipes) with the first line of their docstrings."""


def presets() -> int:
    """`cifar-dist presets` (its options: `PresetsArgs`, none)."""
    from cifar_dist.presets import PRESETS

    for name, fn in sorted(PRESETS.items()):
        print(f"{name:24s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return EXIT_OK


class Commands:
    """The subcommands of `cifar-dist`: a command group over the words after the name (cli.dispatch)."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def prepare(self) -> int:  # the one conversion parser, shared with `python -m data_prep`
        from data_prep.cli import main as prepare_main

        return prepare_main(self.argv, prog="cifar-dist prepare")

    def train(self) -> int:
        from cifar_dist.cli.train import main as train_main

        return train_main(self.argv, prog="cifar-dist train")

    def evaluate(self) -> int:
        from cifar_dist.cli.evaluate import EvaluateArgs, evaluate

        return run_schema(evaluate, EvaluateArgs, self.argv, "cifar-dist evaluate")

    def predict(self) -> int:
        from cifar_dist.cli.evaluate import PredictArgs, predict

        return run_schema(predict, PredictArgs, self.argv, "cifar-dist predict")

    def models(self) -> int:
        from cifar_dist.models.info import print_models

        return run_schema(print_models, ModelsArgs, self.argv, "cifar-dist models")

    def presets(self) -> int:
        return run_schema(presets, PresetsArgs, self.argv, "cifar-dist presets")

    def sweep(self) -> int:
        from cifar_dist.cli.sweep import main as sweep_main

        return sweep_main(self.argv)

    def report(self) -> int:
        from cifar_dist.cli.report import main as report_main

        return report_main(self.argv)


NAMES = subcommands(Commands)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK
    if argv[0] in ("--version", "-V"):
        print(f"cifar-dist {version()}")
        return EXIT_OK
    cmd, rest = argv[0], argv[1:]
    warning = None if "SLURM_JOB_ID" in os.environ else checkout_warning()  # jobs: the submit side said it
    if warning:
        print(warning, file=sys.stderr)
    if cmd not in NAMES:
        print(f"error: unknown command {cmd!r}{did_you_mean(cmd, NAMES)}; expected one of {', '.join(NAMES)} "
              f"(see cifar-dist --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return dispatch(Commands(rest), cmd, "cifar-dist")
