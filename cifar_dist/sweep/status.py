"""`cifar-dist sweep status`: pending / running / done / failed per run, by the rules in the package docstring,
from what the sweep backends hold (`cifar_dist.sweep.backend`: a live local runner, squeue when it answers)."""

from __future__ import annotations

import json
from typing import Any

from cifar_dist.run_dir import RunDir, load_trials
from cifar_dist.sweep.backend import queued_runs
from cifar_dist.sweep.plan import Run, Sweep


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def run_state(run: Run, queue: Any) -> tuple[str, str]:
    """(pending | running | done | failed, detail) of one run; the rules are in the package docstring.
    `queue`: the cluster backend's `look()` (squeue's answer), None when it did not answer."""
    if run.files.is_finished:
        return "done", ""
    task = run.files.read_task()
    started = bool(task) or run.files.metrics.is_file() or run.files.checkpoints.is_dir()
    queued = queued_runs([run], queue).get(run.name)  # what the backends say of it (a local runner, squeue)
    if queued:
        return queued.state, queued.detail
    state = task.get("state")
    if state == "failed":
        return "failed", f"exit {task.get('exit')} (job {task.get('job')})"
    if state == "preempted":
        return "failed", "stopped by a signal with a checkpoint and not requeued; resubmit to resume"
    if state == "running":
        if queue is None:
            return "running", f"job {task.get('job')} on {task.get('host')} (no squeue to confirm)"
        return "failed", f"job {task.get('job')} ended without a result (killed or timed out)"
    if started:
        return ("running", "started (no squeue)") if queue is None else ("failed", "started, not queued, no result")
    return "pending", "not started"


def _metric_text(run: Run, state: str) -> tuple[str, str]:
    """(epoch k/E, last metric) for the status table."""
    epochs = run.cell.epochs
    if state == "done":  # the metric the report ranks by: best validation accuracy, else final test accuracy
        res = run.files.read_result() or {}
        best, acc = res.get("best") or {}, (res.get("final") or {}).get("test_acc")
        done = f"{res.get('epochs', epochs)}/{epochs}"
        if _is_num(best.get("val_acc")):
            return done, f"best_val_acc={best['val_acc']:.2f} (epoch {best.get('epoch')})"
        return done, f"test_acc={acc:.2f} (final)" if _is_num(acc) else ""
    row = run.files.last_metrics()
    if not row:
        return f"0/{epochs}", ""
    for key in ("val_acc", "test_acc", "train_loss"):
        if _is_num(row.get(key)):
            return f"{row.get('epoch', 0)}/{epochs}", f"{key}={row[key]:.4g} (epoch {row.get('epoch')})"
    return f"{row.get('epoch', 0)}/{epochs}", ""


def status_rows(sweep: Sweep, queue: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One dict per run: index, run, cell, seed, state, epoch, metric, detail."""
    rows = []
    for run in sweep.runs:
        state, detail = run_state(run, queue)
        epoch, metric = _metric_text(run, state)
        rows.append({"index": run.index, "run": run.name, "cell": run.cell.cell, "seed": run.seed, "state": state,
                     "epoch": epoch, "metric": metric, "detail": detail})
    return rows


def trial_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One dict per trial of a search (rejected draws left out): trial, run, state, epoch, value, worker,
    detail. States: complete, pruned, failed (from the study); running, preempted (the lease in trial.json)."""
    search = sweep.spec.search
    trials = load_trials(sweep.dir, sweep.spec.name) or []
    rows = []
    for t in trials:
        if "rejected" in t.user_attrs:
            continue
        run_dir = RunDir(sweep.trial_dir(t.number))
        record = run_dir.read_trial()
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name)
        if state is None:
            state = "preempted" if record.get("lease") == "preempted" else "running"
        last = run_dir.last_metrics() or {}
        detail = {"pruned": f"pruned at epoch {record.get('pruned_at')}", "failed": str(record.get("reason", ""))}
        rows.append({"trial": t.number, "run": run_dir.path.name, "state": state,
                     "epoch": f"{last.get('epoch', 0)}/{search.max_epochs}",
                     "value": t.value if t.value is not None else last.get(search.objective),
                     "worker": record.get("worker"), "detail": detail.get(state, "")})
    return rows


def search_status_text(sweep: Sweep, as_json: bool = False) -> str:
    """`sweep status` of a search: the study's trials."""
    rows, search = trial_rows(sweep), sweep.spec.search
    if as_json:
        return json.dumps({"name": sweep.spec.name, "search": True, "trials": rows}, indent=1) + "\n"
    states = ("complete", "pruned", "running", "preempted", "failed")
    lines = [f"search {sweep.spec.name}: {len(rows)} of {search.trials} trials: "
             + ", ".join(f"{sum(r['state'] == s for r in rows)} {s}" for s in states),
             f"{'run':10s} {'state':9s} {'epoch':>7s}  {search.objective:>10s}  {'worker':12s} detail"]
    for r in rows:
        value = f"{r['value']:.4g}" if _is_num(r["value"]) else "-"
        lines.append(f"{r['run']:10s} {r['state']:9s} {r['epoch']:>7s}  {value:>10s}  {str(r['worker']):12s} "
                     f"{r['detail']}")
    return "\n".join(lines) + "\n"


def status_text(sweep: Sweep, queue: dict[str, Any] | None, as_json: bool = False) -> str:
    """The status table (or its JSON) that `cifar-dist sweep status` prints."""
    if sweep.spec.search is not None:
        return search_status_text(sweep, as_json)
    rows = status_rows(sweep, queue)
    if as_json:
        return json.dumps({"name": sweep.spec.name, "squeue": queue is not None, "runs": rows}, indent=1) + "\n"
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "pending", "failed")}
    lines = [f"sweep {sweep.spec.name}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + ("" if queue is not None else " (squeue not available: running = started without a result)"),
             f"{'run':10s} {'index':>5s}  {'state':8s} {'epoch':>7s}  {'metric':30s} detail"]
    lines += [f"{r['run']:10s} {r['index']:5d}  {r['state']:8s} {r['epoch']:>7s}  {r['metric']:30s} {r['detail']}"
              for r in rows]
    return "\n".join(lines) + "\n"
