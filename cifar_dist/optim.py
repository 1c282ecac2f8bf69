"""Optimizers (torch, optionally inside timm's Lookahead) and per-iteration learning-rate schedules."""

from __future__ import annotations

import warnings

import torch

from cifar_dist.config import ConfigError, OptimConfig, SchedConfig


def scaled_lr(cfg: OptimConfig, global_batch_size: int) -> float:
    """Peak lr after the scaling rule: lr * (global_batch / ref_batch) ** {none: 0, sqrt: 0.5, linear: 1}."""
    power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[cfg.lr_scaling]
    return cfg.lr * (global_batch_size / cfg.ref_batch_size) ** power


def param_groups(model: torch.nn.Module, weight_decay: float, exempt_norm_bias: bool) -> list[dict]:
    """One group, or two when norm weights and biases (all 1-D parameters) are exempt from decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exempt_norm_bias or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.wd_exempt_norm_bias)
    betas = tuple(cfg.betas)
    if len(betas) != 2:
        raise ConfigError(f"--optim.betas: expected two numbers, found {list(betas)}")
    if cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.name == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=betas, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps)
    else:
        opt = torch.optim.Adamax(groups, lr=lr, betas=betas, eps=cfg.eps)
    if cfg.lookahead:
        from timm.optim import Lookahead

        opt = Lookahead(opt, alpha=cfg.lookahead_alpha, k=cfg.lookahead_k)
    return opt


class Schedule:
    """Sets the optimizer's lr for each global optimizer step, through the schedulers' public APIs.

    cosine and step are timm's (`CosineLRScheduler`, `StepLRScheduler`, in updates via `step_update` or,
    with `per_epoch`, in epochs via `step`): a function of the step, so they hold no state of their own.
    onecycle is torch's stateful `OneCycleLR`, advanced one `step()` per optimizer step; its state is in
    `state_dict()`, so register the schedule for checkpointing
    (`accelerator.register_for_checkpointing(schedule)`) and a resume continues it exactly. constant is
    the peak lr.
    """

    def __init__(self, optimizer, cfg: SchedConfig, peak_lr: float, steps_per_epoch: int, epochs: int):
        from timm.scheduler import CosineLRScheduler, StepLRScheduler

        self.cfg, self.optimizer, self.peak_lr = cfg, optimizer, peak_lr
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        for g in optimizer.param_groups:  # the schedulers read their peak from the groups
            g["lr"] = g["initial_lr"] = peak_lr
        unit = 1 if cfg.per_epoch else steps_per_epoch  # schedule units per epoch
        total = epochs * unit
        warmup = int(round(cfg.warmup_epochs * unit))
        self.torch_sched = None
        self.timm_sched = None
        if cfg.name == "cosine":
            period = int(round(cfg.period_epochs * unit)) if cfg.period_epochs else max(total - warmup, 1)
            self.timm_sched = CosineLRScheduler(
                optimizer, t_initial=period, lr_min=peak_lr * cfg.min_lr_ratio, warmup_t=warmup,
                warmup_lr_init=peak_lr * cfg.warmup_start, warmup_prefix=True, t_in_epochs=cfg.per_epoch,
            )
        elif cfg.name == "step":
            self.timm_sched = StepLRScheduler(
                optimizer, decay_t=cfg.step_epochs * unit, decay_rate=cfg.step_gamma, warmup_t=warmup,
                warmup_lr_init=peak_lr * cfg.warmup_start, warmup_prefix=True, t_in_epochs=cfg.per_epoch,
            )
        elif cfg.name == "onecycle":
            self.torch_sched = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=peak_lr, total_steps=max(total, 2), pct_start=cfg.onecycle_pct,
                div_factor=cfg.onecycle_div, final_div_factor=cfg.onecycle_final_div, cycle_momentum=False,
            )
        self.set(0)

    def set(self, step: int) -> float:
        """Give the optimizer the lr of optimizer step `step` (0-based) and return it.

        onecycle only moves forward: it is stepped up to `step` (clamped to its last step), so a resume
        without its saved state replays the steps, which gives the same lr (OneCycleLR is closed form).
        """
        if self.timm_sched is not None and self.cfg.per_epoch:
            self.timm_sched.step(step // self.steps_per_epoch)
        elif self.timm_sched is not None:
            self.timm_sched.step_update(step)
        elif self.torch_sched is not None:
            target = min(step, self.torch_sched.total_steps - 1)
            if target < self.torch_sched.last_epoch:
                raise ValueError(f"onecycle schedule is at step {self.torch_sched.last_epoch}, cannot go back "
                                 f"to {step}")
            with warnings.catch_warnings():  # replaying after a resume precedes this process's first step
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")
                while self.torch_sched.last_epoch < target:
                    self.torch_sched.step()
        else:
            for g in self.optimizer.param_groups:
                g["lr"] = self.peak_lr
        return float(self.optimizer.param_groups[0]["lr"])

    def lr_at(self, step: int) -> float:
        """The lr at optimizer step `step`, read from a fresh copy of this schedule on a dummy optimizer
        (this schedule and its optimizer are left alone)."""
        dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=self.peak_lr)
        return Schedule(dummy, self.cfg, self.peak_lr, self.steps_per_epoch, self.epochs).set(step)

    def state_dict(self) -> dict:
        """The onecycle scheduler's state (the timm schedules are functions of the step: nothing to save)."""
        return {"onecycle": self.torch_sched.state_dict()} if self.torch_sched is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.torch_sched is not None:
            self.torch_sched.load_state_dict(state["onecycle"])
