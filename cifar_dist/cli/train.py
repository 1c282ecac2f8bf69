"""`python -m cifar_dist.train` and `cifar-dist train`: the trainer's options (`TrainArgs`, whose docstring is
the first part of `--help`: the commands for a CPU, one GPU, several GPUs and several nodes) and `run_cli`.

The command line is read once (`cifar_dist.runner.run_schema`); each `--section.key=value` flag is kept as
text for the config's own override machinery (`cifar_dist.presets.resolve` -> `cifar_dist.overrides`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path

from cifar_dist.config import RESUME_MODES, dump_yaml
from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError
from cifar_dist.runner import run_schema
from cifar_dist.schema import dotted_flags, help_lines, opt


@dataclass(frozen=True)
class TrainArgs:
    """Train one configuration with DDP and mixed precision through HuggingFace Accelerate.

    One code path for every machine; the hardware lives in launch/*.yaml:

        # CPU, one process (tests, laptops)
        python -m cifar_dist.train --preset=smoke --data.dir=data
        # CPU, two processes (real gloo DDP)
        accelerate launch --config_file launch/cpu.yaml -m cifar_dist.train --preset=smoke
        # one GPU, bf16
        accelerate launch --config_file launch/1gpu.yaml -m cifar_dist.train --preset=seed002_tpsnet
        # 8 GPUs on one node
        accelerate launch --config_file launch/multi_gpu.yaml -m cifar_dist.train --preset=fast
        # several nodes (SLURM supplies rank and main address): sbatch slurm/train.sh --preset=...

    Precedence: defaults < --preset < --config < --SECTION.KEY=VALUE flags. One run per run directory at a
    time (an OS lock).
    """

    preset: str | None = opt(None, "a named recipe (listed under Presets below)", metavar="NAME", usage=True)
    config: str | None = opt(None, "a YAML file of config sections (data:, optim:, ...; preset: allowed) applied "
                                   "over the preset", metavar="FILE.yaml", usage=True)
    overrides: tuple[tuple[str, str], ...] = dotted_flags("one config key (listed under Options below), e.g. "
                                                          "--optim.lr=0.2 or --model.<option>=value")
    resume: str = opt("none", "auto: continue from runs/<name>/checkpoints/last if the config is the same except "
                              "for the keys that may change on resume (listed below); force: resume whatever "
                              "changed; none: start afresh and refuse a run directory that holds another run "
                              "(one run, one folder)", metavar="MODE", choices=RESUME_MODES, usage=True)
    print_config: bool = opt(False, "print the resolved config (YAML) and exit", usage=True)


EXIT_STATUSES = """\
Exit status: 0 done, 2 bad input (also a run directory in use or holding another run, a checkpoint that does
not load, a full disk), 3 stopped by SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) after saving a checkpoint, 4 stopped
on a non-finite loss (the last good checkpoint is kept)."""


def run_cli(*, preset: str | None = None, config: str | None = None, resume: str = "none", print_config: bool = False,
            overrides: Sequence[tuple[str, str]] = ()) -> int:
    """Resolve the config from the flags (`overrides`: (key, text) pairs) and train, or print the config;
    input errors raise InputError."""
    from cifar_dist.presets import resolve

    # Before torch is imported (seconds): presets, keys, types and choices. Model options need the model
    # registry, which imports torch.
    cfg = resolve(preset, config, dict(overrides))

    from cifar_dist.engine import train
    from cifar_dist.engine.rundir import end_run
    from cifar_dist.models import check_options

    cfg = replace(cfg, model=check_options(cfg.model))  # model options against the builder, before any work
    if print_config:
        print(dump_yaml(cfg), end="")
        return EXIT_OK
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    status = EXIT_FAILED  # a crash (an exception other than bad input) is recorded as 1, "failed"
    try:
        status = train(cfg, resume=resume)
        return status
    except InputError:
        status = EXIT_BAD_INPUT
        raise
    finally:
        # The true status for the scripts (a launcher exits 1 for any failure), written only by the process
        # that holds the run's lock (a no-op when the run ended normally: it recorded its status already).
        end_run(run_dir, status)


def config_help() -> str:
    """Every config key with its default, type, choices and help text, read from the config's fields."""
    from cifar_dist.config import CHOICES, Config

    lines = []
    for section in fields(Config):
        if not is_dataclass(section.default_factory):  # `preset` is set by --preset, not a section
            continue
        choices = {k.partition(".")[2]: v for k, v in CHOICES.items() if k.startswith(f"{section.name}.")}
        lines.append(f"  {section.name}:")
        lines += [f"    {line}" for line in help_lines(section.default_factory, f"--{section.name}.", choices,
                                                       skip=("options",))]  # listed under "Model options"
    return "\n".join(lines)


def train_help() -> str:
    """After the flags of `train --help`: the keys a resume may change, the presets, every config key and
    every model option (imports the model registry, hence torch: only for the help)."""
    from cifar_dist.engine.rundir import MAY_CHANGE_ON_RESUME
    from cifar_dist.models import options_help
    from cifar_dist.presets import PRESETS

    return (f"Keys that may change on resume: {', '.join(MAY_CHANGE_ON_RESUME)}.\n"
            f"\nPresets: {', '.join(sorted(PRESETS))}\n\nOptions (defaults before any preset):\n"
            f"{config_help()}\n\n{options_help()}\n\n{EXIT_STATUSES}\n")


def main(argv: list[str] | None = None, prog: str = "cifar_dist.train") -> int:
    """`python -m cifar_dist.train` and `cifar-dist train`: read the flags once (`TrainArgs`), then train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_schema(run_cli, TrainArgs, argv, prog, epilog=train_help)
