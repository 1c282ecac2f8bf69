"""Tensors live where the model lives, proven without a GPU.

Every preset, and every option that holds state (lookahead-EMA, timm's EMA, SyncBatchNorm, the whitening
stem and its buffers, optimizer state with and without timm's Lookahead, each schedule, each mixer, each TTA
mode, Normalize, the loss, a checkpoint saved and loaded back), is built by the engine's own
`build_loaders` / `init_from_data` / `build_parts` with the accelerator's device set to `meta`: accelerate's
`prepare` then moves the model there exactly as it moves it to `cuda:0` (`model.to(self.device)`), and the
loaders, Normalize and the epoch sums follow `accelerator.device` as they do on a GPU. Then a few training
steps, an evaluation with TTA, a checkpoint saved and loaded back. A meta tensor has a shape but no data,
and torch refuses any op that mixes it with a CPU tensor ("Tensor on device cpu is not on the expected device
meta"), just as CUDA refuses mixing with the CPU. On top of that every tensor held by the parts is checked,
and every tensor an op makes during the steps and the evaluation must be on `meta` too, except host random
draws of one number read as Python scalars and the small host tables torchvision's AutoAugment picks them from.

Where values would be read (a reduce at the end of an evaluation, the checkpoint's bytes) the test checks that
what arrives is on the device and hands back zeros of the same shape: nothing on meta has values to read.
"""

from __future__ import annotations

import pytest
import torch

from cifar_dist.presets import PRESETS

# loading a checkpoint into meta tensors is a no-op by design here; torch says so for every tensor
pytestmark = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter:UserWarning")
META = torch.device("meta")
QUICK = {"data.limit_train": 96, "data.limit_test": 40, "data.val_size": 0, "run.global_batch_size": 16,
         "run.eval_batch_size": 16, "run.epochs": 2, "run.progress": False, "model.compile": False,
         "data.loader": "tensor"}


def held(parts, normalize, loaders, sums) -> dict[str, torch.Tensor]:
    """name -> every tensor the training parts hold (model, optimizer state, EMA, lookahead, transform,
    mixer, loss, loaders, epoch sums)."""
    out: dict[str, torch.Tensor] = {}
    model = parts.accelerator.unwrap_model(parts.model, keep_torch_compile=False)
    out.update({f"model.{k}": v for k, v in model.state_dict().items()})
    opt = getattr(parts.optimizer, "optimizer", parts.optimizer)
    inner = getattr(opt, "_base_optimizer", None)  # timm's Lookahead keeps its slow weights in the base's state
    for owner, o in (("state", opt), ("base_state", inner)):
        for i, per_param in enumerate(o.state.values() if o is not None else []):
            for k, t in per_param.items():
                # torch's Adam family counts `step` in a host scalar unless capturable/fused, on CUDA too
                if isinstance(t, torch.Tensor) and not (k == "step" and t.dim() == 0 and t.device.type == "cpu"):
                    out[f"optimizer.{owner}.{i}.{k}"] = t
    for i, g in enumerate(opt.param_groups):
        for k, v in g.items():
            if isinstance(v, torch.Tensor):
                out[f"optimizer.group{i}.{k}"] = v
        for j, p in enumerate(g["params"]):  # what the optimizer updates: the model's own parameters
            out[f"optimizer.group{i}.param{j}"] = p
    if parts.ema is not None:
        out.update({f"ema.{k}": v for k, v in parts.ema.module.state_dict().items()})
    if parts.lookahead is not None:
        out.update({f"lookahead.{k}": v for k, v in parts.lookahead.slow.items()})
    for owner, module in (("transform", parts.transform), ("normalize", normalize), ("criterion", parts.criterion)):
        out.update({f"{owner}.{k}": v for k, v in module.state_dict().items()})
    mix = parts.mixer.mixup
    for k, v in (vars(mix) if mix is not None else {}).items():
        if isinstance(v, torch.Tensor):
            out[f"mixer.{k}"] = v
    for split in ("train", "val", "test"):
        loader = getattr(loaders, split)
        for owner in ("", ".augment"):
            obj = loader if not owner or loader is None else getattr(loader, "augment", None)
            for k, v in (vars(obj) if obj is not None else {}).items():
                if isinstance(v, torch.Tensor):
                    out[f"loader.{split}{owner}.{k}"] = v
    out["sums"] = sums
    return out


def off_device(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: str(v.device) for k, v in tensors.items() if v.device != META}


def where() -> str:
    """The innermost project frame of the current stack (file:line), for the failure message."""
    import traceback

    frames = [f for f in traceback.extract_stack() if "cifar_dist" in f.filename]
    return f"{frames[-1].filename.split('cifar_dist')[-1]}:{frames[-1].lineno}" if frames else "?"


def host_tables() -> bool:
    """torchvision's AutoAugment picks each op and its magnitude on the host, from small tables it builds
    there (`linspace` of its bins), and hands the device ops Python numbers: not device data."""
    import traceback

    return any("_auto_augment" in f.filename and "torchvision" in f.filename for f in traceback.extract_stack())


class Made:
    """Records the device of every tensor an op makes (while `on`); the loader's own iteration is left out
    (its batches are asserted instead)."""

    def __init__(self):
        self.on, self.wrong = True, []

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        rec = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if rec.on:
                    for t in tree_leaves(out):
                        # a host draw of one number, read as a Python scalar, is not device data
                        if (isinstance(t, torch.Tensor) and t.device != META and t.numel() > 1
                                and not host_tables()):
                            rec.wrong.append(f"{func} -> {tuple(t.shape)} on {t.device} at {where()}")
                return out

        return Mode()

    def loader(self, loader):
        rec = self

        class Wrapped:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                return self.iter_from(0)

            def iter_from(self, start):
                it = loader.iter_from(start)
                while True:
                    rec.on = False
                    try:
                        x, y = next(it)
                    except StopIteration:
                        return
                    finally:
                        rec.on = True
                    assert x.device == META and y.device == META, (x.device, y.device)
                    yield x, y

        return Wrapped()


@pytest.fixture
def on_meta(monkeypatch):
    """Accelerator.device is `meta`; `torch.Generator(device=meta)` (which torch refuses: meta has no RNG) gives a
    CPU generator, and every device a generator is asked for is recorded (it must be the model's; a generator
    made without a device is the host's, which draws the loader's epoch order)."""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "device", property(lambda self: META))
    # On CUDA, `model.to(device)` keeps the Parameter objects (the optimizer built before `prepare` still holds
    # the model's parameters); between CPU and meta torch would make new ones unless told to swap in place.
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    asked: list[torch.device] = []
    real = torch.Generator

    class Generator(real):  # a subclass, so that annotations and isinstance checks still work
        def __new__(cls, device=None):
            d = torch.device(device or "cpu")
            if device is not None:  # `torch.Generator()`: a host generator (the loader's epoch order)
                asked.append(d)
            return real.__new__(cls, "cpu" if d.type == "meta" else d)

        def __init__(self, device=None):
            pass

    monkeypatch.setattr(torch, "Generator", Generator)
    yield asked
    torch.__future__.set_swap_module_params_on_conversion(swap)


def build(cfg, sync_bn: bool = False, monkeypatch=None):
    """The engine's own build order (open_session without the run directory): accelerator, model, loaders,
    data-dependent init, parts."""
    from cifar_dist.dataset import open_dataset
    from cifar_dist.engine import devices
    from cifar_dist.engine.session import build_loaders, build_parts, init_from_data, make_accelerator
    from cifar_dist.models import build_model

    acc, per_device = make_accelerator(cfg)
    model = build_model(cfg.model, 10)
    data = open_dataset(cfg.data)
    loaders = build_loaders(cfg, data, acc, per_device)
    init_from_data(model, data, n=64)
    if sync_bn:
        monkeypatch.setattr(devices, "use_sync_bn", lambda *a: True)
    parts, normalize = build_parts(cfg, acc, model, len(loaders.train), 0.01, 10, per_device)
    if sync_bn:  # the GPU branch: torch's SyncBatchNorm layers (via timm's converter), not the gloo mix-in
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in acc.unwrap_model(parts.model).modules())
    return acc, parts, normalize, loaders


def run_everything(cfg, tmp_path, monkeypatch, asked, sync_bn=False):
    """Build, train 2 epochs of a few steps, evaluate (with the config's TTA), save and load a checkpoint;
    return the off-device findings."""
    from cifar_dist.engine import checkpoint as ckpt
    from cifar_dist.engine.evaluate import evaluate
    from cifar_dist.engine.loop import train_one_epoch

    acc, parts, normalize, loaders = build(cfg, sync_bn, monkeypatch)
    model = acc.unwrap_model(parts.model)
    assert next(model.parameters()).device == META
    sums = torch.zeros(3, dtype=torch.float64, device=acc.device)
    problems: dict[str, object] = {}
    made, losses = Made(), []

    reduced = []

    def reduce(t, reduction="sum"):  # the end of an evaluation: values go to the host; none exist on meta
        made.on = False  # from here on the evaluation reads its sums on the host
        reduced.append(t.device)
        return torch.zeros(t.shape, dtype=t.dtype)

    monkeypatch.setattr(acc, "reduce", reduce)
    with made.mode():
        for epoch in range(2):
            loaders.train.set_epoch(epoch)
            train_one_epoch(parts, made.loader(loaders.train), ckpt.TrainState(global_step=epoch * 5), sums,
                            lambda step, loss: losses.append(loss.device))
        if parts.lookahead is not None:
            parts.lookahead.finish()
        plain = acc.unwrap_model(parts.model, keep_torch_compile=False)
        made.on = True
        evaluate(plain, made.loader(loaders.test), normalize, acc, 10, cfg.run.tta)
        if parts.ema is not None:
            made.on = True
            evaluate(parts.ema.module, made.loader(loaders.test), normalize, acc, 10, "none")
    problems["made off the device"] = made.wrong[:5]
    problems["step losses off the device"] = [str(d) for d in losses if d != META]
    problems["reduced off the device"] = [str(d) for d in reduced if d != META]
    holds = held(parts, normalize, loaders, sums)
    problems["held after training"] = off_device(holds)
    # the check sees the state it claims to check
    expect = {"optimizer.base_state.": cfg.optim.lookahead, "optimizer.state.": not cfg.optim.lookahead and (
              cfg.optim.name != "sgd" or cfg.optim.momentum > 0), "lookahead.": cfg.optim.ema_lookahead,
              "ema.": cfg.run.ema, "normalize.": True, "model.": True}
    missing = [k for k, want in expect.items() if want and not any(name.startswith(k) for name in holds)]
    assert not missing, f"no tensor of {missing} was found to check"

    # checkpoint: what is written must come from the device (RNG states are the host's); then load it back
    written = []

    def zeros_of(obj, key=None):
        if isinstance(obj, torch.Tensor):
            if not (key == "step" and obj.dim() == 0 and obj.device.type == "cpu"):  # torch's host step count
                written.append(obj.device)
            return torch.zeros(obj.shape, dtype=obj.dtype) if obj.device == META else obj
        if isinstance(obj, dict):
            return {k: zeros_of(v, k) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(zeros_of(v) for v in obj)
        return obj

    real_bytes, real_model_bytes = ckpt._torch_bytes, ckpt._model_bytes
    monkeypatch.setattr(ckpt, "_torch_bytes", lambda obj: real_bytes(zeros_of(obj)))
    monkeypatch.setattr(ckpt, "_model_bytes", lambda m: real_model_bytes(_zeros_module(m, written)))
    monkeypatch.setattr(ckpt, "rng_state", lambda: {"host": "rng states are the host's"})
    ckpt.save(parts, tmp_path / "checkpoints", ckpt.TrainState(epoch=1))
    problems["saved from off the device"] = [str(d) for d in written if d != META]
    assert written, "the checkpoint saved no tensor"
    snap = ckpt.read(tmp_path / "checkpoints" / ckpt.LAST, parts)
    snap.rng = None
    monkeypatch.setattr("accelerate.utils.set_seed", lambda *a, **k: None)
    ckpt.apply(snap, parts, 0)
    problems["held after loading the checkpoint"] = off_device(held(parts, normalize, loaders, sums))
    problems["generators asked off the device"] = [str(d) for d in asked if d != META]
    return {k: v for k, v in problems.items() if v}


def _zeros_module(model, written):
    """A stand-in with the model's state dict as host zeros (what safetensors can write), recording devices."""
    state = model.state_dict()
    written.extend(v.device for v in state.values())

    class Holder(torch.nn.Module):
        def state_dict(self, *a, **k):
            return {k: torch.zeros(v.shape, dtype=v.dtype) if v.device == META else v for k, v in state.items()}

    return Holder()


def config(preset: str, tiny_data, **over):
    from cifar_dist.presets import resolve

    data_dir, name = tiny_data
    return resolve(preset, None, {**QUICK, "data.dir": str(data_dir), "data.name": name,
                                  "run.out_dir": "unused", **over})


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.slow
def test_every_preset_keeps_every_tensor_on_the_models_device(preset, tiny_data, tmp_path, monkeypatch, on_meta):
    assert run_everything(config(preset, tiny_data), tmp_path, monkeypatch, on_meta) == {}


OPTIONS = {
    "lookahead_ema": {"optim.ema_lookahead": 2},
    "timm_ema": {"run.ema": True, "run.ema_decay": 0.9},
    "timm_lookahead_adamw": {"optim.name": "adamw", "optim.lookahead": True, "optim.lookahead_k": 2},
    "sgd_nesterov_grad_clip": {"optim.name": "sgd", "optim.momentum": 0.9, "optim.nesterov": True,
                               "optim.grad_clip": 1.0},
    "cosine": {"sched.name": "cosine", "sched.warmup_epochs": 1},
    "step": {"sched.name": "step", "sched.step_epochs": 1},
    "onecycle": {"sched.name": "onecycle"},
    "linear": {"sched.name": "linear", "sched.warmup_frac": 0.3},
    "mixup_cutmix_smoothing": {"loss.mixup_prob": 0.5, "loss.cutmix_prob": 0.5, "loss.mixup_alpha": 1.0,
                               "loss.cutmix_alpha": 1.0, "loss.label_smoothing": 0.1},
    "ricap": {"loss.ricap_prob": 1.0, "loss.ricap_beta": 0.3},
    "label_smoothing": {"loss.label_smoothing": 0.2},
    "tta_flip": {"run.tta": "flip"},
    "tta_flip_translate": {"run.tta": "flip_translate"},
    "tta_flip_diag": {"run.tta": "flip_diag"},
    "reflect_alternating_cutout": {"aug.crop_padding": 2, "aug.crop_pad": "reflect", "aug.flip": True,
                                   "aug.flip_mode": "alternating", "aug.cutout": 8},
    "device_augmentations": {"aug.affine_prob": 0.5, "aug.color_prob": 0.5, "aug.hsv_prob": 0.5,
                             "aug.dropout_prob": 0.5, "aug.rotation": 10.0},
    "autoaugment": {"aug.autoaugment": True},
    "channels_last_off": {"model.channels_last": False},
}


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.slow
def test_every_stateful_option_keeps_every_tensor_on_the_models_device(name, tiny_data, tmp_path, monkeypatch,
                                                                       on_meta):
    assert run_everything(config("smoke", tiny_data, **OPTIONS[name]), tmp_path, monkeypatch, on_meta) == {}


def test_the_loader_holds_its_flips_and_cutout_fill_on_the_device(tiny_data, on_meta):
    """The check above can see the loaders' own tensors (a held CPU tensor would be reported)."""
    _, _, _, loaders = build(config("fast", tiny_data, **{"aug.cutout": 4}))
    assert loaders.train.augment.base_flips.device == META and loaders.train.augment.cutout_fill.device == META
    assert loaders.train.images.device == META


def test_whitening_stem_lookahead_and_ema_together(tiny_data, tmp_path, monkeypatch, on_meta):
    """`fast` (whitening stem with its frozen weight and trained bias, lookahead-EMA, Dirac init) with timm's EMA."""
    cfg = config("fast", tiny_data, **{"run.ema": True})
    assert cfg.model.options.get("whiten") and cfg.optim.ema_lookahead
    assert run_everything(cfg, tmp_path, monkeypatch, on_meta) == {}


def test_sync_batchnorm_keeps_every_tensor_on_the_models_device(tiny_data, tmp_path, monkeypatch, on_meta):
    """The GPU branch of convert_sync_bn (torch's SyncBatchNorm, via timm) with lookahead-EMA and EMA."""
    cfg = config("smoke", tiny_data, **{"optim.ema_lookahead": 2, "run.ema": True})
    assert run_everything(cfg, tmp_path, monkeypatch, on_meta, sync_bn=True) == {}
