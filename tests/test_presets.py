"""Every preset trains on tiny data, and each seed preset carries the seed's recipe (numbers from SEED_SYSTEMS.md)."""

from __future__ import annotations

import pytest

from cifar_dist.presets import PRESETS, REPORTED_ACC, resolve
from tests.helpers import read_json

KUANGLIU_MEAN, KUANGLIU_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

# The seeds' recipes, written out by hand from ../shared/SEED_SYSTEMS.md (not generated from the code).
EXPECTED = {
    "seed000_soheilnet": {
        "model.name": "soheilnet", "model.dropout": 0.2, "data.resolution": 320, "data.val_size": 5000,
        "aug.autoaugment": True, "aug.crop_padding": 0, "aug.flip": False, "optim.name": "sgd", "optim.lr": 0.01,
        "optim.momentum": 0.9, "optim.weight_decay": 5e-3, "optim.nesterov": False, "sched.name": "cosine",
        "sched.min_lr_ratio": 1e-8 / 0.01, "data.split_seed": 81,
        "run.epochs": 60, "run.global_batch_size": 64, "loss.label_smoothing": 0.0, "run.ema": False,
        "run.tta": "none", "params": 387_712,
    },
    "seed001_resnet18_5m": {
        "model.name": "resnet18_cifar", "model.blocks": (1, 1, 1, 1), "model.shortcut_kernel": 1,
        "aug.crop_padding": 4, "aug.flip": True, "aug.cutout": 8, "aug.cutout_prob": 1.0, "optim.name": "adam",
        "optim.lr": 1e-2, "optim.weight_decay": 0.0, "optim.lookahead": True, "optim.lookahead_k": 5,
        "optim.lookahead_alpha": 0.5, "sched.name": "cosine", "run.epochs": 51, "run.global_batch_size": 256,
        "params": 4_903_242,
    },
    "seed002_tpsnet": {
        "model.name": "tpsnet", "model.blocks": (13, 13, 13), "model.c1": 16, "model.k": 2, "aug.crop_padding": 4,
        "aug.rotation": 5.0, "aug.flip": True, "optim.name": "sgd", "optim.lr": 0.01, "optim.momentum": 0.9,
        "optim.weight_decay": 5e-4, "sched.name": "cosine", "run.epochs": 300, "run.global_batch_size": 128,
        "params": 4_959_770,
    },
    "seed003_simple_cnn": {
        "model.name": "simple_cnn", "aug.crop_padding": 0, "aug.flip": False, "optim.name": "adam", "optim.lr": 0.01,
        "data.val_size": 0,
        "optim.weight_decay": 1e-3, "sched.name": "constant", "run.epochs": 50, "run.global_batch_size": 100,
        "params": 600_746,
    },
    "seed004_dsresnet_200k": {
        "model.name": "ds_resnet_200k", "model.dropout": 0.2, "aug.flip": True, "aug.crop_padding": 0,
        "aug.hsv_prob": 0.5, "aug.hue": 20 / 180, "aug.saturation": 30 / 255, "aug.value": 20 / 255,
        "aug.dropout_holes": (1, 1), "sched.name": "cosine", "aug.affine_prob": 0.5,
        "aug.affine_shift": 0.1, "aug.affine_scale": 0.1, "aug.affine_rotate": 15.0, "aug.color_prob": 0.5,
        "aug.brightness": 0.2, "aug.contrast": 0.2, "aug.dropout_prob": 0.3, "aug.dropout_size": (8, 8),
        "loss.label_smoothing": 0.1, "loss.ricap_prob": 0.2, "loss.ricap_beta": 0.3, "loss.mixup_prob": 0.3,
        "loss.mixup_alpha": 1.0, "loss.cutmix_prob": 0.3, "loss.cutmix_alpha": 1.0, "optim.name": "sgd",
        "optim.lr": 0.05, "optim.momentum": 0.9, "optim.weight_decay": 1e-4, "optim.grad_clip": 1.0,
        "sched.warmup_epochs": 5.0, "sched.period_epochs": 195.0, "run.epochs": 200, "run.global_batch_size": 128,
        "run.ema": True, "run.ema_decay": 0.999, "run.early_stop_window": 20, "run.early_stop_drop": 2.0,
        "run.early_stop_start": 52, "run.tta": "flip", "params": 150_690,
    },
}
REPORTED = {"seed000_soheilnet": 89.28, "seed001_resnet18_5m": 91.49, "seed002_tpsnet": 94.84,
            "seed003_simple_cnn": 69.26, "seed004_dsresnet_200k": 87.42}


def get(cfg, dotted):
    section, key = dotted.split(".")
    if section == "model" and key != "name":  # a model option
        return cfg.model.options[key]
    return getattr(getattr(cfg, section), key)


def test_every_seed_has_a_preset_and_reported_figure():
    assert set(EXPECTED) <= set(PRESETS)
    assert REPORTED_ACC == REPORTED


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_seed_preset_carries_the_seed_recipe(preset):
    from cifar_dist.models import count_params, create_model

    cfg = resolve(preset)
    exp = EXPECTED[preset]
    for key, value in exp.items():
        if key != "params":
            assert get(cfg, key) == pytest.approx(value), key
    assert cfg.data.mean == KUANGLIU_MEAN and cfg.data.std == KUANGLIU_STD
    assert count_params(create_model(cfg.model.name, **cfg.model.options)) == exp["params"]
    doc = PRESETS[preset].__doc__
    assert "Fixes of the seed's bugs" in doc and f"{REPORTED[preset]:.2f} %" in doc


@pytest.mark.timeout(900)  # up to 155 s a preset on a loaded 2-core machine
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.slow
def test_every_preset_trains_two_steps(preset, tiny_data, tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    from cifar_dist.engine import train

    data_dir, name = tiny_data
    cfg = resolve(preset, overrides={
        "data.dir": str(data_dir), "data.name": name, "data.val_size": 40, "data.limit_train": 72,
        "data.limit_test": 32, "run.global_batch_size": 16, "run.eval_batch_size": 16, "run.epochs": 1,
        "run.out_dir": str(tmp_path), "run.progress": False,
    })
    try:
        status = train(cfg)
    finally:  # a fresh Accelerator per run in this process
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert status == 0
    res = read_json(tmp_path / cfg.run.name / "result.json")
    assert res["epochs"] == 1 and res["status"] == "finished"
    if preset in EXPECTED:
        assert res["params"] == EXPECTED[preset]["params"]
    rows = (tmp_path / cfg.run.name / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and '"step": 2' in rows[0]
