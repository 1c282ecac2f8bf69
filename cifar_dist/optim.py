"""Optimizers (torch, optionally inside timm's Lookahead) and per-iteration learning-rate schedules."""

from __future__ import annotations

import warnings

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


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm))


def _head_params(model: torch.nn.Module) -> set[int]:
    """ids of the classifier head's parameters: those of the model's last Linear layer."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return {id(p) for p in linears[-1].parameters()} if linears else set()


def is_filter(p: torch.Tensor) -> bool:
    """A convolution filter bank (out, in, *kernel): what `--optim.name=muon` trains with Muon."""
    return p.ndim >= 3


def param_groups(model: torch.nn.Module, weight_decay: float, exempt_norm_bias: bool, bias_lr_scale: float = 1.0,
                 frozen_after: dict[str, int] | None = None, head_lr_scale: float = 1.0,
                 split_filters: bool = False) -> list[dict]:
    """Parameter groups: decayed weights; with `exempt_norm_bias` all 1-D parameters without decay; with
    `bias_lr_scale` != 1 the norm layers' biases at lr x scale and weight decay / scale (the same with
    `head_lr_scale` for the last Linear layer); parameters named in `frozen_after` ({name: epoch}) in groups
    of their own that stop training at that epoch; with `split_filters` the conv filters in groups of their
    own marked "filters" (see `is_filter`).

    Every group carries "lr_scale" (its lr relative to the schedule's) and maybe "stop_epoch"; the
    schedule applies both.
    """
    frozen_after = frozen_after or {}
    norm_bias = {id(m.bias) for m in model.modules() if _is_norm(m) and getattr(m, "bias", None) is not None}
    head = _head_params(model) if head_lr_scale != 1.0 else set()
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd, scale = weight_decay, 1.0
        if exempt_norm_bias and p.ndim <= 1:
            wd = 0.0
        if id(p) in norm_bias and bias_lr_scale != 1.0:
            wd, scale = wd / bias_lr_scale, bias_lr_scale
        if id(p) in head:
            wd, scale = wd / head_lr_scale, head_lr_scale
        key = (wd, scale, frozen_after.get(name), split_filters and is_filter(p))
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
    betas = tuple(cfg.betas)
    if len(betas) != 2:
        raise ConfigError(f"--optim.betas: expected two numbers, found {list(betas)}")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=cfg.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps)
    return torch.optim.Adamax(groups, lr=lr, betas=betas, eps=cfg.eps)


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
    """The optimizer of `cfg` at peak lr `lr`; a model's `frozen_after()` ({name: epoch}) is honoured."""
    # Decoupled: each step shrinks the weights by weight_decay x B / kilostep (x the schedule's factor),
    # whatever the lr; SGD applies lr x weight_decay, and lr = cfg.lr x B / kilostep, so the ratio is it.
    if cfg.decoupled and cfg.lr <= 0:
        raise ConfigError(f"--optim.lr: expected a positive lr with --optim.decoupled=true, found {cfg.lr}")
    wd = cfg.weight_decay / cfg.lr if cfg.decoupled else cfg.weight_decay
    frozen = model.frozen_after() if callable(getattr(model, "frozen_after", None)) else {}
    groups = param_groups(model, wd, cfg.wd_exempt_norm_bias, cfg.bias_lr_scale, frozen, cfg.head_lr_scale,
                          split_filters=cfg.name == "muon")
    if cfg.name == "muon":
        return _muon(groups, cfg, lr)
    opt = _torch_optimizer(cfg.name, groups, lr, cfg)
    if cfg.lookahead:
        from timm.optim import Lookahead

        opt = Lookahead(opt, alpha=cfg.lookahead_alpha, k=cfg.lookahead_k)
    return opt


class Schedule:
    """Sets the optimizer's lr for each global optimizer step, through the schedulers' public APIs.

    The schedulers drive one internal single-group optimizer at the peak lr; `set(step)` reads its lr
    and gives every real group that lr times the group's "lr_scale" (0 from its "stop_epoch" on, see
    `param_groups`; with `stop_decay` such a group's lr instead falls linearly from the peak to 0 at its
    stop epoch, whatever the schedule). cosine and step are timm's (`CosineLRScheduler`,
    `StepLRScheduler`, in updates via `step_update` or, with `per_epoch`, in epochs via `step`): functions
    of the step. onecycle is torch's
    stateful `OneCycleLR`, advanced one `step()` per optimizer step; its state is in `state_dict()`, so
    register the schedule for checkpointing (`accelerator.register_for_checkpointing(schedule)`) and a
    resume continues it exactly. linear warms up from `warmup_start` x peak to the peak over
    `warmup_frac` of the run (or `warmup_epochs`), then falls linearly to `min_lr_ratio` x peak at the
    last step (the airbench schedule: 0.23, 0.2, 0.07). constant is the peak lr.
    """

    def __init__(self, optimizer, cfg: SchedConfig, peak_lr: float, steps_per_epoch: int, epochs: int):
        from timm.scheduler import CosineLRScheduler, StepLRScheduler

        self.cfg, self.optimizer, self.peak_lr = cfg, optimizer, peak_lr
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.driver = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak_lr)
        self.driver.param_groups[0]["initial_lr"] = peak_lr  # the schedulers read their peak from it
        unit = 1 if cfg.per_epoch else steps_per_epoch  # schedule units per epoch
        total = epochs * unit
        warmup = int(round(cfg.warmup_frac * total if cfg.warmup_frac else cfg.warmup_epochs * unit))
        self.torch_sched = None
        self.timm_sched = None
        self.linear = None
        if cfg.name == "cosine":
            period = int(round(cfg.period_epochs * unit)) if cfg.period_epochs else max(total - warmup, 1)
            self.timm_sched = CosineLRScheduler(
                self.driver, t_initial=period, lr_min=peak_lr * cfg.min_lr_ratio, warmup_t=warmup,
                warmup_lr_init=peak_lr * cfg.warmup_start, warmup_prefix=True, t_in_epochs=cfg.per_epoch,
            )
        elif cfg.name == "step":
            self.timm_sched = StepLRScheduler(
                self.driver, decay_t=cfg.step_epochs * unit, decay_rate=cfg.step_gamma, warmup_t=warmup,
                warmup_lr_init=peak_lr * cfg.warmup_start, warmup_prefix=True, t_in_epochs=cfg.per_epoch,
            )
        elif cfg.name == "onecycle":
            self.torch_sched = torch.optim.lr_scheduler.OneCycleLR(
                self.driver, max_lr=peak_lr, total_steps=max(total, 2), pct_start=cfg.onecycle_pct,
                div_factor=cfg.onecycle_div, final_div_factor=cfg.onecycle_final_div, cycle_momentum=False,
            )
        elif cfg.name == "linear":
            self.linear = ([0.0, float(warmup), float(max(total, warmup + 1))],
                           [cfg.warmup_start, 1.0, cfg.min_lr_ratio])
        self.set(0)

    def _base_lr(self, step: int) -> float:
        """The schedule's lr at optimizer step `step` before any group's scale; moves the scheduler."""
        t = step // self.steps_per_epoch if self.cfg.per_epoch else step
        if self.timm_sched is not None and self.cfg.per_epoch:
            self.timm_sched.step(t)
        elif self.timm_sched is not None:
            self.timm_sched.step_update(t)
        elif self.torch_sched is not None:
            target = min(t, self.torch_sched.total_steps - 1)
            if target < self.torch_sched.last_epoch:
                raise ValueError(f"onecycle schedule is at step {self.torch_sched.last_epoch}, cannot go back "
                                 f"to {step}")
            with warnings.catch_warnings():  # replaying after a resume precedes this process's first step
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")
                while self.torch_sched.last_epoch < target:
                    self.torch_sched.step()
            return float(self.torch_sched.get_last_lr()[0])  # restored with its state after a resume
        elif self.linear is not None:
            return self.peak_lr * float(np.interp(t, *self.linear))
        else:
            return self.peak_lr
        return float(self.driver.param_groups[0]["lr"])

    def set(self, step: int) -> float:
        """Give the optimizer's groups the lr of optimizer step `step` (0-based); return the schedule's lr.

        onecycle only moves forward: it is stepped up to `step` (clamped to its last step), so a resume
        without its saved state replays the steps, which gives the same lr (OneCycleLR is closed form).
        """
        lr = self.lr = self._base_lr(step)  # `lr`: the schedule's latest value (what the logs show)
        epoch = step // max(self.steps_per_epoch, 1)
        for g in self.optimizer.param_groups:
            stopped = "stop_epoch" in g and epoch >= g["stop_epoch"]
            own = lr
            if "stop_epoch" in g and self.cfg.stop_decay:  # its own line from the peak to 0 at its stop
                own = self.peak_lr * max(0.0, 1.0 - step / max(g["stop_epoch"] * self.steps_per_epoch, 1))
            g["lr"] = 0.0 if stopped else own * g.get("lr_scale", 1.0)
        return lr

    def lr_at(self, step: int) -> float:
        """The lr at optimizer step `step`, read from a fresh copy of this schedule (this one is left alone)."""
        dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=self.peak_lr)
        return Schedule(dummy, self.cfg, self.peak_lr, self.steps_per_epoch, self.epochs).set(step)

    def state_dict(self) -> dict:
        """The onecycle scheduler's state (the other schedules are functions of the step: nothing to save)."""
        return {"onecycle": self.torch_sched.state_dict()} if self.torch_sched is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output; ValueError (before anything changes) for a state of other keys or
        types, which torch's scheduler would take as it is and fail on later."""
        if self.torch_sched is None:
            return
        mine = self.torch_sched.state_dict()
        theirs = state.get("onecycle") if isinstance(state, dict) else None
        # a key may be missing (another torch version): the fresh scheduler's value stays
        if not isinstance(theirs, dict) or not theirs or set(theirs) - set(mine):
            raise ValueError(f"expected the onecycle scheduler's state (keys {', '.join(sorted(mine))}), found "
                             f"{sorted(theirs) if isinstance(theirs, dict) else type(theirs).__name__}")
        bad = [k for k in theirs if mine[k] is not None and type(theirs[k]) is not type(mine[k])]
        if bad:
            raise ValueError(f"{bad[0]}: expected a {type(mine[bad[0]]).__name__}, found {theirs[bad[0]]!r:.40}")
        self.torch_sched.load_state_dict(theirs)
