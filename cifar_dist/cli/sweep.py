"""`cifar-dist sweep plan|submit|status|preempt|run|resolve|worker GRID ...`: the sweep commands.

Each subcommand is one dataclass (`PlanArgs`, `SubmitArgs`, ...): its fields are the options, read once by
`cifar_dist.runner.run_schema`, and its `run()` does the work. Fire dispatches the subcommand (`Sweep`,
`cifar_dist.cli.dispatch`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from cifar_dist import sweep as sweeps
from cifar_dist.cli.dispatch import dispatch, subcommands
from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_OK, InputError, did_you_mean
from cifar_dist.runner import run_schema
from cifar_dist.schema import FlagError, after_dashes, opt
from cifar_dist.sweep import local, plan, slurm, status
from cifar_dist.sweep.worker import run_worker

PROG = "cifar-dist sweep"
POSITIVE = "a positive integer"
PROCS_HELP = ("training processes per run (2+ = accelerate launch, launch/cpu.yaml); default $CIFAR_DIST_CPU_PROCS "
              "or 1")


@dataclass(frozen=True)
class _Grid:
    grid: str = opt(help="the sweep spec (YAML), e.g. slurm/grids/seed001_grid.yaml")


@dataclass(frozen=True)
class PlanArgs(_Grid):
    """print the numbered cells, parameter counts and the sbatch command; submit nothing.

    Writes <out_dir>/<name>/sweep.json.
    """

    parallel: int | None = opt(None, "array tasks at once (default: the spec's parallel)", metavar="P",
                               expected=POSITIVE)

    def planned(self) -> tuple[plan.Sweep, int]:
        """The expanded spec, its sweep.json written, and the array tasks at once (plan's and submit's start)."""
        parallel = _count("parallel", self.parallel)
        sweep = plan.load_sweep(self.grid)
        plan.write_sweep_json(sweep)
        (sweep.dir / "slurm").mkdir(parents=True, exist_ok=True)
        return sweep, parallel or sweep.spec.parallel

    def run(self) -> int:
        sys.stdout.write(slurm.plan_text(*self.planned()))
        return EXIT_OK


@dataclass(frozen=True)
class SubmitArgs(PlanArgs):
    """sbatch the unfinished runs as a job array; sbatch options may follow a --.

    e.g. `cifar-dist sweep submit GRID -- --partition=gpu --wait`. Runs that are finished (result.json)
    or already in squeue are left out.
    """

    dry_run: bool = opt(False, "print the sbatch command, do not submit (also --dry-run)")
    sbatch: tuple[str, ...] = after_dashes("options passed to sbatch unchanged", "SBATCH_OPTION")

    def run(self) -> int:
        return slurm.submit(*self.planned(), list(self.sbatch), dry_run=self.dry_run)


@dataclass(frozen=True)
class StatusArgs(_Grid):
    """show every run as pending / running / done / failed with its metric.

    The metric is the one `cifar-dist report` ranks by: a finished run's best validation accuracy (and its
    epoch) when the sweep has a validation split, else its final test accuracy; a running run's last
    validation (else test) accuracy.
    """

    json: bool = opt(False, "machine-readable output")

    def run(self) -> int:
        sweep = plan.load_sweep(self.grid, count=False)
        sys.stdout.write(status.status_text(sweep, slurm.squeue_tasks(sweep.spec.name), as_json=self.json))
        return EXIT_OK


@dataclass(frozen=True)
class PreemptArgs(_Grid):
    """stop a running array task by hand: it saves a checkpoint, requeues and resumes later.

    Runs `scontrol requeue <array job>_<TASK>`, which works on arrays with pending tasks (a %N limit) and
    returns at once; SLURM sends the task SIGTERM, the trainer checkpoints and the task goes back to the queue.
    """

    task: int = opt(help="the array index (a search's worker number), as `sweep status` shows it",
                    expected="an array index (an integer >= 0)")

    def run(self) -> int:
        if self.task < 0:
            raise FlagError(f"TASK: expected an array index (an integer >= 0), found {self.task!r}")
        return slurm.preempt(plan.load_sweep(self.grid, count=False), self.task)


@dataclass(frozen=True)
class RunArgs(_Grid):
    """run the sweep on this machine, as subprocesses (same skip/resume rules as on SLURM).

    A SLURM cluster gets the sweep through `cifar-dist sweep submit`. Each run's done line gives its test
    accuracy (and its best validation accuracy when there is a split).
    """

    local: bool = opt(True, "always true: `sweep run` trains on this machine (--local changes nothing)")
    parallel: int = opt(1, "runs at once", expected=POSITIVE)
    procs: int | None = opt(None, PROCS_HELP, metavar="N", expected=POSITIVE)

    def run(self) -> int:
        if not self.local:
            raise FlagError("sweep run: --local=false: `sweep run` trains on this machine; on a SLURM cluster use "
                            "`cifar-dist sweep submit GRID`")
        parallel = _count("parallel", self.parallel)
        procs = _procs(self.procs)
        sweep = plan.load_sweep(self.grid)
        local.lock_sweep(sweep.dir)  # one local runner per sweep folder (exit 2 for a second), before any write
        plan.write_sweep_json(sweep)
        return local.run_local(sweep, parallel, procs)


@dataclass(frozen=True)
class ResolveArgs(_Grid):
    """print the train flags of one array index (used by slurm/sweep.sh)."""

    index: int = opt(help="array index = cell position x len(seeds) + seed position")
    shell: bool = opt(False, "bash assignments run_name, run_dir, cell, seed, finished, sweep_dir, train_args=(...)")

    def run(self) -> int:
        sys.stdout.write(slurm.resolve_task(self.grid, self.index, shell=self.shell))
        return EXIT_OK


@dataclass(frozen=True)
class WorkerArgs(_Grid):
    """run one search worker: claim trials of the study and train them until none is left.

    For `search:` specs; slurm/sweep.sh and `sweep run` start it. $CIFAR_DIST_LAUNCH, when set, is the
    trainer launcher (shell words) that replaces `python -m cifar_dist.train`.
    Exit status: 0 no trial left, 3 stopped by a signal (its trial checkpointed), 1 repeated failures.
    """

    worker: str | None = opt(None, "this worker's id, stable across restarts so a restarted worker resumes its "
                                   "own trial (default: <array job>_<task> in a SLURM array, else local-0)",
                             metavar="ID")
    procs: int | None = opt(None, "training processes per trial (as for `sweep run`)", metavar="N", expected=POSITIVE)

    def run(self) -> int:
        procs, worker, env = _procs(self.procs), self.worker, os.environ
        if worker is None:
            if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
                worker = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
            else:
                worker = f"job{env['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in env else "local-0"
        if not worker or any(c.isspace() or c == "/" for c in worker):  # a str field: 12_3 stays the text 12_3
            raise FlagError(f"--worker: expected an id without spaces or /, found {worker!r}")
        sweep = plan.load_sweep(self.grid, count=False)
        if sweep.spec.search is None:
            raise InputError(f"{sweep.spec.path}: search: expected a search spec for `sweep worker`, found none")
        return run_worker(sweep, worker, procs)


def _count(flag: str, value: int | None) -> int | None:
    """A positive integer flag (None = not given); FlagError otherwise."""
    if value is not None and value < 1:
        raise FlagError(f"--{flag}: expected {POSITIVE}, found {value!r}")
    return value


def _procs(value: int | None) -> int:
    """--procs, by default $CIFAR_DIST_CPU_PROCS (else 1), a positive integer."""
    if value is None:
        env = os.environ.get("CIFAR_DIST_CPU_PROCS", "1")
        try:
            value = int(env)
        except ValueError:
            raise InputError(f"CIFAR_DIST_CPU_PROCS: expected {POSITIVE}, found {env!r}") from None
    return _count("procs", value)


SCHEMAS = {"plan": PlanArgs, "submit": SubmitArgs, "status": StatusArgs, "preempt": PreemptArgs, "run": RunArgs,
           "resolve": ResolveArgs, "worker": WorkerArgs}


class Sweep:
    """The subcommands of `cifar-dist sweep`, a command group (cli.dispatch): one method per entry of `SCHEMAS`."""

    def __init__(self, argv: list[str]):
        self.argv = argv


def _subcommand(name: str, schema: type):
    def method(self: Sweep) -> int:
        return run_schema(lambda **options: schema(**options).run(), schema, self.argv, f"{PROG} {name}")

    method.__name__ = method.__qualname__ = name
    return method


for _name, _schema in SCHEMAS.items():
    setattr(Sweep, _name, _subcommand(_name, _schema))

COMMANDS = subcommands(Sweep)


def usage() -> str:
    """`cifar-dist sweep --help`: the commands, then the spec format and rules."""
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} GRID [...]   ({PROG} COMMAND --help for its flags)", ""]
    lines += [f"  {name:8s} {(SCHEMAS[name].__doc__ or '').strip().splitlines()[0]}" for name in COMMANDS]
    return "\n".join(lines) + "\n\n" + (sweeps.__doc__ or "")


def main(argv: list[str] | None = None) -> int:
    """`cifar-dist sweep ...`; returns the exit status (2 = bad spec or arguments, one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return EXIT_OK
    if not argv or argv[0] not in COMMANDS:
        found = repr(argv[0]) if argv else "nothing"
        hint = " (did you mean run? `sweep run GRID` trains on this machine)" if argv and argv[0] == "local" else (
            did_you_mean(argv[0], COMMANDS) if argv else "")
        print(f"error: {PROG}: expected a command ({', '.join(COMMANDS)}), found {found}{hint} (see {PROG} --help)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return dispatch(Sweep(argv[1:]), argv[0], PROG)


if __name__ == "__main__":
    sys.exit(main())
