"""One typed, frozen, nested configuration for a training run.

Precedence, lowest first: dataclass defaults < preset < YAML file < command-line flags
(`cifar_dist.presets.resolve`).
Every override is checked against the field it targets: an unknown key, a wrong type or a value
outside the allowed choices raises `ConfigError`, whose message is one line naming the key, what
was expected and what was found. The CLI turns that into exit status 2.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from cifar_dist.errors import InputError, did_you_mean

RESUME_MODES = ("auto", "none", "force")  # --resume of the trainer (cifar_dist.engine.checkpoint reads them)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of CIFAR-10 train, in [0, 1]
KUANGLIU_STD = (0.2023, 0.1994, 0.2010)  # the std most CIFAR repos copy (not the true std)
CIFAR_STD = (0.2470, 0.2435, 0.2616)  # the true per-channel std of CIFAR-10 train


class ConfigError(InputError):
    """A bad configuration value; the message is one line a user can act on."""


@dataclass(frozen=True)
class DataConfig:
    dir: str = "data"  # folder with <name>_train.beton, <name>_test.beton (from `cifar-dist prepare`)
    name: str = "cifar10"  # dataset prefix of the .beton files
    loader: str = "tensor"  # "tensor": whole split resident on the device; "ffcv": FFCV pipeline
    num_workers: int = 2  # FFCV decoding threads (ignored by the tensor loader)
    val_size: int = 5000  # images held out of train for validation/early stopping (0 = none)
    split_seed: int = 0  # seed of the train/validation split (independent of run.seed)
    limit_train: int = 0  # train on N images, a class-balanced sample drawn with split_seed (0 = all); smoke tests
    limit_test: int = 0  # test on N images, a class-balanced sample drawn with split_seed (0 = all)
    resolution: int = 32  # pixels; images are resized on the device when this is not 32
    mean: tuple[float, ...] = CIFAR_MEAN  # normalisation mean, RGB in [0, 1]
    std: tuple[float, ...] = KUANGLIU_STD  # normalisation std, RGB in [0, 1]


@dataclass(frozen=True)
class AugConfig:
    crop_padding: int = 4  # pixels of padding for the random crop (0 = no crop)
    crop_pad: str = "zeros"  # zeros | reflect: how the crop pads (either loader)
    flip: bool = True  # random horizontal flip, p = 0.5
    flip_mode: str = "random"  # random | alternating: one random flip, mirrored every other epoch (either loader)
    cutout: int = 0  # side in pixels of one zeroed square (0 = off)
    cutout_prob: float = 1.0  # probability that an image gets the cutout square
    autoaugment: bool = False  # torchvision AutoAugment, CIFAR10 policy, per image on uint8
    rotation: float = 0.0  # max degrees of a random rotation (0 = off)
    affine_prob: float = 0.0  # probability of a random shift/scale/rotate (seed 004 style)
    affine_shift: float = 0.0  # max shift as a fraction of the side
    affine_scale: float = 0.0  # max relative scale change
    affine_rotate: float = 0.0  # max degrees for the affine transform
    color_prob: float = 0.0  # probability of brightness/contrast jitter
    brightness: float = 0.0  # max relative brightness change
    contrast: float = 0.0  # max relative contrast change
    hsv_prob: float = 0.0  # probability of hue/saturation/value jitter
    hue: float = 0.0  # max hue shift as a fraction of the colour wheel
    saturation: float = 0.0  # max relative saturation change
    value: float = 0.0  # max relative value (brightness) change
    dropout_prob: float = 0.0  # probability of coarse dropout (holes)
    dropout_holes: tuple[int, ...] = (1, 1)  # min and max number of holes
    dropout_size: tuple[int, ...] = (8, 8)  # min and max hole side, pixels


def _freeze(value: Any) -> Any:
    """Lists (from YAML or flags) become tuples, recursively, so options stay hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class ModelOptions(Mapping[str, Any]):
    """The registered model's own options (``--model.<option>=value``): an immutable, hashable mapping.

    Only the options that were set are held; the builder's defaults fill in the rest. The config layer
    does not know the models, so values are kept as given (lists as tuples); ``cifar_dist.models``
    checks and converts them against the builder's signature (``check_options``).
    """

    def __init__(self, items: Mapping[str, Any] | None = None):
        self._items = {str(k): _freeze(v) for k, v in (items or {}).items()}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"ModelOptions({self._items!r})"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "simple_cnn"  # registered model name (`cifar-dist models`) or timm:<name>
    max_params: int = 0  # refuse to train a model with more parameters (0 = no limit)
    channels_last: bool = True  # NHWC memory format (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the model (after DDP wrapping; evaluation runs it uncompiled)
    sync_bn: bool | None = None  # SyncBatchNorm across processes (none = on when > 1 process and < 32 images per device)
    dirac_init: bool = False  # start square convs as the identity on their first input channels
    # The model's own options, set as --model.<option>=value (`cifar-dist models` lists them). Written
    # flat into the model section of config.yaml; a new model.name starts from that model's defaults.
    options: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.options, ModelOptions):
            object.__setattr__(self, "options", ModelOptions(self.options))


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | adamax | muon (conv filters by Muon, the rest by `companion`)
    lr: float = 0.1  # peak learning rate at ref_batch_size (see lr_scaling)
    lr_scaling: str = "none"  # none | linear | sqrt: how lr follows global batch / ref_batch_size
    ref_batch_size: int = 128  # global batch size the lr was tuned for
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam-family betas
    eps: float = 1e-8  # Adam-family epsilon
    weight_decay: float = 5e-4  # coupled L2 (decoupled for adamw)
    wd_exempt_norm_bias: bool = False  # no weight decay on norm weights and biases
    decoupled: bool = False  # lr and weight_decay per 1,024 examples, independent of momentum (SGD)
    bias_lr_scale: float = 1.0  # lr multiplier of norm-layer biases; their weight decay is divided by it
    ema_lookahead: int = 0  # every N steps, lookahead towards an EMA of the weights (0 = off)
    ema_lookahead_decay: float = 0.7738  # EMA decay at the end of the run (ramps up as (t/T)^3); 0.95^5
    lookahead: bool = False  # wrap in Lookahead (timm)
    lookahead_k: int = 5  # inner steps between slow-weight updates
    lookahead_alpha: float = 0.5  # slow-weight step size
    grad_clip: float = 0.0  # max global gradient norm (0 = off)
    accum_steps: int = 1  # micro-batches per optimizer step
    head_lr_scale: float = 1.0  # lr multiplier of the classifier head (last Linear); its weight decay is divided by it
    companion: str = "sgd"  # with name=muon: optimizer of every non-filter parameter (sgd | adam | adamw | adamax)
    muon_lr: float = 0.02  # with name=muon: Muon's peak lr on the conv filters (not batch-scaled, not decoupled)
    muon_momentum: float = 0.95  # with name=muon: Muon's momentum
    muon_nesterov: bool = True  # with name=muon: Nesterov momentum in Muon
    muon_ns_steps: int = 5  # with name=muon: Newton-Schulz iterations per step
    muon_normalize: bool = False  # with name=muon: rescale each filter tensor to norm sqrt(out channels) each step


@dataclass(frozen=True)
class SchedConfig:
    name: str = "cosine"  # cosine | onecycle | step | constant | linear (warm-up, then linear decay)
    warmup_epochs: float = 0.0  # linear warm-up length, epochs (fractions allowed)
    warmup_frac: float = 0.0  # warm-up length as a fraction of the run; overrides warmup_epochs when > 0
    warmup_start: float = 0.0  # lr factor at the first warm-up step
    min_lr_ratio: float = 0.0  # floor of the cosine (end of linear) as a fraction of the peak lr
    period_epochs: float = 0.0  # cosine period, epochs (0 = the run's epochs minus warm-up)
    per_epoch: bool = False  # hold the lr constant within an epoch (as epoch-stepped schedulers do)
    step_epochs: int = 30  # step schedule: epochs between decays
    step_gamma: float = 0.1  # step schedule: decay factor
    onecycle_pct: float = 0.3  # onecycle: fraction of steps spent rising
    onecycle_div: float = 25.0  # onecycle: initial lr = peak / div
    onecycle_final_div: float = 1e4  # onecycle: final lr = initial / final_div
    stop_decay: bool = False  # a group that stops at an epoch (whitening bias) falls linearly from the peak to 0 there


@dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = 0.0  # epsilon of label smoothing
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for MixUp (0 = off)
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for CutMix (0 = off)
    mixup_prob: float = 0.0  # per-batch probability of MixUp
    cutmix_prob: float = 0.0  # per-batch probability of CutMix
    ricap_prob: float = 0.0  # per-batch probability of RICAP
    ricap_beta: float = 0.3  # Beta(beta, beta) for the RICAP crossing point


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # run directory name under out_dir
    out_dir: str = "runs"  # parent directory of run directories
    epochs: int = 10  # training epochs
    global_batch_size: int = 512  # images per optimizer step summed over processes
    eval_batch_size: int = 1024  # images per evaluation batch per process
    seed: int = 0  # seed of weights, data order and augmentation
    mixed_precision: str = "auto"  # auto (from `accelerate launch`) | no | bf16 | fp16
    ema: bool = False  # keep an EMA of the weights (timm ModelEmaV3), updated every step
    ema_decay: float = 0.999  # EMA decay per optimizer step
    ema_warmup: bool = False  # timm EMA warm-up of the decay
    tta: str = "none"  # none | flip | flip_translate | flip_diag: test-time augmentation of the final evals
    stop_after: int = 0  # pause after this epoch: checkpoint, paused.json, exit 0; --resume=auto goes on (0 = off)
    early_stop_patience: int = 0  # stop after this many epochs without a better val acc (0 = off)
    early_stop_window: int = 0  # seed 004 rule: window of epochs for the recent best (0 = off)
    early_stop_drop: float = 2.0  # seed 004 rule: stop when val acc falls this many points below it
    early_stop_start: int = 0  # seed 004 rule: first epoch the rule may fire
    checkpoint_every_steps: int = 0  # extra checkpoint every N optimizer steps (0 = per epoch only)
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    log_every_steps: int = 10  # TensorBoard scalars every N optimizer steps
    progress: bool = True  # tqdm progress bar on the main process
    deterministic: bool = False  # torch deterministic algorithms (slower on GPUs)
    allow_cpu: bool = False  # train on the CPU where the machine shows GPUs that CUDA cannot use
    dist_timeout_s: int = 0  # timeout of one collective, s (0 = torch's: 10 min with NCCL, 30 min with gloo)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = ""  # the preset this config started from (informational)


# Values a string field may take; checked on every override.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.loader": ("tensor", "ffcv"),
    "optim.name": ("sgd", "adam", "adamw", "adamax", "muon"),
    "optim.companion": ("sgd", "adam", "adamw", "adamax"),
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "sched.name": ("cosine", "onecycle", "step", "constant", "linear"),
    "aug.flip_mode": ("random", "alternating"),
    "aug.crop_pad": ("zeros", "reflect"),
    "run.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "run.tta": ("none", "flip", "flip_translate", "flip_diag"),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`; return it in canonical form or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        return _coerce(key, inner[0], value)
    if tp is Any:  # an option with neither annotation nor typed default: kept as given
        return value
    if origin in (tuple, list, Sequence):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: expected a list of numbers, found {value!r}") from e
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, found {value!r}")
        elem = args[0] if args else Any
        return tuple(_coerce(key, elem, v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, found {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, found {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, found {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, found {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, found {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, found {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _check(key: str, value: Any) -> None:
    choices = CHOICES.get(key.lstrip("-"))
    if choices and value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, found {value!r}{did_you_mean(value, choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{key}: expected a value >= 0, found {value!r}")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return `cfg` with dotted-key overrides applied, e.g. {"optim.lr": 0.2, "run.epochs": 3}.

    Keys may also be nested dicts ({"optim": {"lr": 0.2}}), as a YAML file gives them. A `model.*` key
    that is not a ModelConfig field is a model option: kept as given here and checked against the model
    by `cifar_dist.models.check_options`. When `model.name` changes, the old model's options are dropped.
    """
    flat: dict[str, Any] = {}
    for k, v in overrides.items():
        if isinstance(v, dict) and "." not in k and k in _field_types(Config):
            for kk, vv in v.items():
                flat[f"{k}.{kk}"] = vv
        else:
            flat[k] = v
    sections = {name: getattr(cfg, name) for name in _field_types(Config) if is_dataclass(getattr(cfg, name))}
    top: dict[str, Any] = {}
    changes: dict[str, dict[str, Any]] = {}
    options: dict[str, Any] = {}
    for key, value in flat.items():
        key = key.replace("-", "_")
        if "." not in key:
            if key == "preset":
                top[key] = str(value)
                continue
            raise ConfigError(
                f"--{key}: unknown option; expected --section.key=value with section one of "
                f"{', '.join(sections)}"
            )
        section, _, name = key.partition(".")
        if section not in sections:
            raise ConfigError(f"--{key}: unknown section {section!r}; expected one of {', '.join(sections)}"
                              f"{did_you_mean(section, sections)}")
        types_ = _field_types(type(sections[section]))
        if section == "model" and (name not in types_ or name == "options"):
            options.update(_option_items(key, name, value))
            continue
        if name not in types_:
            raise ConfigError(f"--{key}: unknown key; {section} has {', '.join(types_)}"
                              f"{did_you_mean(name, types_, f'--{section}.')}")
        coerced = _coerce(f"--{key}", types_[name], value)
        _check(f"--{key}", coerced)
        changes.setdefault(section, {})[name] = coerced
    model_changes = changes.get("model", {})
    if options or "name" in model_changes:
        renamed = model_changes.get("name", cfg.model.name) != cfg.model.name
        kept = {} if renamed else dict(cfg.model.options)
        changes.setdefault("model", {})["options"] = ModelOptions({**kept, **options})
    new_sections = {s: replace(sections[s], **c) for s, c in changes.items()}
    return replace(cfg, **new_sections, **top)


def _option_items(key: str, name: str, value: Any) -> dict[str, Any]:
    """`model.<option>` -> {option: value}; `model.options` (a mapping, as nested YAML gives it) -> itself."""
    if name != "options":
        return {name: value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"--{key}: expected a mapping of model options, found {value!r}")
    return dict(value)


def coerce_value(key: str, tp: Any, value: Any) -> Any:
    """`value` converted to the type `tp` and range-checked as a config field is; ConfigError naming `key`."""
    coerced = _coerce(key, tp, value)
    _check(key, coerced)
    return coerced


# ------------------------------------------------------------------ what each value means: the one table
# Checked on the resolved config (`validate`, called by `cifar_dist.presets.resolve`), before any folder
# exists. Besides these rows: every number is finite, and none is negative (`_check`, on every override).
# Each row: key -> (test, what a value must be, as the error line says it).


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: {p}: file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {p}: not valid YAML ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {p}: expected a mapping of sections, found {type(data).__name__}")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON dumps; model options sit flat in the model section."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out[f.name] = to_dict(v)
        elif isinstance(v, ModelOptions):
            out.update({k: _plain(o) for k, o in v.items()})
        else:
            out[f.name] = _plain(v)
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def model_options(m: ModelConfig) -> dict[str, Any]:
    """The model options that are set, as keyword arguments for `create_model` (checked values come from
    `cifar_dist.models.check_options`)."""
    return dict(m.options)


__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "AugConfig",
    "ModelConfig",
    "ModelOptions",
    "OptimConfig",
    "SchedConfig",
    "LossConfig",
    "RunConfig",
    "apply_overrides",
    "coerce_value",
    "to_dict",
    "flatten",
    "dump_yaml",
    "model_options",
]
