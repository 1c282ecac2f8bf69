"""Between optimizer steps: the progress bar, step scalars, checkpoints and the one collective stop check.

One collective every `run.log_every_steps` steps, before every checkpoint and at the end of the epoch:
every process learns of a stop signal any of them got, and of a non-finite loss in the epoch so far (the
epoch sums carry it), at the same step. In between there is no host sync at all.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from cifar_dist.engine import checkpoint as ckpt
from cifar_dist.engine import devices
from cifar_dist.engine.session import Session
from cifar_dist.errors import EXIT_NONFINITE, EXIT_STOPPED


class StopRun(Exception):
    """Raised inside the loop to end the run with an exit status (after any saving is done)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SignalFlag:
    """Remembers that SIGTERM, SIGUSR1 or SIGINT (Ctrl-C: the same stop, not a KeyboardInterrupt
    traceback) arrived; the loop checks it between steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum = 0
        for s in self.SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum


@dataclass
class Monitor:
    """The loop's between-step duties for one session (`on_step` is train_one_epoch's callback)."""

    s: Session
    flag: SignalFlag
    started: float = field(default_factory=time.time)  # this session's start, wall clock
    bar: Any = None  # tqdm bar of the current epoch (main process, run.progress)
    first_step_s: float | None = None  # seconds from the launch to the end of this session's first step

    def __post_init__(self):
        self.earlier = self.s.state.wall_seconds  # wall time of the run's earlier sessions

    def wall_seconds(self) -> float:
        """Wall time of the run: earlier sessions plus this one."""
        return self.earlier + time.time() - self.started

    def save_last(self) -> None:
        """Checkpoint (the train state holds the epoch sums of all processes from the latest `check`)."""
        self.s.state.wall_seconds = self.wall_seconds()
        ckpt.save(self.s.parts, self.s.ckpt_dir, self.s.state)

    def check(self, loss: torch.Tensor) -> tuple[bool, float]:
        """Sum [signal, step loss x n, n, epoch sums] over processes; stop on a non-finite loss. The epoch's sums
        go into the train state (they travel in the checkpoint). Returns whether some process got SIGTERM,
        SIGUSR1 or SIGINT, and the mean training loss of the latest step."""
        acc, state = self.s.accelerator, self.s.state
        f64 = dict(dtype=torch.float64, device=acc.device)
        n = torch.full((), float(self.s.per_device), **f64)
        local = torch.stack([torch.full((), float(self.flag.signum), **f64), loss.double() * n, n, *self.s.sums])
        signum, step_loss_x_n, step_n, loss_sum, correct, seen = acc.reduce(local, reduction="sum").tolist()
        if not (math.isfinite(step_loss_x_n) and math.isfinite(loss_sum)):
            last = ckpt.find_last(self.s.ckpt_dir)
            kept = f"last good checkpoint kept in {last}" if last is not None else "no checkpoint was saved yet"
            raise StopRun(EXIT_NONFINITE, f"error: non-finite loss in epoch {state.epoch + 1} (by step "
                          f"{state.step_in_epoch}); stopping, {kept}")
        state.loss_sum, state.correct, state.seen = loss_sum, correct, int(seen)
        return signum > 0, step_loss_x_n / step_n

    def on_step(self, step: int, loss: torch.Tensor) -> None:
        """After optimizer step `step` of the epoch (loss: this process's mean loss of the step)."""
        s, r, state = self.s, self.s.cfg.run, self.s.state
        if self.first_step_s is None:  # once per session: wait for the device, so the step is really done
            devices.synchronize(s.accelerator.device)
            self.first_step_s = time.time() - devices.launch_time()
        if self.bar is not None:
            self.bar.update(s.accelerator.gradient_accumulation_steps)
        g = state.global_step
        due_log = bool(r.log_every_steps) and g % r.log_every_steps == 0
        due_ckpt = bool(r.checkpoint_every_steps) and g % r.checkpoint_every_steps == 0
        epoch_end = state.step_in_epoch >= s.steps_per_epoch * s.cfg.optim.accum_steps
        if not (due_log or due_ckpt or epoch_end):
            return
        signalled, step_loss = self.check(loss)
        lr = s.parts.schedule.lr
        if due_log:
            s.logger.scalar("train/loss", step_loss, g)
            s.logger.scalar("train/lr", lr, g)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}")
        if signalled:
            self.save_last()
            raise StopRun(EXIT_STOPPED, f"stopped by signal at epoch {state.epoch + 1} step {step + 1}; "
                          f"checkpoint saved, resume with --resume=auto")
        if due_ckpt:
            self.save_last()

    def open_bar(self) -> None:
        """A progress bar for the epoch being trained (main process, run.progress, stderr a terminal).

        A log file or a SLURM output file gets no bar (tqdm's `disable=None`): its carriage-return updates
        would bury the epoch lines a user reads there.
        """
        s = self.s
        if s.accelerator.is_main_process and s.cfg.run.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(s.loaders.train), initial=s.state.step_in_epoch,
                            desc=f"epoch {s.state.epoch + 1}/{s.cfg.run.epochs}", leave=False, dynamic_ncols=True,
                            disable=None)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
