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
runs/<name>/checkpoints/last. Exit status: 0 done, 2 bad input, 3 stopped by SIGTERM/SIGUSR1 after
saving a checkpoint, 4 stopped on a non-finite loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifar_dist import checkpoint as ckpt
from cifar_dist.augment import BatchMixer, TrainTransform, tta_views
from cifar_dist.config import Config, ConfigError, dump_yaml, flatten, model_options, to_dict
from cifar_dist.data import (
    DataError,
    FFCVLoader,
    Normalize,
    Split,
    TensorLoader,
    beton_paths,
    compute_threads,
    num_rows,
    read_images,
    read_labels,
    read_manifest,
    select_rows,
)
from cifar_dist.logs import RunLogger, confusion_figure
from cifar_dist.optim import Schedule, build_optimizer, scaled_lr

EXIT_OK, EXIT_BAD_INPUT, EXIT_PREEMPTED, EXIT_NONFINITE = 0, 2, 3, 4


class StopRun(Exception):
    """Raised inside the loop to end the run with an exit status (after any saving is done)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SignalFlag:
    """Remembers that SIGTERM or SIGUSR1 arrived; the loop checks it between steps."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum


def should_stop_early(history: list[float], patience: int, window: int, drop: float, start: int) -> bool:
    """Early-stopping rules on validation accuracies (%, one per evaluated epoch, oldest first).

    patience: stop when the best value is `patience` or more evaluations old.
    window rule (seed 004): from evaluation `start` on, stop when the latest value is more than
    `drop` points below the best of the last `window` values (the latest included).
    """
    if not history:
        return False
    if patience and len(history) - 1 - int(np.argmax(history)) >= patience:
        return True
    if window and len(history) >= max(start, 1):
        recent = history[-window:]
        return history[-1] < max(recent) - drop
    return False


def build_loaders(cfg: Config, accelerator, per_device_batch: int):
    """Train, validation and test loaders for this process."""
    d = cfg.data
    train_path, test_path = beton_paths(d.dir, d.name)
    train_idx, val_idx, test_idx = select_rows(read_labels(train_path), read_labels(test_path), d.limit_train,
                                               d.limit_test, d.val_size, d.split_seed)
    n_test = num_rows(test_path)
    a = cfg.aug
    mean_fill = tuple(int(round(m * 255)) for m in d.mean)
    aug_kw = dict(crop_padding=a.crop_padding, flip=a.flip, cutout_size=a.cutout, cutout_prob=a.cutout_prob,
                  cutout_fill=mean_fill)
    rank, world = accelerator.process_index, accelerator.num_processes
    eval_bs = cfg.run.eval_batch_size
    if d.loader == "tensor":
        x_train, y_train = read_images(train_path)
        x_test, y_test = read_images(test_path, test_idx)
        common = dict(device=accelerator.device, rank=rank, world_size=world)
        train = TensorLoader(x_train[train_idx], y_train[train_idx], batch_size=per_device_batch, train=True,
                             seed=cfg.run.seed, **common, **aug_kw)
        val = None if val_idx is None else TensorLoader(x_train[val_idx], y_train[val_idx], batch_size=eval_bs, **common)
        test = TensorLoader(x_test, y_test, batch_size=eval_bs, **common)
    else:
        common = dict(device=accelerator.device, num_workers=d.num_workers)
        train = FFCVLoader(Split(train_path, train_idx), batch_size=per_device_batch, train=True, seed=cfg.run.seed,
                           distributed=world > 1, **common, **aug_kw)
        # Evaluation shards are rank-strided rows, not FFCV's distributed order: that pads the split
        # with repeated images to a multiple of the world size, which would count them twice.
        test_rows = np.arange(n_test) if test_idx is None else test_idx
        val = None if val_idx is None else FFCVLoader(Split(train_path, val_idx[rank::world]), batch_size=eval_bs,
                                                      **common)
        test = FFCVLoader(Split(test_path, test_rows[rank::world]), batch_size=eval_bs, **common)
    return train, val, test


@torch.no_grad()
def evaluate(model, loader, normalize, accelerator, num_classes: int, tta: str = "none") -> dict:
    """Accuracy (%), mean loss and confusion matrix over the whole split, summed over processes.

    With TTA the softmax probabilities of the views are averaged; the loss is the NLL of that mean.
    """
    was_training = model.training
    model.eval()
    stats = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # correct, loss sum, count
    confusion = torch.zeros(num_classes * num_classes, device=accelerator.device, dtype=torch.float64)
    for x, y in loader:
        x = normalize(x)
        with accelerator.autocast():
            if tta == "none":
                logp = F.log_softmax(model(x).float(), dim=1)
            else:
                probs = torch.stack([F.softmax(model(v).float(), dim=1) for v in tta_views(x, tta)]).mean(0)
                logp = probs.clamp_min(1e-12).log()
        pred = logp.argmax(1)
        stats += torch.stack([(pred == y).sum().double(), F.nll_loss(logp, y, reduction="sum").double(),
                              torch.tensor(float(y.numel()), device=y.device, dtype=torch.float64)])
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes).double()
    stats = accelerator.reduce(stats, reduction="sum")
    confusion = accelerator.reduce(confusion, reduction="sum")
    model.train(was_training)
    n = max(float(stats[2]), 1.0)
    return {"acc": 100.0 * float(stats[0]) / n, "loss": float(stats[1]) / n,
            "confusion": confusion.view(num_classes, num_classes).long().cpu().tolist()}


def train_one_epoch(model, loader, start_step, optimizer, schedule, accelerator, transform, mixer, criterion,
                    ema, grad_clip, state, sums, on_step):
    """Train over `loader` from loader step `start_step`.

    sums: this process's running sums of the epoch on the device, float64 (3,): loss x images,
    correct, images -- added to without a host sync. `on_step(step_in_epoch, loss)` runs after every
    optimizer step (loss: this process's mean loss of the step, a 0-d tensor). With accumulation a
    window never straddles epochs: the epoch ends at a multiple of `accum_steps` loader steps.
    """
    model.train()
    accum = accelerator.gradient_accumulation_steps
    n_steps = (len(loader) // accum) * accum
    t_last = time.perf_counter()
    for step, (x, y) in enumerate(loader.iter_from(start_step), start=start_step):
        if step >= n_steps:
            break
        with accelerator.accumulate(model):
            x = transform(x)
            x, target = mixer(x, y) if mixer.active else (x, y)
            logits = model(x)
            loss = criterion(logits, target)
            accelerator.backward(loss)
            if grad_clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        label = target.argmax(1) if target.ndim == 2 else target
        sums += torch.stack([loss.detach().double() * y.numel(), (logits.argmax(1) == label).sum().double(),
                             torch.full((), y.numel(), dtype=torch.float64, device=sums.device)])
        now = time.perf_counter()  # loader time included: the next batch is fetched before this point
        state.train_seconds += now - t_last
        t_last = now
        if accelerator.sync_gradients:
            state.global_step += 1
            state.step_in_epoch = step + 1
            schedule.set(state.global_step)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=state.global_step)
            on_step(step, loss.detach())


def train(cfg: Config, resume: str = "none") -> int:
    """Run `cfg` to the end (or to a stop signal); return the exit status."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    from cifar_dist.models import count_params, create_model

    flag = SignalFlag()  # first: a preemption signal during start-up must not kill the process
    r, o = cfg.run, cfg.optim
    mp = None if r.mixed_precision == "auto" else r.mixed_precision
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp,
                              gradient_accumulation_steps=o.accum_steps)
    world = accelerator.num_processes
    if r.global_batch_size % (world * o.accum_steps):
        raise ConfigError(f"--run.global_batch_size: expected a multiple of processes x accum_steps = "
                          f"{world * o.accum_steps}, found {r.global_batch_size}")
    per_device = r.global_batch_size // (world * o.accum_steps)
    set_seed(r.seed)
    if r.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = Path(r.out_dir) / r.name
    ckpt_dir = run_dir / "checkpoints"

    beton_paths(cfg.data.dir, cfg.data.name)  # a missing file is reported before any work
    classes = read_manifest(cfg.data.dir, cfg.data.name).get("class_names") or [str(i) for i in range(10)]
    num_classes = len(classes)
    try:
        model = create_model(cfg.model.name, num_classes=num_classes, **model_options(cfg.model))
    except ValueError as e:  # unknown model or option: the registry's message names it
        raise ConfigError(f"--model.name={cfg.model.name}: {e}") from e
    n_params = count_params(model)
    if cfg.model.max_params and n_params > cfg.model.max_params:
        raise ConfigError(f"--model.max_params: {cfg.model.name} has {n_params:,} parameters, over the budget "
                          f"of {cfg.model.max_params:,}")
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Same initial weights on every process (above); from here on each process draws its own
    # augmentations (AutoAugment, affine, mixing), or N GPUs would repeat one GPU's draws.
    set_seed(r.seed, device_specific=True)
    train_loader, val_loader, test_loader = build_loaders(cfg, accelerator, per_device)
    torch.set_num_threads(compute_threads())  # importing ffcv set it to 1
    if len(train_loader) == 0:
        raise ConfigError(f"--run.global_batch_size: {r.global_batch_size} is larger than the training split")
    steps_per_epoch = len(train_loader) // o.accum_steps
    peak_lr = scaled_lr(o, r.global_batch_size)
    optimizer = build_optimizer(model, o, peak_lr)
    schedule = Schedule(optimizer, cfg.sched, peak_lr, steps_per_epoch, r.epochs)
    ema = ModelEmaV3(model, decay=r.ema_decay, use_warmup=r.ema_warmup) if r.ema else None
    if cfg.model.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule.optimizer = optimizer
    if ema is not None:
        ema.module.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    normalize = Normalize(cfg.data.mean, cfg.data.std, cfg.data.resolution, cfg.model.channels_last).to(accelerator.device)
    transform = TrainTransform(cfg.aug, normalize)
    mixer = BatchMixer(cfg.loss, num_classes)
    if mixer.active:
        criterion = SoftTargetCrossEntropy()
    elif cfg.loss.label_smoothing:
        criterion = LabelSmoothingCrossEntropy(cfg.loss.label_smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    state = ckpt.TrainState()
    last = ckpt.find_last(ckpt_dir) if resume == "auto" else None
    if resume not in ("auto", "none"):
        raise ConfigError(f"--resume: expected auto or none, found {resume!r}")
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # see train_one_epoch
    if last is not None:
        state = ckpt.load(accelerator, last)
        if accelerator.is_main_process:  # the saved sums are over all processes: count them once
            sums += torch.tensor([state.loss_sum, state.correct, float(state.seen)], dtype=torch.float64,
                                 device=accelerator.device)
        schedule.set(state.global_step)
    logger = RunLogger(run_dir, accelerator.is_main_process, purge_step=state.global_step if last else None)
    if last is not None:
        logger.truncate_metrics(state.epoch)
    logger.write_start(dump_yaml(cfg), {"world_size": world, "device": str(accelerator.device),
                                        "mixed_precision": accelerator.mixed_precision, "params": n_params})
    logger.text("model/params", f"{cfg.model.name}: {n_params:,} parameters")
    logger.scalar("model/params", n_params, 0)
    accelerator.print(
        f"cifar_dist: {cfg.preset or 'custom'} | model {cfg.model.name} ({n_params:,} params) | processes {world} "
        f"({accelerator.distributed_type}, {accelerator.device}, precision {accelerator.mixed_precision}) | "
        f"batch {per_device}/device x {world} x accum {o.accum_steps} = {r.global_batch_size} global | "
        f"lr {peak_lr:g} = {o.lr:g} x ({r.global_batch_size}/{o.ref_batch_size})^{o.lr_scaling} | "
        f"{steps_per_epoch} steps/epoch x {r.epochs} epochs | run dir {run_dir}"
        + (f" | resumed at epoch {state.epoch + 1} step {state.step_in_epoch}" if last else "")
    )

    session_start, earlier_sessions = time.time(), state.wall_seconds

    def save_last(total: torch.Tensor | None = None):
        """Checkpoint; `total` (from `check`) carries the epoch sums of all processes."""
        if total is not None:
            state.loss_sum, state.correct, state.seen = float(total[3]), float(total[4]), int(total[5])
        state.wall_seconds = earlier_sessions + time.time() - session_start
        ckpt.save(accelerator, ckpt_dir, state)

    def on_step(step: int, loss: torch.Tensor) -> None:
        # One collective every log_every_steps steps, before every checkpoint and at the end of the
        # epoch: every process learns of a stop signal any of them got and of a non-finite loss in
        # the epoch so far (the sums carry it) at the same step; in between, no host sync at all.
        if bar is not None:
            bar.update(accelerator.gradient_accumulation_steps)
        g = state.global_step
        due_ckpt = bool(r.checkpoint_every_steps) and g % r.checkpoint_every_steps == 0
        if g % r.log_every_steps and not due_ckpt and state.step_in_epoch < steps_per_epoch * o.accum_steps:
            return
        total = check(loss)
        step_loss = float(total[1] / total[2])
        if r.log_every_steps and g % r.log_every_steps == 0:
            logger.scalar("train/loss", step_loss, g)
            logger.scalar("train/lr", optimizer.param_groups[0]["lr"], g)
        if bar is not None:
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if total[0] > 0:
            save_last(total)
            raise StopRun(EXIT_PREEMPTED, f"stopped by signal at epoch {state.epoch + 1} step {step + 1}; "
                          f"checkpoint saved, resume with --resume=auto")
        if due_ckpt:
            save_last(total)

    def check(loss: torch.Tensor) -> torch.Tensor:
        """Reduce [signal, step loss x n, n, epoch sums...] over processes; stop on a non-finite loss."""
        n = torch.full((), float(per_device), dtype=torch.float64, device=accelerator.device)
        local = torch.stack([torch.full((), float(flag.signum), dtype=torch.float64, device=accelerator.device),
                             loss.double() * n, n, *sums])
        total = accelerator.reduce(local, reduction="sum")
        if not (math.isfinite(float(total[1])) and math.isfinite(float(total[3]))):
            raise StopRun(EXIT_NONFINITE, f"error: non-finite loss in epoch {state.epoch + 1} (by step "
                          f"{state.step_in_epoch}); stopping, last good checkpoint kept in {ckpt_dir / 'last'}")
        return total

    from tqdm.auto import tqdm

    status = "finished"
    try:
        while state.epoch < r.epochs:
            epoch = state.epoch
            train_loader.set_epoch(epoch)
            bar = None
            if accelerator.is_main_process and r.progress:
                bar = tqdm(total=len(train_loader), initial=state.step_in_epoch, desc=f"epoch {epoch + 1}/{r.epochs}",
                           leave=False, dynamic_ncols=True)
            train_one_epoch(model, train_loader, state.step_in_epoch, optimizer, schedule, accelerator, transform,
                            mixer, criterion, ema, o.grad_clip, state, sums, on_step)
            if bar is not None:
                bar.close()
            total = check(torch.zeros((), device=accelerator.device))
            state.loss_sum, state.correct, state.seen = float(total[3]), float(total[4]), int(total[5])
            row = {"epoch": epoch + 1, "step": state.global_step,
                   "train_loss": state.loss_sum / max(state.seen, 1), "train_acc": 100 * state.correct / max(state.seen, 1),
                   "lr": optimizer.param_groups[0]["lr"], "images_per_s": state.seen / max(state.train_seconds, 1e-9),
                   "epoch_s": state.train_seconds}
            stop = False
            if (epoch + 1) % r.eval_every == 0 or epoch + 1 == r.epochs:
                plain = accelerator.unwrap_model(model)
                if val_loader is not None:
                    row["val_acc"] = evaluate(plain, val_loader, normalize, accelerator, num_classes)["acc"]
                    if ema is not None:
                        row["ema_val_acc"] = evaluate(ema.module, val_loader, normalize, accelerator, num_classes)["acc"]
                test = evaluate(plain, test_loader, normalize, accelerator, num_classes)
                row["test_acc"], row["test_loss"] = test["acc"], test["loss"]
                if ema is not None:
                    row["ema_test_acc"] = evaluate(ema.module, test_loader, normalize, accelerator, num_classes)["acc"]
                if "val_acc" in row:
                    state.val_history.append(row["val_acc"])
                    if row["val_acc"] > state.best_val_acc:
                        state.best_val_acc, state.best_epoch = row["val_acc"], epoch + 1
                        if accelerator.is_main_process:
                            ckpt.save_best(plain, ema, ckpt_dir, epoch + 1, row["val_acc"])
                    stop = should_stop_early(state.val_history, r.early_stop_patience, r.early_stop_window,
                                             r.early_stop_drop, r.early_stop_start)
            logger.log_epoch(row)
            accelerator.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            state.epoch, state.step_in_epoch = epoch + 1, 0
            state.loss_sum = state.correct = state.train_seconds = 0.0
            state.seen = 0
            sums.zero_()
            save_last()
            if stop:
                status = "early_stopped"
                accelerator.print(f"early stop after epoch {epoch + 1}: val acc {row['val_acc']:.2f} "
                                  f"(best {state.best_val_acc:.2f} at epoch {state.best_epoch})")
                break
    except StopRun as e:
        logger.close()
        if accelerator.is_main_process:
            print(str(e), file=sys.stderr, flush=True)
        accelerator.end_training()
        return e.status

    state.wall_seconds = earlier_sessions + time.time() - session_start
    result = finish(cfg, accelerator, model, ema, test_loader, normalize, num_classes, classes, ckpt_dir, state,
                    n_params, status, logger)
    accelerator.print(f"done: test acc {result['final']['test_acc']:.2f}% (tta {result['final']['test_acc_tta']:.2f}%), "
                      + (f"best val epoch {result['best']['epoch']}" if val_loader is not None else "no validation split")
                      + f", result in {run_dir / 'result.json'}")
    logger.close()
    accelerator.end_training()
    return EXIT_OK


def finish(cfg, accelerator, model, ema, test_loader, normalize, num_classes, classes, ckpt_dir, state, n_params,
           status, logger) -> dict:
    """Final evaluations (final and best weights, with TTA), result.json, hparams, confusion matrix."""
    plain = accelerator.unwrap_model(model)
    tta = cfg.run.tta
    final = evaluate(plain, test_loader, normalize, accelerator, num_classes)
    final_tta = evaluate(plain, test_loader, normalize, accelerator, num_classes, tta) if tta != "none" else final
    res_final = {"test_acc": final["acc"], "test_loss": final["loss"], "test_acc_tta": final_tta["acc"]}
    if ema is not None:
        res_final["ema_test_acc"] = evaluate(ema.module, test_loader, normalize, accelerator, num_classes)["acc"]
    best = {"epoch": state.epoch, "val_acc": None, "test_acc": final["acc"], "test_acc_tta": final_tta["acc"]}
    saved = ckpt.load_best(ckpt_dir) if state.best_epoch else None
    if saved is not None:
        import copy

        best_model = copy.deepcopy(plain)
        best_model.load_state_dict(saved["model"])
        b = evaluate(best_model, test_loader, normalize, accelerator, num_classes)
        b_tta = evaluate(best_model, test_loader, normalize, accelerator, num_classes, tta) if tta != "none" else b
        best = {"epoch": state.best_epoch, "val_acc": state.best_val_acc, "test_acc": b["acc"], "test_acc_tta": b_tta["acc"]}
    from cifar_dist.logs import read_metrics

    rows = read_metrics(logger.metrics_path) if accelerator.is_main_process else []
    ips = [row["images_per_s"] for row in rows if "images_per_s" in row]
    result = {
        "name": cfg.run.name, "preset": cfg.preset, "status": status, "epochs": state.epoch,
        "params": n_params, "world_size": accelerator.num_processes, "final": res_final, "best": best,
        "images_per_s": float(np.mean(ips)) if ips else None,
        "wall_s": state.wall_seconds,
    }
    if accelerator.is_main_process:
        logger.figure("test/confusion_matrix", confusion_figure(final["confusion"], classes), state.epoch)
        logger.hparams(flatten(to_dict(cfg)), {"test_acc": final["acc"], "test_acc_tta": final_tta["acc"], "best_val_acc": best["val_acc"],
                            "best_test_acc": best["test_acc"]})
    logger.finish(result)
    return result


def run_cli(preset: str | None = None, config: str | None = None, resume: str = "none", print_config: bool = False,
            **overrides) -> int:
    """Resolve the config from flags and train; errors in the input become one line and status 2."""
    from cifar_dist.config import resolve
    from cifar_dist.run_status import write_status

    run_dir = None
    status = 1  # a crash (an exception other than bad input) is recorded as 1, "failed"
    try:
        cfg = resolve(preset, config, overrides)
        if print_config:
            print(dump_yaml(cfg), end="")
            return EXIT_OK
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        status = train(cfg, resume=str(resume))
        return status
    except (ConfigError, DataError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        status = EXIT_BAD_INPUT
        return status
    finally:
        # The true status for the scripts (a launcher exits 1 for any failure); bad input before the
        # run directory exists leaves no trace.
        if run_dir is not None and run_dir.is_dir():
            write_status(run_dir, status)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cifar_dist.train` (Fire parses `--section.key=value` flags)."""
    from cifar_dist.cli import fire_call, train_help

    return fire_call(run_cli, argv, name="cifar_dist.train", help_text=train_help)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    exit_status = main()
    # Only exiting from here: ignore further stop signals (the scripts repeat theirs until the launcher is
    # gone), as Python resets the handlers it installed to SIG_DFL at exit and a late one would kill us.
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(exit_status)

