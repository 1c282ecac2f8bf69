"""Building a report in memory from a results folder, then writing it: plots first, then results.csv,
then report.md (which links the plots), each file through a temporary name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifar_dist.files import atomic_write_bytes, atomic_write_text
from cifar_dist.report.load import ReportError, load_results
from cifar_dist.report.metrics import METRICS
from cifar_dist.report.plots import figure_png, sweep_figures
from cifar_dist.report.study import apply_overrides, load_study, study_figure, study_markdown
from cifar_dist.report.tables import PLOTS_DIR, default_metric, report_markdown, results_csv


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
    sweep = load_results(Path(path))
    study = load_study(sweep)
    if study is not None:
        apply_overrides(sweep, study)
    metric = metric or default_metric(sweep)
    plots = {}
    titles = []
    figures = sweep_figures(sweep)
    if study is not None:
        figures.insert(0, ("study.png", f"{study.objective} of every trial against epochs", study_figure(study)))
    for name, title, fig in figures:
        plots[name] = figure_png(fig)
        titles.append((name, title))
    n_partial = sum(r.unfinished for r in sweep.runs)
    summary = (f"report: {len(sweep.runs)} runs in {len(sweep.cells)} cells from {sweep.path}"
               + (f" ({n_partial} unfinished, reported as partial)" if n_partial else "")
               + f", sorted by {metric}"
               + (f"; not included: the sweeps in {', '.join(str(p) for p in sweep.nested)} (report each on its own)"
                  if sweep.nested else ""))
    extra = study_markdown(study) if study is not None else []
    return Report(Path(out) if out is not None else sweep.path, report_markdown(sweep, metric, titles, extra),
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

