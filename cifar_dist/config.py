"""One typed, frozen, nested configuration for a training run.

Precedence, lowest first: dataclass defaults < preset < YAML file < command-line flags
(`cifar_dist.presets.resolve`).
Every override is checked against the field it targets (`cifar_dist.overrides`); the CLI turns the
`ConfigError` of a bad one into exit status 2.
Each field carries its help text (`opt`: its unit, what 0 or none means), the line `--help` prints for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from cifar_dist.errors import ConfigError
from cifar_dist.schema import opt

RESUME_MODES = ("auto", "none", "force")  # --resume of the trainer (cifar_dist.engine.checkpoint reads them)
WEIGHTS = ("auto", "best", "last")  # --weights of evaluate and predict (cifar_dist.engine.trained reads them)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of CIFAR-10 train, in [0, 1]
KUANGLIU_STD = (0.2023, 0.1994, 0.2010)  # the std most CIFAR repos copy (not the true std)
CIFAR_STD = (0.2470, 0.2435, 0.2616)  # the true per-channel std of CIFAR-10 train


@dataclass(frozen=True)
class DataConfig:
    dir: str = opt("data", "folder with <name>_train.beton, <name>_test.beton (from `cifar-dist prepare`)")
    name: str = opt("cifar10", "dataset prefix of the .beton files")
    loader: str = opt("tensor", '"tensor": whole split resident on the device; "ffcv": FFCV pipeline')
    num_workers: int = opt(2, "FFCV decoding threads (ignored by the tensor loader)")
    val_size: int = opt(5000, "images held out of train for validation/early stopping (0 = none)")
    split_seed: int = opt(0, "seed of the train/validation split (independent of run.seed)")
    limit_train: int = opt(0, "train on N images, a class-balanced sample drawn with split_seed (0 = all); "
                              "smoke tests")
    limit_test: int = opt(0, "test on N images, a class-balanced sample drawn with split_seed (0 = all)")
    resolution: int = opt(32, "pixels; images are resized on the device when this is not 32")
    mean: tuple[float, ...] = opt(CIFAR_MEAN, "normalisation mean, RGB in [0, 1]")
    std: tuple[float, ...] = opt(KUANGLIU_STD, "normalisation std, RGB in [0, 1]")


@dataclass(frozen=True)
class AugConfig:
    crop_padding: int = opt(4, "pixels of padding for the random crop (0 = no crop)")
    crop_pad: str = opt("zeros", "zeros | reflect: how the crop pads (either loader)")
    flip: bool = opt(True, "random horizontal flip, p = 0.5")
    flip_mode: str = opt("random", "random | alternating: one random flip, mirrored every other epoch "
                                   "(either loader)")
    cutout: int = opt(0, "side in pixels of one zeroed square (0 = off)")
    cutout_prob: float = opt(1.0, "probability that an image gets the cutout square")
    autoaugment: bool = opt(False, "torchvision AutoAugment, CIFAR10 policy, per image on uint8")
    rotation: float = opt(0.0, "max degrees of a random rotation (0 = off)")
    affine_prob: float = opt(0.0, "probability of a random shift/scale/rotate (seed 004 style)")
    affine_shift: float = opt(0.0, "max shift as a fraction of the side")
    affine_scale: float = opt(0.0, "max relative scale change")
    affine_rotate: float = opt(0.0, "max degrees for the affine transform")
    color_prob: float = opt(0.0, "probability of brightness/contrast jitter")
    brightness: float = opt(0.0, "max relative brightness change")
    contrast: float = opt(0.0, "max relative contrast change")
    hsv_prob: float = opt(0.0, "probability of hue/saturation/value jitter")
    hue: float = opt(0.0, "max hue shift as a fraction of the colour wheel")
    saturation: float = opt(0.0, "max relative saturation change")
    value: float = opt(0.0, "max relative value (brightness) change")
    dropout_prob: float = opt(0.0, "probability of coarse dropout (holes)")
    dropout_holes: tuple[int, ...] = opt((1, 1), "min and max number of holes")
    dropout_size: tuple[int, ...] = opt((8, 8), "min and max hole side, pixels")


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
    name: str = opt("simple_cnn", "registered model name (`cifar-dist models`) or timm:<name>")
    max_params: int = opt(0, "refuse to train a model with more parameters (0 = no limit)")
    channels_last: bool = opt(True, "NHWC memory format (faster convolutions on GPUs)")
    compile: bool = opt(False, "torch.compile the model (after DDP wrapping; evaluation runs it uncompiled)")
    sync_bn: bool | None = opt(None, "SyncBatchNorm across processes (none = on when > 1 process and < 32 "
                                     "images per device)")
    dirac_init: bool = opt(False, "start square convs as the identity on their first input channels")
    options: ModelOptions = field(default_factory=ModelOptions, metadata={
        "help": "the model's own options, --model.<option>=value (listed under Model options below)"})

    def __post_init__(self) -> None:
        if not isinstance(self.options, ModelOptions):
            object.__setattr__(self, "options", ModelOptions(self.options))


@dataclass(frozen=True)
class OptimConfig:
    name: str = opt("sgd", "sgd | adam | adamw | adamax | muon (conv filters by Muon, the rest by `companion`)")
    lr: float = opt(0.1, "peak learning rate at ref_batch_size (see lr_scaling)")
    lr_scaling: str = opt("none", "none | linear | sqrt: how lr follows global batch / ref_batch_size")
    ref_batch_size: int = opt(128, "global batch size the lr was tuned for")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "SGD Nesterov momentum")
    betas: tuple[float, ...] = opt((0.9, 0.999), "Adam-family betas")
    eps: float = opt(1e-8, "Adam-family epsilon")
    weight_decay: float = opt(5e-4, "coupled L2 (decoupled for adamw)")
    wd_exempt_norm_bias: bool = opt(False, "no weight decay on norm weights and biases")
    decoupled: bool = opt(False, "lr and weight_decay per 1,024 examples, independent of momentum (SGD)")
    bias_lr_scale: float = opt(1.0, "lr multiplier of norm-layer biases; their weight decay is divided by it")
    ema_lookahead: int = opt(0, "every N steps, lookahead towards an EMA of the weights (0 = off)")
    ema_lookahead_decay: float = opt(0.7738, "EMA decay at the end of the run (ramps up as (t/T)^3); 0.95^5")
    lookahead: bool = opt(False, "wrap in Lookahead (timm)")
    lookahead_k: int = opt(5, "inner steps between slow-weight updates")
    lookahead_alpha: float = opt(0.5, "slow-weight step size")
    grad_clip: float = opt(0.0, "max global gradient norm (0 = off)")
    accum_steps: int = opt(1, "micro-batches per optimizer step")
    head_lr_scale: float = opt(1.0, "lr multiplier of the classifier head (last Linear); its weight decay is "
                                    "divided by it")
    companion: str = opt("sgd", "with name=muon: optimizer of every non-filter parameter (sgd | adam | adamw "
                                "| adamax)")
    muon_lr: float = opt(0.02, "with name=muon: Muon's peak lr on the conv filters (not batch-scaled, not decoupled)")
    muon_momentum: float = opt(0.95, "with name=muon: Muon's momentum")
    muon_nesterov: bool = opt(True, "with name=muon: Nesterov momentum in Muon")
    muon_ns_steps: int = opt(5, "with name=muon: Newton-Schulz iterations per step")
    muon_normalize: bool = opt(False, "with name=muon: rescale each filter tensor to norm sqrt(out channels) "
                                      "each step")


@dataclass(frozen=True)
class SchedConfig:
    name: str = opt("cosine", "cosine | onecycle | step | constant | linear (warm-up, then linear decay)")
    warmup_epochs: float = opt(0.0, "linear warm-up length, epochs (fractions allowed)")
    warmup_frac: float = opt(0.0, "warm-up length as a fraction of the run; overrides warmup_epochs when > 0")
    warmup_start: float = opt(0.0, "lr factor at the first warm-up step")
    min_lr_ratio: float = opt(0.0, "floor of the cosine (end of linear) as a fraction of the peak lr")
    period_epochs: float = opt(0.0, "cosine period, epochs (0 = the run's epochs minus warm-up)")
    per_epoch: bool = opt(False, "hold the lr constant within an epoch (as epoch-stepped schedulers do)")
    step_epochs: int = opt(30, "step schedule: epochs between decays")
    step_gamma: float = opt(0.1, "step schedule: decay factor")
    onecycle_pct: float = opt(0.3, "onecycle: fraction of steps spent rising")
    onecycle_div: float = opt(25.0, "onecycle: initial lr = peak / div")
    onecycle_final_div: float = opt(1e4, "onecycle: final lr = initial / final_div")
    stop_decay: bool = opt(False, "a group that stops at an epoch (whitening bias) falls linearly from the "
                                  "peak to 0 there")


@dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = opt(0.0, "epsilon of label smoothing")
    mixup_alpha: float = opt(0.0, "Beta(alpha, alpha) for MixUp (0 = off)")
    cutmix_alpha: float = opt(0.0, "Beta(alpha, alpha) for CutMix (0 = off)")
    mixup_prob: float = opt(0.0, "per-batch probability of MixUp")
    cutmix_prob: float = opt(0.0, "per-batch probability of CutMix")
    ricap_prob: float = opt(0.0, "per-batch probability of RICAP")
    ricap_beta: float = opt(0.3, "Beta(beta, beta) for the RICAP crossing point")


@dataclass(frozen=True)
class RunConfig:
    name: str = opt("run", "run directory name under out_dir")
    out_dir: str = opt("runs", "parent directory of run directories")
    epochs: int = opt(10, "training epochs")
    global_batch_size: int = opt(512, "images per optimizer step summed over processes")
    eval_batch_size: int = opt(1024, "images per evaluation batch per process")
    seed: int = opt(0, "seed of weights, data order and augmentation")
    mixed_precision: str = opt("auto", "auto (from `accelerate launch`) | no | bf16 | fp16")
    ema: bool = opt(False, "keep an EMA of the weights (timm ModelEmaV3), updated every step")
    ema_decay: float = opt(0.999, "EMA decay per optimizer step")
    ema_warmup: bool = opt(False, "timm EMA warm-up of the decay")
    tta: str = opt("none", "none | flip | flip_translate | flip_diag: test-time augmentation of the final evals")
    stop_after: int = opt(0, "pause after this epoch: checkpoint, paused.json, exit 0; --resume=auto goes on "
                             "(0 = off)")
    early_stop_patience: int = opt(0, "stop after this many epochs without a better val acc (0 = off)")
    early_stop_window: int = opt(0, "seed 004 rule: window of epochs for the recent best (0 = off)")
    early_stop_drop: float = opt(2.0, "seed 004 rule: stop when val acc falls this many points below it")
    early_stop_start: int = opt(0, "seed 004 rule: first epoch the rule may fire")
    checkpoint_every_steps: int = opt(0, "extra checkpoint every N optimizer steps (0 = per epoch only)")
    eval_every: int = opt(1, "evaluate every N epochs (the last epoch always)")
    log_every_steps: int = opt(10, "TensorBoard scalars every N optimizer steps")
    progress: bool = opt(True, "tqdm progress bar on the main process (only when stderr is a terminal)")
    deterministic: bool = opt(False, "torch deterministic algorithms (slower on GPUs)")
    allow_cpu: bool = opt(False, "train on the CPU where the machine shows GPUs that CUDA cannot use")
    dist_timeout_s: int = opt(0, "timeout of one collective, s (0 = torch's: 10 min with NCCL, 30 min with gloo)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = opt("", "the preset this config started from (informational)")


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
            out.update({k: plain(o) for k, o in v.items()})
        else:
            out[f.name] = plain(v)
    return out


def plain(value: Any) -> Any:
    """A config value as YAML and JSON write it: tuples (also nested) as lists."""
    return [plain(v) for v in value] if isinstance(value, tuple) else value


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

