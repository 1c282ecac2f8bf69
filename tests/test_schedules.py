"""The schedules, point by point against the curves of the libraries they follow: timm's CosineLRScheduler and
StepLRScheduler, torch's OneCycleLR, each built here at the peak lr on a one-parameter optimizer and read at
every optimizer step of the run (and past its end)."""

from __future__ import annotations

import pytest
import torch

from cifar_dist.config import SchedConfig
from cifar_dist.optim import Schedule, lr_factor


def _driver(peak: float) -> torch.optim.Optimizer:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    opt.param_groups[0]["initial_lr"] = peak  # the schedulers read their base lr from it
    return opt


def _units(cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> tuple[int, int, int]:
    """(units per epoch, units of the run, warm-up units): the schedulers count epochs with per_epoch."""
    unit = 1 if cfg.per_epoch else steps_per_epoch
    total = epochs * unit
    warmup = int(round(cfg.warmup_frac * total if cfg.warmup_frac else cfg.warmup_epochs * unit))
    return unit, total, warmup


def library_lrs(cfg: SchedConfig, peak: float, steps_per_epoch: int, epochs: int, steps: int) -> list[float]:
    """The library scheduler's lr at optimizer steps 0..steps-1."""
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    unit, total, warmup = _units(cfg, steps_per_epoch, epochs)
    opt = _driver(peak)
    t_of = [s // steps_per_epoch if cfg.per_epoch else s for s in range(steps)]
    if cfg.name == "onecycle":  # stateful: one step() per unit, clamped at its last step
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=peak, total_steps=max(total, 2), pct_start=cfg.onecycle_pct, div_factor=cfg.onecycle_div,
            final_div_factor=cfg.onecycle_final_div, cycle_momentum=False)
        curve = [sched.get_last_lr()[0]]
        for _ in range(sched.total_steps - 1):
            sched.step()
            curve.append(sched.get_last_lr()[0])
        return [curve[min(t, len(curve) - 1)] for t in t_of]
    common = dict(warmup_t=warmup, warmup_lr_init=peak * cfg.warmup_start, warmup_prefix=True,
                  t_in_epochs=cfg.per_epoch)
    if cfg.name == "cosine":
        period = int(round(cfg.period_epochs * unit)) if cfg.period_epochs else max(total - warmup, 1)
        sched = CosineLRScheduler(opt, t_initial=period, lr_min=peak * cfg.min_lr_ratio, **common)
    else:
        sched = StepLRScheduler(opt, decay_t=cfg.step_epochs * unit, decay_rate=cfg.step_gamma, **common)
    lrs = []
    for t in t_of:
        sched.step(t) if cfg.per_epoch else sched.step_update(t)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


CASES = {  # (schedule, peak lr, loader steps per epoch, epochs)
    "cosine": (SchedConfig(name="cosine"), 0.4, 7, 5),
    "cosine-warmup-floor": (SchedConfig(name="cosine", warmup_epochs=1.5, warmup_start=0.1, min_lr_ratio=0.05), 1.0, 10, 6),
    "cosine-warmup-frac": (SchedConfig(name="cosine", warmup_frac=0.23, min_lr_ratio=0.2), 2.0, 9, 4),
    "cosine-short-period": (SchedConfig(name="cosine", warmup_epochs=1, period_epochs=2.5, min_lr_ratio=0.1), 0.3, 8, 6),
    "cosine-per-epoch": (SchedConfig(name="cosine", warmup_epochs=5, period_epochs=195, per_epoch=True), 0.05, 3, 200),
    "cosine-per-epoch-frac": (SchedConfig(name="cosine", warmup_frac=0.25, warmup_start=0.3, per_epoch=True,
                                          min_lr_ratio=0.01), 0.8, 4, 12),
    "step": (SchedConfig(name="step", step_epochs=2, step_gamma=0.5), 0.8, 10, 6),
    "step-warmup": (SchedConfig(name="step", step_epochs=3, step_gamma=0.2, warmup_epochs=0.5, warmup_start=0.25),
                    0.1, 12, 10),
    "step-per-epoch": (SchedConfig(name="step", step_epochs=2, step_gamma=0.1, warmup_epochs=1, per_epoch=True),
                       1.5, 5, 7),
    "onecycle": (SchedConfig(name="onecycle"), 0.4, 11, 5),
    "onecycle-quarter": (SchedConfig(name="onecycle", onecycle_pct=0.25, onecycle_div=10, onecycle_final_div=100),
                         1.0, 10, 4),
    "onecycle-per-epoch": (SchedConfig(name="onecycle", onecycle_pct=0.4, per_epoch=True), 0.2, 6, 9),
    "onecycle-two-steps": (SchedConfig(name="onecycle", onecycle_pct=0.3), 0.1, 1, 1),
}


@pytest.mark.parametrize("case", CASES)
def test_every_step_matches_the_library_curve(case):
    cfg, peak, steps_per_epoch, epochs = CASES[case]
    steps = steps_per_epoch * epochs + 2 * steps_per_epoch + 1  # past the end: the curve holds its last value
    want = library_lrs(cfg, peak, steps_per_epoch, epochs, steps)
    sched = Schedule(_driver(peak), cfg, peak, steps_per_epoch, epochs)
    got = [sched.lr_at(s) for s in range(steps)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert len(set(want)) >= 2  # the case really moves the lr
    # forward through the run as training sets it, one step after the other
    assert [sched.set(s) for s in range(steps)] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_a_schedule_is_a_function_of_the_step_alone():
    """Read in any order, from any fresh schedule: what a resume relies on, with nothing saved."""
    cfg, peak, steps_per_epoch, epochs = CASES["onecycle"]
    forward = Schedule(_driver(peak), cfg, peak, steps_per_epoch, epochs)
    lrs = [forward.set(s) for s in range(steps_per_epoch * epochs)]
    back_and_forth = Schedule(_driver(peak), cfg, peak, steps_per_epoch, epochs)
    for s in (40, 3, 54, 0, 17):
        assert Schedule(_driver(peak), cfg, peak, steps_per_epoch, epochs).set(s) == lrs[s]
        assert back_and_forth.set(s) == lrs[s] == peak * lr_factor(cfg, steps_per_epoch, epochs, s)


def test_a_rise_of_no_length_starts_at_the_peak():
    """onecycle_pct x steps = 1 puts the peak at step 0: torch's OneCycleLR divides 0 by 0 there; here the
    rise is over at once and the fall runs its full length."""
    cfg = SchedConfig(name="onecycle", onecycle_pct=0.1)
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.OneCycleLR(_driver(1.0), max_lr=1.0, total_steps=10, pct_start=0.1)
    assert lr_factor(cfg, 10, 1, 0) == 1.0
    assert lr_factor(cfg, 10, 1, 9) == pytest.approx(1 / (25 * 1e4))
