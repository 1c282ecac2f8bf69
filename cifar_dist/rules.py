"""What each config value means: the one table of value rules, checked on the resolved config.

`validate` runs in `cifar_dist.presets.resolve`, after every override, before any folder exists: every number
is finite, and each key of `RULES` passes its test (each row: key -> (test, what a value must be, as the error
line says it)). The types, the choices and the sign of each single value are checked earlier, as each override
is applied (`cifar_dist.overrides`).
"""

from __future__ import annotations

import math
from typing import Any

from cifar_dist.config import Config, ConfigError, flatten, to_dict


def _name_ok(v: Any) -> bool:
    """A path-safe single component: non-empty, not . or .., no / or NUL, at most 255 bytes."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\x00" not in v and len(v.encode()) <= 255


def _unit(v: Any) -> bool:
    return 0 <= v <= 1


def _pair(v: Any) -> bool:
    return len(v) == 2 and 1 <= v[0] <= v[1]


RULES: dict[str, tuple[Any, str]] = {
    "data.name": (_name_ok, "a file-name prefix (non-empty, no /, at most 255 bytes)"),
    "data.resolution": (lambda v: v >= 1, "an integer >= 1 (pixels)"),
    "data.mean": (lambda v: len(v) == 3 and all(_unit(x) for x in v), "3 values in [0, 1] (one per RGB channel)"),
    "data.std": (lambda v: len(v) == 3 and all(0 < x <= 1 for x in v), "3 values in (0, 1] (one per RGB channel)"),
    "aug.cutout_prob": (_unit, "a probability in [0, 1]"),
    "aug.affine_prob": (_unit, "a probability in [0, 1]"),
    "aug.color_prob": (_unit, "a probability in [0, 1]"),
    "aug.hsv_prob": (_unit, "a probability in [0, 1]"),
    "aug.dropout_prob": (_unit, "a probability in [0, 1]"),
    "aug.hue": (_unit, "a fraction of the colour wheel in [0, 1]"),
    "aug.dropout_holes": (_pair, "[min, max] with 1 <= min <= max"),
    "aug.dropout_size": (_pair, "[min, max] pixels with 1 <= min <= max"),
    "optim.ref_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "optim.momentum": (lambda v: v < 1, "a momentum in [0, 1)"),
    "optim.betas": (lambda v: len(v) == 2 and all(x < 1 for x in v), "two betas in [0, 1)"),
    "optim.eps": (lambda v: v > 0, "a number > 0"),
    "optim.bias_lr_scale": (lambda v: v > 0, "a number > 0"),
    "optim.ema_lookahead_decay": (_unit, "a decay in [0, 1]"),
    "optim.lookahead_k": (lambda v: v >= 1, "an integer >= 1"),
    "optim.lookahead_alpha": (_unit, "a step size in [0, 1]"),
    "optim.accum_steps": (lambda v: v >= 1, "an integer >= 1 (micro-batches per step)"),
    "optim.head_lr_scale": (lambda v: v > 0, "a number > 0"),
    "optim.muon_lr": (lambda v: v > 0, "a number > 0"),
    "optim.muon_momentum": (lambda v: v < 1, "a momentum in [0, 1)"),
    "optim.muon_ns_steps": (lambda v: v >= 1, "an integer >= 1 (Newton-Schulz iterations)"),
    "sched.warmup_frac": (lambda v: v < 1, "a fraction of the run in [0, 1)"),
    "sched.warmup_start": (_unit, "an lr factor in [0, 1]"),
    "sched.min_lr_ratio": (_unit, "a fraction of the peak lr in [0, 1]"),
    "sched.step_epochs": (lambda v: v >= 1, "an integer >= 1"),
    "sched.step_gamma": (lambda v: 0 < v <= 1, "a decay factor in (0, 1]"),
    "sched.onecycle_pct": (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    "sched.onecycle_div": (lambda v: v > 0, "a number > 0"),
    "sched.onecycle_final_div": (lambda v: v > 0, "a number > 0"),
    "loss.label_smoothing": (lambda v: v < 1, "a smoothing epsilon in [0, 1)"),
    "loss.mixup_prob": (_unit, "a probability in [0, 1]"),
    "loss.cutmix_prob": (_unit, "a probability in [0, 1]"),
    "loss.ricap_prob": (_unit, "a probability in [0, 1]"),
    "loss.ricap_beta": (lambda v: v > 0, "a number > 0"),
    "run.name": (_name_ok, "a run directory name (non-empty, not . or .., no /, at most 255 bytes)"),
    "run.out_dir": (lambda v: v != "", "a folder (non-empty)"),
    "run.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "run.global_batch_size": (lambda v: v >= 1, "an integer >= 1 (images per optimizer step)"),
    "run.eval_batch_size": (lambda v: v >= 1, "an integer >= 1 (images per batch)"),
    "run.seed": (lambda v: v < 2**31, "an integer in [0, 2**31)"),
    "run.ema_decay": (_unit, "a decay in [0, 1]"),
    "run.eval_every": (lambda v: v >= 1, "an integer >= 1 (epochs)"),
}


def validate(cfg: Config) -> Config:
    """`cfg` when every value means something a run can use; else ConfigError naming the first bad key."""
    flat = flatten(to_dict(cfg))
    for key, value in flat.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"--{key}: expected a finite number, found {value!r}")
    for key, (ok, expected) in RULES.items():
        if not ok(flat[key]):
            found = repr(flat[key])
            raise ConfigError(f"--{key}: expected {expected}, found {found[:60]}{'...' if len(found) > 60 else ''}")
    return cfg
