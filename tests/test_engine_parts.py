"""Small pure parts of the engine: config precedence and errors, schedules, mixing, TTA, early stopping."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from cifar_dist.augment import BatchMixer, coarse_dropout, ricap, smooth_one_hot, tta_views, tta_weights
from cifar_dist.config import (
    Config,
    ConfigError,
    LossConfig,
    OptimConfig,
    SchedConfig,
)
from cifar_dist.engine import should_stop_early
from cifar_dist.models import check_options
from cifar_dist.optim import Schedule, build_optimizer, param_groups, scaled_lr
from cifar_dist.overrides import apply_overrides
from cifar_dist.presets import resolve


# ---------------------------------------------------------------- config
def test_precedence_defaults_preset_file_flags(tmp_path):
    assert Config().optim.lr == 0.1
    assert resolve("seed002_tpsnet").optim.lr == 0.01
    f = tmp_path / "run.yaml"
    f.write_text("optim:\n  lr: 0.02\n  momentum: 0.8\nrun:\n  epochs: 7\n")
    cfg = resolve("seed002_tpsnet", str(f))
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.run.epochs, cfg.model.options["blocks"]) == (0.02, 0.8, 7, (13, 13, 13))
    cfg = resolve("seed002_tpsnet", str(f), {"optim.lr": 0.3})
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.3, 0.8)
    f.write_text("preset: seed003_simple_cnn\nrun:\n  epochs: 2\n")
    cfg = resolve(None, str(f))
    assert cfg.model.name == "simple_cnn" and cfg.run.epochs == 2 and cfg.preset == "seed003_simple_cnn"


def test_types_are_checked_and_coerced():
    cfg = apply_overrides(Config(), {"model.name": "resnet18_cifar", "model.blocks": "1,2,3", "run.ema": "true",
                                     "run.epochs": 3.0, "optim.lr": "1e-3", "model.pool_size": "none"})
    model = check_options(cfg.model)  # model options are checked against the model's builder
    assert model.options["blocks"] == (1, 2, 3) and cfg.run.ema is True and cfg.run.epochs == 3
    assert cfg.optim.lr == 1e-3 and model.options["pool_size"] is None
    with pytest.raises(dataclasses_frozen_error()):
        cfg.optim.lr = 3  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("over, msg", [
    ({"optim.lr": "fast"}, "--optim.lr: expected a number, found 'fast'"),
    ({"run.epochs": 2.5}, "--run.epochs: expected an integer, found 2.5"),
    ({"run.ema": "maybe"}, "--run.ema: expected true or false, found 'maybe'"),
    ({"optim.nme": "sgd"}, "--optim.nme: unknown key; optim has name, lr"),
    ({"opt.lr": 1}, "--opt.lr: unknown section 'opt'"),
    ({"lr": 1}, "--lr: unknown option"),
    ({"sched.name": "poly"}, "--sched.name: expected one of cosine, onecycle, step, constant, linear, found 'poly'"),
    ({"optim.lr": -1}, "--optim.lr: expected a value >= 0, found -1.0"),
])
def test_bad_values_raise_one_line(over, msg):
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), over)
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        resolve(None, str(tmp_path / "none.yaml"))
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        resolve(None, str(tmp_path / "l.yaml"))


# ---------------------------------------------------------------- optimizers and schedules
def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_with_warmup_and_floor_per_iteration():
    opt = _opt()
    s = Schedule(opt, SchedConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1), 1.0, steps_per_epoch=10, epochs=5)
    assert s.lr_at(0) == pytest.approx(0.0)
    assert s.lr_at(5) == pytest.approx(0.5)
    assert s.lr_at(10) == pytest.approx(1.0)  # warm-up over, cosine starts at the peak
    # halfway through the 40 cosine steps: floor + (peak - floor) / 2
    assert s.lr_at(30) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s.lr_at(50) == pytest.approx(0.1, abs=1e-6)
    assert s.set(30) == opt.param_groups[0]["lr"]


def test_seed004_schedule_per_epoch_reading():
    # 5 warm-up epochs then a cosine over 195 epochs, stepped per epoch (the seed's LambdaLR).
    s = Schedule(_opt(), SchedConfig(name="cosine", warmup_epochs=5, period_epochs=195, per_epoch=True), 0.05, 391, 200)
    assert [round(s.lr_at(e * 391), 6) for e in range(7)] == [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, round(
        0.05 * 0.5 * (1 + math.cos(math.pi / 195)), 6)]
    assert s.lr_at(391 * 5 + 390) == s.lr_at(391 * 5)  # constant within an epoch


def test_step_onecycle_constant():
    s = Schedule(_opt(), SchedConfig(name="step", step_epochs=2, step_gamma=0.5), 0.8, 10, 6)
    assert [s.lr_at(e * 10) for e in range(6)] == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.2])
    oc = Schedule(_opt(), SchedConfig(name="onecycle", onecycle_pct=0.25, onecycle_div=10, onecycle_final_div=100), 1.0,
                  10, 4)
    assert oc.lr_at(0) == pytest.approx(0.1)
    assert oc.lr_at(9) == pytest.approx(1.0, abs=1e-6)  # peak at 25 % of 40 steps (step 9, 0-based)
    assert oc.lr_at(39) == pytest.approx(0.1 / 100, rel=1e-3)
    assert Schedule(_opt(), SchedConfig(name="constant"), 0.3, 10, 2).lr_at(17) == 0.3


def test_a_schedule_needs_no_saved_state_and_accelerate_would_refuse_a_stale_one(tmp_path):
    """Resume sets the lr from the global step alone, so nothing of the schedule is registered with
    accelerate. That matters: accelerate's load_state wants exactly one custom_checkpoint_<i>.pkl per
    registered object and refuses a folder saved with one more (what dropping a registration would do to a
    checkpoint of accelerate's format); the trainer's own checkpoints are read by file name instead."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    cfg = SchedConfig(name="onecycle", onecycle_pct=0.3)
    run = Schedule(_opt(), cfg, 0.4, 5, 4)
    reference = [run.set(step) for step in range(20)]
    resumed = Schedule(_opt(), cfg, 0.4, 5, 4)
    assert [resumed.set(step) for step in range(7, 20)] == reference[7:]  # exactly, not approximately
    assert resumed.set(3) == reference[3] and not hasattr(resumed, "state_dict")

    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    try:
        acc = Accelerator(cpu=True)
        acc.register_for_checkpointing(Counter())
        acc.save_state(str(tmp_path / "ckpt"))
        assert (tmp_path / "ckpt" / "custom_checkpoint_0.pkl").is_file()
        AcceleratorState._reset_state(True)
        acc = Accelerator(cpu=True)  # registers nothing
        with pytest.raises(RuntimeError, match="does not match the number of registered objects"):
            acc.load_state(str(tmp_path / "ckpt"))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_lr_scaling_rules():
    assert scaled_lr(OptimConfig(lr=0.1, lr_scaling="linear", ref_batch_size=128), 512) == pytest.approx(0.4)
    assert scaled_lr(OptimConfig(lr=0.1, lr_scaling="sqrt", ref_batch_size=128), 512) == pytest.approx(0.2)
    assert scaled_lr(OptimConfig(lr=0.1), 512) == 0.1


def test_optimizers_lookahead_and_norm_bias_exemption():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    groups = param_groups(model, OptimConfig(wd_exempt_norm_bias=True), 5e-4)
    assert [len(g["params"]) for g in groups] == [1, 3] and groups[1]["weight_decay"] == 0.0
    from timm.optim import Lookahead

    opt = build_optimizer(model, OptimConfig(name="adam", lookahead=True, lookahead_k=5, lookahead_alpha=0.5), 1e-2)
    assert isinstance(opt, Lookahead) and isinstance(opt._base_optimizer, torch.optim.Adam)
    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("adamax", torch.optim.Adamax)):
        assert isinstance(build_optimizer(model, OptimConfig(name=name), 0.1), cls)


# ---------------------------------------------------------------- mixing, TTA, early stopping
def test_ricap_targets_are_area_weights_summing_to_one():
    torch.manual_seed(0)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 32, 32).contiguous()
    y = torch.arange(8)
    out, target = ricap(x, y, beta=0.3, num_classes=10, smoothing=0.0)
    assert out.shape == x.shape
    assert torch.allclose(target.sum(1), torch.ones(8))
    # each image's target weight on a class equals the fraction of its pixels that came from that class
    for i in range(8):
        for c in range(8):
            assert target[i, c].item() == pytest.approx((out[i, 0] == c).float().mean().item(), abs=1e-6)


def test_smooth_one_hot_and_mixer_routing():
    t = smooth_one_hot(torch.tensor([2]), 10, 0.1)
    assert t[0, 2].item() == pytest.approx(0.91) and t[0, 0].item() == pytest.approx(0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    off = BatchMixer(LossConfig(), 10)
    assert not off.active
    _, tgt = off(x, y)
    assert torch.equal(tgt.argmax(1), y)
    # ricap only, with probability 1: every batch is mixed from 4 sources
    only_ricap = BatchMixer(LossConfig(ricap_prob=1.0), 10)
    torch.manual_seed(1)
    _, tgt = only_ricap(x, y)
    assert (tgt > 0).sum(1).min() >= 1 and torch.allclose(tgt.sum(1), torch.ones(4))
    with pytest.raises(ConfigError, match="expected a sum <= 1"):
        BatchMixer(LossConfig(ricap_prob=0.5, mixup_prob=0.4, mixup_alpha=1, cutmix_prob=0.3, cutmix_alpha=1), 10)
    with pytest.raises(ConfigError, match="cutmix_alpha: expected > 0"):
        BatchMixer(LossConfig(cutmix_prob=0.3), 10)


def test_mixer_draw_frequencies_follow_the_probabilities():
    m = BatchMixer(LossConfig(ricap_prob=0.2, mixup_prob=0.3, mixup_alpha=1.0, cutmix_prob=0.3, cutmix_alpha=1.0), 10)
    torch.manual_seed(0)
    import numpy as np

    np.random.seed(0)
    x = torch.zeros(2, 3, 32, 32)
    x[1] = 1.0
    y = torch.tensor([0, 1])
    clean = 0
    for _ in range(1000):
        _, t = m(x, y)
        clean += int(torch.equal(t, smooth_one_hot(y, 10, 0.0)))
    assert 150 < clean < 250  # 20 % clean batches


def test_coarse_dropout_holes():
    torch.manual_seed(0)
    x = torch.ones(100, 3, 32, 32)
    out = coarse_dropout(x, prob=1.0, holes=(1, 1), size=(8, 8))
    assert ((out[:, 0] == 0).sum(dim=(1, 2)) == 64).all()
    assert torch.equal(coarse_dropout(x, prob=0.0, holes=(1, 2), size=(3, 6)), x)


def test_tta_views():
    x = torch.randn(2, 3, 8, 8)
    assert len(tta_views(x, "none")) == 1
    v = tta_views(x, "flip")
    assert len(v) == 2 and torch.equal(v[1], x.flip(3))
    v = tta_views(x, "flip_translate")
    assert len(v) == 10 and all(t.shape == x.shape for t in v)
    assert torch.equal(v[2][..., 1:, :], x[..., :-1, :]) and (v[2][..., 0, :] == 0).all()  # down one pixel
    assert torch.equal(v[4][..., :, 1:], x[..., :, :-1]) and (v[4][..., :, 0] == 0).all()  # right one pixel
    assert torch.equal(v[9][..., :, :-1], x.flip(3)[..., :, 1:])  # flipped, then left one pixel
    v = tta_views(x, "flip_diag")
    assert len(v) == 6 and sum(tta_weights("flip_diag", 6)) == pytest.approx(1.0)
    assert torch.equal(v[2][..., 1:, 1:], x[..., :-1, :-1])  # down-right one pixel: x moves, edges reflected
    assert torch.equal(v[2][..., 0, 1:], x[..., 1, :-1]) and torch.equal(v[3], v[2].flip(3))
    assert torch.equal(v[4][..., :-1, :-1], x[..., 1:, 1:]) and torch.equal(v[4][..., -1, :-1], x[..., -2, 1:])


def test_flip_diag_tta_averages_weighted_logits():
    """flip_diag's prediction is the softmax of 0.25 (f(x) + f(flip x)) + 0.125 (the four shifted views)."""
    from types import SimpleNamespace

    from cifar_dist.data import TensorLoader
    from cifar_dist.engine.evaluate import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    acc = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext, reduce=lambda t, reduction: t)
    got = evaluate(model, TensorLoader(x, y, batch_size=16), lambda t: t, acc, 4, "flip_diag")
    views = tta_views(x, "flip_diag")
    logits = sum(w * model(v) for v, w in zip(views, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]))
    want = F.cross_entropy(logits, y).item()
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    assert got["acc"] == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())


def test_early_stopping_rules():
    assert not should_stop_early([50, 60, 70], patience=2, window=0, drop=0, start=0)
    assert should_stop_early([50, 70, 69, 68], patience=2, window=0, drop=0, start=0)
    # seed 004 rule: current more than 2 points below the best of the last 3, from evaluation 4 on
    assert not should_stop_early([80, 85, 82], patience=0, window=3, drop=2.0, start=4)
    assert should_stop_early([80, 85, 84, 82.9], patience=0, window=3, drop=2.0, start=4)
    assert not should_stop_early([80, 85, 84, 83.5], patience=0, window=3, drop=2.0, start=4)


def test_gradient_accumulation_equals_the_large_batch():
    """accum_steps=2 with half batches gives the weights of one step over the whole batch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from cifar_dist.augment import TrainTransform
    from cifar_dist.config import AugConfig
    from cifar_dist.data import Normalize, Order, TensorLoader
    from cifar_dist.engine import StepParts, TrainState, train_one_epoch

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (80, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (80,), generator=g)
    results = []
    for accum, batch in ((1, 20), (2, 10)):
        acc = Accelerator(cpu=True, gradient_accumulation_steps=accum)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model, opt = acc.prepare(model, opt)
        loader = TensorLoader(images, labels, batch_size=batch, order=Order(train=True, seed=0))
        sched = Schedule(opt, SchedConfig(name="constant"), 0.1, len(loader) // accum, 1)
        state = TrainState()
        transform = TrainTransform(AugConfig(), Normalize((0.5,) * 3, (0.25,) * 3, resolution=8))
        parts = StepParts(acc, model, opt, sched, transform, BatchMixer(LossConfig(), 10), torch.nn.CrossEntropyLoss(),
                          ema=None, grad_clip=0.0)
        train_one_epoch(parts, loader, state, torch.zeros(3, dtype=torch.float64), lambda s, loss: None)
        results.append((acc.unwrap_model(model)[1].weight.detach().clone(), state.global_step))
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    (w1, steps1), (w2, steps2) = results
    assert steps1 == steps2 == 4
    assert torch.allclose(w1, w2, atol=1e-6)
    assert not torch.allclose(w1, torch.zeros_like(w1))


def test_hsv_round_trip_and_shifts():
    from cifar_dist.augment import brightness_contrast, hsv_jitter, hsv_to_rgb, rgb_to_hsv

    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    # pure red -> hue 0, saturation 1, value 1; a hue shift of 1/3 of the wheel turns it green
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    assert torch.allclose(rgb_to_hsv(red)[:, :, 0, 0], torch.tensor([[0.0, 1.0, 1.0]]))
    green = hsv_to_rgb(torch.stack([torch.full((1, 2, 2), 1 / 3), torch.ones(1, 2, 2), torch.ones(1, 2, 2)], 1))
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    img = x * 255
    assert torch.allclose(hsv_jitter(img, 0.0, 0.5, 0.5, 0.5), img, atol=1e-3)  # prob 0: unchanged
    assert torch.equal(brightness_contrast(img, 0.0, 0.2, 0.2), img)
    shifted = brightness_contrast(torch.full((200, 3, 1, 1), 100.0), 1.0, 0.2, 0.0)
    assert shifted.min() >= 100 - 51 - 1e-4 and shifted.max() <= 100 + 51 + 1e-4 and shifted.std() > 10


def test_timm_models_take_the_dropout_option():
    from cifar_dist.models import create_model

    m = create_model("timm:resnet18", num_classes=10, dropout=0.3, cifar_stem=True)
    assert m.drop_rate == 0.3


def test_gloo_sync_batchnorm_matches_batchnorm_on_one_rank_without_warnings(tmp_path):
    """The CPU sync BatchNorm in a real 1-process gloo group: the same output, input gradient and running
    stats as plain BatchNorm2d, and no warning at all (torch's deprecated distributed.nn all_reduce warned
    FutureWarning twice per forward)."""
    import warnings

    import torch.distributed as dist

    from cifar_dist.engine.devices import GlooSyncBatchNorm, convert_sync_bn

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = torch.nn.BatchNorm2d(3)
        synced = convert_sync_bn(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))[0]
        assert isinstance(synced, GlooSyncBatchNorm)
        x = torch.randn(4, 3, 5, 5) * 3 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = plain(xa)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yb = synced(xb)
            (yb * torch.arange(yb.numel()).view_as(yb)).sum().backward()
        (ya * torch.arange(ya.numel()).view_as(ya)).sum().backward()
        torch.testing.assert_close(yb, ya)
        torch.testing.assert_close(xb.grad, xa.grad)
        torch.testing.assert_close(synced.running_var, plain.running_var)
        torch.testing.assert_close(synced.running_mean, plain.running_mean)
        with pytest.raises(ValueError) as theirs:
            plain(torch.randn(3, 5, 5))
        with pytest.raises(ValueError) as ours:  # a wrong rank: torch's own error, word for word
            synced(torch.randn(3, 5, 5))
        assert str(ours.value) == str(theirs.value) == "expected 4D input (got 3D input)"
    finally:
        dist.destroy_process_group()


def test_resume_at_the_next_asha_rung_is_not_reported_as_a_config_change(tmp_path):
    """A search resumes each trial with the next rung's --run.stop_after: nothing to report. Another key that
    may change (run.epochs) is still reported, with the stop_after change left out of the line."""
    import yaml

    from cifar_dist.engine.rundir import check_resume_config

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"run": {"epochs": 4, "stop_after": 1, "seed": 0}}))
    said: list[str] = []
    check_resume_config(tmp_path, yaml.safe_dump({"run": {"epochs": 4, "stop_after": 2, "seed": 0}}), False,
                        said.append)
    assert said == []
    check_resume_config(tmp_path, yaml.safe_dump({"run": {"epochs": 6, "stop_after": 2, "seed": 0}}), False,
                        said.append)
    assert said == ["resume: config changed: run.epochs 4 -> 6"]
