"""Use a trained run: its weights on the test split (`evaluate_run`) or on image files (`predict_images`).

    run = open_run(Path("runs/smoke"))                  # config.yaml, the best weights (else the last)
    report = evaluate_run(run)                           # accuracy, loss, confusion matrix, the run's TTA
    predict_images(run, [Path("cat.png")], top=3)        # [(path, [(class, probability), ...]), ...]

Everything comes from the run directory: the resolved config (model, data, normalisation, resolution, the
test rows a `data.limit_test` draw picked) and the weights, read by `checkpoint.load_weights` (safetensors
and `torch.load(weights_only=True)`: nothing pickled runs). A missing or damaged file is an `InputError`
naming it. The evaluation is the one the run used (`cifar_dist.engine.evaluate.evaluate`), so the same
weights on the same rows give the accuracy result.json recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifar_dist.config import WEIGHTS, Config, ConfigError
from cifar_dist.data import Normalize
from cifar_dist.dataset import Dataset, open_dataset
from cifar_dist.engine import checkpoint as ckpt
from cifar_dist.engine.evaluate import evaluate
from cifar_dist.errors import InputError
from cifar_dist.run_dir import RunDir
from data_prep.arrays import SIDE  # the side of every image `cifar-dist prepare` stores


class RunError(InputError):
    """A run directory that cannot be used (missing, no config, no weights); the message names the file."""


@dataclass
class TrainedRun:
    """A run directory's config and weights, the model built and loaded on the evaluation device."""

    run_dir: Path
    cfg: Config
    data: Dataset  # the run's test file and rows (data.limit_test), its class names
    model: torch.nn.Module  # eval mode, on accelerator.device
    normalize: Normalize  # uint8 (B, 3, 32, 32) -> the float batch the model was trained on
    accelerator: Any
    weights: str  # "best" | "last"
    epoch: int | None  # the epoch the weights are from (1-based)
    val_acc: float | None  # validation accuracy of the best weights, %

    @property
    def recorded(self) -> dict[str, Any]:
        """result.json's test accuracies for these weights ({} when the run has not finished)."""
        part = (RunDir(self.run_dir).read_result() or {}).get("best" if self.weights == "best" else "final")
        return part if isinstance(part, dict) else {}

    def describe(self) -> str:
        """e.g. "best weights (epoch 3, validation accuracy 61.00%)"."""
        about = [f"epoch {self.epoch}"] if self.epoch is not None else []
        if self.val_acc is not None:
            about.append(f"validation accuracy {self.val_acc:.2f}%")
        return f"{self.weights} weights" + (f" ({', '.join(about)})" if about else "")


def load_run_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The run's resolved config.yaml, with `overrides` (`{"data.dir": ...}`) applied; RunError names the file."""
    from cifar_dist.presets import resolve

    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a run directory (no such folder)")
    path = RunDir(run_dir).config
    if not path.is_file():
        raise RunError(f"{path}: missing; expected the config.yaml every run writes when it starts")
    try:
        return resolve(None, str(path), overrides)
    except ConfigError as e:
        raise RunError(f"{path}: {e.one_line().removeprefix('--config: ').removeprefix(f'{path}: ')}") from None


def choose_weights(ckpt_dir: Path, which: str) -> str:
    """"auto": the best validation epoch's weights when the run kept them, else the last."""
    if which not in WEIGHTS:
        raise RunError(f"--weights: expected one of {', '.join(WEIGHTS)}, found {which!r}")
    if which != "auto":
        return which
    if (ckpt_dir / ckpt.BEST_MODEL).is_file():
        return ckpt.BEST
    if (ckpt_dir / ckpt.LAST).is_dir():
        return ckpt.LAST
    raise RunError(f"{ckpt_dir}: no weights (neither {ckpt.BEST_MODEL} nor {ckpt.LAST}/); "
                   f"has the run trained an epoch?")


def open_run(run_dir: Path, weights: str = "auto", data_dir: str | None = None) -> TrainedRun:
    """Build the run's model with its saved weights on this machine's device (a GPU when there is one)."""
    from cifar_dist.engine.session import make_accelerator
    from cifar_dist.models import build_model

    cfg = load_run_config(run_dir, {"data.dir": data_dir} if data_dir else None)
    ckpt_dir = RunDir(run_dir).checkpoints
    which = choose_weights(ckpt_dir, weights)
    state, info = ckpt.load_weights(ckpt_dir, which)
    # One process here, whatever the run had: only the evaluation batch is used.
    cfg = replace(cfg, run=replace(cfg.run, global_batch_size=cfg.optim.accum_steps))
    accelerator, _ = make_accelerator(cfg)
    # Only the test rows are used: no training rows are drawn (a --data folder with fewer images still evaluates).
    data = open_dataset(replace(cfg.data, limit_train=0, val_size=0))
    model = build_model(cfg.model, len(data.classes))
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RunError(f"{ckpt_dir / which}: the weights do not fit the model of {RunDir(run_dir).config} "
                       f"({first})") from None
    model.to(accelerator.device).eval()
    d = cfg.data
    normalize = Normalize(d.mean, d.std, d.resolution, cfg.model.channels_last).to(accelerator.device)
    return TrainedRun(run_dir, cfg, data, model, normalize, accelerator, which, info["epoch"], info["val_acc"])


def evaluate_run(run: TrainedRun, tta: str | None = None, limit_test: int | None = None) -> dict[str, Any]:
    """Test accuracy (%) and loss of the run's weights, per class, and with TTA (the run's mode unless `tta`).

    Returns {"acc", "loss", "n", "per_class": [(class, correct, total)], "tta", "tta_acc" (None without TTA)}.
    """
    from cifar_dist.config import CHOICES
    from cifar_dist.engine.session import eval_loader

    mode = run.cfg.run.tta if tta is None else tta
    if mode not in CHOICES["run.tta"]:
        raise RunError(f"--tta: expected one of {', '.join(CHOICES['run.tta'])}, found {mode!r}")
    # the run's test rows (a `data.limit_test` draw is seeded by `data.split_seed`), or `limit_test` of them
    # (0 = the whole file)
    rows = run.data.test_rows if limit_test is None else run.data.test_subset(limit_test)
    loader = eval_loader(run.data, rows, run.cfg.run.eval_batch_size, run.accelerator.device)
    k = len(run.data.classes)
    plain = evaluate(run.model, loader, run.normalize, run.accelerator, k)
    confusion = plain["confusion"]
    per_class = [(run.data.classes[c], int(confusion[c][c]), int(sum(confusion[c]))) for c in range(k)]
    tta_acc = evaluate(run.model, loader, run.normalize, run.accelerator, k, mode)["acc"] if mode != "none" else None
    return {"acc": plain["acc"], "loss": plain["loss"], "n": len(rows), "per_class": per_class, "tta": mode,
            "tta_acc": tta_acc}


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """An image file as (32, 32, 3) uint8 RGB, as `cifar-dist prepare` stores images, and whether it was
    resized (other sizes: PIL's bicubic resize to 32x32). RunError for a file PIL cannot read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise RunError(f"{path}: not an image PIL can read ({type(e).__name__})") from None
    resized = rgb.size != (SIDE, SIDE)
    if resized:
        rgb = rgb.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8), resized


@torch.no_grad()
def predict_images(run: TrainedRun, paths: list[Path], top: int = 3, batch: int = 256) -> list[dict[str, Any]]:
    """The `top` classes of each image with their softmax probabilities (no TTA), in the order of `paths`.

    Each image goes the way a test image went: 32x32 uint8 RGB, then the run's `Normalize` (resize to
    data.resolution, mean/std). Returns [{"path", "resized", "top": [(class, probability), ...]}].
    """
    images = [read_image(p) for p in paths]  # every file is checked before any work
    top = max(1, min(int(top), len(run.data.classes)))
    out = []
    for i in range(0, len(paths), batch):
        chunk = images[i:i + batch]
        x = torch.from_numpy(np.stack([im for im, _ in chunk])).permute(0, 3, 1, 2).to(run.accelerator.device)
        with run.accelerator.autocast():
            probs = F.softmax(run.model(run.normalize(x)).float(), dim=1)
        p, idx = probs.topk(top, dim=1)
        for j, (_, resized) in enumerate(chunk):
            out.append({"path": paths[i + j], "resized": resized,
                        "top": [(run.data.classes[c], float(q)) for c, q in zip(idx[j].tolist(), p[j].tolist())]})
    return out
