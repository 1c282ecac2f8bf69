"""The training loop: `train(cfg, resume)` runs a config to the end and returns the exit status (the
`cifar_dist.errors` EXIT_ constants; 0 also when paused at `run.stop_after`, see `pause`). Bad input raises an
`InputError` subclass (ConfigError, DataError) before anything is written; the command line exits 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from cifar_dist.config import Config
from cifar_dist.engine import devices
from cifar_dist.engine.devices import eval_model
from cifar_dist.engine.evaluate import evaluate_epoch, finish, summary_line
from cifar_dist.engine.monitor import Monitor, SignalFlag, StopRun
from cifar_dist.engine.session import Session, StepParts, open_session
from cifar_dist.engine.train_state import TrainState
from cifar_dist.errors import EXIT_NONFINITE, EXIT_OK


def train_one_epoch(parts: StepParts, loader, state: TrainState, sums: torch.Tensor,
                    on_step: Callable[[int, torch.Tensor], None]) -> None:
    """Train over `loader` from loader step `state.step_in_epoch` to the end of the epoch.

    sums: this process's running sums of the epoch on the device, float64 (3,): loss x images,
    correct, images -- added to without a host sync. `on_step(step_in_epoch, loss)` runs after every
    optimizer step (loss: this process's mean loss of the step, a 0-d tensor). With accumulation a
    window never straddles epochs: the epoch ends at a multiple of `accum_steps` loader steps.
    """
    p, acc = parts, parts.accelerator
    p.model.train()
    n_steps = (len(loader) // acc.gradient_accumulation_steps) * acc.gradient_accumulation_steps
    t_last = time.perf_counter()
    for step, (x, y) in enumerate(loader.iter_from(state.step_in_epoch), start=state.step_in_epoch):
        if step >= n_steps:
            break
        with acc.accumulate(p.model):
            x = p.transform(x)
            x, target = p.mixer(x, y) if p.mixer.active else (x, y)
            logits = p.model(x)
            loss = p.criterion(logits, target)
            acc.backward(loss)
            if p.grad_clip and acc.sync_gradients:
                acc.clip_grad_norm_(p.model.parameters(), p.grad_clip)
            p.optimizer.step()
            p.optimizer.zero_grad(set_to_none=True)
        label = target.argmax(1) if target.ndim == 2 else target
        sums += torch.stack([loss.detach().double() * y.numel(), (logits.argmax(1) == label).sum().double(),
                             torch.full((), y.numel(), dtype=torch.float64, device=sums.device)])
        now = time.perf_counter()  # loader time included: the next batch is fetched before this point
        state.train_seconds += now - t_last
        t_last = now
        if acc.sync_gradients:
            state.global_step += 1
            state.step_in_epoch = step + 1
            p.schedule.set(state.global_step)
            if p.ema is not None:
                p.ema.update(eval_model(acc, p.model), step=state.global_step)
            if p.lookahead is not None:
                p.lookahead.step(state.global_step)
            on_step(step, loss.detach())
    devices.synchronize(sums.device)  # the epoch's time includes the device's queued work (one wait per epoch)
    state.train_seconds += time.perf_counter() - t_last


def train(cfg: Config, resume: str = "none") -> int:
    """Run `cfg` to the end (or to a stop signal); return the exit status."""
    flag = SignalFlag()  # first: a preemption signal during start-up must not kill the process
    s = open_session(cfg, resume)
    monitor = Monitor(s, flag)
    acc, state, r = s.accelerator, s.state, cfg.run
    status = "finished"
    try:
        while state.epoch < r.epochs:
            if r.stop_after and state.epoch >= r.stop_after:  # never train past run.stop_after
                return pause(s)
            row, stop = run_epoch(s, monitor)
            if stop:
                status = "early_stopped"
                acc.print(f"early stop after epoch {state.epoch}: val acc {row['val_acc']:.2f} "
                          f"(best {state.best_val_acc:.2f} at epoch {state.best_epoch})")
                break
    except StopRun as e:
        if e.status == EXIT_NONFINITE:  # an outcome all the same: result.json says "diverged" (a sweep keeps it)
            state.wall_seconds = monitor.wall_seconds()
            finish(s, "diverged")
        s.logger.close(e.status)
        if acc.is_main_process:
            print(str(e), file=sys.stderr, flush=True)
        acc.end_training()
        return e.status

    state.wall_seconds = monitor.wall_seconds()
    if s.parts.lookahead is not None:  # the closing full sync: the weights become their slow average
        s.parts.lookahead.finish()
    result = finish(s, status, first_step_s=monitor.first_step_s)
    if acc.is_main_process:  # acc.print would print once per node
        print(summary_line(s, result), flush=True)
    s.logger.close(EXIT_OK)
    acc.end_training()
    return EXIT_OK


def run_epoch(s: Session, monitor: Monitor) -> tuple[dict[str, Any], bool]:
    """Train the current epoch (from where it stands), evaluate, log it and save the checkpoint.

    Returns the epoch's metrics row and whether early stopping asks to stop.
    """
    acc, state = s.accelerator, s.state
    s.loaders.train.set_epoch(state.epoch)
    monitor.open_bar()
    train_one_epoch(s.parts, s.loaders.train, state, s.sums, monitor.on_step)
    monitor.close_bar()
    monitor.check(torch.zeros((), device=acc.device))  # the epoch's sums of all processes into `state`
    row = epoch_row(state, s.parts.schedule.lr)
    stop = evaluate_epoch(s, row)
    s.logger.log_epoch(row)
    s.logger.scalar("epoch/wall_s", monitor.wall_seconds(), row["epoch"])  # all sessions so far
    if "val_acc" in row:  # the running best: HParams shows its last value
        s.logger.scalar("epoch/best_val_acc", state.best_val_acc, row["epoch"])
    acc.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    state.start_next_epoch()
    s.sums.zero_()
    monitor.save_last()
    return row, stop


def pause(s: Session) -> int:
    """`run.stop_after` reached: the checkpoint of the epoch is saved; record the pause and end the session."""
    s.logger.pause(s.state.epoch, s.cfg.run.epochs)
    s.accelerator.print(f"paused after epoch {s.state.epoch} of {s.cfg.run.epochs} (run.stop_after); "
                        f"--resume=auto continues")
    s.logger.close(EXIT_OK)
    s.accelerator.end_training()
    return EXIT_OK


def epoch_row(state: TrainState, lr: float) -> dict[str, Any]:
    """The training half of an epoch's metrics row (the evaluations add to it)."""
    seen = max(state.seen, 1)
    return {"epoch": state.epoch + 1, "step": state.global_step, "train_loss": state.loss_sum / seen,
            "train_acc": 100 * state.correct / seen, "lr": lr,
            "images_per_s": state.seen / max(state.train_seconds, 1e-9), "epoch_s": state.train_seconds}
