"""Atomic checkpoints on top of accelerate's save_state/load_state.

`checkpoints/last` holds everything a resume needs: model, optimizer, EMA and RNG states of every
process (accelerate `save_state`) plus `train_state.json` (epoch, position in the epoch, running
sums of the epoch, best validation accuracy, early-stopping history). It is written to a temporary
folder and renamed over the previous one, so a kill at any moment leaves one complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cifar_dist.config import ConfigError

LAST, BEST = "last", "best"


@dataclass
class TrainState:
    epoch: int = 0  # 0-based epoch being trained (== epochs done when step_in_epoch is 0)
    step_in_epoch: int = 0  # loader steps of `epoch` already done
    global_step: int = 0  # optimizer steps done
    loss_sum: float = 0.0  # sum over images of this epoch's training loss, all processes
    correct: float = 0.0  # training images classified right this epoch, all processes
    seen: int = 0  # training images seen this epoch, all processes
    train_seconds: float = 0.0  # training time of this epoch so far
    best_epoch: int = 0  # 1-based epoch of the best validation accuracy (0 = none yet)
    best_val_acc: float = -1.0  # best validation accuracy, %
    val_history: list = field(default_factory=list)  # validation accuracy per evaluated epoch, %
    wall_seconds: float = 0.0  # wall time of all sessions of this run before this one

    def start_next_epoch(self) -> None:
        """`epoch` is done: move to the start of the next one with empty running sums."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_sum = self.correct = self.train_seconds = 0.0
        self.seen = 0


def save(accelerator, ckpt_dir: Path, state: TrainState) -> None:
    """Save the accelerate state and `state` to ckpt_dir/last atomically. Call on every process."""
    tmp = ckpt_dir / ".last.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_state.json").write_text(json.dumps(asdict(state)))
        last, old = ckpt_dir / LAST, ckpt_dir / ".last.old"
        shutil.rmtree(old, ignore_errors=True)
        if last.exists():
            os.replace(last, old)
        os.replace(tmp, last)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def find_last(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint (`last`, or `.last.old` if a kill fell between two renames)."""
    for cand in (ckpt_dir / LAST, ckpt_dir / ".last.old"):
        if (cand / "train_state.json").is_file():
            return cand
    return None


def load(accelerator, path: Path) -> TrainState:
    accelerator.load_state(str(path))
    return TrainState(**json.loads((path / "train_state.json").read_text()))


def resume(accelerator, ckpt_dir: Path, mode: str) -> TrainState | None:
    """`--resume`: with "auto", load the newest complete checkpoint if there is one; "none": start fresh."""
    last = find_last(ckpt_dir) if mode == "auto" else None
    if mode not in ("auto", "none"):
        raise ConfigError(f"--resume: expected auto or none, found {mode!r}")
    return None if last is None else load(accelerator, last)


def save_best(model: torch.nn.Module, ema, ckpt_dir: Path, epoch: int, val_acc: float) -> None:
    """Weights of the best validation epoch (and its EMA), written atomically to best/model.pt."""
    best = ckpt_dir / BEST
    best.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "epoch": epoch, "val_acc": val_acc}
    if ema is not None:
        payload["ema"] = ema.module.state_dict()
    tmp = best / ".model.pt.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, best / "model.pt")


def load_best(ckpt_dir: Path) -> dict | None:
    p = ckpt_dir / BEST / "model.pt"
    return torch.load(p, map_location="cpu", weights_only=True) if p.is_file() else None
