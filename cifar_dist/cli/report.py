"""`cifar-dist report PATH [--out=DIR] [--metric=NAME]`: the flags of the report command.

Run by the strict runner (`cifar_dist.runner.run_command`): every flag is checked before anything
is read; input the report cannot use is one `error:` line and exit status 2, with nothing written.
"""

from __future__ import annotations

import sys

from cifar_dist import report as reports
from cifar_dist.errors import EXIT_OK
from cifar_dist.runner import run_command, signature_help

PROG = "cifar-dist report"


def report(path: str, *, out: str | None = None, metric: str | None = None) -> int:
    """write report.md, results.csv and report_plots/ for a sweep directory (runs/<sweep>) or one run.

    --out: output directory (default: PATH). --metric: the sort key, one of the metrics of results.csv
    (default: best_val_acc if present, else final_test_acc).
    """
    built = reports.build_report(str(path), None if out is None else str(out),
                                 None if metric is None else str(metric))
    print(built.summary)
    written = reports.write_report(built)
    print(f"wrote {built.out_dir / 'report.md'}, {built.out_dir / 'results.csv'} and {len(written) - 2} plots "
          f"in {built.out_dir / reports.PLOTS_DIR}")
    return EXIT_OK


def usage() -> str:
    """`cifar-dist report --help`: the flags, the metrics, then how runs are read and what is written."""
    return (signature_help(report, PROG) + f"\nmetrics: {', '.join(reports.METRICS)}\n\n"
            + (reports.__doc__ or ""))


def main(argv: list[str] | None = None) -> int:
    """`cifar-dist report PATH [--out DIR] [--metric NAME]`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(report, argv, PROG, help_text=usage)


if __name__ == "__main__":
    sys.exit(main())
