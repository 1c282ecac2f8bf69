"""The airbench-recipe parts as units: patch whitening, Dirac init, lookahead-EMA, alternating flip, reflect crop."""

import pytest
import torch

from cifar_dist.augment import crop_flip
from cifar_dist.config import AugConfig
from cifar_dist.data import Order, TensorLoader
from cifar_dist.lookahead import LookaheadEMA
from cifar_dist.models import count_params, create_model
from cifar_dist.models.airbench import patch_whitening
from cifar_dist.models.layers import dirac_init_


def correlated_images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g) * torch.tensor([1.0, 0.5, 2.0]).view(1, 3, 1, 1)
    x[:, 1] += 0.8 * x[:, 0]
    return x + 0.3 * torch.roll(x, 1, dims=3)  # neighbouring pixels correlate too


def test_whitening_filters_whiten_the_training_patches():
    x = correlated_images()
    w = patch_whitening(x, patch=2, eps=1e-9)
    assert w.shape == (24, 3, 2, 2) and torch.allclose(w[12:], -w[:12])
    out = torch.nn.functional.conv2d(x.double(), w[:12].double())
    f = out.permute(0, 2, 3, 1).reshape(-1, 12)
    second_moment = f.T @ f / len(f)
    assert torch.allclose(second_moment, torch.eye(12, dtype=torch.float64), atol=1e-4)
    before = torch.nn.functional.unfold(x.double(), 2).transpose(1, 2).reshape(-1, 12)
    assert (before.T @ before / len(before) - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5


def test_airbench_whitening_stem_is_frozen_and_set_from_data():
    m = create_model("airbench", whiten=3)
    assert not m.stem[0].weight.requires_grad and m.stem[0].bias.requires_grad
    assert count_params(m) == 1_971_352  # 2x2 stem: 24 trainable biases instead of conv 3x3 + BN
    x = correlated_images()
    m.init_from_data(x)
    assert torch.allclose(m.stem[0].weight, patch_whitening(x))
    assert m.frozen_after() == {"stem.0.bias": 3}
    assert create_model("airbench").frozen_after() == {}


def test_dirac_init_is_identity_on_the_first_channels():
    m = create_model("airbench")
    assert dirac_init_(m) == 7  # stem conv (3 -> 24) and both convs of the three blocks
    for conv in (m.stem[0], m.blocks[0].conv1, m.blocks[1].conv2):
        x = torch.randn(2, conv.in_channels, 8, 8)
        y = conv(x)
        assert torch.allclose(y[:, : conv.in_channels], x, atol=1e-6)
        if conv.out_channels > conv.in_channels:  # the other filters keep their random init
            assert y[:, conv.in_channels:].abs().mean() > 1e-2


def test_lookahead_ema_update_rule_and_final_sync():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    la = LookaheadEMA(lin, total_steps=10, every=5, base=0.5)
    assert la.decay(5) == 0.5 * 0.5**3 and la.decay(10) == 0.5
    with torch.no_grad():
        lin.weight.fill_(1.0)
    la.step(4)  # not a multiple of 5: nothing happens
    assert torch.all(lin.weight == 1.0)
    la.step(5)  # slow = 0 * d + 1 * (1 - d); fast <- slow
    d = 0.5 * 0.5**3
    assert torch.allclose(lin.weight, torch.full((1, 2), 1 - d))
    with torch.no_grad():
        lin.weight.fill_(3.0)
    la.finish()  # decay 1: fast <- slow, slow unchanged
    assert torch.allclose(lin.weight, torch.full((1, 2), 1 - d))
    state = la.state_dict()
    la2 = LookaheadEMA(torch.nn.Linear(2, 1, bias=False), total_steps=10)
    la2.load_state_dict(state)
    assert torch.equal(la2.slow["weight"], la.slow["weight"])


def test_alternating_flip_flips_each_image_the_other_way_every_other_epoch():
    n = 64
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    images[:, :, :, 0] = 255  # a marker column: left edge, or right edge when flipped
    labels = torch.arange(n) % 10
    loader = TensorLoader(images, labels, batch_size=16, order=Order(train=True, seed=5), aug=AugConfig(crop_padding=0, flip=True, flip_mode="alternating"))
    seen = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        flips = {}
        for x, _ in loader:
            for img in x:
                flips[int(img[0, 1, 1])] = bool(img[0, 0, 3] == 255)
        seen.append(flips)
    assert len(seen[0]) == n and 0.25 < sum(seen[0].values()) / n < 0.75  # a random half flipped
    assert all(seen[1][i] != seen[0][i] for i in range(n))  # epoch 1: the opposite of epoch 0
    assert seen[2] == seen[0] and seen[3] == seen[1]


def test_reflect_padding_mirrors_the_border():
    x = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6)
    for seed in range(20):
        y = crop_flip(x, 2, False, torch.Generator().manual_seed(seed), "reflect")
        assert set(y.flatten().tolist()) <= set(x.flatten().tolist())  # no zeros from padding
        assert (y > 0).sum() >= 35


def test_linear_schedule_values_at_known_steps():
    from cifar_dist.config import SchedConfig
    from cifar_dist.optim import Schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = Schedule(opt, SchedConfig(name="linear", warmup_frac=0.23, warmup_start=0.2, min_lr_ratio=0.07), 2.0,
                 steps_per_epoch=50, epochs=2)  # 100 steps, warm-up over 23
    assert s.lr_at(0) == pytest.approx(0.4)  # 0.2 x peak
    assert s.lr_at(23) == pytest.approx(2.0)  # the peak at the end of the warm-up
    assert s.lr_at(100) == pytest.approx(0.14)  # 0.07 x peak at the last step
    assert s.lr_at(10) == pytest.approx(2.0 * (0.2 + 0.8 * 10 / 23))
    assert s.lr_at(60) == pytest.approx(2.0 * (1 - 0.93 * (60 - 23) / 77))


def test_decoupled_hyperparameters_bias_lr_scale_and_frozen_groups():
    from cifar_dist.config import OptimConfig, SchedConfig
    from cifar_dist.optim import Schedule, build_optimizer, kilostep, scaled_lr

    cfg = OptimConfig(name="sgd", lr=11.5, momentum=0.85, nesterov=True, weight_decay=0.0153, decoupled=True,
                      bias_lr_scale=64.0)
    assert kilostep(0.85) == pytest.approx(1024 * (1 + 1 / 0.15))
    peak = scaled_lr(cfg, 1024)
    assert peak == pytest.approx(11.5 * 1024 / kilostep(0.85))  # about 1.5 on the mean loss
    assert scaled_lr(cfg, 512) == pytest.approx(peak / 2)  # per example: it follows the batch
    model = create_model("airbench", whiten=3)
    opt = build_optimizer(model, cfg, peak)
    by_name = {id(p): n for n, p in model.named_parameters()}
    groups = {tuple(sorted(by_name[id(p)] for p in g["params"]))[0]: g for g in opt.param_groups}
    # decoupled weight decay: every step shrinks the weights by 0.0153 x B / kilostep, whatever the lr
    wd = 0.0153 / 11.5
    assert peak * wd == pytest.approx(0.0153 * 1024 / kilostep(0.85))
    bn_bias = groups["blocks.0.bn1.bias"]
    assert bn_bias["lr_scale"] == 64.0 and bn_bias["weight_decay"] == pytest.approx(wd / 64)
    whiten = groups["stem.0.bias"]
    assert whiten["stop_epoch"] == 3 and whiten["lr_scale"] == 1.0 and whiten["weight_decay"] == pytest.approx(wd)
    assert groups["blocks.0.conv1.weight"]["weight_decay"] == pytest.approx(wd)
    sched = Schedule(opt, SchedConfig(name="constant"), peak, steps_per_epoch=10, epochs=5)
    sched.set(29)  # epoch 2: every group trains
    assert whiten["lr"] == pytest.approx(peak) and bn_bias["lr"] == pytest.approx(64 * peak)
    sched.set(30)  # epoch 3: the whitening bias stops
    assert whiten["lr"] == 0.0 and bn_bias["lr"] == pytest.approx(64 * peak) and sched.lr == pytest.approx(peak)


def test_stop_decay_gives_a_stopping_group_its_own_line_to_zero():
    """`--sched.stop_decay` (fast_muon): the whitening bias falls from the peak to 0 at its stop epoch
    while the other groups follow the schedule."""
    from cifar_dist.config import OptimConfig, SchedConfig
    from cifar_dist.optim import Schedule, build_optimizer

    model = create_model("airbench", whiten=3)
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=2.0, momentum=0.9, bias_lr_scale=4.0), 2.0)
    by_name = {id(p): n for n, p in model.named_parameters()}
    groups = {tuple(sorted(by_name[id(p)] for p in g["params"]))[0]: g for g in opt.param_groups}
    whiten, bn_bias = groups["stem.0.bias"], groups["blocks.0.bn1.bias"]
    cfg = SchedConfig(name="linear", warmup_start=1.0, min_lr_ratio=0.0, stop_decay=True)
    sched = Schedule(opt, cfg, 2.0, steps_per_epoch=10, epochs=8)  # 80 steps, the whitening bias stops at 30
    for step, own, rest in [(0, 2.0, 2.0), (15, 1.0, 2.0 * (1 - 15 / 80)), (29, 2.0 / 30, 2.0 * (1 - 29 / 80)),
                            (30, 0.0, 2.0 * (1 - 30 / 80)), (79, 0.0, 2.0 / 80)]:
        assert sched.set(step) == pytest.approx(rest)
        assert whiten["lr"] == pytest.approx(own) and bn_bias["lr"] == pytest.approx(4 * rest)
    off = Schedule(opt, SchedConfig(name="linear", warmup_start=1.0, min_lr_ratio=0.0), 2.0, 10, 8)
    off.set(15)
    assert whiten["lr"] == pytest.approx(2.0 * (1 - 15 / 80))  # without it: the schedule, then 0 at epoch 3
