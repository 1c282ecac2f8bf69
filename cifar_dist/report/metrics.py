"""The numbers a report gives per run (from result.json, or metrics.jsonl while a run is unfinished),
their mean +- sample std over a cell's seeds, and how config values are written in tables and legends."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def hashable(v: Any) -> Any:
    """Lists as tuples (config values become dict keys and set members)."""
    return tuple(hashable(x) for x in v) if isinstance(v, list) else v


def sort_key(v: Any) -> tuple:
    """Numbers first in numeric order, then everything else by its text."""
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def fmt_value(v: Any) -> str:
    """A config value as the tables and legends show it: true, 0.001, [3, 3, 3]."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def _last(rows: list[dict[str, Any]], key: str) -> Any:
    """The value of `key` in the last row that has it (evaluations may skip epochs)."""
    for row in reversed(rows):
        if row.get(key) is not None:
            return row[key]
    return None


def _best_val_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first row with the highest val_acc (train.py keeps the first of equal bests)."""
    best = None
    for row in rows:
        if row.get("val_acc") is not None and (best is None or row["val_acc"] > best["val_acc"]):
            best = row
    return best


@dataclass(frozen=True)
class Metric:
    label: str  # column title, with the unit
    finished: Callable[[dict[str, Any], list[dict[str, Any]]], Any]  # (result, rows) -> value of a finished run
    partial: Callable[[list[dict[str, Any]]], Any]  # rows -> value of an unfinished run at its last epoch
    higher_is_better: bool = True
    digits: int = 2
    integer: bool = False  # a count (epochs): printed without decimals when every run has the same value


def _none(rows):
    return None


def _best_test_partial(rows):
    best = _best_val_row(rows)
    return best.get("test_acc") if best is not None else _last(rows, "test_acc")


def _best_epoch_partial(rows):
    best = _best_val_row(rows)
    return best["epoch"] if best is not None else (rows[-1]["epoch"] if rows else None)


def _mean_images_per_s(rows):
    v = [r["images_per_s"] for r in rows if r.get("images_per_s") is not None]
    return statistics.fmean(v) if v else None


# Every number the report gives per run, hence per cell as mean +- std; results.csv has all of them.
METRICS: dict[str, Metric] = {
    "best_val_acc": Metric("best val acc (%)", lambda r, rows: r["best"].get("val_acc"),
                           lambda rows: (_best_val_row(rows) or {}).get("val_acc")),
    "best_test_acc": Metric("best test acc (%)", lambda r, rows: r["best"].get("test_acc"), _best_test_partial),
    "best_epoch": Metric("best epoch", lambda r, rows: r["best"].get("epoch"), _best_epoch_partial, digits=1,
                         integer=True),
    "final_val_acc": Metric("final val acc (%)", lambda r, rows: _last(rows, "val_acc"),
                            lambda rows: _last(rows, "val_acc")),
    "final_test_acc": Metric("final test acc (%)", lambda r, rows: r["final"]["test_acc"],
                             lambda rows: _last(rows, "test_acc")),
    "final_test_loss": Metric("final test loss", lambda r, rows: r["final"].get("test_loss"),
                              lambda rows: _last(rows, "test_loss"), higher_is_better=False, digits=4),
    "final_test_acc_tta": Metric("final TTA test acc (%)", lambda r, rows: r["final"].get("test_acc_tta"), _none),
    "best_test_acc_tta": Metric("best TTA test acc (%)", lambda r, rows: r["best"].get("test_acc_tta"), _none),
    "ema_val_acc": Metric("EMA val acc (%)", lambda r, rows: _last(rows, "ema_val_acc"),
                          lambda rows: _last(rows, "ema_val_acc")),
    "ema_test_acc": Metric("EMA test acc (%)", lambda r, rows: r["final"].get("ema_test_acc"),
                           lambda rows: _last(rows, "ema_test_acc")),
    "epochs": Metric("epochs", lambda r, rows: r.get("epochs"),
                     lambda rows: rows[-1]["epoch"] if rows else None, digits=1, integer=True),
    "images_per_s": Metric("images/s", lambda r, rows: r.get("images_per_s"), _mean_images_per_s, digits=0),
    "wall_s": Metric("wall (s)", lambda r, rows: r.get("wall_s"), _none, higher_is_better=False, digits=1),
}
TTA_METRICS = ("final_test_acc_tta", "best_test_acc_tta")


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # sample std (n - 1); None when n < 2
    n: int


def summarize(values: list[float | None]) -> Stat:
    v = [x for x in values if x is not None]
    if not v:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))

