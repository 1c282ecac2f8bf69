"""The report's figures as PNG bytes for report_plots/, drawn on matplotlib's Agg canvas (no pyplot state);
`sweep_figures` says which figures a sweep gets."""

from __future__ import annotations

import io
import re
from typing import Any

from cifar_dist.report.load import CellResult, RunResult, SweepResults
from cifar_dist.report.metrics import fmt_value, sort_key, summarize


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=100)
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
    ax.set_title(title, fontsize=10 if len(title) > 60 else None)  # long titles (the band, line styles) fit
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
    stats = [summarize(by_epoch[e]) for e in epochs]
    return epochs, [s.mean for s in stats], [s.std or 0.0 for s in stats]


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


def cell_colours(cells: list[CellResult]) -> dict[str, Any]:
    """One colour per cell, the same in every figure of a report (tab10; tab20 beyond ten cells)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(cells) <= 10 else "tab20"]
    return {c.name: cmap(i % cmap.N) for i, c in enumerate(cells)}


def band_note(cells: list[CellResult]) -> str:
    """What a curve and its band are: "mean, band ± std over 3 seeds" (or "one seed per cell, no band")."""
    ns = sorted({len(c.counted_runs) for c in cells if c.runs})
    if not ns or ns[-1] < 2:
        return "one seed per cell, no band"
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    return f"mean, band ± std over {n} seeds"


def cell_label(cell: CellResult, keys: list[str]) -> str:
    parts = [f"{k}={fmt_value(cell.key_value(k))}" for k in keys]
    return f"{cell.name}: {', '.join(parts)}" if parts else cell.name


CURVES = {"test_acc": ("Test accuracy", "test accuracy (%)"), "val_acc": ("Validation accuracy", "validation accuracy (%)")}


def accuracy_figure(cells: list[CellResult], key: str | None = None, keys: list[str] | tuple = (),
                    metric: str = "test_acc", colours: dict[str, Any] | None = None):
    """Test (or validation: `metric="val_acc"`) accuracy (%) per epoch, one line per cell (mean over seeds,
    band = ± 1 sample std, as the title says).

    With `key`, lines are coloured by the cell's value of that config key and the legend has one
    entry per value (the way seed 001 compared batch sizes, learning rates, optimizers, Lookahead); when each
    value is one cell, that cell's colour of `colours`. Without it every cell has its colour of `colours`
    (`cell_colours`) and a legend entry `cell_label(cell, keys)`.
    """
    fig, ax = _figure()
    cells = [c for c in cells if c.runs]
    colours = colours or cell_colours(cells)
    if key is not None:
        values = [repr(c.key_value(key)) for c in cells]
        by_value = _value_colours([c.key_value(key) for c in cells])
        if len(set(values)) == len(values):  # one cell per value: the cell's own colour
            by_value = {v: colours[c.name] for v, c in zip(values, cells)}
        order = sorted(cells, key=lambda c: (sort_key(c.key_value(key)), c.name))
    else:
        order = cells
    labelled: set[str] = set()
    for cell in order:
        epochs, means, stds = mean_curve(cell.counted_runs, metric)
        if not epochs:
            continue
        if key is not None:
            value = repr(cell.key_value(key))
            colour = by_value[value]
            label = f"{key}={fmt_value(cell.key_value(key))}" if value not in labelled else "_nolegend_"
            labelled.add(value)
        else:
            colour, label = colours[cell.name], cell_label(cell, list(keys))
        ax.plot(epochs, means, marker="o", markersize=3, color=colour, label=label)
        if len(cell.counted_runs) > 1:
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colour, alpha=0.15, linewidth=0)
    what, ylabel = CURVES[metric]
    title = (f"{what} by {key}" if key else what) + f" ({band_note(order)})"
    return _finish(fig, ax, ("epoch", ylabel, title), legend=bool(ax.lines))


def params_figure(cells: list[CellResult], keys: list[str] | tuple = (), colours: dict[str, Any] | None = None):
    """Final test accuracy (%, mean ± std over seeds) against parameter count, one point per cell."""
    fig, ax = _figure()
    colours = colours or cell_colours([c for c in cells if c.runs])
    for cell in (c for c in cells if c.runs and c.n_params):
        s = cell.stat("final_test_acc")
        if s.mean is None:
            continue
        ax.errorbar([cell.n_params], [s.mean], yerr=[s.std or 0.0], fmt="o", capsize=3, color=colours[cell.name],
                    label=cell_label(cell, list(keys)))
    sizes = [c.n_params for c in cells if c.runs and c.n_params]
    if sizes and max(sizes) >= 10 * min(sizes):  # a log axis only where sizes span a decade or more
        ax.set_xscale("log")
    else:
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))  # 1,128 rather than 1.128e3
    labels = ("parameters", "final test accuracy (%)",
              f"Final test accuracy against model size ({band_note(cells).replace('band', 'bar')})")
    return _finish(fig, ax, labels, legend=bool(ax.containers), grid_which="both")


LOSSES = (("train_loss", "solid", "train"), ("val_loss", "dotted", "validation"), ("test_loss", "dashed", "test"))


def loss_figure(cells: list[CellResult], keys: list[str] | tuple = (), colours: dict[str, Any] | None = None):
    """Train loss (solid), validation loss (dotted, when there is a split) and test loss (dashed) per epoch,
    mean over seeds, one colour per cell."""
    fig, ax = _figure()
    colours = colours or cell_colours([c for c in cells if c.runs])
    drawn = []
    for cell in (c for c in cells if c.runs):
        label = cell_label(cell, list(keys))  # one legend entry per cell; the line style tells the split
        for key, style, what in LOSSES:
            epochs, means, _ = mean_curve(cell.counted_runs, key)
            if epochs:
                ax.plot(epochs, means, linestyle=style, marker="o", markersize=3, color=colours[cell.name],
                        label=label)
                label = "_nolegend_"
                drawn.append((what, style))
    styles = ", ".join(f"{what} {name}" for what, name in dict.fromkeys(drawn))
    return _finish(fig, ax, ("epoch", "loss (cross-entropy)", f"Loss per epoch, mean over seeds ({styles})"),
                   legend=bool(ax.lines))


def sweep_figures(sweep: SweepResults) -> list[tuple[str, str, Any]]:
    """[(file name, title, Figure)] for a sweep: those of report_plots/ in the package docstring that carry
    information (a key that varies alone: `SweepResults.keys_alone`)."""
    cells = [c for c in sweep.cells if c.runs]
    colours = cell_colours(cells)
    keys = sweep.varying_keys
    slugs = {k: re.sub(r"[^A-Za-z0-9_.-]+", "_", k) for k in sweep.keys_alone}  # keys as parts of file names
    out: list[tuple[str, str, Any]] = []
    curves = any(len(mean_curve(c.counted_runs, "test_acc")[0]) > 1 for c in cells)
    has_val = any(r.get("val_acc") is not None for run in sweep.runs for r in run.rows)
    for metric in ("test_acc", "val_acc") if has_val else ("test_acc",):
        if not curves:
            break
        what = CURVES[metric][0]
        out += [(f"{metric}_by_{slugs[k]}.png", f"{what} by {k}",
                 accuracy_figure(sweep.cells, key=k, metric=metric, colours=colours)) for k in sweep.keys_alone]
        if not sweep.keys_alone or sweep.keys_together:
            out.append((f"{metric}.png", f"{what} per cell",
                        accuracy_figure(sweep.cells, keys=keys, metric=metric, colours=colours)))
    if len({c.n_params for c in cells if c.n_params}) > 1:
        out.append(("final_acc_vs_params.png", "Final test accuracy against parameters",
                    params_figure(sweep.cells, keys, colours)))
    if curves:
        out.append(("loss.png", "Loss per epoch", loss_figure(sweep.cells, keys, colours)))
    return out


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

