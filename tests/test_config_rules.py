"""The table of value rules (`cifar_dist.rules.RULES`), row by row: each row refuses the values no run can
use with one line naming the key, and accepts the values at its edges; every preset passes the table."""

from __future__ import annotations

import pytest

from cifar_dist.config import Config, ConfigError
from cifar_dist.presets import PRESETS, resolve
from cifar_dist.rules import RULES, validate

# key -> (values the row refuses, values at its edges it accepts)
ROWS: dict[str, tuple[list, list]] = {
    "data.name": (["", "a/b", "x" * 256], ["cifar10", "x" * 255]),
    "data.resolution": ([0], [1, 320]),
    "data.mean": ([[0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1.5]], [[0, 0, 0], [1, 1, 1]]),
    "data.std": ([[0.2, 0.2], [0.2, 0.0, 0.2], [0.2, 0.2, 2.0]], [[1, 1, 1], [0.01, 0.2, 0.3]]),
    "aug.cutout_prob": ([5, 1.01], [0, 1]),
    "aug.affine_prob": ([1.5], [0, 1]),
    "aug.color_prob": ([2], [0, 1]),
    "aug.hsv_prob": ([2], [0, 1]),
    "aug.dropout_prob": ([2], [0, 1]),
    "aug.hue": ([1.5], [0, 1]),
    "aug.dropout_holes": ([[0, 1], [3, 2], [1, 2, 3]], [[1, 1], [1, 4]]),
    "aug.dropout_size": ([[0, 8], [9, 8], [8]], [[8, 8], [2, 16]]),
    "optim.ref_batch_size": ([0], [1]),
    "optim.momentum": ([1, 1.5], [0, 0.99]),
    "optim.betas": ([[0.9], [0.9, 1.0], [0.9, 0.99, 0.9]], [[0, 0], [0.9, 0.999]]),
    "optim.eps": ([0], [1e-12]),
    "optim.bias_lr_scale": ([0], [0.5, 64]),
    "optim.head_lr_scale": ([0], [1 / 64, 2]),
    "optim.muon_lr": ([0], [0.24]),
    "optim.muon_momentum": ([1, 1.5], [0, 0.6]),
    "optim.muon_ns_steps": ([0], [1, 3]),
    "optim.ema_lookahead_decay": ([1.01], [0, 1]),
    "optim.lookahead_k": ([0], [1]),
    "optim.lookahead_alpha": ([1.5], [0, 1]),
    "optim.accum_steps": ([0], [1, 8]),
    "sched.warmup_frac": ([1, 2], [0, 0.99]),
    "sched.warmup_start": ([1.5], [0, 1]),
    "sched.min_lr_ratio": ([1.5], [0, 1]),
    "sched.step_epochs": ([0], [1]),
    "sched.step_gamma": ([0, 1.5], [1e-3, 1]),
    "sched.onecycle_pct": ([0, 1], [0.01, 0.99]),
    "sched.onecycle_div": ([0], [1e-3]),
    "sched.onecycle_final_div": ([0], [1e-3]),
    "loss.label_smoothing": ([1, 1.5], [0, 0.99]),
    "loss.mixup_prob": ([1.5], [0, 1]),
    "loss.cutmix_prob": ([1.5], [0, 1]),
    "loss.ricap_prob": ([1.5], [0, 1]),
    "loss.ricap_beta": ([0], [0.3]),
    "run.name": (["", ".", "..", "a/b", "r" * 256, "é" * 128], ["r" * 255, "seed-1_a.b"]),
    "run.out_dir": ([""], ["runs", "/abs/path"]),
    "run.epochs": ([0], [1]),
    "run.global_batch_size": ([0], [1]),
    "run.eval_batch_size": ([0], [1]),
    "run.seed": ([2**31, 99999999999], [0, 2**31 - 1]),
    "run.ema_decay": ([2, 1.0001], [0, 1]),
    "run.eval_every": ([0], [1]),
}


def test_every_rule_has_a_row_here():
    assert set(ROWS) == set(RULES)


@pytest.mark.parametrize("key, bad", [(k, v) for k, (bads, _) in ROWS.items() for v in bads])
def test_a_row_refuses_its_bad_values_in_one_line(key, bad):
    with pytest.raises(ConfigError) as e:
        resolve(None, None, {key: bad})
    line = e.value.one_line()
    assert line.startswith(f"--{key}: expected ") and "\n" not in line and len(line) < 240, line


@pytest.mark.parametrize("key, good", [(k, v) for k, (_, goods) in ROWS.items() for v in goods])
def test_a_row_accepts_the_values_at_its_edges(key, good):
    cfg = resolve(None, None, {key: good})
    section, _, name = key.partition(".")
    value = getattr(getattr(cfg, section), name)
    assert (list(value) if isinstance(value, tuple) else value) == good


@pytest.mark.parametrize("key", ["optim.lr", "optim.weight_decay", "aug.rotation", "sched.warmup_epochs",
                                 "loss.mixup_alpha", "run.early_stop_drop"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_every_number_is_finite(key, value):
    with pytest.raises(ConfigError, match=rf"^--{key}: expected a finite number"):
        resolve(None, None, {key: value})


def test_a_non_finite_list_element_is_refused():
    with pytest.raises(ConfigError, match=r"^--data.std: expected a finite number"):
        resolve(None, None, {"data.std": "[0.2, nan, 0.2]"})


def test_the_defaults_pass():
    assert validate(Config()) == Config()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_passes(preset):
    assert resolve(preset).preset == preset
