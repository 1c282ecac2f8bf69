"""Optimizers (torch, optionally inside timm's Lookahead) and per-iteration learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cifar_dist.config import ConfigError, OptimConfig, SchedConfig


def kilostep(momentum: float) -> float:
    """Examples per unit of a decoupled lr: 1,024 x (1 + 1 / (1 - momentum)) (momentum-independent form)."""
    return 1024.0 * (1.0 + 1.0 / (1.0 - momentum))


def scaled_lr(cfg: OptimConfig, global_batch_size: int) -> float:
    """Peak lr after the scaling rule: lr * (global_batch / ref_batch) ** {none: 0, sqrt: 0.5, linear: 1}.

    With `decoupled`, `lr` is per 1,024 examples and independent of the momentum: the optimizer's lr on
    the mean loss of a batch of B is lr * B / kilostep(momentum), so it already grows with the batch.
    """
    if cfg.decoupled:
        if cfg.lr_scaling != "none":
            raise ConfigError(f"--optim.lr_scaling: expected none with --optim.decoupled=true (a decoupled lr "
                              f"is per 1,024 examples), found {cfg.lr_scaling}")
        return cfg.lr * global_batch_size / kilostep(cfg.momentum)
    power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[cfg.lr_scaling]
    return cfg.lr * (global_batch_size / cfg.ref_batch_size) ** power


_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
          torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d, torch.nn.GroupNorm,
          torch.nn.LayerNorm)


def is_filter(p: torch.Tensor) -> bool:
    """A convolution filter bank (out, in, *kernel): what `--optim.name=muon` trains with Muon."""
    return p.ndim >= 3


def param_groups(model: torch.nn.Module, cfg: OptimConfig, weight_decay: float) -> list[dict]:
    """Parameter groups: weights decayed by `weight_decay`; with `wd_exempt_norm_bias` all 1-D parameters
    without decay; with `bias_lr_scale` != 1 the norm layers' biases at lr x scale and weight decay / scale (the
    same with `head_lr_scale` for the last Linear layer); parameters named in the model's `frozen_after()`
    ({name: epoch}) in groups of their own that stop training at that epoch; with name=muon the conv filters
    in groups of their own marked "filters" (see `is_filter`).

    Every group carries "lr_scale" (its lr relative to the schedule's) and maybe "stop_epoch"; the
    schedule applies both.
    """
    frozen_after = model.frozen_after() if callable(getattr(model, "frozen_after", None)) else {}
    norm_bias = {id(m.bias) for m in model.modules()
                 if isinstance(m, _NORMS) and getattr(m, "bias", None) is not None}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # the head is the last one
    head = {id(p) for p in linears[-1].parameters()} if linears and cfg.head_lr_scale != 1.0 else set()
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd, scale = weight_decay, 1.0
        if cfg.wd_exempt_norm_bias and p.ndim <= 1:
            wd = 0.0
        if id(p) in norm_bias and cfg.bias_lr_scale != 1.0:
            wd, scale = wd / cfg.bias_lr_scale, cfg.bias_lr_scale
        if id(p) in head:
            wd, scale = wd / cfg.head_lr_scale, cfg.head_lr_scale
        key = (wd, scale, frozen_after.get(name), cfg.name == "muon" and is_filter(p))
        g = groups.setdefault(key, {"params": [], "weight_decay": wd, "lr_scale": scale})
        if key[2] is not None:
            g["stop_epoch"] = key[2]
        if key[3]:
            g["filters"] = True
        g["params"].append(p)
    return list(groups.values())


class MuonWithCompanion(torch.optim.Optimizer):
    """One optimizer for the engine: timm's Muon on the conv filters, a companion optimizer on the rest.

    timm's `Muon` (flatten mode: a filter bank is the matrix out x in*k*k) keeps a Nesterov momentum per
    filter bank and steps along its orthogonalisation (Newton-Schulz iterations with the original
    coefficients, no shape-based lr adjustment, no weight decay); every group is pinned to Muon, so no
    filter falls back to AdamW on its shape. The companion (torch SGD, Adam, AdamW or Adamax) trains
    biases, norms, the whitening bias and the head. With `normalize`, each filter bank is rescaled to norm
    sqrt(out channels) right before its step, so its size never drifts (a BatchNorm after each conv makes
    the scale free). `param_groups` lists Muon's groups, then the companion's; the schedule sets each
    group's lr through its "lr_scale". The state dict holds both optimizers' state dicts.
    """

    def __init__(self, muon: torch.optim.Optimizer, companion: torch.optim.Optimizer, normalize: bool):
        # Like accelerate's AcceleratedOptimizer: a facade over optimizers that own the groups and state.
        self.muon, self.companion, self.normalize = muon, companion, normalize
        self.defaults = companion.defaults

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.companion.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.companion.state}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.companion.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.normalize:
            for g in self.muon.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.mul_(p.shape[0] ** 0.5 / p.norm())  # a tensor factor: no host synchronisation
        self.muon.step()
        self.companion.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "companion": self.companion.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "companion"}:
            raise ValueError(f"expected the states of muon and companion, found {sorted(state_dict)}")
        self.muon.load_state_dict(state_dict["muon"])
        self.companion.load_state_dict(state_dict["companion"])

    def __repr__(self) -> str:
        return f"MuonWithCompanion(muon={self.muon!r}, companion={self.companion!r})"


def _torch_optimizer(name: str, groups: list[dict], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[name]
    return adam(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)  # two betas: `cifar_dist.rules`


def _muon(groups: list[dict], cfg: OptimConfig, lr: float) -> MuonWithCompanion:
    """Filter groups to timm's Muon at `cfg.muon_lr` (as "lr_scale" of the schedule's peak `lr`), the rest
    to the companion."""
    from timm.optim import Muon

    if cfg.lookahead:
        raise ConfigError("--optim.lookahead: expected false with --optim.name=muon, found true")
    if lr <= 0:
        raise ConfigError(f"--optim.lr: expected a positive lr with --optim.name=muon (the schedule's peak), found {lr}")
    filters = [dict(g, weight_decay=0.0, lr_scale=cfg.muon_lr / lr, use_muon=True) for g in groups if g.get("filters")]
    others = [g for g in groups if not g.get("filters")]
    if not filters:
        raise ConfigError("--optim.name: muon needs a model with convolution filters; this model has none")
    muon = Muon(filters, lr=cfg.muon_lr, momentum=cfg.muon_momentum, nesterov=cfg.muon_nesterov,
                ns_steps=cfg.muon_ns_steps, ns_coefficients="original", adjust_lr_fn=None, conv_mode="flatten")
    if not others:  # a companion with no parameters: torch refuses an empty optimizer
        others = [{"params": [], "lr_scale": 1.0}]
    return MuonWithCompanion(muon, _torch_optimizer(cfg.companion, others, lr, cfg), cfg.muon_normalize)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer of `cfg` at peak lr `lr` (a model's `frozen_after()` is honoured: see `param_groups`)."""
    # Decoupled: each step shrinks the weights by weight_decay x B / kilostep (x the schedule's factor),
    # whatever the lr; SGD applies lr x weight_decay, and lr = cfg.lr x B / kilostep, so the ratio is it.
    if cfg.decoupled and cfg.lr <= 0:
        raise ConfigError(f"--optim.lr: expected a positive lr with --optim.decoupled=true, found {cfg.lr}")
    wd = cfg.weight_decay / cfg.lr if cfg.decoupled else cfg.weight_decay
    groups = param_groups(model, cfg, wd)
    if cfg.name == "muon":
        return _muon(groups, cfg, lr)
    opt = _torch_optimizer(cfg.name, groups, lr, cfg)
    if cfg.lookahead:
        from timm.optim import Lookahead

        opt = Lookahead(opt, alpha=cfg.lookahead_alpha, k=cfg.lookahead_k)
    return opt


@dataclass(frozen=True)
class Span:
    """Where a schedule runs, counted in its units: optimizer steps, or epochs with `per_epoch`."""

    unit: int  # units per epoch
    total: int  # units of the run
    warmup: int  # warm-up units, before the schedule proper

    @staticmethod
    def of(cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> Span:
        unit = 1 if cfg.per_epoch else steps_per_epoch
        total = epochs * unit
        return Span(unit, total, int(round(cfg.warmup_frac * total if cfg.warmup_frac else cfg.warmup_epochs * unit)))


def cosine_factor(t: int, span: Span, cfg: SchedConfig) -> float:
    """After the warm-up, half a cosine from the peak to `min_lr_ratio` over `period_epochs` (default: the rest
    of the run), then the floor (timm's CosineLRScheduler with warmup_prefix and one cycle)."""
    period = int(round(cfg.period_epochs * span.unit)) if cfg.period_epochs else max(span.total - span.warmup, 1)
    t -= span.warmup
    if t >= period:
        return cfg.min_lr_ratio
    return cfg.min_lr_ratio + 0.5 * (1.0 - cfg.min_lr_ratio) * (1.0 + math.cos(math.pi * t / period))


def step_factor(t: int, span: Span, cfg: SchedConfig) -> float:
    """After the warm-up, x `step_gamma` every `step_epochs` (timm's StepLRScheduler with warmup_prefix)."""
    return cfg.step_gamma ** ((t - span.warmup) // (cfg.step_epochs * span.unit))


def onecycle_factor(t: int, span: Span, cfg: SchedConfig) -> float:
    """Half a cosine from 1 / `onecycle_div` up to the peak over `onecycle_pct` of the run, then half a cosine
    down to that / `onecycle_final_div` at its last unit, held after it (torch's OneCycleLR without momentum
    cycling; no warm-up)."""
    total = max(span.total, 2)
    t = min(t, total - 1)
    start, low = 1.0 / cfg.onecycle_div, 1.0 / (cfg.onecycle_div * cfg.onecycle_final_div)
    rise_end = cfg.onecycle_pct * total - 1  # the unit of the peak (fractional, as torch places it)
    if t <= rise_end:
        begin, end, frm, to = 0.0, rise_end, start, 1.0
    else:
        begin, end, frm, to = rise_end, total - 1, 1.0, low
    pct = (t - begin) / (end - begin) if end > begin else 1.0  # a phase of no length is at its end
    return to + (frm - to) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def linear_factor(t: int, span: Span, cfg: SchedConfig) -> float:
    """From `warmup_start` up to the peak over the warm-up, then down to `min_lr_ratio` at the last unit (the
    airbench schedule: 0.23, 0.2, 0.07)."""
    return float(np.interp(t, [0.0, float(span.warmup), float(max(span.total, span.warmup + 1))],
                           [cfg.warmup_start, 1.0, cfg.min_lr_ratio]))


def constant_factor(t: int, span: Span, cfg: SchedConfig) -> float:
    """The peak throughout."""
    return 1.0


SCHEDULES = {"cosine": cosine_factor, "step": step_factor, "onecycle": onecycle_factor, "linear": linear_factor,
             "constant": constant_factor}  # name -> lr factor of the unit t
WARMUP_PREFIX = ("cosine", "step")  # schedules that start after a linear warm-up from `warmup_start`


def lr_factor(cfg: SchedConfig, steps_per_epoch: int, epochs: int, global_step: int) -> float:
    """The lr of optimizer step `global_step` (0-based) as a fraction of the peak: a function of the step alone."""
    t = global_step // steps_per_epoch if cfg.per_epoch else global_step
    span = Span.of(cfg, steps_per_epoch, epochs)
    if cfg.name in WARMUP_PREFIX and t < span.warmup:
        return cfg.warmup_start + t * (1.0 - cfg.warmup_start) / span.warmup
    return SCHEDULES[cfg.name](t, span, cfg)


class Schedule:
    """Sets the optimizer's lr for each global optimizer step: the peak x `lr_factor(step)` x each group's
    "lr_scale" (0 from its "stop_epoch" on, see `param_groups`; with `stop_decay` such a group's lr instead
    falls linearly from the peak to 0 at its stop epoch, whatever the schedule). It holds no state: a resume
    needs only the global step."""

    def __init__(self, optimizer, cfg: SchedConfig, peak_lr: float, steps_per_epoch: int, epochs: int):
        self.cfg, self.optimizer, self.peak_lr = cfg, optimizer, peak_lr
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.set(0)

    def lr_at(self, step: int) -> float:
        """The schedule's lr at optimizer step `step`, before any group's scale."""
        return self.peak_lr * lr_factor(self.cfg, self.steps_per_epoch, self.epochs, step)

    def set(self, step: int) -> float:
        """Give the optimizer's groups the lr of optimizer step `step` (0-based); return the schedule's lr."""
        lr = self.lr = self.lr_at(step)  # `lr`: the schedule's latest value (what the logs show)
        epoch = step // max(self.steps_per_epoch, 1)
        for g in self.optimizer.param_groups:
            stopped = "stop_epoch" in g and epoch >= g["stop_epoch"]
            own = lr
            if "stop_epoch" in g and self.cfg.stop_decay:  # its own line from the peak to 0 at its stop
                own = self.peak_lr * max(0.0, 1.0 - step / max(g["stop_epoch"] * self.steps_per_epoch, 1))
            g["lr"] = 0.0 if stopped else own * g.get("lr_scale", 1.0)
        return lr
