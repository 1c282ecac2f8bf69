"""A search worker (`cifar-dist sweep worker GRID --worker=ID`): one per array task or local process.

It claims a trial (see `cifar_dist.sweep.study`), trains it with the normal trainer as a subprocess
(`python -m cifar_dist.train ... --run.epochs=<max> --run.stop_after=<next rung> --resume=auto`, or the
launcher in $CIFAR_DIST_LAUNCH that slurm/sweep.sh chose for the node's GPUs), one segment per rung:
after each segment it reads metrics.jsonl, reports every new epoch's objective to the trial and asks the
pruner at the rung. A pruned trial keeps its run directory (trial.json says state "pruned" and the rung);
its TensorBoard HParams entry is written here, as the trainer writes it only for finished runs.

Signals: on USR1, TERM or INT the worker sends SIGTERM to the trainer, which checkpoints; the lease stays
with this worker ("preempted") so the requeued task resumes the same trial; exit status 3. The trainer
gets SIGTERM if the worker dies (PR_SET_PDEATHSIG), so a kill -9 leaves a checkpoint and no orphan.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cifar_dist.errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED
from cifar_dist.files import pid_alive
from cifar_dist.run_dir import RunDir
from cifar_dist.sweep.backend import get_backend
from cifar_dist.sweep.plan import Sweep, describe, train_flags, trial_params
from cifar_dist.sweep.search import all_rungs
from cifar_dist.sweep.study import Claim, claim, claims_lock, open_study, renew
from cifar_dist.sweep.trainer import handling, host, local_command, start_trainer, trainer_env

LAUNCH_ENV = "CIFAR_DIST_LAUNCH"  # the trainer launcher (shell words, without train flags), set by sweep.sh
POLL_S = 0.5


def _die_with_parent() -> None:  # in the trainer, before exec: SIGTERM when the worker dies
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def hparams_for_pruned(run_dir: Path, trial: dict[str, Any]) -> None:
    """TensorBoard HParams of a pruned trial: config.yaml, its last/best metrics (see the module docstring)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    from cifar_dist.config import flatten, load_yaml

    files = RunDir(run_dir)
    rows = files.metrics_rows()
    config = flatten(load_yaml(files.config)) if files.config.is_file() else {}
    # as the trainer writes them: fractions as numbers, integers (TensorBoard shows 4 decimals) and the rest as text
    hp = {k: (v if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v))
          for k, v in config.items()}
    hp.update({"trial.number": str(trial["trial"]), "trial.state": "pruned", "trial.epochs": str(len(rows))})
    # metrics: the last points of the run's own per-epoch series (no scalar of their own)
    tags = ["epoch/test_acc"] if any("test_acc" in r for r in rows) else []
    tags += ["epoch/val_acc", "epoch/best_val_acc"] if any("val_acc" in r for r in rows) else []
    with SummaryWriter(str(run_dir)) as tb:
        for summary in hparams(hp, dict.fromkeys(tags, 0.0)):
            tb.file_writer.add_summary(summary)


class Worker:
    def __init__(self, sweep: Sweep, me: str, procs: int = 1) -> None:
        self.sweep, self.me, self.procs = sweep, me, procs
        self.search = sweep.spec.search
        self.rungs = all_rungs(self.search)
        self.stop = 0
        self.proc: subprocess.Popen | None = None
        self.launch = shlex.split(os.environ.get(LAUNCH_ENV, "")) or None
        self.env = trainer_env()
        self.env.pop(LAUNCH_ENV, None)
        self.store = None  # the study's storage, once `run` opened the study

    def check_budget(self, over: dict[str, Any]) -> str | None:
        """A draw's problem with the spec's parameter budget (None when inside it, or without constraints)."""
        spec = self.sweep.spec
        lo, hi = spec.constraints.get("min_params", 0), spec.constraints.get("max_params", 0)
        if not (lo or hi):
            return None
        n = trial_params(spec, over)
        if (hi and n > hi) or (lo and n < lo):
            return f"{n:,} parameters, outside [{lo:,}, {hi or 'inf'}]"
        return None

    def say(self, text: str) -> None:
        print(f"worker {self.me}: {text}", flush=True)

    def on_signal(self, signum, frame) -> None:
        self.stop = self.stop or signum
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    # ------------------------------------------------------------------ one trial

    def sync(self, trial, c: Claim) -> list[dict[str, Any]]:
        """Report every logged epoch the trial has not seen yet; return the metrics rows."""
        rows = c.files.metrics_rows()
        seen = self.store.get_trial(c.trial_id).intermediate_values
        for row in rows:
            value = row.get(self.search.objective)
            if row["epoch"] not in seen and isinstance(value, (int, float)):
                trial.report(float(value), row["epoch"])
        return rows

    def trial_flags(self, c: Claim, stop_after: int) -> list[str]:
        """The trainer flags of one segment of trial `c` (`plan.train_flags`, the one flag builder)."""
        preset = c.overrides.get("preset", self.sweep.spec.preset)
        return train_flags(self.sweep, c.dir.name, self.sweep.spec.seeds[0], c.overrides, preset, stop_after)

    def segment(self, c: Claim, target: int) -> int | None:
        """Train the trial up to epoch `target` (its end when target is max); the exit status, or None when
        the lease was taken by another worker."""
        stop_after = 0 if target >= self.search.max_epochs else target
        flags = self.trial_flags(c, stop_after)
        cmd = [*self.launch, *flags] if self.launch else local_command(flags, self.procs, c.number)
        self.proc = start_trainer(cmd, self.sweep.dir / "logs" / f"{c.dir.name}.out", self.env,
                                  f"   # worker {self.me}", preexec_fn=_die_with_parent)
        if self.stop:  # a signal that came while starting
            self.proc.send_signal(signal.SIGTERM)
        lost = not renew(self.sweep, c, trainer_pid=self.proc.pid)
        beat = time.monotonic()
        while self.proc.poll() is None:
            time.sleep(POLL_S)
            if not lost and time.monotonic() - beat >= self.search.heartbeat:
                beat = time.monotonic()
                lost = not renew(self.sweep, c)
            if lost and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait()
        rc, self.proc = self.proc.returncode, None
        return None if lost else rc

    def finish(self, study, c: Claim, state: str, value: float | None = None, **extra: Any) -> str:
        """Release the lease with the outcome `state` (complete | pruned | fail) and tell the study, unless the
        lease was taken; returns `state`."""
        import optuna

        if renew(self.sweep, c, lease="released", state=state, **extra):
            study.tell(c.number, value if state == "complete" else None,
                       state=optuna.trial.TrialState[state.upper()])
        return state

    def drive(self, study, c: Claim) -> str:
        """Train one claimed trial until it completes, is pruned, fails or this worker is stopped."""
        import optuna

        trial = optuna.trial.Trial(study, c.trial_id)
        while True:
            rows = self.sync(trial, c)
            done = rows[-1]["epoch"] if rows else 0
            record = c.files.read_trial()
            if c.files.is_finished:
                value = rows[-1].get(self.search.objective) if rows else None
                if not isinstance(value, (int, float)):
                    return self.finish(study, c, "fail", reason=f"no {self.search.objective} in the last epoch")
                return self.finish(study, c, "complete", float(value), epochs=done)
            if record.get("pruned_at") or (done in self.rungs and trial.should_prune()):
                self.finish(study, c, "pruned", pruned_at=done, epochs=done)
                hparams_for_pruned(c.dir, record)
                return "pruned"
            if self.stop:
                renew(self.sweep, c, lease="preempted", trainer_pid=None)
                return "stopped"
            target = next((e for e in self.rungs if e > done), self.search.max_epochs)
            rc = self.segment(c, target)
            if rc is None:
                return "lost"
            if self.stop or rc == EXIT_STOPPED:  # our signal, or one sent to the trainer directly
                self.sync(trial, c)
                self.stop = self.stop or signal.SIGTERM
                renew(self.sweep, c, lease="preempted", trainer_pid=None)
                return "stopped"
            after = c.files.metrics_rows()
            progressed = (after[-1]["epoch"] if after else 0) > done or c.files.is_finished
            if rc != EXIT_OK or not progressed:
                reason = f"trainer exit status {rc}" if rc != EXIT_OK else "the trainer made no progress"
                return self.finish(study, c, "fail", reason=reason, epochs=done)

    def wait_for_old_trainer(self, c: Claim) -> None:
        """A trial resumed by the same worker id (requeue, rerun): let an earlier trainer finish checkpointing."""
        old = c.files.read_trial()
        while old.get("previous_host") == host() and pid_alive(old.get("previous_trainer")) and not self.stop:
            time.sleep(POLL_S)

    def run(self) -> int:
        study, self.store = open_study(self.sweep)
        if self.sweep.spec.constraints:  # import and build once outside the claims lock (it breaks after 30 s)
            self.check_budget({})
        failures = 0
        while not self.stop:
            with claims_lock(self.sweep):
                # each backend's look() once per claim, and only for a lease of one of its workers
                look = functools.cache(lambda name: get_backend(name).look(self.sweep))
                got = claim(study, self.store, self.sweep, self.me, look, self.check_budget)
            if got == "done":
                self.say("no trial left")
                return EXIT_OK
            if got == "wait":
                time.sleep(min(self.search.heartbeat / 2, 5.0))
                continue
            self.say(f"trial {got.number} ({got.how}): {describe(got.overrides)} in {got.dir}")
            self.wait_for_old_trainer(got)
            outcome = self.drive(study, got)
            rows = got.files.metrics_rows()
            self.say(f"trial {got.number} {outcome} after {len(rows)} epoch(s)")
            failures = failures + 1 if outcome == "fail" else 0
            if failures >= 3:
                self.say(f"3 trials failed in a row; stopping (see the logs in {self.sweep.dir / 'logs'})")
                return EXIT_FAILED
        return EXIT_STOPPED


def run_worker(sweep: Sweep, me: str, procs: int = 1) -> int:
    """Run one worker until no trial is left (0), a signal (3) or repeated failures (1)."""
    worker = Worker(sweep, me, procs)
    try:
        with handling(worker.on_signal, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            return worker.run()
    finally:
        sys.stdout.flush()

