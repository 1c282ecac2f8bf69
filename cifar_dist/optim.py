"""Optimizers (torch, optionally inside timm's Lookahead) and per-iteration learning-rate schedules."""

from __future__ import annotations

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
    """Sets the optimizer's lr for a given global step; holds no state besides the step it is given.

    cosine and step come from timm (`CosineLRScheduler`, `StepLRScheduler`, in updates or, with
    `per_epoch`, in epochs), onecycle from torch (`OneCycleLR`, closed form in the step), constant is
    the peak lr. Being a function of the step, resuming needs only the step count.
    """

    def __init__(self, optimizer, cfg: SchedConfig, peak_lr: float, steps_per_epoch: int, epochs: int):
        from timm.scheduler import CosineLRScheduler, StepLRScheduler

        self.cfg, self.optimizer, self.peak_lr = cfg, optimizer, peak_lr
        for g in optimizer.param_groups:  # the schedulers read their peak from the groups
            g["lr"] = g["initial_lr"] = peak_lr
        self.steps_per_epoch = steps_per_epoch
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

    def lr_at(self, step: int) -> float:
        """The lr the schedule gives at optimizer step `step` (0-based)."""
        t = step // self.steps_per_epoch if self.cfg.per_epoch else step
        if self.timm_sched is not None:
            return float(self.timm_sched._get_lr(t)[0])
        if self.torch_sched is not None:
            return float(_onecycle_lr(self.torch_sched, t))
        return self.peak_lr

    def set(self, step: int) -> float:
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr


def _onecycle_lr(sched: torch.optim.lr_scheduler.OneCycleLR, step: int) -> float:
    """OneCycleLR's lr at `step` through its own phase table (clamped to the last step)."""
    step = min(step, sched.total_steps - 1)
    group = sched.optimizer.param_groups[0]
    start = 0.0
    for i, phase in enumerate(sched._schedule_phases):
        end = phase["end_step"]
        if step <= end or i == len(sched._schedule_phases) - 1:
            pct = (step - start) / (end - start) if end > start else 0.0
            lo, hi = group[phase["start_lr"]], group[phase["end_lr"]]
            return sched._anneal_func(lo, hi, pct)
        start = end
    return group["lr"]
