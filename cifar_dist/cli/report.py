"""`cifar-dist report PATH [--out=DIR] [--metric=NAME]`: the options of the report command (`ReportArgs`),
parsed once by `cifar_dist.runner.run_schema` before anything is read or written."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from cifar_dist import report as reports
from cifar_dist.errors import EXIT_OK
from cifar_dist.runner import run_schema
from cifar_dist.schema import opt


@dataclass(frozen=True)
class ReportArgs:
    """Write report.md, results.csv and report_plots/ for a sweep directory (runs/<sweep>) or one run."""

    path: str = opt(help="a sweep directory (runs/<sweep>) or one run directory")
    out: str | None = opt(None, "output directory (default: PATH)", metavar="DIR")
    metric: str | None = opt(None, "the sort key, a metric of results.csv (default: best_val_acc if present, "
                                   "else final_test_acc)", metavar="NAME", choices=tuple(reports.METRICS))


def report(path: str, *, out: str | None = None, metric: str | None = None) -> int:
    """Build the report of `path`, print its summary and write its files (the options: `ReportArgs`)."""
    built = reports.build_report(path, out, metric)
    print(built.summary)
    written = reports.write_report(built)
    print(f"wrote {built.out_dir / 'report.md'}, {built.out_dir / 'results.csv'} and {len(written) - 2} plots "
          f"in {built.out_dir / reports.PLOTS_DIR}")
    return EXIT_OK


def epilog() -> str:
    """After the flags of `cifar-dist report --help`: the metrics, then how runs are read and what is written."""
    return f"metrics: {', '.join(reports.METRICS)}\n\n{reports.__doc__ or ''}"


def main(argv: list[str] | None = None) -> int:
    """`cifar-dist report PATH [--out DIR] [--metric NAME]`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_schema(report, ReportArgs, argv, "cifar-dist report", epilog=epilog)


if __name__ == "__main__":
    sys.exit(main())
