"""The report's text: the cell table of report.md (mean +- std over seeds, sorted by a metric), its run
list and plot links, and results.csv (one row per cell, every metric)."""

from __future__ import annotations

import csv
import io
import math

from cifar_dist.presets import REPORTED_ACC
from cifar_dist.report.load import CellResult, RunResult, SweepResults
from cifar_dist.report.metrics import METRICS, TTA_METRICS, Stat, fmt_value, hashable

PLOTS_DIR = "report_plots"


def default_metric(sweep: SweepResults) -> str:
    has_val = any(c.stat("best_val_acc").n for c in sweep.cells)
    return "best_val_acc" if has_val else "final_test_acc"


def sorted_cells(sweep: SweepResults, metric: str) -> list[CellResult]:
    """Best first by the mean of `metric`; cells without a value last, ties by name."""
    sign = -1.0 if METRICS[metric].higher_is_better else 1.0

    def key(c: CellResult):
        m = c.stat(metric).mean
        return (m is None or math.isnan(m), sign * m if m is not None else 0.0, c.name)

    return sorted(sweep.cells, key=key)


def fmt_stat(s: Stat, digits: int, n_row: int | None = None, integer: bool = False) -> str:
    """`mean ± std`, with `(n=k)` when k differs from the row's n; an em dash when there is no value. A count
    that every run shares (`integer`, std 0) is that integer alone."""
    if s.mean is None:
        return "—"
    if integer and not s.std and float(s.mean).is_integer():
        text = f"{int(s.mean):,}"
    else:
        text = f"{s.mean:,.{digits}f}" + (f" ± {s.std:,.{digits}f}" if s.std is not None else "")
    return text if s.n == n_row else f"{text} (n={s.n})"


def _epoch(run: RunResult) -> str:
    """The run's last logged epoch, with its planned epochs when known: 3/10."""
    return f"{run.last_epoch}/{run.planned_epochs}" if run.planned_epochs else str(run.last_epoch)


def results_csv(sweep: SweepResults, metric: str) -> str:
    """One row per cell (sorted by `metric`): overrides, params, status, then mean/std/n per metric."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["cell", *sweep.override_keys, "preset", "params", "status", "n_runs", "n_finished", "partial_runs",
                *[f"{m}_{part}" for m in METRICS for part in ("mean", "std", "n")], "reported_test_acc"])
    for c in sorted_cells(sweep, metric):
        stats = [c.stat(m) for m in METRICS]
        w.writerow([c.name, *[fmt_value(c.key_value(k)) for k in sweep.override_keys], c.preset,
                    c.n_params if c.n_params is not None else "", c.status, len(c.runs), len(c.finished_runs),
                    " ".join(f"{r.name}@{_epoch(r)}" for r in c.partial_runs),
                    *[x for m, s in zip(METRICS, stats)
                      for x in (_num(s.mean, METRICS[m].integer), _num(s.std), s.n)],
                    _num(REPORTED_ACC.get(c.preset))])
    return buf.getvalue()


def _num(v: float | None, integer: bool = False) -> str:
    if v is None:
        return ""
    return str(int(v)) if integer and float(v).is_integer() else repr(float(v))


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    return ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(esc(x) for x in r) + " |" for r in rows]]


def _summary(sweep: SweepResults, metric: str) -> list[str]:
    """The title, where the runs come from, the sweep's spec and fixed keys, how the table is sorted."""
    runs = sweep.runs
    n_partial = sum(r.unfinished for r in runs)
    n_pruned = sum(bool(r.pruned_at) and not r.finished for r in runs)
    presets = sorted({c.preset for c in sweep.cells if c.preset})
    m = METRICS[metric]
    lines = [f"# Report: {sweep.name}", ""]
    what = "run" if sweep.single_run else "sweep"
    lines.append(f"Source: `{sweep.path}` ({what}; {len(runs)} run{'s' * (len(runs) != 1)} in {len(sweep.cells)} "
                 f"cell{'s' * (len(sweep.cells) != 1)}, {len(runs) - n_partial - n_pruned} finished, "
                 + (f"{n_pruned} pruned, " if n_pruned else "") + f"{n_partial} unfinished).")
    if sweep.info:
        seeds = ", ".join(str(s) for s in sweep.info.get("seeds", []))
        lines.append(f"Sweep spec `{sweep.info.get('spec', '?')}`, preset `{sweep.info.get('preset', '?')}`, "
                     f"seeds {seeds or '?'}.")
        fixed = sweep.info.get("fixed") or {}
        if fixed:
            lines.append("Fixed for every cell: " + ", ".join(f"`{k}={fmt_value(hashable(v))}`" for k, v in fixed.items())
                         + ".")
    elif presets:
        lines.append(f"Preset: {', '.join(f'`{p}`' for p in presets)}.")
    for p in presets:
        if p in REPORTED_ACC:
            lines.append(f"The seed behind preset `{p}` reported {REPORTED_ACC[p]:.2f} % test accuracy "
                         f"(column \"seed reported\"; see `cifar-dist presets` for how it was measured).")
    if sweep.nested:
        lines.append(f"Not included: the sweeps in sub-folders {', '.join(f'`{p.name}/`' for p in sweep.nested)} "
                     f"(report each on its own: `cifar-dist report {sweep.nested[0]}`).")
    if sweep.keys_together:
        lines.append(f"{', '.join(f'`{k}`' for k in sweep.keys_together)} change together (no two cells differ in "
                     f"one of them alone): no plot by any of them; compare the cells in the table below and in the "
                     f"per-cell plots.")
    lines += ["", f"Sorted by {m.label}, {'highest' if m.higher_is_better else 'lowest'} first. Values are "
              "mean ± sample std over the seeds of a cell, n = runs counted (shown per value when it differs). "
              "A cell's statistics use its finished runs; a cell with none is reported from its runs' last "
              "logged epoch (status \"partial\").", ""]
    return lines


def _cell_table(sweep: SweepResults, metric: str) -> list[str]:
    """One row per cell, best first: overrides, params, n, mean ± std of every metric with a value, status."""
    used_tta = any(r.config.get("run.tta", "none") != "none" for r in sweep.runs)
    cols = [k for k in METRICS if any(c.stat(k).n for c in sweep.cells)]
    if not used_tta:
        cols = [k for k in cols if k not in TTA_METRICS]
    show_reported = any(c.preset in REPORTED_ACC for c in sweep.cells)
    header = ["cell", *sweep.override_keys, "params", "n", *[METRICS[k].label for k in cols]]
    header += ["seed reported (%)"] if show_reported else []
    header.append("status")
    rows = []
    for c in sorted_cells(sweep, metric):
        n_row = len(c.counted_runs)
        row = [c.name, *[f"`{fmt_value(c.key_value(k))}`" for k in sweep.override_keys],
               f"{c.n_params:,}" if c.n_params else "—", str(n_row),
               *[fmt_stat(c.stat(k), METRICS[k].digits, n_row, METRICS[k].integer) for k in cols]]
        if show_reported:
            row.append(f"{REPORTED_ACC[c.preset]:.2f}" if c.preset in REPORTED_ACC else "—")
        note = c.status
        if c.partial_runs:
            note += "; unfinished: " + ", ".join(f"{r.name}@{_epoch(r)}" for r in c.partial_runs)
        row.append(note)
        rows.append(row)
    return _md_table(header, rows)


def _run_table(sweep: SweepResults) -> list[str]:
    """One row per run, then the unfinished runs and the runs sweep.json expects without a directory."""
    run_rows = []
    for c in sweep.cells:
        for r in c.runs:
            vals = [r.value(k) for k in ("final_test_acc", "best_val_acc", "best_epoch")]
            run_rows.append([r.name, c.name, "—" if r.seed is None else str(r.seed), r.status,
                             _epoch(r), *["—" if v is None else f"{v:.2f}" for v in vals[:2]],
                             "—" if vals[2] is None else str(int(vals[2]))])
    lines = _md_table(["run", "cell", "seed", "status", "epoch", "test acc (%)", "best val acc (%)", "best epoch"],
                      run_rows)
    partial = [r for r in sweep.runs if r.unfinished]
    if partial:
        lines += ["", "Unfinished runs (no result.json; values at their last logged epoch): "
                  + ", ".join(f"`{r.name}` at epoch {r.last_epoch}" + (f" of {r.planned_epochs}" if r.planned_epochs
                                                                        else "") for r in partial) + "."]
    if sweep.missing:
        lines += ["", f"Runs listed in sweep.json without a directory yet: {', '.join(sweep.missing)}."]
    return lines


def report_markdown(sweep: SweepResults, metric: str, plots: list[tuple[str, str]], extra: list[str] = ()) -> str:
    """report.md: summary, the cell table sorted by `metric`, `extra` (a search's study section), the runs,
    the plots, TensorBoard."""
    lines = [*_summary(sweep, metric), *_cell_table(sweep, metric), "", *extra, "## Runs", "",
             *_run_table(sweep), "", "## Plots", ""]
    for name, title in plots:
        lines += [f"![{title}]({PLOTS_DIR}/{name})", ""]
    if not plots:
        lines += ["No plots: every curve would be a single point (one epoch per run) and every cell has the same "
                  "parameter count; the table above has the numbers.", ""]
    lines += ["## TensorBoard", "",
              "Scalars per epoch (`epoch/*`) and per step (`train/*`), and every run's full config with its final "
              "metrics in the HParams tab:", "", "```", f"tensorboard --logdir {sweep.path}", "```", ""]
    return "\n".join(lines)
