"""`cifar-dist sweep plan|submit|status|preempt|run|resolve|worker GRID ...`: the flags of the sweep commands.

Each subcommand is a function with typed keyword arguments, run by the strict runner
(`cifar_dist.runner.run_command`): every flag is checked before anything is read or written.
`submit GRID -- SBATCH_OPTION ...` passes everything after `--` to sbatch unchanged.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys

from cifar_dist import sweep as sweeps
from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_OK, InputError, did_you_mean
from cifar_dist.runner import FlagError, run_command

PROG = "cifar-dist sweep"


def _count(flag: str, value: object) -> int | None:
    """A positive integer flag (None = not given); FlagError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FlagError(f"--{flag}: expected a positive integer, found {value!r}")
    return value


def plan(grid: str, *, parallel: int | None = None) -> int:
    """print the numbered cells, parameter counts and the sbatch command; submit nothing.

    GRID is a sweep spec (YAML), e.g. slurm/grids/seed001_grid.yaml. --parallel: array tasks at once
    (default: the spec's parallel). Writes <out_dir>/<name>/sweep.json.
    """
    parallel = _count("parallel", parallel)
    sweep = sweeps.load_sweep(grid)
    sweeps.write_sweep_json(sweep)
    (sweep.dir / "slurm").mkdir(parents=True, exist_ok=True)
    sys.stdout.write(sweeps.plan_text(sweep, parallel or sweep.spec.parallel))
    return EXIT_OK


def submit(grid: str, *, parallel: int | None = None, dry_run: bool = False, sbatch: tuple[str, ...] = ()) -> int:
    """sbatch the unfinished runs as a job array; sbatch options may follow a --.

    cifar-dist sweep submit GRID [--parallel=P] [--dry-run] [-- SBATCH_OPTION ...],
    e.g. `cifar-dist sweep submit GRID -- --partition=gpu --wait`. Runs that are finished (result.json)
    or already in squeue are left out. --parallel: array tasks at once (default: the spec's parallel);
    --dry-run: print the sbatch command, do not submit.
    """
    parallel = _count("parallel", parallel)
    sweep = sweeps.load_sweep(grid)
    sweeps.write_sweep_json(sweep)
    (sweep.dir / "slurm").mkdir(parents=True, exist_ok=True)
    return sweeps.submit(sweep, parallel or sweep.spec.parallel, list(sbatch), dry_run=dry_run)


def status(grid: str, *, json: bool = False) -> int:
    """show every run as pending / running / done / failed with its metric.

    The metric is the one `cifar-dist report` ranks by: a finished run's best validation accuracy (and its
    epoch) when the sweep has a validation split, else its final test accuracy; a running run's last
    validation (else test) accuracy.

    --json: machine-readable output.
    """
    sweep = sweeps.load_sweep(grid, count=False)
    sys.stdout.write(sweeps.status_text(sweep, sweeps.squeue_tasks(sweep.spec.name), as_json=json))
    return EXIT_OK


def preempt(grid: str, task: int) -> int:
    """stop a running array task by hand: it saves a checkpoint, requeues and resumes later.

    TASK: the array index (a search's worker number), as `sweep status` shows it. Runs `scontrol requeue
    <array job>_<TASK>`, which works on arrays with pending tasks (a %N limit) and returns at once; SLURM
    sends the task SIGTERM, the trainer checkpoints and the task goes back to the queue.
    """
    if isinstance(task, bool) or not isinstance(task, int) or task < 0:
        raise FlagError(f"TASK: expected an array index (an integer >= 0), found {task!r}")
    return sweeps.preempt(sweeps.load_sweep(grid, count=False), task)


def run(grid: str, *, local: bool = True, parallel: int = 1, procs: int | None = None) -> int:
    """run the sweep on this machine, as subprocesses (same skip/resume rules as on SLURM).

    Always local (`--local` may be given and changes nothing); a SLURM cluster gets the sweep through
    `cifar-dist sweep submit`. --parallel: runs at once (default 1). --procs: training processes per run
    (2+ = accelerate launch, launch/cpu.yaml); default $CIFAR_DIST_CPU_PROCS or 1. Each run's done line
    gives its test accuracy (and its best validation accuracy when there is a split).
    """
    if not local:
        raise FlagError("sweep run: --local=false: `sweep run` trains on this machine; on a SLURM cluster use "
                        "`cifar-dist sweep submit GRID`")
    parallel = _count("parallel", parallel) or 1
    if procs is None:
        procs = _env_procs()
    procs = _count("procs", procs)
    sweep = sweeps.load_sweep(grid)
    sweeps.lock_sweep(sweep.dir)  # one local runner per sweep folder (exit 2 for a second), before any write
    sweeps.write_sweep_json(sweep)
    if sweep.spec.search is not None:
        return sweeps.run_local_search(sweep, parallel, procs)
    return sweeps.run_local(sweep, parallel, procs)


def _env_procs() -> int:
    value = os.environ.get("CIFAR_DIST_CPU_PROCS", "1")
    try:
        return int(value)
    except ValueError:
        raise InputError(f"CIFAR_DIST_CPU_PROCS: expected a positive integer, found {value!r}") from None


def resolve(grid: str, index: int, *, shell: bool = False) -> int:
    """print the train flags of one array index (used by slurm/sweep.sh).

    INDEX: array index = cell position x len(seeds) + seed position. --shell: bash assignments
    run_name, run_dir, cell, seed, finished, sweep_dir, train_args=(...).
    """
    if isinstance(index, bool) or not isinstance(index, int):
        raise FlagError(f"INDEX: expected an integer, found {index!r}")
    sys.stdout.write(sweeps.resolve_task(grid, index, shell=shell))
    return EXIT_OK


def worker(grid: str, *, worker: str | None = None, procs: int | None = None) -> int:
    """run one search worker: claim trials of the study and train them until none is left.

    For `search:` specs; slurm/sweep.sh and `sweep run --local` start it. --worker: this worker's id, stable
    across restarts so a restarted worker resumes its own trial (default: <array job>_<task> in a SLURM
    array, else local-0). --procs: training processes per trial (as for `sweep run`). $CIFAR_DIST_LAUNCH, when
    set, is the trainer launcher (shell words) that replaces `python -m cifar_dist.train`.
    Exit status: 0 no trial left, 3 stopped by a signal (its trial checkpointed), 1 repeated failures.
    """
    procs = _count("procs", _env_procs() if procs is None else procs)
    if worker is None:
        env = os.environ
        if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
            worker = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        else:
            worker = f"job{env['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in env else "local-0"
    if not isinstance(worker, str) or not worker or any(c.isspace() or c == "/" for c in worker):
        # text only (the strict runner keeps str flags as text, so 12_3 stays 12_3)
        raise FlagError(f"--worker: expected an id without spaces or /, found {worker!r}")
    sweep = sweeps.load_sweep(grid, count=False)
    if sweep.spec.search is None:
        raise InputError(f"{sweep.spec.path}: search: expected a search spec for `sweep worker`, found none")
    return sweeps.run_worker(sweep, worker, procs)


COMMANDS = {"plan": plan, "submit": submit, "status": status, "preempt": preempt, "run": run, "resolve": resolve, "worker": worker}


def usage() -> str:
    """`cifar-dist sweep --help`: the commands, then the spec format and rules."""
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} GRID [...]   ({PROG} COMMAND --help for its flags)", ""]
    lines += [f"  {name:8s} {inspect.getdoc(fn).splitlines()[0]}" for name, fn in COMMANDS.items()]
    return "\n".join(lines) + "\n\n" + (sweeps.__doc__ or "")


def _with_sbatch(extra: list[str]):
    """`submit` with the options after `--` bound; its flags are the others (no --sbatch flag)."""
    fn = functools.partial(submit, sbatch=tuple(extra))
    sig = inspect.signature(submit)
    fn.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "sbatch"])
    fn.__doc__ = submit.__doc__
    return fn


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
    cmd, rest = argv[0], argv[1:]
    extra: list[str] = []
    if "--" in rest:  # everything after -- goes to sbatch
        rest, extra = rest[:rest.index("--")], rest[rest.index("--") + 1:]
        if cmd != "submit":
            print(f"error: sweep {cmd}: unexpected arguments after --: {' '.join(extra)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    fn = _with_sbatch(extra) if cmd == "submit" else COMMANDS[cmd]
    return run_command(fn, rest, f"{PROG} {cmd}")


if __name__ == "__main__":
    sys.exit(main())
