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

Flags: --preset=NAME, --config=run.yaml, --section.key=value (e.g. --optim.lr=0.2), in that
precedence; --print_config prints the resolved config and exits; --resume=auto continues from
runs/<name>/checkpoints/last if the config is the same except for the keys that may change on resume
(listed below); --resume=force resumes whatever changed; --resume=none (the default) starts afresh
and refuses a run directory that holds another run (one run, one folder). One run per run directory
at a time (an OS lock). Exit status: 0 done, 2 bad input (also a run directory in use or holding
another run, a checkpoint that does not load, a full disk), 3 stopped by SIGTERM, SIGUSR1 or SIGINT
(Ctrl-C) after saving a checkpoint, 4 stopped on a non-finite loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import sys
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

from cifar_dist.config import RESUME_MODES, ConfigError, dump_yaml
from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError
from cifar_dist.runner import run_command
from cifar_dist.schema import help_lines


def run_cli(*, preset: str | None = None, config: str | None = None, resume: str = "none", print_config: bool = False,
            **overrides) -> int:
    """Resolve the config from flags and train (or print the config); input errors raise InputError."""
    from cifar_dist.presets import resolve

    # Before torch is imported (seconds): the resume mode, presets, keys, types and choices. Model options
    # need the model registry, which imports torch.
    if str(resume) not in RESUME_MODES:  # before anything runs or is written
        raise ConfigError(f"--resume: expected one of {', '.join(RESUME_MODES)}, found {resume!r}")
    cfg = resolve(preset, config, overrides)

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
        status = train(cfg, resume=str(resume))
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
    from cifar_dist.engine.rundir import MAY_CHANGE_ON_RESUME
    from cifar_dist.models import options_help
    from cifar_dist.presets import list_presets

    return (f"{__doc__}\nKeys that may change on resume: {', '.join(MAY_CHANGE_ON_RESUME)}.\n"
            f"\nPresets: {', '.join(list_presets())}\n\nOptions (defaults before any preset):\n"
            f"{config_help()}\n\n{options_help()}\n")


def main(argv: list[str] | None = None, prog: str = "cifar_dist.train") -> int:
    """`python -m cifar_dist.train` and `cifar-dist train`: check every flag, then train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (f"usage: {prog} [--preset=NAME] [--config=FILE.yaml] [--SECTION.KEY=VALUE ...] [--resume=auto] "
             f"[--print_config]\n\n")
    return run_command(run_cli, argv, prog, help_text=lambda: usage + train_help())
