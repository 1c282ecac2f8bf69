"""`cifar-dist report PATH`: a sweep's results as a table of mean +- std over seeds, a CSV and plots.

    cifar-dist report runs/lr_sweep                       # report.md, results.csv, report_plots/ in the sweep dir
    cifar-dist report runs/lr_sweep --metric=final_test_acc --out=reports/lr_sweep
    cifar-dist report runs/lr_sweep/c000-s0               # one run: the same table and curves
    tensorboard --logdir runs/lr_sweep                    # every run in the Scalars and HParams tabs

Input. PATH is either one run directory (it holds config.yaml, metrics.jsonl or result.json; see
`cifar_dist.logs`) or a folder of them. In a sweep folder the runs are named `<cell>-s<seed>` and
`sweep.json` (written by `cifar-dist sweep`) gives each cell's overrides and parameter count. Without
sweep.json the runs are grouped by their name without the `-s<seed>` suffix, and a group's overrides
are the config keys (config.yaml, flattened to dotted keys) whose values differ between groups.

Statistics. A run is finished when it has result.json (status "finished" or "early_stopped"). A cell's
values are mean +- sample std over its finished runs, with n = the runs that have the value. A cell
without any finished run is reported from its runs' metrics.jsonl at their last logged epoch and
marked "partial"; unfinished runs are always listed with their last epoch, never dropped.

Output, written only after everything was read and drawn (each file through a temporary name):
    report.md       the table sorted by --metric, the runs, the plots, the TensorBoard command
    results.csv     one row per cell: overrides, params, then <metric>_mean/_std/_n for every metric
    report_plots/   test accuracy per epoch (one figure per varied key, lines coloured by its value),
                    final test accuracy against parameters, train and test loss per epoch (PNG)
Exit status: 0 written; 2 bad input (one line on stderr naming the file or flag; nothing written).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cifar_dist.files import atomic_write_bytes, atomic_write_text

EXIT_OK, EXIT_BAD_INPUT = 0, 2
RUN_FILES = ("config.yaml", "metrics.jsonl", "result.json")
PLOTS_DIR = "report_plots"
# Config keys that differ between runs without being hyperparameters.
NOT_HYPERPARAMETERS = {"run.name", "run.seed", "run.out_dir", "run.progress"}
SEED_SUFFIX = re.compile(r"^(?P<cell>.+)-s(?P<seed>\d+)$")


class ReportError(ValueError):
    """Input the report cannot use; the message is one line naming the file."""


# ---------------------------------------------------------------------------------------------- runs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from e


def read_metrics_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl -> rows; every non-blank line must be a JSON object with an integer "epoch"."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ReportError(f"{path}:{i}: expected one JSON object per line, found {line[:60]!r}") from None
        if not isinstance(row, dict) or isinstance(row.get("epoch"), bool) or not isinstance(row.get("epoch"), int):
            raise ReportError(f"{path}:{i}: expected an object with an integer \"epoch\", found {line[:60]!r}")
        rows.append(row)
    return rows


def _read_result(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    res = _read_json(path)
    if not isinstance(res, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(res).__name__}")
    for key in ("final", "best"):
        if not isinstance(res.get(key), dict):
            raise ReportError(f"{path}: expected an object under {key!r}, found {res.get(key)!r}")
    if not isinstance(res["final"].get("test_acc"), (int, float)):
        raise ReportError(f"{path}: expected a number at final.test_acc, found {res['final'].get('test_acc')!r}")
    return res


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def _read_config(path: Path) -> dict[str, Any]:
    """config.yaml -> {"optim.lr": 0.1, ...} (lists as tuples); {} when the file is missing."""
    from cifar_dist.config import flatten

    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a mapping of config sections, found {type(data).__name__}")
    return {k: _hashable(v) for k, v in flatten(data).items()}


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


@dataclass
class Run:
    """One run directory as read from disk."""

    name: str
    path: Path
    config: dict[str, Any]  # flattened config.yaml ({} when missing)
    rows: list[dict[str, Any]]  # metrics.jsonl, one per finished epoch
    result: dict[str, Any] | None  # result.json; None while the run is unfinished
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def status(self) -> str:
        return str(self.result.get("status", "finished")) if self.result is not None else "partial"

    @property
    def last_epoch(self) -> int:
        return self.rows[-1]["epoch"] if self.rows else 0

    @property
    def planned_epochs(self) -> int | None:
        return self.config.get("run.epochs")

    @property
    def seed(self) -> int | None:
        if "run.seed" in self.config:
            return self.config["run.seed"]
        m = SEED_SUFFIX.match(self.name)
        return int(m["seed"]) if m else None

    @property
    def params(self) -> int | None:
        return (self.result or {}).get("params") or self.env.get("params")

    @property
    def preset(self) -> str:
        return str(self.config.get("preset") or (self.result or {}).get("preset") or "")

    def value(self, metric: str) -> float | None:
        """This run's `metric` (see METRICS): from result.json, or from metrics.jsonl while unfinished."""
        m = METRICS[metric]
        v = m.finished(self.result, self.rows) if self.result is not None else m.partial(self.rows)
        return None if v is None else float(v)


def load_run(path: Path) -> Run:
    env_path = path / "env.json"
    env = _read_json(env_path) if env_path.is_file() else {}
    return Run(name=path.name, path=path, config=_read_config(path / "config.yaml"),
               rows=read_metrics_rows(path / "metrics.jsonl"), result=_read_result(path / "result.json"),
               env=env if isinstance(env, dict) else {})


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in RUN_FILES)


# ------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    label: str  # column title, with the unit
    finished: Callable[[dict[str, Any], list[dict[str, Any]]], Any]  # (result, rows) -> value of a finished run
    partial: Callable[[list[dict[str, Any]]], Any]  # rows -> value of an unfinished run at its last epoch
    higher_is_better: bool = True
    digits: int = 2


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
    "best_epoch": Metric("best epoch", lambda r, rows: r["best"].get("epoch"), _best_epoch_partial, digits=1),
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
                     lambda rows: rows[-1]["epoch"] if rows else None, digits=1),
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


# --------------------------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One grid point: its overrides and the runs (one per seed) that share them."""

    name: str
    overrides: dict[str, Any]
    runs: list[Run]
    params: int | None = None  # from sweep.json; else from the runs
    sweep_preset: str = ""  # the cell's preset in sweep.json; the runs' config.yaml wins

    @property
    def finished_runs(self) -> list[Run]:
        return [r for r in self.runs if r.finished]

    @property
    def partial_runs(self) -> list[Run]:
        return [r for r in self.runs if not r.finished]

    @property
    def counted_runs(self) -> list[Run]:
        """The runs the statistics use: the finished ones, or the unfinished ones when none finished."""
        return self.finished_runs or self.runs

    @property
    def status(self) -> str:
        if not self.runs:
            return "no runs"
        if not self.finished_runs:
            return "partial"
        if self.partial_runs:
            return f"{len(self.finished_runs)}/{len(self.runs)} finished"
        return "finished"

    @property
    def n_params(self) -> int | None:
        if self.params is not None:
            return self.params
        found = [r.params for r in self.runs if r.params is not None]
        return found[0] if found else None

    @property
    def preset(self) -> str:
        return next((r.preset for r in self.runs if r.preset), self.sweep_preset)

    def stat(self, metric: str) -> Stat:
        return summarize([r.value(metric) for r in self.counted_runs])

    def key_value(self, key: str) -> Any:
        """The cell's value of a config key: its override, else its runs' resolved config."""
        if key in self.overrides:
            return _hashable(self.overrides[key])
        return next((r.config[key] for r in self.runs if key in r.config), None)


@dataclass
class Sweep:
    name: str
    path: Path
    cells: list[Cell]
    info: dict[str, Any]  # sweep.json, or {} for a folder of plain runs
    override_keys: list[str]  # the table's override columns
    varying_keys: list[str]  # override keys with two or more values: one accuracy figure each
    missing: list[str]  # runs sweep.json expects that have no directory yet
    single_run: bool = False

    @property
    def runs(self) -> list[Run]:
        return [r for c in self.cells for r in c.runs]


def _split_name(name: str) -> str:
    m = SEED_SUFFIX.match(name)
    return m["cell"] if m else name


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in configs for k in c} - NOT_HYPERPARAMETERS)
    missing = object()
    return [k for k in keys if len({repr(c.get(k, missing)) for c in configs}) > 1]


def load_sweep(path: Path) -> Sweep:
    """Read a sweep folder, a folder of plain runs, or one run directory."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such directory")
    if not path.is_dir():
        raise ReportError(f"{path}: expected a sweep or run directory, found a file")
    if is_run_dir(path):
        run = load_run(path)
        cell = Cell(_split_name(run.name), {}, [run])
        return Sweep(run.name, path, [cell], {}, [], [], [], single_run=True)

    info: dict[str, Any] = {}
    sweep_json = path / "sweep.json"
    if sweep_json.is_file():
        info = _read_json(sweep_json)
        if not isinstance(info, dict) or not isinstance(info.get("cells", []), list):
            raise ReportError(f"{sweep_json}: expected an object with a list under \"cells\"")
        if not isinstance(info.get("seeds", []), list):
            raise ReportError(f"{sweep_json}: expected a list under \"seeds\", found {info['seeds']!r}")
    run_dirs = sorted(p for p in path.iterdir() if is_run_dir(p))
    if not run_dirs:
        raise ReportError(f"{path}: no run directories (expected <cell>-s<seed>/ folders holding metrics.jsonl, "
                          f"config.yaml or result.json)")
    groups: dict[str, list[Run]] = {}
    for d in run_dirs:
        run = load_run(d)
        groups.setdefault(_split_name(run.name), []).append(run)

    cells: list[Cell] = []
    missing: list[str] = []
    if info:
        declared = set()
        for i, c in enumerate(info.get("cells", [])):
            if not isinstance(c, dict) or not isinstance(c.get("cell"), str):
                raise ReportError(f"{sweep_json}: cells[{i}]: expected an object with a \"cell\" name")
            overrides = c.get("overrides") or {}
            if not isinstance(overrides, dict):
                raise ReportError(f"{sweep_json}: cells[{i}].overrides: expected an object, found {overrides!r}")
            declared.add(c["cell"])
            runs = groups.get(c["cell"], [])
            cells.append(Cell(c["cell"], overrides, runs, c.get("params"), str(c.get("preset") or info.get("preset") or "")))
            present = {r.seed for r in runs}
            missing += [f"{c['cell']}-s{s}" for s in info.get("seeds", []) if s not in present]
        # Runs the sweep file does not know (added by hand) are still reported, as cells of their own.
        cells += [Cell(name, {}, runs) for name, runs in sorted(groups.items()) if name not in declared]
        override_keys = sorted({k for c in cells for k in c.overrides})
    else:
        override_keys = _differing_keys([runs[0].config for runs in groups.values() if runs[0].config])
        cells = [Cell(name, {k: runs[0].config.get(k) for k in override_keys}, runs)
                 for name, runs in sorted(groups.items())]
    varying = [k for k in override_keys if len({repr(c.key_value(k)) for c in cells if c.runs}) > 1]
    return Sweep(str(info.get("name") or path.name), path, cells, info, override_keys, varying, missing)


# --------------------------------------------------------------------------------------------- plots


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg renders PNG without pyplot's global state
    return fig, fig.add_subplot()


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def mean_curve(runs: list[Run], key: str) -> tuple[list[int], list[float], list[float]]:
    """Per epoch: mean and sample std (0 for one run) of `key` over the runs that logged it."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for row in run.rows:
            if isinstance(row.get(key), (int, float)):
                by_epoch.setdefault(row["epoch"], []).append(float(row[key]))
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def _value_colours(values: list[Any]) -> dict[str, Any]:
    """Distinct values -> colours: a sequential map for numbers (order reads as size), tab10 otherwise."""
    import matplotlib

    distinct = sorted({repr(v): v for v in values}.values(), key=_sort_key)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
    if numeric and len(distinct) > 1:
        cmap = matplotlib.colormaps["viridis"]
        return {repr(v): cmap(0.85 * i / (len(distinct) - 1)) for i, v in enumerate(distinct)}
    cmap = matplotlib.colormaps["tab10"]
    return {repr(v): cmap(i % 10) for i, v in enumerate(distinct)}


def cell_label(cell: Cell, keys: list[str]) -> str:
    parts = [f"{k}={fmt_value(cell.key_value(k))}" for k in keys]
    return f"{cell.name}: {', '.join(parts)}" if parts else cell.name


def accuracy_figure(cells: list[Cell], key: str | None = None, keys: list[str] | tuple = ()):
    """Test accuracy (%) per epoch, one line per cell (mean over seeds, band = +-1 std).

    With `key`, lines are coloured by the cell's value of that config key and the legend has one
    entry per value (the way seed 001 compared batch sizes, learning rates, optimizers, Lookahead);
    without it every cell has its own colour and a legend entry `cell_label(cell, keys)`.
    """
    fig, ax = _figure()
    cells = [c for c in cells if c.runs]
    if key is not None:
        colours = _value_colours([c.key_value(key) for c in cells])
        order = sorted(cells, key=lambda c: (_sort_key(c.key_value(key)), c.name))
    else:
        colours = {c.name: f"C{i % 10}" for i, c in enumerate(cells)}
        order = cells
    labelled: set[str] = set()
    for cell in order:
        epochs, means, stds = mean_curve(cell.counted_runs, "test_acc")
        if key is not None:
            value = repr(cell.key_value(key))
            colour = colours[value]
            label = f"{key}={fmt_value(cell.key_value(key))}" if value not in labelled else "_nolegend_"
            labelled.add(value)
        else:
            colour, label = colours[cell.name], cell_label(cell, list(keys))
        ax.plot(epochs, means, marker="o", markersize=3, color=colour, label=label)
        if len(cell.counted_runs) > 1:
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy by {key}" if key else "Test accuracy")
    ax.grid(alpha=0.3)
    if order:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def params_figure(cells: list[Cell], keys: list[str] | tuple = ()):
    """Final test accuracy (%, mean +- std over seeds) against parameter count, one point per cell."""
    fig, ax = _figure()
    for i, cell in enumerate(c for c in cells if c.runs and c.n_params):
        s = cell.stat("final_test_acc")
        if s.mean is None:
            continue
        ax.errorbar([cell.n_params], [s.mean], yerr=[s.std or 0.0], fmt="o", capsize=3, color=f"C{i % 10}",
                    label=cell_label(cell, list(keys)))
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Final test accuracy against model size")
    ax.grid(alpha=0.3, which="both")
    if ax.containers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_figure(cells: list[Cell], keys: list[str] | tuple = ()):
    """Train loss (solid) and test loss (dashed) per epoch, mean over seeds, one colour per cell."""
    fig, ax = _figure()
    for i, cell in enumerate(c for c in cells if c.runs):
        label = cell_label(cell, list(keys))
        for key, style, what in (("train_loss", "-", "train"), ("test_loss", "--", "test")):
            epochs, means, _ = mean_curve(cell.counted_runs, key)
            ax.plot(epochs, means, linestyle=style, marker="o", markersize=3, color=f"C{i % 10}",
                    label=f"{label} ({what})")
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("loss (cross-entropy)")
    ax.set_title("Train and test loss")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def sweep_figures(sweep: Sweep) -> list[tuple[str, str, Any]]:
    """[(file name, title, Figure)] for a sweep: accuracy per varied key (or per cell), params, loss."""
    keys = sweep.varying_keys
    out = [(f"test_acc_by_{_slug(k)}.png", f"Test accuracy by {k}", accuracy_figure(sweep.cells, key=k))
           for k in keys]
    if not keys:
        out.append(("test_acc.png", "Test accuracy", accuracy_figure(sweep.cells, keys=keys)))
    out.append(("final_acc_vs_params.png", "Final test accuracy against parameters", params_figure(sweep.cells, keys)))
    out.append(("loss.png", "Train and test loss", loss_figure(sweep.cells, keys)))
    return out


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -------------------------------------------------------------------------------------------- tables


def default_metric(sweep: Sweep) -> str:
    has_val = any(c.stat("best_val_acc").n for c in sweep.cells)
    return "best_val_acc" if has_val else "final_test_acc"


def sorted_cells(sweep: Sweep, metric: str) -> list[Cell]:
    """Best first by the mean of `metric`; cells without a value last, ties by name."""
    sign = -1.0 if METRICS[metric].higher_is_better else 1.0

    def key(c: Cell):
        m = c.stat(metric).mean
        return (m is None or math.isnan(m), sign * m if m is not None else 0.0, c.name)

    return sorted(sweep.cells, key=key)


def fmt_stat(s: Stat, digits: int, n_row: int | None = None) -> str:
    """`mean ± std`, with `(n=k)` when k differs from the row's n; an em dash when there is no value."""
    if s.mean is None:
        return "—"
    text = f"{s.mean:,.{digits}f}" + (f" ± {s.std:,.{digits}f}" if s.std is not None else "")
    return text if s.n == n_row else f"{text} (n={s.n})"


def _partial_note(run: Run) -> str:
    planned = f"/{run.planned_epochs}" if run.planned_epochs else ""
    return f"{run.name}@{run.last_epoch}{planned}"


def results_csv(sweep: Sweep, metric: str) -> str:
    """One row per cell (sorted by `metric`): overrides, params, status, then mean/std/n per metric."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["cell", *sweep.override_keys, "preset", "params", "status", "n_runs", "n_finished", "partial_runs",
                *[f"{m}_{part}" for m in METRICS for part in ("mean", "std", "n")], "reported_test_acc"])
    reported = _reported()
    for c in sorted_cells(sweep, metric):
        stats = [c.stat(m) for m in METRICS]
        w.writerow([c.name, *[fmt_value(c.key_value(k)) for k in sweep.override_keys], c.preset,
                    c.n_params if c.n_params is not None else "", c.status, len(c.runs), len(c.finished_runs),
                    " ".join(_partial_note(r) for r in c.partial_runs),
                    *[x for s in stats for x in (_num(s.mean), _num(s.std), s.n)],
                    _num(reported.get(c.preset))])
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _reported() -> dict[str, float]:
    from cifar_dist.presets import REPORTED_ACC

    return REPORTED_ACC


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    return ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(esc(x) for x in r) + " |" for r in rows]]


def report_markdown(sweep: Sweep, metric: str, plots: list[tuple[str, str]]) -> str:
    """report.md: summary, the cell table sorted by `metric`, the runs, the plots, TensorBoard."""
    runs = sweep.runs
    partial = [r for r in runs if not r.finished]
    reported = _reported()
    presets = sorted({c.preset for c in sweep.cells if c.preset})
    used_tta = any(r.config.get("run.tta", "none") != "none" for r in runs)
    m = METRICS[metric]
    lines = [f"# Report: {sweep.name}", ""]
    what = "run" if sweep.single_run else "sweep"
    lines.append(f"Source: `{sweep.path}` ({what}; {len(runs)} run{'s' * (len(runs) != 1)} in {len(sweep.cells)} "
                 f"cell{'s' * (len(sweep.cells) != 1)}, {len(runs) - len(partial)} finished, {len(partial)} unfinished).")
    if sweep.info:
        seeds = ", ".join(str(s) for s in sweep.info.get("seeds", []))
        lines.append(f"Sweep spec `{sweep.info.get('spec', '?')}`, preset `{sweep.info.get('preset', '?')}`, "
                     f"seeds {seeds or '?'}.")
        fixed = sweep.info.get("fixed") or {}
        if fixed:
            lines.append("Fixed for every cell: " + ", ".join(f"`{k}={fmt_value(_hashable(v))}`" for k, v in fixed.items())
                         + ".")
    elif presets:
        lines.append(f"Preset: {', '.join(f'`{p}`' for p in presets)}.")
    for p in presets:
        if p in reported:
            lines.append(f"The seed behind preset `{p}` reported {reported[p]:.2f} % test accuracy "
                         f"(column \"seed reported\"; see `cifar-dist presets` for how it was measured).")
    lines += ["", f"Sorted by {m.label}, {'highest' if m.higher_is_better else 'lowest'} first. Values are "
              "mean ± sample std over the seeds of a cell, n = runs counted (shown per value when it differs). "
              "A cell's statistics use its finished runs; a cell with none is reported from its runs' last "
              "logged epoch (status \"partial\").", ""]

    cols = [k for k in METRICS if any(c.stat(k).n for c in sweep.cells)]
    if not used_tta:
        cols = [k for k in cols if k not in TTA_METRICS]
    show_reported = any(c.preset in reported for c in sweep.cells)
    header = ["cell", *sweep.override_keys, "params", "n", *[METRICS[k].label for k in cols]]
    header += ["seed reported (%)"] if show_reported else []
    header.append("status")
    rows = []
    for c in sorted_cells(sweep, metric):
        n_row = len(c.counted_runs)
        row = [c.name, *[f"`{fmt_value(c.key_value(k))}`" for k in sweep.override_keys],
               f"{c.n_params:,}" if c.n_params else "—", str(n_row),
               *[fmt_stat(c.stat(k), METRICS[k].digits, n_row) for k in cols]]
        if show_reported:
            row.append(f"{reported[c.preset]:.2f}" if c.preset in reported else "—")
        note = c.status
        if c.partial_runs:
            note += "; unfinished: " + ", ".join(_partial_note(r) for r in c.partial_runs)
        row.append(note)
        rows.append(row)
    lines += _md_table(header, rows)

    lines += ["", "## Runs", ""]
    run_rows = []
    for c in sweep.cells:
        for r in c.runs:
            planned = f"/{r.planned_epochs}" if r.planned_epochs else ""
            vals = [r.value(k) for k in ("final_test_acc", "best_val_acc", "best_epoch")]
            run_rows.append([r.name, c.name, "—" if r.seed is None else str(r.seed), r.status,
                             f"{r.last_epoch}{planned}", *["—" if v is None else f"{v:.2f}" for v in vals[:2]],
                             "—" if vals[2] is None else str(int(vals[2]))])
    lines += _md_table(["run", "cell", "seed", "status", "epoch", "test acc (%)", "best val acc (%)", "best epoch"],
                       run_rows)
    if partial:
        lines += ["", "Unfinished runs (no result.json; values at their last logged epoch): "
                  + ", ".join(f"`{r.name}` at epoch {r.last_epoch}" + (f" of {r.planned_epochs}" if r.planned_epochs
                                                                        else "") for r in partial) + "."]
    if sweep.missing:
        lines += ["", f"Runs listed in sweep.json without a directory yet: {', '.join(sweep.missing)}."]

    lines += ["", "## Plots", ""]
    for name, title in plots:
        lines += [f"![{title}]({PLOTS_DIR}/{name})", ""]
    lines += ["## TensorBoard", "",
              "Scalars per epoch (`epoch/*`) and per step (`train/*`), and every run's full config with its final "
              "metrics in the HParams tab:", "", "```", f"tensorboard --logdir {sweep.path}", "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- write


@dataclass
class Report:
    out_dir: Path
    markdown: str
    csv: str
    plots: dict[str, bytes]  # file name in report_plots/ -> PNG bytes
    summary: str  # one progress line


def build_report(path: str | Path, out: str | Path | None = None, metric: str | None = None) -> Report:
    """Read PATH and render everything in memory; raises ReportError on unusable input."""
    if metric is not None and metric not in METRICS:
        raise ReportError(f"--metric: expected one of {', '.join(METRICS)}, found {metric!r}")
    sweep = load_sweep(Path(path))
    metric = metric or default_metric(sweep)
    plots = {}
    titles = []
    for name, title, fig in sweep_figures(sweep):
        plots[name] = figure_png(fig)
        titles.append((name, title))
    n_partial = sum(not r.finished for r in sweep.runs)
    summary = (f"report: {len(sweep.runs)} runs in {len(sweep.cells)} cells from {sweep.path}"
               + (f" ({n_partial} unfinished, reported as partial)" if n_partial else "")
               + f", sorted by {metric}")
    return Report(Path(out) if out is not None else sweep.path, report_markdown(sweep, metric, titles),
                  results_csv(sweep, metric), plots, summary)


def write_report(report: Report) -> list[Path]:
    """Write the plots, then results.csv, then report.md (which links the plots); return the paths."""
    written = []
    for name, data in report.plots.items():
        p = report.out_dir / PLOTS_DIR / name
        atomic_write_bytes(p, data)
        written.append(p)
    for name, text in (("results.csv", report.csv), ("report.md", report.markdown)):
        atomic_write_text(report.out_dir / name, text)
        written.append(report.out_dir / name)
    return written


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and status 2, as every cifar_dist command
        print(f"error: {message} (see cifar-dist report --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cifar-dist report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="sweep directory (runs/<sweep>) or one run directory")
    p.add_argument("--out", default=None, help="output directory (default: PATH)")
    p.add_argument("--metric", default=None,
                   help=f"sort key, one of {', '.join(METRICS)} (default: best_val_acc if present, else final_test_acc)")
    return p


def main(argv: list[str] | None = None) -> int:
    """`cifar-dist report PATH [--out DIR] [--metric NAME]`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, already printed)
        return int(e.code or 0)
    try:
        report = build_report(args.path, args.out, args.metric)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.summary)
    written = write_report(report)
    print(f"wrote {report.out_dir / 'report.md'}, {report.out_dir / 'results.csv'} and {len(written) - 2} plots "
          f"in {report.out_dir / PLOTS_DIR}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
