"""Model zoo tests: registry contract, pinned parameter counts, forward shapes, option errors, model info.

Parameter counts are written out by hand from /work/shared/SEED_SYSTEMS.md (and, for airbench, from the
arithmetic in the comment below), never computed by the code under test.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from cifar_dist.config import Config, ConfigError, ModelConfig, dump_yaml
from cifar_dist.models import (
    MODEL_REGISTRY,
    build_model,
    check_options,
    count_params,
    create_model,
    list_models,
    options_help,
    register_model,
)
from cifar_dist.models.info import format_table, measure, model_table, print_models
from cifar_dist.overrides import apply_overrides

# Trainable parameters at num_classes=10 with default options. A new registry entry must add a line here.
PINNED_PARAMS = {
    "simple_cnn": 600_746,  # seed 003
    "ds_resnet_200k": 150_690,  # seed 004
    "resnet18_cifar": 11_173_962,  # seed 001 budget table, [2,2,2,2] k1 (standard ResNet-18)
    "tpsnet": 4_959_770,  # seed 002
    "soheilnet": 387_712,  # seed 000
    # airbench (BN weights frozen, so only BN biases count):
    #   stem 3·24·9 + 24 = 672; block 24→64: 24·64·9 + 64 + 64·64·9 + 64 = 50,816;
    #   block 64→256: 64·256·9 + 256 + 256·256·9 + 256 = 737,792; block 256→256: 2·(256·256·9 + 256) = 1,180,160;
    #   head 256·10 (no bias) = 2,560. Total 1,972,000.
    "airbench": 1_972_000,
}


def _input_size(name: str) -> int:
    return MODEL_REGISTRY[name].input_size


# ----------------------------------------------------------------------------- registry and counts


def test_every_registered_model_has_a_pinned_count():
    assert sorted(PINNED_PARAMS) == list_models()


@pytest.mark.parametrize("name", sorted(set(list_models()) | set(PINNED_PARAMS)))
def test_param_count_pinned(name):
    assert count_params(create_model(name)) == PINNED_PARAMS[name]


@pytest.mark.parametrize(
    "blocks, shortcut_kernel, pool_size, expected",
    [
        ((1, 1, 1, 1), 1, 4, 4_903_242),
        ((2, 2, 2, 2), 1, 4, 11_173_962),
        ((2, 2, 2, 2), 3, 4, 12_550_218),
        ((1, 1, 1, 1), 3, 4, 6_279_498),
        ((1, 1, 1, 1), 2, 4, 5_419_338),
        ((1, 1, 1, 1), 1, 2, 4_903_242),  # the pool size does not change the count
        ((1, 1, 1, 1), 1, 16, 4_903_242),
    ],
)
def test_resnet18_cifar_budget_table(blocks, shortcut_kernel, pool_size, expected):
    model = create_model(
        "resnet18_cifar", blocks=blocks, shortcut_kernel=shortcut_kernel, pool_size=pool_size
    )
    assert count_params(model) == expected


@pytest.mark.parametrize(
    "blocks, c1, expected",
    [
        ((13, 13, 13), 16, 4_959_770),
        ((3, 3, 3), 34, 4_865_580),
        ((7, 7, 7), 22, 4_971_680),
        ((17, 17, 17), 14, 4_987_384),
        ((23, 23, 23), 12, 4_976_470),
        ((2, 2, 2), 34, 3_115_804),
        ((3, 3, 3), 26, 2_847_140),
    ],
)
def test_tpsnet_search_table(blocks, c1, expected):
    assert count_params(create_model("tpsnet", blocks=list(blocks), c1=c1, k=2)) == expected


def test_tpsnet_stage_widths_are_k_c1_powers_of_two():
    model = create_model("tpsnet", blocks=(3, 3, 3), c1=34)
    assert model.stem[0].out_channels == 34
    assert [stage[0].conv1.out_channels for stage in model.stages] == [68, 136, 272]


def test_entry_options_come_from_the_signature():
    entry = MODEL_REGISTRY["resnet18_cifar"]
    assert dict(entry.options) == {
        "blocks": (2, 2, 2, 2),
        "width": 64,
        "shortcut_kernel": 1,
        "pool_size": 4,
        "dropout": 0.0,
    }
    assert MODEL_REGISTRY["soheilnet"].input_size == 320
    assert all(e.description for e in MODEL_REGISTRY.values())


def test_register_model_uses_function_name_and_rejects_duplicates():
    def tiny_test_net(num_classes: int = 10, hidden: int = 4) -> nn.Module:
        """A one-line description."""
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        register_model(tiny_test_net, input_size=16)
        entry = MODEL_REGISTRY["tiny_test_net"]
        assert (entry.input_size, entry.description, dict(entry.options)) == (
            16,
            "A one-line description.",
            {"hidden": 4},
        )
        with pytest.raises(ValueError, match="registered twice"):
            register_model(tiny_test_net)
    finally:
        MODEL_REGISTRY.pop("tiny_test_net", None)


# ----------------------------------------------------------------------------- forward contract


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_channels_last(name):
    size = _input_size(name)
    batch = 2 if size <= 64 else 1  # soheilnet runs at 320×320: one image keeps the test quick
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        y = model(x)
        y_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert y.shape == (batch, 7) and y.dtype == torch.float32
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-4)


def test_forward_train_mode_backward():
    model = create_model("ds_resnet_200k")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_soheilnet_fixed_pool_needs_320_and_adaptive_pool_does_not():
    with pytest.raises(ValueError, match="adaptive_pool=True"):
        create_model("soheilnet").eval()(torch.randn(1, 3, 32, 32))
    model = create_model("soheilnet", adaptive_pool=True).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_simple_cnn_rejects_other_input_sizes_clearly():
    with pytest.raises(ValueError, match="32x32"):
        create_model("simple_cnn")(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("shortcut_kernel", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [32, 28])  # 28 -> 14 -> 7 -> 4: an odd map meets the stride-2 shortcut
@pytest.mark.slow
def test_resnet18_cifar_shortcut_kernels_run_forward(shortcut_kernel, size):
    model = create_model(
        "resnet18_cifar", blocks=(1, 1, 1, 1), width=8, shortcut_kernel=shortcut_kernel, pool_size=None
    )
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_resnet18_cifar_fixed_pool():
    model = create_model("resnet18_cifar", blocks=(1, 1, 1, 1), width=8, pool_size=2)
    with pytest.raises(ValueError, match="pool_size"):  # 4×4 map pooled by 2 is 2×2, not 1×1
        model(torch.randn(2, 3, 32, 32))
    assert create_model("resnet18_cifar", width=8, pool_size=8)(torch.randn(2, 3, 64, 64)).shape == (2, 10)


# ----------------------------------------------------------------------------- errors


def test_unknown_model_lists_valid_names_on_one_line():
    with pytest.raises(ValueError) as err:
        create_model("resnet9000")
    msg = str(err.value)
    assert "\n" not in msg and "'resnet9000'" in msg
    assert all(name in msg for name in list_models())


def test_unknown_option_names_accepted_ones():
    with pytest.raises(ValueError) as err:
        create_model("simple_cnn", x=1)
    assert str(err.value) == "model option 'x' is not accepted by simple_cnn (accepted: dropout)"


@pytest.mark.parametrize("name", list_models())
def test_default_options_round_trip(name):
    """Passing every option explicitly at its default builds the same-size model."""
    options = dict(MODEL_REGISTRY[name].options)
    assert count_params(create_model(name, **options)) == PINNED_PARAMS[name]


# ----------------------------------------------------------------------------- options from the command line


def _cli_text(value) -> str:
    """How a user types ``value`` after ``--model.<option>=`` (a string, as a YAML file or shell gives it)."""
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_option_is_settable_from_the_cli(name):
    """Walks the registry: each option, typed as text on the command line, reaches the builder converted."""
    entry = MODEL_REGISTRY[name]
    flags = {f"model.{opt}": _cli_text(default) for opt, default in entry.options.items()}
    cfg = apply_overrides(Config(), {"model.name": name, **flags})
    assert all(isinstance(v, str) for v in cfg.model.options.values())  # kept as given by the config layer
    checked = check_options(cfg.model)
    assert dict(checked.options) == dict(entry.options)
    assert count_params(build_model(checked, num_classes=10)) == PINNED_PARAMS[name]
    assert all(f"--model.{opt}=" in options_help() for opt in entry.options)


@pytest.mark.parametrize("flags, check", [
    ({"model.name": "airbench", "model.widths": "[64,128,128]", "model.stem_width": "16"},
     lambda m: [b.conv2.out_channels for b in m.blocks] == [64, 128, 128] and m.stem[0].out_channels == 16),
    ({"model.name": "airbench", "model.scale": "0.5", "model.bn_momentum": "0.1", "model.learn_bn_scale": "true"},
     lambda m: m.scale == 0.5 and m.stem[1].momentum == 0.1 and m.stem[1].weight.requires_grad),
    ({"model.name": "resnet18_cifar", "model.pool_size": "none"}, lambda m: m.pool_size is None),
    ({"model.name": "tpsnet", "model.blocks": "1,1,1", "model.block_dropout": "0.3"},
     lambda m: any(isinstance(x, nn.Dropout) and x.p == 0.3 for x in m.stages.modules())),
    ({"model.name": "timm:resnet18", "model.cifar_stem": "true", "model.dropout": "0.2", "model.drop_path_rate": 0.1},
     lambda m: m.conv1.stride == (1, 1) and m.drop_rate == 0.2
     and any(type(x).__name__ == "DropPath" for x in m.modules())),
])
def test_options_the_old_model_config_could_not_set(flags, check):
    model = build_model(apply_overrides(Config(), flags).model, num_classes=10)
    assert check(model)


@pytest.mark.parametrize("flags, msg", [
    ({"model.name": "tpsnet", "model.blcks": "[3,3,3]"},
     "--model.blcks: not an option of tpsnet; its options: blocks, c1, k, dropout, block_dropout"),
    ({"model.name": "airbench", "model.widths": "wide"}, "--model.widths: expected an integer, found 'wide'"),
    ({"model.name": "soheilnet", "model.adaptive_pool": "maybe"},
     "--model.adaptive_pool: expected true or false, found 'maybe'"),
    ({"model.name": "tpsnet", "model.dropout": "-0.5"}, "--model.dropout: expected a value >= 0, found -0.5"),
    ({"model.name": "resnet9000"}, "--model.name: unknown model 'resnet9000'"),
    ({"model.name": "simple_cnn", "model.options.dropout": 0.1}, "--model.options.dropout: not an option"),
])
def test_bad_options_name_the_flag_on_one_line(flags, msg):
    with pytest.raises(ConfigError) as err:
        check_options(apply_overrides(Config(), flags).model)
    assert str(err.value).startswith(msg) and "\n" not in str(err.value)


def test_builder_refusals_and_budget_are_config_errors():
    with pytest.raises(ConfigError, match=r"^--model.name=tpsnet: tpsnet: blocks must be a non-empty list"):
        build_model(ModelConfig(name="tpsnet", options={"blocks": []}), num_classes=10)
    with pytest.raises(ConfigError, match=r"^--model.max_params: simple_cnn has 600,746 parameters"):
        build_model(ModelConfig(name="simple_cnn", max_params=1000), num_classes=10)


def test_config_yaml_keeps_options_flat_and_round_trips():
    cfg = apply_overrides(Config(), {"model.name": "tpsnet", "model.blocks": [3, 3, 3], "model.c1": 34})
    dumped = yaml.safe_load(dump_yaml(cfg))
    assert dumped["model"] == {"name": "tpsnet", "max_params": 0, "channels_last": True, "compile": False, "sync_bn": None,
                               "dirac_init": False,
                               "blocks": [3, 3, 3], "c1": 34}
    assert apply_overrides(Config(), dumped) == cfg
    assert apply_overrides(Config(), {"model": {"name": "tpsnet", "options": {"c1": 34}}}).model.options == {"c1": 34}
    assert hash(cfg) == hash(apply_overrides(Config(), dumped))


def test_a_new_model_name_starts_from_its_own_defaults():
    cfg = apply_overrides(Config(), {"model.name": "tpsnet", "model.c1": 20, "model.k": 1})
    assert dict(apply_overrides(cfg, {"model.k": 3}).model.options) == {"c1": 20, "k": 3}
    assert dict(apply_overrides(cfg, {"model.name": "tpsnet"}).model.options) == {"c1": 20, "k": 1}
    assert dict(apply_overrides(cfg, {"model.name": "simple_cnn"}).model.options) == {}
    assert dict(apply_overrides(cfg, {"model.name": "airbench", "model.scale": 1}).model.options) == {"scale": 1}


def test_option_names_may_not_shadow_model_config_fields():
    def clashing_net(num_classes: int = 10, compile: bool = False) -> nn.Module:
        return nn.Linear(3, num_classes)

    with pytest.raises(TypeError, match="clashes with --model.compile"):
        register_model(clashing_net)
    assert "clashing_net" not in MODEL_REGISTRY


# ----------------------------------------------------------------------------- timm


def test_timm_resnet18_cifar_stem():
    model = create_model("timm:resnet18", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_timm_errors():
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("timm:not_a_real_net")
    with pytest.raises(ValueError, match="rejected by timm"):
        create_model("timm:resnet18", bogus_option=1)
    with pytest.raises(ValueError, match="cifar_stem=True is not supported"):
        create_model("timm:convnext_atto", cifar_stem=True)


# ----------------------------------------------------------------------------- model info


@pytest.fixture(scope="module")
def table():
    return model_table()


@pytest.mark.slow
def test_model_table_covers_registry(table):
    assert [r["name"] for r in table] == list_models()
    for row in table:
        assert row["params"] == PINNED_PARAMS[row["name"]]
        assert row["macs"] > 0 and row["receptive_field"] > 1
        assert row["input_size"] == _input_size(row["name"])


def test_receptive_fields_and_macs_pinned(table):
    by_name = {r["name"]: r for r in table}
    # simple_cnn, composing rf += (k-1)·jump, jump *= stride through
    # conv2 (rf 2), pool2 (3, jump 2), conv2 (5), pool2 (7, jump 4), conv2 (11), pool2 (15, jump 8).
    assert by_name["simple_cnn"]["receptive_field"] == 15
    # ds_resnet_200k: stem 3; stage 1 has four 3×3 DW convs at jump 1 (+8) -> 11; stage 2: strided DW +2 -> 13,
    # then three convs at jump 2 (+12) -> 25; stage 3: +4 -> 29, +24 -> 53; stage 4: +8 -> 61, +48 -> 109.
    # The spec gives "about 109" as the true RF; the shortcut (1×1) branches add nothing.
    assert by_name["ds_resnet_200k"]["receptive_field"] == 109
    # airbench: stem 3; block 1 conv +2 -> 5, pool +1 -> 6 (jump 2), conv +4 -> 10; block 2: +4, +2, +8 -> 24
    # (jump 4); block 3: +8, +4, +16 -> 52.
    assert by_name["airbench"]["receptive_field"] == 52
    # simple_cnn MACs = outputs × fan-in: conv1 32·33·33·(3·2·2) = 418,176; conv2 64·17·17·(32·4) = 2,367,488;
    # conv3 128·9·9·(64·4) = 2,654,208; Linears 2048·256 + 256·128 + 128·10 = 558,336. Sum 5,998,208.
    assert by_name["simple_cnn"]["macs"] == 5_998_208


def test_receptive_field_takes_max_over_residual_branches():
    # [1,1,1,1]: stem 3, stage 1 +2+2 -> 7, then per stage the strided conv adds 2·jump and the second conv
    # 4·jump: 9, 13 | 17, 25 | 33, 49. A 3×3 shortcut runs *in parallel* with the main path (it would reach
    # only 7+2=9 at stage 2), so the RF must stay 49 rather than grow.
    for k in (1, 3):
        model = create_model("resnet18_cifar", blocks=(1, 1, 1, 1), width=8, shortcut_kernel=k)
        assert measure(model, 32)[1] == 49
    model = create_model("timm:resnet18")  # ImageNet ResNet-18: the well-known 435
    assert measure(model, 64)[1] == 435
    assert model.training  # the probe restores the module's mode


def test_format_table_is_aligned(capsys):
    rows = [
        {
            "name": "a",
            "params": 1_234_567,
            "macs": 5_000_000,
            "receptive_field": 15,
            "input_size": 32,
            "description": "x",
        },
        {
            "name": "longer_name",
            "params": 12,
            "macs": 1_000,
            "receptive_field": 109,
            "input_size": 320,
            "description": "y",
        },
    ]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and lines[0].startswith("model")
    # Right-aligned numeric columns end at the same offset as their header.
    end = lines[0].index("params") + len("params")
    assert lines[2][:end].endswith("1,234,567") and lines[3][:end].endswith("12")
    print_models(["simple_cnn"])
    out = capsys.readouterr().out
    assert "simple_cnn" in out and "600,746" in out
