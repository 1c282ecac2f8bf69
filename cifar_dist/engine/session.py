"""Start a run: the accelerator, the model and what trains it, the loaders, a resume, the run directory, the banner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar_dist.augment import BatchMixer, TrainTransform
from cifar_dist.config import Config, ConfigError, dump_yaml
from cifar_dist.data import (
    FFCVLoader,
    Normalize,
    Order,
    Split,
    TensorLoader,
    compute_threads,
    read_images,
    usable_cpus,
)
from cifar_dist.dataset import Dataset, open_dataset
from cifar_dist.engine import checkpoint as ckpt
from cifar_dist.engine import devices
from cifar_dist.engine.logs import RunLogger, start_logger
from cifar_dist.engine.rundir import RunDirError, first_error, lock_run_dir
from cifar_dist.lookahead import LookaheadEMA
from cifar_dist.models import build_model, count_params
from cifar_dist.optim import Schedule, build_optimizer, kilostep, scaled_lr


@dataclass
class StepParts:
    """What one optimizer step touches (see `cifar_dist.engine.loop.train_one_epoch`)."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    transform: torch.nn.Module  # uint8 batch -> augmented, normalised float batch
    mixer: BatchMixer
    criterion: torch.nn.Module
    ema: Any = None  # timm ModelEmaV3, updated after every optimizer step
    grad_clip: float = 0.0  # max global gradient norm (0 = off)
    lookahead: Any = None  # LookaheadEMA: every N steps the weights move to an EMA of themselves


@dataclass
class Loaders:
    train: Any
    val: Any | None  # None without a validation split
    test: Any


def init_from_data(model: torch.nn.Module, data: Dataset, n: int = 5000) -> None:
    """Data-dependent initialisation (e.g. airbench's whitening stem) from up to `n` of the training rows, the
    same on every process; models without `init_from_data` are left alone."""
    init = getattr(model, "init_from_data", None)
    if not callable(init) or not getattr(model, "whiten", True):
        return
    d, rows = data.config, data.train_rows
    pick = np.sort(rows[np.random.default_rng(d.split_seed).permutation(len(rows))[:n]])  # any file order
    x, _ = read_images(data.train_path, pick)
    images = torch.as_tensor(x).permute(0, 3, 1, 2).float().div_(255)
    mean, std = torch.tensor(d.mean).view(1, 3, 1, 1), torch.tensor(d.std).view(1, 3, 1, 1)
    init((images - mean) / std)


@dataclass
class Session:
    """Everything one session of a run works with (built by `open_session`)."""

    cfg: Config
    parts: StepParts
    loaders: Loaders
    normalize: Normalize
    classes: list[str]
    n_params: int
    state: ckpt.TrainState
    sums: torch.Tensor  # this process's running sums of the epoch (see train_one_epoch)
    logger: RunLogger
    per_device: int  # images per process per micro-batch
    peak_lr: float
    resumed: bool

    @property
    def accelerator(self):
        return self.parts.accelerator

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.out_dir) / self.cfg.run.name

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return len(self.loaders.train) // self.cfg.optim.accum_steps


def open_session(cfg: Config, resume: str = "none") -> Session:
    """Build everything for `cfg` in the order that keeps runs reproducible (seed, weights, per-process seed,
    loaders, optimizer, resume), open the run directory and print the banner."""
    from accelerate.utils import set_seed

    accelerator, per_device = make_accelerator(cfg)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    # one writer per run directory, before any data is read or file written; every process stops on a refusal
    error = first_error(accelerator, lambda: lock_run_dir(run_dir))
    if error:
        raise RunDirError(error)
    devices.check_shared_run_dir(accelerator, run_dir)  # every rank sees run_dir, or all stop here (exit 2)
    ckpt.check_start(accelerator, run_dir, resume)  # one run, one folder
    data = open_dataset(cfg.data)  # a missing or bad file is reported before any work
    classes = data.classes
    model = build_model(cfg.model, len(classes))  # options checked, budget kept, channels-last if asked
    n_params = count_params(model)
    # Same initial weights on every process (above); from here on each process draws its own
    # augmentations (AutoAugment, affine, mixing), or N GPUs would repeat one GPU's draws.
    set_seed(cfg.run.seed, device_specific=True)
    loaders = build_loaders(cfg, data, accelerator, per_device)
    init_from_data(model, data)
    torch.set_num_threads(compute_threads())  # importing ffcv set it to 1
    if len(loaders.train) == 0:
        raise ConfigError(f"--run.global_batch_size: {cfg.run.global_batch_size} is larger than the training split")
    peak_lr = scaled_lr(cfg.optim, cfg.run.global_batch_size)
    parts, normalize = build_parts(cfg, accelerator, model, len(loaders.train) // cfg.optim.accum_steps, peak_lr,
                                   len(classes), per_device)
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # see train_one_epoch
    resumed = ckpt.resume(parts, run_dir, resume, cfg)
    state = ckpt.TrainState() if resumed is None else resumed
    if resumed is not None:
        if accelerator.is_main_process:  # the saved sums are over all processes: count them once
            sums += torch.tensor([state.loss_sum, state.correct, float(state.seen)], dtype=torch.float64,
                                 device=accelerator.device)
        parts.schedule.set(state.global_step)
    env = {"world_size": accelerator.num_processes, "device": str(accelerator.device),
           "mixed_precision": accelerator.mixed_precision, "params": n_params,
           "torch_threads": torch.get_num_threads(), "usable_cpus": usable_cpus()}  # per process
    logger = start_logger(run_dir, accelerator.is_main_process, dump_yaml(cfg), env, resumed)
    if resumed is None:  # step 0 of the events: a resume keeps the first session's
        logger.text("model/params", f"{cfg.model.name}: {n_params:,} parameters")
    s = Session(cfg, parts, loaders, normalize, classes, n_params, state, sums, logger, per_device, peak_lr,
                resumed is not None)
    accelerator.print(banner(s))
    return s


def make_accelerator(cfg: Config):
    """The Accelerator (precision, accumulation) and the per-process batch; seeds everything with run.seed."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    r, o = cfg.run, cfg.optim
    mp = devices.choose_precision(r.mixed_precision, r.allow_cpu)  # fp32 (or exit 2) where CUDA is unusable
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp,
                              gradient_accumulation_steps=o.accum_steps, kwargs_handlers=devices.init_kwargs(r))
    devices.configure_backends(accelerator.device, r.deterministic)
    world = accelerator.num_processes
    if r.global_batch_size % (world * o.accum_steps):
        raise ConfigError(f"--run.global_batch_size: expected a multiple of processes x accum_steps = "
                          f"{world * o.accum_steps}, found {r.global_batch_size}")
    set_seed(r.seed)
    if r.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return accelerator, r.global_batch_size // (world * o.accum_steps)


def build_parts(cfg: Config, accelerator, model: torch.nn.Module, steps_per_epoch: int, peak_lr: float,
                num_classes: int, per_device: int) -> tuple[StepParts, Normalize]:
    """Optimizer, schedule, EMA, the prepared (and maybe compiled) model, augmentation, mixer and loss;
    `per_device`: images per process per micro-batch (from `make_accelerator`)."""
    r, o = cfg.run, cfg.optim
    if devices.use_sync_bn(cfg.model.sync_bn, accelerator.num_processes, per_device):
        model = devices.convert_sync_bn(model, accelerator.device)  # before prepare (DDP)
    optimizer = build_optimizer(model, o, peak_lr)
    schedule = Schedule(optimizer, cfg.sched, peak_lr, steps_per_epoch, r.epochs)
    model, optimizer = accelerator.prepare(model, optimizer)  # moves the model to accelerator.device
    # Whatever copies the weights is made from the PLACED model, so its tensors (and timm's EMA generator)
    # live where the model lives; copied earlier they stayed on the CPU while the model went to the GPU.
    placed = accelerator.unwrap_model(model)
    ema = None
    if r.ema:
        from timm.utils import ModelEmaV3  # timm only where used: importing it costs ~2 s of start-up

        ema = ModelEmaV3(placed, decay=r.ema_decay, use_warmup=r.ema_warmup)
    lookahead = None
    if o.ema_lookahead:
        lookahead = LookaheadEMA(placed, total_steps=steps_per_epoch * r.epochs, every=o.ema_lookahead,
                                 base=o.ema_lookahead_decay)
    if cfg.model.compile:
        # The PREPARED model (compile outside DDP): dynamo's DDP optimizer splits the graph at gradient-bucket
        # boundaries, so buckets all-reduce while the backward runs. Training batches have one shape
        # (drop_last): training compiles once; evaluation runs devices.eval_model, never the compiled module.
        model = torch.compile(model)
    schedule.optimizer = optimizer
    d = cfg.data
    normalize = Normalize(d.mean, d.std, d.resolution, cfg.model.channels_last).to(accelerator.device)
    transform = TrainTransform(cfg.aug, normalize)
    mixer = BatchMixer(cfg.loss, num_classes)
    parts = StepParts(accelerator, model, optimizer, schedule, transform, mixer, mixer.criterion(), ema, o.grad_clip,
                      lookahead)
    return parts, normalize


def build_loaders(cfg: Config, data: Dataset, accelerator, per_device_batch: int) -> Loaders:
    """Train, validation and test loaders for this process, over the rows of `data`."""
    d = data.config
    train_path, train_idx, val_idx = data.train_path, data.train_rows, data.val_rows
    fill = tuple(int(round(m * 255)) for m in d.mean)  # cutout fills with the mean colour
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = Order(rank=rank, world_size=world)
    train_order = Order(train=True, seed=cfg.run.seed, rank=rank, world_size=world)
    eval_bs, dev = cfg.run.eval_batch_size, accelerator.device
    if d.loader == "tensor":
        x_train, y_train = read_images(train_path)
        train = TensorLoader(x_train[train_idx], y_train[train_idx], batch_size=per_device_batch, device=dev,
                             order=train_order, aug=cfg.aug, cutout_fill=fill)
        val = None if val_idx is None else TensorLoader(x_train[val_idx], y_train[val_idx], batch_size=eval_bs,
                                                        device=dev, order=shard)
    else:
        train = FFCVLoader(Split(train_path, train_idx), batch_size=per_device_batch, device=dev, order=train_order,
                           aug=cfg.aug, cutout_fill=fill, num_workers=d.num_workers)
        # Evaluation shards are rank-strided rows, not FFCV's distributed order: that pads the split
        # with repeated images to a multiple of the world size, which would count them twice.
        val = None if val_idx is None else FFCVLoader(Split(train_path, val_idx[rank::world]), batch_size=eval_bs,
                                                      device=dev, num_workers=d.num_workers)
    return Loaders(train, val, eval_loader(data, data.test_rows, eval_bs, dev, rank, world))


def eval_loader(data: Dataset, rows: np.ndarray, batch_size: int, device, rank: int = 0, world: int = 1):
    """An evaluation loader over `rows` of the test file: the share of process `rank` of `world`."""
    if data.config.loader == "tensor":
        x, y = read_images(data.test_path, rows)
        return TensorLoader(x, y, batch_size=batch_size, device=device, order=Order(rank=rank, world_size=world))
    return FFCVLoader(Split(data.test_path, rows[rank::world]), batch_size=batch_size, device=device,
                      num_workers=data.config.num_workers)


def lr_rule(peak_lr: float, o, global_batch: int) -> str:
    """How the peak lr follows from the flags, e.g. `lr 0.2 = 0.1 x (256/128)^linear`."""
    if o.decoupled:
        k = kilostep(o.momentum)
        return f"lr {peak_lr:.4g} = {o.lr:g} x {global_batch}/{k:.0f} (decoupled: {k:.0f} = 1024 x (1 + 1/(1 - momentum)))"
    return f"lr {peak_lr:g} = {o.lr:g} x ({global_batch}/{o.ref_batch_size})^{o.lr_scaling}"


def banner(s: Session) -> str:
    """The one line a run starts with: model, processes, batch arithmetic, lr scaling, length, run dir."""
    cfg, acc, state = s.cfg, s.accelerator, s.state
    r, o, world = cfg.run, cfg.optim, acc.num_processes
    return (
        f"cifar_dist: {cfg.preset or 'custom'} | model {cfg.model.name} ({s.n_params:,} params) | processes {world} "
        f"({acc.distributed_type}, {acc.device}, precision {acc.mixed_precision}) | "
        f"threads {torch.get_num_threads()}/process of {usable_cpus()} usable CPUs | "
        f"batch {s.per_device}/device x {world} x accum {o.accum_steps} = {r.global_batch_size} global | "
        f"{lr_rule(s.peak_lr, o, r.global_batch_size)} | "
        f"{s.steps_per_epoch} steps/epoch x {r.epochs} epochs | run dir {s.run_dir}"
        + (f" | resumed at epoch {state.epoch + 1} step {state.step_in_epoch}" if s.resumed else "")
    )
