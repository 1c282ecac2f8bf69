"""Where a run stands: `TrainState` (epoch, position in it, running sums, best accuracy, early-stop history),
saved as train_state.json in every checkpoint and checked field by field when a resume reads it back."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any


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


def train_state(data: Any, loader_steps: int | None) -> TrainState:
    """TrainState from train_state.json's object, checked field by field against its meaning (types,
    ranges, the position against this run's `loader_steps` per epoch); ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    want = {f.name: type(f.default) if f.default is not MISSING else list for f in fields(TrainState)}
    unknown = sorted(set(data) - set(want))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}")
    for key, value in data.items():
        numbers = value if want[key] is list else [value]
        if (want[key] is list and not isinstance(value, list)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ValueError(f"{key}: expected {'a list of numbers' if want[key] is list else 'a number'}, "
                             f"found {value!r}")
        if want[key] is int and not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, found {value!r}")
        if not all(math.isfinite(v) and v >= 0 for v in numbers) and key != "best_val_acc":
            raise ValueError(f"{key}: expected a finite value >= 0, found {value!r}")
    state = TrainState(**data)
    if loader_steps is not None and state.step_in_epoch > loader_steps:
        raise ValueError(f"step_in_epoch: expected at most {loader_steps} (this run's steps per epoch), "
                         f"found {state.step_in_epoch}")
    if state.best_epoch > state.epoch + 1:
        raise ValueError(f"best_epoch: expected at most epoch + 1 = {state.epoch + 1}, found {state.best_epoch}")
    return state
