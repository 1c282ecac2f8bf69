"""`--optim.name=muon`: timm's Muon on the conv filters, a companion on the rest (cifar_dist.optim)."""

from __future__ import annotations

import math

import pytest
import torch

from cifar_dist.config import OptimConfig, SchedConfig
from cifar_dist.models import create_model
from cifar_dist.optim import MuonWithCompanion, Schedule, build_optimizer, kilostep, scaled_lr
from cifar_dist.presets import get_preset


def test_fast_muon_groups_every_trainable_parameter_once_by_role():
    cfg = get_preset("fast_muon")
    model = create_model("airbench", **cfg.model.options)
    peak = scaled_lr(cfg.optim, cfg.run.global_batch_size)
    assert peak == pytest.approx(0.053 * 2000, rel=1e-3)  # the record's bias lr on the summed loss, as a mean
    opt = build_optimizer(model, cfg.optim, peak)
    assert isinstance(opt, MuonWithCompanion)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))  # each exactly once
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    assert muon == {n for n in trainable if n.endswith(("conv1.weight", "conv2.weight"))}  # the filter banks
    assert "stem.0.weight" not in seen  # the whitening filters are frozen
    role = {names[id(p)]: g for g in opt.companion.param_groups for p in g["params"]}
    assert set(role) == {"stem.0.bias", "fc.weight"} | {n for n in trainable if ".bn" in n}
    shrink = 0.0157 * 2000 / kilostep(0.85)  # decoupled weight decay per step: 2e-6 x batch
    assert shrink == pytest.approx(2e-6 * 2000, rel=1e-3)
    for n, g in role.items():  # lr x weight decay = the same shrink for every companion group
        assert peak * g["lr_scale"] * g["weight_decay"] == pytest.approx(shrink), n
    assert role["fc.weight"]["lr_scale"] == 1 / 64 and role["stem.0.bias"]["lr_scale"] == 1.0
    assert role["stem.0.bias"]["stop_epoch"] == 3 and role["blocks.0.bn1.bias"]["lr_scale"] == 1.0
    for g in opt.muon.param_groups:
        assert g["weight_decay"] == 0.0 and g["use_muon"] and g["momentum"] == 0.6 and g["nesterov"]
        assert g["ns_steps"] == 3 and g["adjust_lr_fn"] is None
    sched = Schedule(opt, cfg.sched, peak, steps_per_epoch=25, epochs=8)
    sched.set(0)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.24) and role["fc.weight"]["lr"] == pytest.approx(peak / 64)
    sched.set(100)  # half-way: linear to 0 without warm-up
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.12) and role["blocks.0.bn1.bias"]["lr"] == pytest.approx(peak / 2)
    sched.set(75)  # epoch 4: the whitening bias has stopped
    assert role["stem.0.bias"]["lr"] == 0.0


def _newton_schulz_gain(sigma: float, steps: int) -> float:
    """What the quintic iteration with the original coefficients does to one singular value."""
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(steps):
        sigma = a * sigma + b * sigma**3 + c * sigma**5
    return sigma


def test_one_muon_step_on_a_tiny_layer_matches_the_hand_computation():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 3.0]]).view(2, 2, 1, 1))
    angle = 0.3
    q = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    conv.weight.grad = (5.0 * q).view(2, 2, 1, 1)  # a gradient with both singular values 5
    cfg = OptimConfig(name="muon", lr=1.0, muon_lr=0.1, muon_momentum=0.6, muon_nesterov=True, muon_ns_steps=3,
                      muon_normalize=True, weight_decay=0.0)
    opt = build_optimizer(conv, cfg, lr=1.0)
    Schedule(opt, SchedConfig(name="constant"), 1.0, steps_per_epoch=1, epochs=1)  # lr = muon_lr on the filters
    w0 = conv.weight.detach().clone().view(2, 2)
    opt.step()
    # By hand: the weight is first rescaled to norm sqrt(2) (out channels); the Nesterov momentum of one
    # gradient is a multiple of it; Newton-Schulz divides by the Frobenius norm (singular values 1/sqrt(2))
    # and applies the quintic three times to each singular value, keeping the singular vectors (q).
    normalised = w0 * math.sqrt(2) / w0.norm()
    expected = normalised - 0.1 * _newton_schulz_gain(1 / math.sqrt(2), 3) * q
    got = conv.weight.detach().view(2, 2)
    assert torch.allclose(got, expected, atol=0.1 * 0.02)  # the iteration runs in bfloat16
    sgd_like = normalised - 0.1 * q  # an unorthogonalised step differs by more than that tolerance
    assert not torch.allclose(got, sgd_like, atol=0.1 * 0.02)
    state = opt.state_dict()
    assert set(state) == {"muon", "companion"}
    assert torch.equal(state["muon"]["state"][0]["momentum_buffer"], (1 - 0.6) * 5.0 * q.view(2, 2, 1, 1))


def test_muon_state_round_trips_and_refuses_a_foreign_state():
    model = create_model("airbench", widths=(8, 16, 16), whiten=1)
    cfg = OptimConfig(name="muon", lr=0.5, muon_lr=0.05, momentum=0.9)
    opt = build_optimizer(model, cfg, 0.5)
    x = torch.randn(4, 3, 16, 16)
    model(x).sum().backward()
    opt.step()
    state = opt.state_dict()
    again = build_optimizer(model, cfg, 0.5)
    again.load_state_dict(state)
    a, b = again.state_dict(), state
    for part in ("muon", "companion"):
        assert a[part]["state"].keys() == b[part]["state"].keys()
        for k, v in b[part]["state"].items():
            for name, t in v.items():
                other = a[part]["state"][k][name]
                assert torch.equal(other, t) if torch.is_tensor(t) else other == t, (part, k, name)
    plain = build_optimizer(model, OptimConfig(name="sgd"), 0.5)
    with pytest.raises(ValueError, match="muon and companion"):
        again.load_state_dict(plain.state_dict())


def test_muon_refuses_models_without_filters_and_timm_lookahead():
    from cifar_dist.config import ConfigError

    with pytest.raises(ConfigError, match="convolution filters"):
        build_optimizer(torch.nn.Sequential(torch.nn.Linear(4, 3)), OptimConfig(name="muon"), 0.1)
    with pytest.raises(ConfigError, match="--optim.lookahead"):
        build_optimizer(create_model("airbench", widths=(8, 16, 16)), OptimConfig(name="muon", lookahead=True), 0.1)
