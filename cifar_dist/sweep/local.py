"""The local runner (`cifar-dist sweep run GRID`): every unfinished run as a subprocess of this
machine, `parallel` at a time, with the same skip/resume rules as the SLURM array; for a search spec,
`parallel` search workers (`cifar-dist sweep worker GRID --worker=local-<i>`) sharing the study.
SIGINT/SIGTERM are forwarded as SIGTERM, so each trainer saves a checkpoint and stops; rerunning resumes."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar_dist.errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, InputError
from cifar_dist.files import atomic_write_json, pid_alive, read_json_or_none
from cifar_dist.run_dir import RUNNER_FILE, STUDY_FILE, RunDir
from cifar_dist.sweep.backend import Queued, WorkerSlot, register_backend
from cifar_dist.sweep.plan import Run, Sweep, describe
from cifar_dist.sweep.trainer import handling, host, local_command, start_trainer, trainer_env

_LOCKED: dict[str, int] = {}  # sweep folder -> its open, flock-ed descriptor (kept for the process' life)


def lock_sweep(sweep_dir: Path) -> None:
    """One local runner per sweep folder: an OS lock (flock) on the folder itself, held until the process
    ends; a second runner stops with one line naming the first (from RUNNER_FILE) before it starts anything."""
    key = str(sweep_dir.resolve())
    if key in _LOCKED:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = read_json_or_none(sweep_dir / RUNNER_FILE)
        pid = holder.get("pid", "?") if isinstance(holder, dict) else "?"
        raise InputError(f"{sweep_dir}: another `sweep run --local` of this sweep is running (pid {pid}); wait for it "
                        f"to end (or stop it: it checkpoints its runs) and run again") from None
    _LOCKED[key] = fd
    atomic_write_json(sweep_dir / RUNNER_FILE, {"pid": os.getpid()}, indent=None)


def write_task(run: Run | WorkerSlot, state: str, exit_status: int | None, pid: int) -> None:
    """Record the outcome of an attempt in <run>/sweep_task.json (same fields as slurm/sweep.sh writes)."""
    record = {"state": state, "exit": exit_status, "job": "local", "host": host(), "pid": pid,
              "time": int(time.time())}
    atomic_write_json(RunDir(run.dir).task, record, indent=None)


def result_text(run_dir: Path) -> str:
    """": test acc 61.00%, best val acc 62.00% (epoch 2)" from a finished run's result.json ("" without one)."""
    res = RunDir(run_dir).read_result() or {}
    final = res.get("final")
    if not isinstance(final, dict) or not isinstance(final.get("test_acc"), (int, float)):
        return ""
    text = f": test acc {final['test_acc']:.2f}%"
    best = res.get("best") if isinstance(res.get("best"), dict) else {}
    if isinstance(best.get("val_acc"), (int, float)):
        text += f", best val acc {best['val_acc']:.2f}% (epoch {best.get('epoch')})"
    return text


class LocalRunner:
    """The processes of one `sweep run --local`: started from a queue, reaped as they end."""

    def __init__(self, sweep: Sweep, procs: int) -> None:
        self.sweep = sweep
        self.procs = procs
        self.active: dict[subprocess.Popen, Run] = {}
        self.stop: list[int] = []
        self.done = self.failed = 0
        self.env = trainer_env()

    def on_signal(self, signum, frame) -> None:
        if not self.stop:
            print(f"got {signal.Signals(signum).name}: stopping the runs (they save a checkpoint)", flush=True)
        self.stop.append(signum)
        for proc in self.active:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def command(self, run: Run) -> list[str]:
        return local_command(self.sweep.train_flags(run), self.procs, run.index)

    def label(self, run: Run) -> str:
        return f"{run.name} ({describe(run.cell.overrides)}, seed {run.seed})"

    def succeeded(self, run: Run, returncode: int) -> bool:
        return run.files.is_finished

    def start(self, run: Run) -> None:
        run.dir.mkdir(parents=True, exist_ok=True)
        RunDir(run.dir).status.unlink(missing_ok=True)  # an earlier launch's status is not this one's (as sweep.sh)
        proc = start_trainer(self.command(run), self.sweep.dir / "logs" / f"{run.name}.out", self.env)
        self.active[proc] = run
        write_task(run, "running", None, proc.pid)
        print(f"start {self.label(run)} pid {proc.pid}", flush=True)

    def reap(self) -> None:
        for proc in [p for p in self.active if p.poll() is not None]:
            run = self.active.pop(proc)
            # the trainer's own status: a launcher of several processes exits 1 for any failure (3 included)
            recorded = RunDir(run.dir).read_status()  # run: a Run or a WorkerSlot
            code = recorded["exit"] if recorded else proc.returncode
            if self.succeeded(run, code):
                self.done += 1
                state, line = "done", f"done  {run.name}{result_text(run.dir)}"
            elif self.stop:
                state, line = "preempted", f"stopped {run.name} (exit {code}); rerun to resume"
            else:
                self.failed += 1
                state, line = "failed", f"FAILED {run.name}: exit {code}; see {self.sweep.dir / 'logs' / run.name}.out"
            write_task(run, state, code, proc.pid)
            print(line, flush=True)

    def exit_status(self) -> int:
        if self.stop:
            return EXIT_STOPPED
        return EXIT_FAILED if self.failed else EXIT_OK

    def run(self, queue: list[Run], parallel: int) -> None:
        while queue or self.active:
            while queue and not self.stop and len(self.active) < parallel:
                self.start(queue.pop(0))
            if self.stop and queue:
                queue.clear()
            self.reap()
            time.sleep(0.2)


def run_local(sweep: Sweep, parallel: int, procs: int) -> int:
    """`sweep run` (the module docstring): a line per run started and ended, a summary; the exit status."""
    name, logs, runs = sweep.spec.name, sweep.dir / "logs", sweep.runs
    if sweep.spec.search is not None:
        todo: list[Run | WorkerSlot] = [WorkerSlot(i, f"local-{i}", sweep.dir / "workers" / f"local-{i}")
                                        for i in range(parallel)]
        print(f"search {name}: {parallel} local worker(s), {procs} process(es) per trial; study "
              f"{sweep.dir / STUDY_FILE}; logs in {logs}", flush=True)
    else:
        todo = []
        for run in runs:
            if run.files.is_finished:
                print(f"skip {run.name}: finished ({run.files.result})", flush=True)
            else:
                todo.append(run)
        print(f"sweep {name}: {len(runs)} runs, {len(runs) - len(todo)} finished, running {len(todo)} "
              f"({parallel} at a time, {procs} process(es) each); logs in {logs}", flush=True)
    runner = LocalBackend(procs).run(sweep, todo, parallel)
    done = (f"search {name}: {runner.done} worker(s) done" if sweep.spec.search is not None
            else f"sweep {name}: {runner.done} trained, {len(runs) - len(todo)} skipped")
    print(f"{done}, {runner.failed} failed" + (", stopped by a signal" if runner.stop else ""), flush=True)
    return runner.exit_status()


class WorkerRunner(LocalRunner):
    """`sweep run --local` of a search spec: the items are workers, which stop when no trial is left."""

    def command(self, run: WorkerSlot) -> list[str]:
        return [sys.executable, "-m", "cifar_dist", "sweep", "worker", str(self.sweep.spec.path),
                f"--worker={run.name}", f"--procs={self.procs}"]

    def label(self, run: WorkerSlot) -> str:
        return f"worker {run.name}"

    def succeeded(self, run: WorkerSlot, returncode: int) -> bool:
        return returncode == EXIT_OK


@dataclass(frozen=True)
class LocalBackend:
    """Subprocesses of this machine: a run is held while the local runner that started it lives."""

    procs: int = 1  # training processes per run (2+: accelerate launch, launch/cpu.yaml)
    name: str = field(default="local", init=False)

    def run(self, sweep: Sweep, runs: list[Run | WorkerSlot], parallel: int) -> LocalRunner:
        """Train `runs` (a search: its workers) as the module docstring says; the runner, with its counts."""
        runner = (WorkerRunner if sweep.spec.search is not None else LocalRunner)(sweep, self.procs)
        with handling(runner.on_signal, signal.SIGINT, signal.SIGTERM):
            runner.run(list(runs), parallel)
        return runner

    def submit(self, sweep: Sweep, runs: list[Run | WorkerSlot], parallel: int) -> int:
        return self.run(sweep, runs, parallel).exit_status()

    def look(self, sweep: Sweep) -> None:
        return None  # no queue: sweep_task.json names the runner's host and pid

    def queued(self, runs: list[Run], look: Any) -> dict[str, Queued]:
        out = {}
        for run in runs:
            task = run.files.read_task()
            if task.get("job") == "local" and task.get("host") == host() and task.get("state") == "running":
                alive = pid_alive(task.get("pid"))
                out[run.name] = Queued("running", "local") if alive else Queued(
                    "failed", "local runner gone before the run finished")
        return out

    def owns(self, worker: str) -> bool:
        return False  # local-<i> workers are judged by the host and pids their lease records, as any other

    def holds(self, worker: str, look: Any) -> None:
        return None


register_backend(LocalBackend())
