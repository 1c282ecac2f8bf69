"""The report's figures (matplotlib's Agg canvas, no pyplot state): test accuracy per epoch by each varied
key, final test accuracy against parameters, train and test loss per epoch; PNG bytes for report_plots/."""

from __future__ import annotations

import io
import re
import statistics
from typing import Any

from cifar_dist.report.load import CellResult, RunResult, SweepResults
from cifar_dist.report.metrics import fmt_value, sort_key


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg renders PNG without pyplot's global state
    return fig, fig.add_subplot()


def _finish(fig, ax, labels: tuple[str, str, str], legend: bool, grid_which: str = "major"):
    """Axis labels and title (x, y, title), grid, legend when something is labelled; integer epochs."""
    from matplotlib.ticker import MaxNLocator

    xlabel, ylabel, title = labels
    ax.set_xlabel(xlabel)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which=grid_which)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def mean_curve(runs: list[RunResult], key: str) -> tuple[list[int], list[float], list[float]]:
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


def _value_colours(values: list[Any]) -> dict[str, Any]:
    """Distinct values -> colours: a sequential map for numbers (order reads as size), tab10 otherwise."""
    import matplotlib

    distinct = sorted({repr(v): v for v in values}.values(), key=sort_key)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
    if numeric and len(distinct) > 1:
        cmap = matplotlib.colormaps["viridis"]
        return {repr(v): cmap(0.85 * i / (len(distinct) - 1)) for i, v in enumerate(distinct)}
    cmap = matplotlib.colormaps["tab10"]
    return {repr(v): cmap(i % 10) for i, v in enumerate(distinct)}


def cell_label(cell: CellResult, keys: list[str]) -> str:
    parts = [f"{k}={fmt_value(cell.key_value(k))}" for k in keys]
    return f"{cell.name}: {', '.join(parts)}" if parts else cell.name


def accuracy_figure(cells: list[CellResult], key: str | None = None, keys: list[str] | tuple = ()):
    """Test accuracy (%) per epoch, one line per cell (mean over seeds, band = +-1 std).

    With `key`, lines are coloured by the cell's value of that config key and the legend has one
    entry per value (the way seed 001 compared batch sizes, learning rates, optimizers, Lookahead);
    without it every cell has its own colour and a legend entry `cell_label(cell, keys)`.
    """
    fig, ax = _figure()
    cells = [c for c in cells if c.runs]
    if key is not None:
        colours = _value_colours([c.key_value(key) for c in cells])
        order = sorted(cells, key=lambda c: (sort_key(c.key_value(key)), c.name))
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
    title = f"Test accuracy by {key}" if key else "Test accuracy"
    return _finish(fig, ax, ("epoch", "test accuracy (%)", title), legend=bool(order))


def params_figure(cells: list[CellResult], keys: list[str] | tuple = ()):
    """Final test accuracy (%, mean +- std over seeds) against parameter count, one point per cell."""
    fig, ax = _figure()
    for i, cell in enumerate(c for c in cells if c.runs and c.n_params):
        s = cell.stat("final_test_acc")
        if s.mean is None:
            continue
        ax.errorbar([cell.n_params], [s.mean], yerr=[s.std or 0.0], fmt="o", capsize=3, color=f"C{i % 10}",
                    label=cell_label(cell, list(keys)))
    ax.set_xscale("log")
    labels = ("parameters", "final test accuracy (%)", "Final test accuracy against model size")
    return _finish(fig, ax, labels, legend=bool(ax.containers), grid_which="both")


def loss_figure(cells: list[CellResult], keys: list[str] | tuple = ()):
    """Train loss (solid) and test loss (dashed) per epoch, mean over seeds, one colour per cell."""
    fig, ax = _figure()
    for i, cell in enumerate(c for c in cells if c.runs):
        label = cell_label(cell, list(keys))
        for key, style, what in (("train_loss", "-", "train"), ("test_loss", "--", "test")):
            epochs, means, _ = mean_curve(cell.counted_runs, key)
            ax.plot(epochs, means, linestyle=style, marker="o", markersize=3, color=f"C{i % 10}",
                    label=f"{label} ({what})")
    return _finish(fig, ax, ("epoch", "loss (cross-entropy)", "Train and test loss"), legend=bool(ax.lines))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def sweep_figures(sweep: SweepResults) -> list[tuple[str, str, Any]]:
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

