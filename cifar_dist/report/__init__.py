"""`cifar-dist report PATH`: a sweep's results as a table of mean +- std over seeds, a CSV and plots.

    cifar-dist report runs/lr_sweep                       # report.md, results.csv, report_plots/ in the sweep dir
    cifar-dist report runs/lr_sweep --metric=final_test_acc --out=reports/lr_sweep
    cifar-dist report runs/lr_sweep/c000-s0               # one run: the same table and curves
    tensorboard --logdir runs/lr_sweep                    # every run in the Scalars and HParams tabs

Input. PATH is either one run directory (it holds config.yaml, metrics.jsonl or result.json; see
the engine's run directory) or a folder of them. In a sweep folder the runs are named `<cell>-s<seed>` and
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
    report_plots/   test (and validation) accuracy per epoch: one figure per key that some two cells differ
                    in alone, else one line per cell; final test accuracy against parameters when the
                    cells differ in size; the losses per epoch (PNG). Curves need two epochs; titles say
                    what the band is (± std over n seeds); a cell keeps its colour in every figure.
Sweeps in sub-folders of PATH are not mixed in: the summary line and report.md name them.
For a search sweep (sweep.json has "search"), report.md also has a "Study" section (best trials with their
overrides, pruned trials with the epoch of the rung that stopped them) and report_plots/study.png (the
objective of every trial against epochs; pruned trials dashed and cut at a cross); pruned runs count as
pruned, not as unfinished.
Exit status: 0 written; 2 bad input (one line on stderr naming the file or flag; nothing written).
"""


from cifar_dist.report.build import build_report, write_report
from cifar_dist.report.load import CellResult, load_results
from cifar_dist.report.metrics import METRICS
from cifar_dist.report.plots import accuracy_figure, figure_png, loss_figure, params_figure, sweep_figures
from cifar_dist.report.tables import PLOTS_DIR

__all__ = ["METRICS", "PLOTS_DIR", "CellResult", "accuracy_figure", "build_report", "figure_png", "load_results",
           "loss_figure", "params_figure", "sweep_figures", "write_report"]
