"""Reading a sweep's results from disk: run directories (config.yaml, metrics.jsonl, result.json, env.json)
grouped into cells by sweep.json (written by `cifar-dist sweep`) or by their names and config differences.
These types describe what was trained; the sweep's plan types (`cifar_dist.sweep.plan`) what is to be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar_dist.config import ConfigError, flatten, load_yaml
from cifar_dist.errors import InputError
from cifar_dist.files import read_json
from cifar_dist.report.metrics import METRICS, Stat, hashable, summarize
from cifar_dist.run_dir import RUN_NAME, SWEEP_FILE, RunDir

# Config keys that differ between runs without being hyperparameters.
NOT_HYPERPARAMETERS = {"run.name", "run.seed", "run.out_dir", "run.progress", "run.stop_after"}


class ReportError(InputError):
    """Input the report cannot use; the message is one line naming the file."""


def _read_config(path: Path) -> dict[str, Any]:
    """config.yaml -> {"optim.lr": 0.1, ...} (lists as tuples); {} when the file is missing."""
    if not path.is_file():
        return {}
    try:
        data = load_yaml(path)
    except ConfigError as e:  # named after the --config flag; here the file is a run's own config.yaml
        raise ReportError(str(e).removeprefix("--config: ")) from e
    return {k: hashable(v) for k, v in flatten(data).items()}


@dataclass
class RunResult:
    """One run directory as read from disk."""

    name: str
    path: Path
    config: dict[str, Any]  # flattened config.yaml ({} when missing)
    rows: list[dict[str, Any]]  # metrics.jsonl, one per finished epoch
    result: dict[str, Any] | None  # result.json; None while the run is unfinished
    env: dict[str, Any] = field(default_factory=dict)
    pruned_at: int | None = None  # a search trial the pruner stopped after this epoch (from its study)

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def unfinished(self) -> bool:
        """Neither finished nor pruned: still to be trained."""
        return self.result is None and not self.pruned_at

    @property
    def status(self) -> str:
        if self.result is None and self.pruned_at:
            return f"pruned at epoch {self.pruned_at}"
        return str(self.result.get("status", "finished")) if self.result is not None else "partial"

    @property
    def last_epoch(self) -> int:
        return self.rows[-1]["epoch"] if self.rows else 0

    @property
    def planned_epochs(self) -> int | None:
        return self.config.get("run.epochs")

    @property
    def seed(self) -> int | None:
        if "run.seed" in self.config:
            return self.config["run.seed"]
        m = RUN_NAME.match(self.name)
        return int(m["seed"]) if m else None

    @property
    def params(self) -> int | None:
        return (self.result or {}).get("params") or self.env.get("params")

    @property
    def preset(self) -> str:
        return str(self.config.get("preset") or (self.result or {}).get("preset") or "")

    def value(self, metric: str) -> float | None:
        """This run's `metric` (see METRICS): from result.json, or from metrics.jsonl while unfinished."""
        m = METRICS[metric]
        v = m.finished(self.result, self.rows) if self.result is not None else m.partial(self.rows)
        return None if v is None else float(v)


def load_run(path: Path) -> RunResult:
    files = RunDir(path)
    env = read_json(files.env) if files.env.is_file() else {}
    return RunResult(name=path.name, path=path, config=_read_config(files.config), rows=files.metrics_rows(),
                     result=files.read_result(strict=True), env=env if isinstance(env, dict) else {})


# --------------------------------------------------------------------------------------------- cells


@dataclass
class CellResult:
    """One grid point: its overrides and the runs (one per seed) that share them."""

    name: str
    overrides: dict[str, Any]
    runs: list[RunResult]
    params: int | None = None  # from sweep.json; else from the runs
    sweep_preset: str = ""  # the cell's preset in sweep.json; the runs' config.yaml wins

    @property
    def finished_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.finished]

    @property
    def partial_runs(self) -> list[RunResult]:
        return [r for r in self.runs if r.unfinished]

    @property
    def counted_runs(self) -> list[RunResult]:
        """The runs the statistics use: the finished ones, or the unfinished ones when none finished."""
        return self.finished_runs or self.runs

    @property
    def status(self) -> str:
        if not self.runs:
            return "no runs"
        if not self.finished_runs:
            return "partial" if self.partial_runs else self.runs[0].status
        if self.partial_runs:
            return f"{len(self.finished_runs)}/{len(self.runs)} finished"
        return "finished"

    @property
    def n_params(self) -> int | None:
        if self.params is not None:
            return self.params
        found = [r.params for r in self.runs if r.params is not None]
        return found[0] if found else None

    @property
    def preset(self) -> str:
        return next((r.preset for r in self.runs if r.preset), self.sweep_preset)

    def stat(self, metric: str) -> Stat:
        return summarize([r.value(metric) for r in self.counted_runs])

    def key_value(self, key: str) -> Any:
        """The cell's value of a config key: its override, else its runs' resolved config."""
        if key in self.overrides:
            return hashable(self.overrides[key])
        return next((r.config[key] for r in self.runs if key in r.config), None)


@dataclass
class SweepResults:
    """The cells of one folder: a sweep, a folder of plain runs, or one run (`load_results` builds it)."""

    name: str
    path: Path
    cells: list[CellResult]
    info: dict[str, Any]  # sweep.json, or {} for a folder of plain runs
    missing: list[str]  # runs sweep.json expects that have no directory yet
    single_run: bool = False
    nested: list[Path] = field(default_factory=list)  # sweeps in sub-folders: not part of this report

    @property
    def runs(self) -> list[RunResult]:
        return [r for c in self.cells for r in c.runs]

    @property
    def override_keys(self) -> list[str]:
        """The table's override columns: every key some cell overrides."""
        return sorted({k for c in self.cells for k in c.overrides})

    @property
    def varying_keys(self) -> list[str]:
        """The override keys with two or more values among the cells with runs: one accuracy figure each."""
        return [k for k in self.override_keys if len({repr(c.key_value(k)) for c in self.cells if c.runs}) > 1]

    @property
    def keys_alone(self) -> list[str]:
        """The varying keys that some two cells differ in alone (every other varying key equal): a plot by
        such a key compares like with like. Keys that only ever change together get none."""
        cells = [c for c in self.cells if c.runs]

        def alone(key: str) -> bool:
            others = [k for k in self.varying_keys if k != key]
            seen: dict[str, set[str]] = {}
            for c in cells:
                rest = repr([c.key_value(k) for k in others])
                seen.setdefault(rest, set()).add(repr(c.key_value(key)))
            return any(len(values) > 1 for values in seen.values())

        return [k for k in self.varying_keys if alone(k)]

    @property
    def keys_together(self) -> list[str]:
        return [k for k in self.varying_keys if k not in self.keys_alone]


def nested_sweeps(path: Path) -> list[Path]:
    """Sub-folders of `path` that are sweeps or folders of runs themselves (not run directories)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not RunDir(p).holds_run
                  and ((p / SWEEP_FILE).is_file() or any(RunDir(q).holds_run for q in p.iterdir())))


def _split_name(name: str) -> str:
    m = RUN_NAME.match(name)
    return m["cell"] if m else name


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in configs for k in c} - NOT_HYPERPARAMETERS)
    missing = object()
    return [k for k in keys if len({repr(c.get(k, missing)) for c in configs}) > 1]


def load_results(path: Path) -> SweepResults:
    """Read a sweep folder, a folder of plain runs, or one run directory."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such directory")
    if not path.is_dir():
        raise ReportError(f"{path}: expected a sweep or run directory, found a file")
    if RunDir(path).holds_run:
        run = load_run(path)
        cell = CellResult(_split_name(run.name), {}, [run])
        return SweepResults(run.name, path, [cell], {}, [], single_run=True)

    info: dict[str, Any] = {}
    sweep_json = path / SWEEP_FILE
    if sweep_json.is_file():
        info = read_json(sweep_json)
        if not isinstance(info, dict) or not isinstance(info.get("cells", []), list):
            raise ReportError(f"{sweep_json}: expected an object with a list under \"cells\"")
        if not isinstance(info.get("seeds", []), list):
            raise ReportError(f"{sweep_json}: expected a list under \"seeds\", found {info['seeds']!r}")
    run_dirs = sorted(p for p in path.iterdir() if RunDir(p).holds_run)
    nested = nested_sweeps(path)
    if not run_dirs and nested:
        raise ReportError(f"{path}: no run directories of its own; it holds the sweeps "
                          f"{', '.join(p.name for p in nested)}: report each one, e.g. "
                          f"`cifar-dist report {nested[0]}`")
    if not run_dirs:
        raise ReportError(f"{path}: no run directories (expected <cell>-s<seed>/ folders holding metrics.jsonl, "
                          f"config.yaml or result.json)")
    groups: dict[str, list[RunResult]] = {}
    for d in run_dirs:
        run = load_run(d)
        groups.setdefault(_split_name(run.name), []).append(run)

    cells: list[CellResult] = []
    missing: list[str] = []
    if info:
        declared = set()
        for i, c in enumerate(info.get("cells", [])):
            if not isinstance(c, dict) or not isinstance(c.get("cell"), str):
                raise ReportError(f"{sweep_json}: cells[{i}]: expected an object with a \"cell\" name")
            overrides = c.get("overrides") or {}
            if not isinstance(overrides, dict):
                raise ReportError(f"{sweep_json}: cells[{i}].overrides: expected an object, found {overrides!r}")
            declared.add(c["cell"])
            runs = groups.get(c["cell"], [])
            cells.append(CellResult(c["cell"], overrides, runs, c.get("params"), str(c.get("preset") or info.get("preset") or "")))
            present = {r.seed for r in runs}
            missing += [f"{c['cell']}-s{s}" for s in info.get("seeds", []) if s not in present]
        # Runs the sweep file does not know (added by hand) are still reported, as cells of their own.
        cells += [CellResult(name, {}, runs) for name, runs in sorted(groups.items()) if name not in declared]
    else:
        override_keys = _differing_keys([runs[0].config for runs in groups.values() if runs[0].config])
        cells = [CellResult(name, {k: runs[0].config.get(k) for k in override_keys}, runs)
                 for name, runs in sorted(groups.items())]
    return SweepResults(str(info.get("name") or path.name), path, cells, info, missing, nested=nested)

