"""Building a report in memory from a results folder (`build_report`), then writing it (`write_report`)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

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
    """Write the plots, results.csv and report.md (which links the plots); return the paths. Every file goes
    to a temporary name first and all are renamed only once all are written: a write error (a full disk) is
    one line (ReportError) and leaves the earlier report and no temporaries."""
    files = {report.out_dir / PLOTS_DIR / name: data for name, data in report.plots.items()}
    files[report.out_dir / "results.csv"] = report.csv.encode()
    files[report.out_dir / "report.md"] = report.markdown.encode()
    tmps: list[Path] = []
    path = report.out_dir
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(path.with_name(f".{path.name}.tmp-{os.getpid()}"))
            with open(tmps[-1], "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot write"
        raise ReportError(f"{path}: {what} ({e.strerror or e}); nothing of this report was written, an earlier "
                          f"report is unchanged") from None
    for tmp, path in zip(tmps, files):
        os.replace(tmp, path)
    return list(files)

