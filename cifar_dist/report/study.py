"""The study of a search sweep (sweep.json has a "search" entry; runs/<sweep>/study.journal): report.md's
"Study" section and study.png, as the package docstring describes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar_dist.report.load import ReportError, SweepResults
from cifar_dist.report.metrics import fmt_value, hashable
from cifar_dist.report.plots import _figure, _finish
from cifar_dist.run_dir import STUDY_FILE, RunDir, load_trials, trial_name


@dataclass
class TrialResult:
    number: int
    run: str  # run directory name, t<nnn>-s<seed>
    state: str  # complete | pruned | failed | running | preempted
    value: float | None  # the study's value (complete trials)
    overrides: dict[str, Any]
    curve: dict[int, float]  # epoch -> objective, as reported to the study
    pruned_at: int | None = None
    reason: str = ""


@dataclass
class StudyResults:
    objective: str
    direction: str
    pruner: str
    trials_planned: int
    max_epochs: int
    trials: list[TrialResult] = field(default_factory=list)
    rejected: int = 0  # draws the parameter budget rejected (no run)

    def by_state(self, state: str) -> list[TrialResult]:
        return [t for t in self.trials if t.state == state]

    def best(self) -> list[TrialResult]:
        sign = -1.0 if self.direction == "maximize" else 1.0
        return sorted(self.by_state("complete"), key=lambda t: (sign * (t.value or 0.0), t.number))


def load_study(sweep: SweepResults) -> StudyResults | None:
    """The study of a search sweep folder; None for other folders."""
    search = sweep.info.get("search") if sweep.info else None
    if not isinstance(search, dict):
        return None
    try:
        trials = load_trials(sweep.path, str(sweep.info.get("name")))
    except Exception as e:  # an unreadable journal: one line naming it
        raise ReportError(f"{Path(sweep.path) / STUDY_FILE}: cannot read the study ({e})") from e
    seed = (sweep.info.get("seeds") or [0])[0]
    out = StudyResults(str(search.get("objective")), str(search.get("direction")), str(search.get("pruner")),
                       int(search.get("trials") or 0), int((search.get("epochs") or {}).get("max") or 0))
    for t in trials or []:
        if "rejected" in t.user_attrs:
            out.rejected += 1
            continue
        name = trial_name(t.number, seed)
        record = RunDir(Path(sweep.path) / name).read_trial()
        state = "failed" if t.state.name == "FAIL" else t.state.name.lower()  # complete, pruned, running, ...
        if state == "running" and record.get("lease") == "preempted":
            state = "preempted"
        out.trials.append(TrialResult(t.number, name, state, t.value, dict(t.user_attrs.get("overrides") or {}),
                                      dict(sorted(t.intermediate_values.items())), record.get("pruned_at"),
                                      str(record.get("reason") or "")))
    return out


def apply_overrides(sweep: SweepResults, study: StudyResults) -> None:
    """Give each trial's cell its overrides (sweep.json has no cells for a search); the sweep's key lists
    follow from them."""
    by_run = {t.run.rsplit("-s", 1)[0]: t for t in study.trials}
    for cell in sweep.cells:
        t = by_run.get(cell.name)
        if t is not None and not cell.overrides:
            cell.overrides = dict(t.overrides)
        for run in cell.runs if t is not None and t.state == "pruned" else []:
            run.pruned_at = t.pruned_at or max(t.curve, default=0)


def _over(t: TrialResult) -> str:
    return " ".join(f"`{k}={fmt_value(hashable(v))}`" for k, v in t.overrides.items()) or "—"


def study_markdown(study: StudyResults, top: int = 5) -> list[str]:
    """The "## Study" section of report.md."""
    counts = ", ".join(f"{len(study.by_state(s))} {s}" for s in ("complete", "pruned", "running", "preempted",
                                                                  "failed"))
    lines = ["## Study", "", f"{study.pruner} search, {study.direction} `{study.objective}`: {len(study.trials)} of "
             f"{study.trials_planned} trials ({counts})" + (f"; {study.rejected} draws rejected by the parameter "
                                                             f"budget" if study.rejected else "") + ".",
             f"Trial-epochs trained: {sum(len(t.curve) for t in study.trials)} (without pruning: "
             f"{study.trials_planned * study.max_epochs}).", "", f"Best trials (by the final `{study.objective}`):", ""]
    rows = [f"| {t.run} | {t.value:.2f} | {max(t.curve, default=0)} | {_over(t)} |" for t in study.best()[:top]]
    lines += ["| trial | value | epochs | overrides |", "|---|---|---|---|", *rows] if rows else ["(none finished yet)"]
    pruned = study.by_state("pruned")
    if pruned:
        lines += ["", "Pruned trials (the rung at which each stopped):", "",
                  "| trial | stopped at epoch | value there | overrides |", "|---|---|---|---|"]
        for t in sorted(pruned, key=lambda t: t.number):
            at = t.pruned_at or max(t.curve, default=0)
            there = t.curve.get(at)
            lines.append(f"| {t.run} | {at} | {'—' if there is None else f'{there:.2f}'} | {_over(t)} |")
    failed = study.by_state("failed")
    if failed:
        lines += ["", "Failed trials: " + ", ".join(f"{t.run} ({t.reason or 'failed'})" for t in failed) + "."]
    return [*lines, ""]


def study_figure(study: StudyResults):
    """The objective per epoch of every trial: complete solid, pruned dashed ending in a cross, others dotted."""
    fig, ax = _figure()
    styles = {"complete": "-", "pruned": "--"}
    for i, t in enumerate(sorted(study.trials, key=lambda t: t.number)):
        if not t.curve:
            continue
        epochs, values = list(t.curve), list(t.curve.values())
        colour = f"C{i % 10}"
        ax.plot(epochs, values, linestyle=styles.get(t.state, ":"), marker="o", markersize=3, color=colour,
                label=f"{t.run} ({t.state})")
        if t.state == "pruned":
            ax.plot([epochs[-1]], [values[-1]], marker="x", markersize=10, color=colour)
    labels = ("epoch", study.objective, f"{study.objective} of every trial (pruned: dashed, cut at the cross)")
    return _finish(fig, ax, labels, legend=bool(ax.lines))

