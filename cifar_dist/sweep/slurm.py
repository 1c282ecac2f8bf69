"""SLURM glue: the sbatch command of a job array, squeue's view of it, submitting, and the shell lines
`slurm/sweep.sh` evaluates to learn one array task's run (`cifar-dist sweep resolve GRID INDEX --shell`)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_OK
from cifar_dist.resources import root
from cifar_dist.run_dir import STUDY_FILE, read_sweep_json
from cifar_dist.sweep.backend import Queued, WorkerSlot, register_backend
from cifar_dist.sweep.cluster import SINFO_FORMAT, ask, task_resources
from cifar_dist.sweep.plan import Run, Sweep, describe, expand, write_sweep_json
from cifar_dist.sweep.search import bracket_rungs, costs, n_brackets
from cifar_dist.sweep.spec import SpecError, load_spec
from cifar_dist.sweep.study import search_finished

SWEEP_SCRIPT = root() / "slurm" / "sweep.sh"
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING")
WORKER_ID = re.compile(r"(\d+)_(\d+)")  # <array job>_<task>: a task's id, and the id of a search worker in it


def array_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (sbatch --array syntax)."""
    parts = []
    for _, group in itertools.groupby(enumerate(sorted(indices)), key=lambda t: t[1] - t[0]):
        g = [v for _, v in group]
        parts.append(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]))
    return ",".join(parts)


def _display_path(p: Path) -> str:
    rel = os.path.relpath(p)
    return str(p) if rel.startswith("..") else rel


def sbatch_command(sweep: Sweep, indices: list[int], parallel: int, extra: list[str] | None = None) -> list[str]:
    """The sbatch command line of a job array over `indices` (array index = run index)."""
    cmd = ["sbatch", f"--job-name={sweep.spec.name}", f"--array={array_ranges(indices)}%{parallel}",
           f"--output={sweep.dir / 'slurm' / '%A_%a.out'}"]
    if Path.cwd().resolve() != root():  # sweep.sh finds the code through the submit directory otherwise
        cmd.append(f"--export=ALL,CIFAR_DIST_ROOT={root()}")
    given = [*sweep.spec.sbatch, *(extra or [])]
    # the GPUs and CPUs the partition can give (the rules: cluster.py; sweep.sh asks for neither)
    resources = task_resources(given, ask(["sinfo", "-h", "-N", "-o", SINFO_FORMAT]), parallel)
    cmd += [*resources, *given, _display_path(SWEEP_SCRIPT), str(sweep.spec.path)]
    return cmd


def squeue_tasks(job_name: str) -> dict[str, Any] | None:
    """Array tasks in squeue for this user: {"by_index": {index: (job id, state)} for jobs named job_name,
    "by_job": {"<job>_<index>": state}}; None when squeue is missing or does not answer."""
    out = ask(["squeue", "--me", "-h", "-r", "-o", "%i|%T|%j"])
    if out is None:
        return None
    by_index: dict[int, tuple[str, str]] = {}
    by_job: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        jobid, state, name = parts
        by_job[jobid] = state
        m = WORKER_ID.fullmatch(jobid)
        if m and name == job_name:
            by_index[int(m.group(2))] = (jobid, state)
    return {"by_index": by_index, "by_job": by_job}


def max_array_size() -> int | None:
    """The cluster's MaxArraySize (None without scontrol)."""
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", ask(["scontrol", "show", "config"]) or "", re.M)
    return int(m.group(1)) if m else None


def _space_text(d) -> str:
    if d.kind == "zip":
        return f"  {d.name}: one of {len(d.args)}: " + " | ".join(describe(o) for o in d.args)
    if d.kind == "choice":
        return f"  {d.name}: one of {', '.join(json.dumps(v) for v in d.args)}"
    return f"  {d.name}: {d.kind} [{d.args[0]}, {d.args[1]}]"


def _rungs_text(sweep: Sweep) -> list[str]:
    se = sweep.spec.search
    lines = []
    for b in range(n_brackets(se)):
        rungs = bracket_rungs(se, b)
        name = "rungs" if se.pruner == "asha" else f"bracket {b}: rungs"
        lines.append(f"  {name} at epoch {', '.join(map(str, rungs)) or '(none: every trial trains to the end)'}; "
                     f"the survivors train to epoch {se.max_epochs}")
    return lines


def _search_lines(sweep: Sweep) -> list[str]:
    """What `sweep plan` says of a search: space, rungs, epoch costs, the study."""
    s, se = sweep.spec, sweep.spec.search
    pruner = {"asha": "SuccessiveHalvingPruner, asynchronous", "hyperband": "HyperbandPruner"}[se.pruner]
    c = costs(se, s.name)
    return [f"search {s.name} ({s.path}): {se.pruner} ({pruner}), {se.trials} trials, {se.sampler} sampler "
            f"(seed {se.seed}), {se.direction} {se.objective}",
            f"preset {s.preset or 'defaults'}; fixed: {describe(sweep.fixed)}; seed {s.seeds[0]}",
            "space:", *[_space_text(d) for d in se.space],
            f"epochs: min {se.min_epochs}, max {se.max_epochs}, reduction factor {se.reduction_factor} (a rung keeps "
            f"the top 1/{se.reduction_factor} of the trials that reached it)", *_rungs_text(sweep),
            f"epoch cost (trials x epochs): without pruning {se.trials} x {se.max_epochs} = {c['unpruned']}",
            f"  with pruning: worst case {c['worst']} (every trial better than all earlier ones: none pruned), "
            f"expected {c['expected']:.1f} ({c['expected'] / c['unpruned']:.2f} of it; mean of "
            f"{c['simulations']} simulated searches, trials of random quality judged in the order they start)",
            f"study: {sweep.dir / STUDY_FILE}; trial n trains in {sweep.dir}/t<nnn>-s{s.seeds[0]}/"]


def _grid_lines(sweep: Sweep) -> list[str]:
    """What `sweep plan` says of a grid: cells, parameter counts, the array numbering."""
    s, runs = sweep.spec, sweep.runs
    fixed = describe(sweep.fixed) if sweep.fixed else "none"
    lines = [f"sweep {s.name} ({s.path}): preset {s.preset or 'defaults'}; fixed: {fixed}",
             f"{len(sweep.cells)} cells x {len(s.seeds)} seeds {s.seeds} = {len(runs)} runs in {sweep.dir}/<cell>-s<seed>"]
    if sweep.dropped:
        lines.append(f"dropped {len(sweep.dropped)} of {len(sweep.dropped) + len(sweep.cells)} candidates "
                     f"(constraints {', '.join(f'{k}={v:,}' for k, v in s.constraints.items())}):")
        lines += [f"  {line}" for line in sweep.dropped]
    lines.append(f"{'cell':5s} {'params':>11s}  overrides")
    for c in sweep.cells:
        params = f"{c.params:,}" if c.params is not None else "?"
        lines.append(f"{c.cell:5s} {params:>11s}  {describe(c.overrides)}")
    return lines + [f"array index = cell position x {len(s.seeds)} + seed position ({runs[0].name} -> 0, "
                    f"{runs[-1].name} -> {runs[-1].index})"]


def plan_text(sweep: Sweep, parallel: int) -> str:
    """What `cifar-dist sweep plan` prints: the grid's cells or the search, then the sbatch line of its array."""
    s = sweep.spec
    if s.search is not None:
        lines, indices = _search_lines(sweep), list(range(parallel))
        submit_with, left_out = f"submit {parallel} workers (one array task each) with:", "workers already queued"
    else:
        lines, indices = _grid_lines(sweep), [r.index for r in sweep.runs]
        submit_with, left_out = "submit with:", "finished runs"
    lines += [submit_with, f"  {shlex.join(sbatch_command(sweep, indices, parallel))}",
              f"  (or: cifar-dist sweep submit {s.path}, which leaves out {left_out})",
              "run here without SLURM:", f"  cifar-dist sweep run {s.path} --local --parallel 2"]
    return "\n".join(lines) + "\n"


def submit(sweep: Sweep, parallel: int, extra: list[str], dry_run: bool = False) -> int:
    """sbatch the runs that are neither finished nor queued as one job array (a search: the workers not queued,
    unless every trial is finished); returns the exit status."""
    queue = squeue_tasks(sweep.spec.name)
    held = set(queue["by_index"]) if queue is not None else set()  # array indices in squeue
    if sweep.spec.search is not None:  # array tasks are workers
        finished, queued = search_finished(sweep), len(held & set(range(parallel)))
        runs: list[Run | WorkerSlot] = [] if finished else [
            WorkerSlot(i, f"worker-{i}", sweep.dir / "workers" / str(i)) for i in range(parallel) if i not in held]
        print(f"sweep {sweep.spec.name}: search with {parallel} workers; "
              + ("every trial is finished; " if finished else "")
              + (f"{queued} already queued; " if queued and not finished else "") + f"submitting {len(runs)}")
    else:
        unfinished = [r for r in sweep.runs if not r.files.is_finished]
        runs = [r for r in unfinished if r.index not in held]
        queued = len(unfinished) - len(runs)
        print(f"sweep {sweep.spec.name}: {len(sweep.runs)} runs; skipping {len(sweep.runs) - len(unfinished)} finished"
              + (f" and {queued} already queued" if queued else "") + f"; submitting {len(runs)}")
    if not runs:
        print("nothing to submit")
        return EXIT_OK
    return SlurmBackend(tuple(extra), dry_run).submit(sweep, runs, parallel)


@dataclass(frozen=True)
class SlurmBackend:
    """A sweep as one SLURM job array: array index = run index (a search: worker number); its jobs and
    workers are named `<array job>_<task>`."""

    extra: tuple[str, ...] = ()  # sbatch options beyond the spec's
    dry_run: bool = False  # print the sbatch command only
    name: str = field(default="slurm", init=False)

    def submit(self, sweep: Sweep, runs: list[Run | WorkerSlot], parallel: int) -> int:
        todo = [r.index for r in runs]
        cmd = sbatch_command(sweep, todo, parallel, list(self.extra))
        if self.dry_run:
            print(shlex.join(cmd))
            return EXIT_OK
        limit = max_array_size()
        if limit is not None and max(todo) >= limit:
            raise SpecError(f"{sweep.spec.path}: array index {max(todo)}: expected below MaxArraySize={limit} of "
                            f"this cluster, found {len(sweep.runs)} runs; split the spec")
        print(shlex.join(cmd), flush=True)
        try:
            # Tasks run the interpreter that submits them (sbatch's default --export=ALL passes it on).
            env = {**os.environ, "CIFAR_DIST_PYTHON": os.environ.get("CIFAR_DIST_PYTHON") or sys.executable}
            out = subprocess.run(cmd[:1] + ["--parsable"] + cmd[1:], stdout=subprocess.PIPE, text=True, env=env)
        except FileNotFoundError:
            print("error: sbatch: command not found (is this a SLURM login node?)", file=sys.stderr)
            return EXIT_BAD_INPUT
        if out.returncode:
            print(f"error: sbatch exited with status {out.returncode}", file=sys.stderr)
            return out.returncode
        job = out.stdout.strip().split(";")[0]
        print(f"submitted job array {job}; logs in {sweep.dir / 'slurm'}; progress: cifar-dist sweep status "
              f"{sweep.spec.path}")
        return EXIT_OK

    def look(self, sweep: Sweep) -> dict[str, Any] | None:
        return squeue_tasks(sweep.spec.name)

    def queued(self, runs: list[Run], look: dict[str, Any] | None) -> dict[str, Queued]:
        """A run is held when squeue lists the job its sweep_task.json names, or its array index."""
        out = {}
        for run in runs if look is not None else []:
            job = str(run.files.read_task().get("job"))
            if job in look["by_job"]:
                qjob, qstate = job, look["by_job"][job]
            else:
                qjob, qstate = look["by_index"].get(run.index, (None, None))
            if qstate in RUNNING_STATES:
                out[run.name] = Queued("running", f"job {qjob}")
            elif qstate:
                out[run.name] = Queued("pending", f"job {qjob} {qstate.lower()}")
        return out

    def owns(self, worker: str) -> bool:
        return WORKER_ID.fullmatch(worker) is not None

    def holds(self, worker: str, look: dict[str, Any] | None) -> bool | None:
        return None if look is None else worker in look["by_job"]


register_backend(SlurmBackend())


def resolve_task(grid: str | Path, index: int, shell: bool = False) -> str:
    """The train flags of array index `index` (one line), or with `shell` the bash lines sweep.sh evaluates;
    writes sweep.json if missing. A search's task `index` is worker `index` (worker=1: sweep.sh starts it)."""
    spec = load_spec(grid)
    record = read_sweep_json(Path(spec.out_dir) / spec.name)
    sweep_file_ok = bool(record) and record.get("spec_sha256") == spec.sha256
    sweep = expand(spec, count=not sweep_file_ok)  # counts parameters only for constraints or a new sweep.json
    search, last = spec.search is not None, len(sweep.runs) - 1
    if index < 0 or (not search and index > last):
        expected = "a worker number >= 0" if search else f"0..{last}"
        raise SpecError(f"{spec.path}: array index: expected {expected}, found {index}")
    if not sweep_file_ok:
        write_sweep_json(sweep)
    if search:
        slot: Run | WorkerSlot = WorkerSlot(index, f"worker-{index}", sweep.dir / "workers" / str(index))
        args, cell, seed, finished = ["sweep", "worker", str(spec.path)], "search", spec.seeds[0], search_finished(sweep)
    else:
        slot = run = sweep.runs[index]
        args, cell, seed, finished = sweep.train_flags(run), run.cell.cell, run.seed, run.files.is_finished
    if not shell:
        return shlex.join(args) + "\n"
    return "".join(f"{line}\n" for line in (
        f"run_name={shlex.quote(slot.name)}", f"run_dir={shlex.quote(str(slot.dir))}", f"cell={cell}", f"seed={seed}",
        f"finished={int(finished)}", *(["worker=1"] if search else []), f"sweep_dir={shlex.quote(str(sweep.dir))}",
        f"train_args=({shlex.join(args)})"))


def preempt(sweep: Sweep, task: int) -> int:
    """Preempt array task `task` by hand: `scontrol requeue`, as `sweep preempt --help` says (the trainer
    checkpoints and exits 3 within KillWait); one line says what happened.

    Why not USR1: on SLURM 22.05, `scancel --signal=USR1 [--batch|--full]` on a running task of an array
    that still has pending tasks (a `%N` limit) delivers the signal, then reports "Job can not be altered
    now", re-sends it every few seconds until the task ends and exits non-zero; `scontrol requeue` returns
    at once on any array."""
    queue = squeue_tasks(sweep.spec.name)
    if queue is None:
        print("error: squeue did not answer (is this a SLURM login node?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    job, state = queue["by_index"].get(task, (None, None))
    what = "worker" if sweep.spec.search is not None else "task"
    if job is None or state not in RUNNING_STATES:
        found = f"it is {state}" if job else "no such task in squeue"
        print(f"error: sweep {sweep.spec.name}: {what} {task}: expected a running array task, found {found} "
              f"(see cifar-dist sweep status {sweep.spec.path})", file=sys.stderr)
        return EXIT_BAD_INPUT
    runs = {r.index: r.name for r in sweep.runs} if sweep.spec.search is None else {}
    label = f"{job} ({runs[task]})" if task in runs else job
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"error: scontrol requeue {job}: {e}", file=sys.stderr)
        return 1
    if out.returncode:
        print(f"error: scontrol requeue {job} failed: {(out.stderr or out.stdout).strip()}", file=sys.stderr)
        return 1
    print(f"sweep {sweep.spec.name}: requeued {label}: its trainer got SIGTERM and saves a checkpoint; the task "
          f"waits in the queue and its next attempt resumes from that checkpoint")
    return EXIT_OK
