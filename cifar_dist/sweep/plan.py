"""Expansion: a `Spec` becomes numbered cells (each checked with the run config's `resolve` and its
parameters counted), and every cell x seed one `Run`; `sweep.json` records them for `cifar-dist report`.
A search spec's base config and the corners of its space are checked the same way. `train_flags` is the
one builder of trainer flags: a grid run's and a search trial segment's."""

from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifar_dist.config import ConfigError, ModelOptions, flatten, to_dict
from cifar_dist.files import atomic_write_json
from cifar_dist.presets import resolve
from cifar_dist.run_dir import STUDY_FILE, SWEEP_FILE, RunDir, read_sweep_json, run_name, trial_name
from cifar_dist.sweep.spec import Dim, Search, Spec, SpecError, bad, load_spec


@dataclass(frozen=True)
class Cell:
    """One grid point of a spec."""

    cell: str  # c000, c001, ...
    index: int  # position among the kept cells
    overrides: dict[str, Any]  # the keys that vary (canonical values from the resolved config)
    preset: str | None  # the preset this cell starts from
    epochs: int  # run.epochs after all overrides
    params: int | None  # trainable parameters at 10 classes (None when not counted)


@dataclass(frozen=True)
class Run:
    """One cell x seed: one training run, one SLURM array task."""

    index: int  # array index: cell position * len(seeds) + seed position
    cell: Cell
    seed: int
    name: str  # <cell>-s<seed>
    dir: Path  # <out_dir>/<sweep>/<name>

    @property
    def files(self) -> RunDir:
        return RunDir(self.dir)


@dataclass(frozen=True)
class Sweep:
    """An expanded spec: its cells, and through them its runs."""

    spec: Spec
    cells: list[Cell]
    fixed: dict[str, Any]  # the spec's fixed overrides, canonical values from the resolved config
    dropped: list[str] = field(default_factory=list)  # one line per candidate the constraints removed

    @property
    def dir(self) -> Path:
        return Path(self.spec.out_dir) / self.spec.name

    @property
    def runs(self) -> list[Run]:
        seeds = self.spec.seeds
        return [Run(index=c.index * len(seeds) + j, cell=c, seed=s, name=run_name(c.cell, s),
                    dir=self.dir / run_name(c.cell, s)) for c in self.cells for j, s in enumerate(seeds)]

    def trial_dir(self, number: int) -> Path:
        """The run directory of a search's trial `number` (the search has one seed)."""
        return self.dir / trial_name(number, self.spec.seeds[0])

    def train_flags(self, run: Run) -> list[str]:
        """The trainer flags of one run (`train_flags` below, the one flag builder)."""
        return train_flags(self, run.name, run.seed, run.cell.overrides, run.cell.preset)


def train_flags(sweep: Sweep, name: str, seed: int, overrides: dict[str, Any], preset: str | None,
                stop_after: int | None = None) -> list[str]:
    """The flags of `python -m cifar_dist.train` for run `name` of `sweep` (a grid cell's run, or one segment of a
    search trial, which stops after epoch `stop_after`: 0 = at its end): its preset, the fixed overrides, its
    own overrides, then what the sweep sets."""
    flags = [f"--preset={preset}"] if preset else []
    over = {**sweep.fixed, **{k: v for k, v in overrides.items() if k != "preset"}}
    flags += [f"--{k}={flag_value(v)}" for k, v in over.items()]
    flags += [f"--run.out_dir={sweep.dir}", f"--run.name={name}", f"--run.seed={seed}"]
    return flags + ([] if stop_after is None else [f"--run.stop_after={stop_after}"]) + ["--resume=auto"]


def flag_value(v: Any) -> str:
    """A value as the train CLI reads it back (each read once by its config field's coercion; lists without spaces)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(flag_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def describe(over: dict[str, Any]) -> str:
    """Overrides as `key=value ...` (the plan table, log lines and error messages)."""
    return " ".join(f"{k}={flag_value(v)}" for k, v in over.items()) or "(base config)"


def _canonical(cfg, key: str) -> Any:
    if key == "preset":
        return cfg.preset
    return flatten(to_dict(cfg))[key]  # model options sit flat in the model section, tuples as lists


@functools.cache
def count_model_params(name: str, options: ModelOptions) -> int:
    """Trainable parameters of a model at 10 classes; built on the meta device (no memory, no init), cached
    (ModelOptions is hashable)."""
    import torch

    from cifar_dist.models import count_params, create_model

    try:
        with torch.device("meta"):
            return count_params(create_model(name, num_classes=10, **options))
    except (RuntimeError, NotImplementedError):  # a model that cannot be built on the meta device
        return count_params(create_model(name, num_classes=10, **options))


def _resolve_cell(spec: Spec, n: int, over: dict[str, Any]):
    """The run config of candidate `n`; a ConfigError becomes a SpecError naming where the spec set the key."""
    preset = over.get("preset", spec.preset)
    if preset is not None and not isinstance(preset, str):
        raise bad(spec.path, spec.origin["preset"], "a preset name", preset)
    try:
        return resolve(preset, None, {**spec.fixed, **{k: v for k, v in over.items() if k != "preset"}})
    except ConfigError as e:
        msg = str(e)
        m = re.match(r"--([\w.]+): (.*)", msg)
        if m and m.group(1) in spec.origin:
            raise SpecError(f"{spec.path}: {spec.origin[m.group(1)]}: {m.group(2)}") from e
        where = spec.origin.get("preset", "preset") if msg.startswith("--preset") else f"candidate {n}"
        raise SpecError(f"{spec.path}: {where}: {msg.removeprefix('--preset: ')}") from e


def _params(spec: Spec, n: int, cfg, over: dict[str, Any]) -> int:
    try:
        return count_model_params(cfg.model.name, cfg.model.options)
    except ValueError as e:  # an option the model does not take, an unknown model
        raise SpecError(f"{spec.path}: candidate {n} ({describe(over)}): {e}") from e


# ------------------------------------------------------------------------ plan-time checks of a search


def corners(space: tuple[Dim, ...]) -> list[dict[str, Any]]:
    """Points that touch every value of every choice and both ends of every range (for plan-time checks)."""
    # a zip group's values are override dicts; a choice's values and a range's (low, high) are values of one key
    per_dim = [list(d.args) if d.kind == "zip" else [{d.name: v} for v in d.args] for d in space]
    longest = max(len(v) for v in per_dim)
    points = []
    for i in range(longest):
        point: dict[str, Any] = {}
        for vals in per_dim:
            point.update(vals[i % len(vals)])
        points.append(point)
    return points


def objective_problem(search: Search, cfg) -> str | None:
    """Why the runs of `cfg` would not log the objective every epoch (None when they do)."""
    obj = search.objective
    if obj.startswith(("val_", "ema_val_")) and cfg.data.val_size <= 0:
        return f"{obj} is logged only with a validation split (data.val_size > 0, found {cfg.data.val_size})"
    if obj.startswith("ema_") and not cfg.run.ema:
        return f"{obj} is logged only with run.ema: true"
    if not obj.startswith("train_") and cfg.run.eval_every != 1:
        return f"{obj} is logged every epoch only with run.eval_every: 1 (found {cfg.run.eval_every})"
    return None


def _expand_search(spec: Spec, count: bool) -> Sweep:
    """A search spec has no cells (its trials are drawn while it runs): its base config and every corner of
    its space are resolved, the objective checked, and (when `count`) the models built."""
    assert spec.search is not None
    cfg = _resolve_cell(spec, 0, {})
    fixed = {k: _canonical(cfg, k) for k in spec.fixed}
    for n, over in enumerate(corners(spec.search.space)):
        cfg = _resolve_cell(spec, n, over)
        problem = objective_problem(spec.search, cfg)
        if problem:
            raise bad(spec.path, "search.objective", "a metric the runs log every epoch", problem)
        if count:
            _params(spec, n, cfg, over)
    return Sweep(spec=spec, cells=[], fixed=fixed)


def trial_params(spec: Spec, over: dict[str, Any]) -> int:
    """Trainable parameters of a search trial with overrides `over` (resolved like a cell)."""
    return _params(spec, 0, _resolve_cell(spec, 0, over), over)


def expand(spec: Spec, count: bool = True) -> Sweep:
    """All cells of a spec, each checked with `resolve`; parameters counted when `count` or constraints."""
    if spec.search is not None:
        return _expand_search(spec, count)
    count = count or bool(spec.constraints)
    cells: list[Cell] = []
    dropped: list[str] = []
    fixed: dict[str, Any] = dict(spec.fixed)
    lo, hi = spec.constraints.get("min_params", 0), spec.constraints.get("max_params", 0)
    for n, combo in enumerate(itertools.product(*spec.axes) if spec.axes else [()]):
        over: dict[str, Any] = {}
        for part in combo:
            over.update(part)
        cfg = _resolve_cell(spec, n, over)
        over = {k: _canonical(cfg, k) for k in over}
        fixed = {k: _canonical(cfg, k) for k in spec.fixed}
        params = _params(spec, n, cfg, over) if count else None
        if params is not None and ((hi and params > hi) or (lo and params < lo)):
            limit = f"max_params {hi:,}" if hi and params > hi else f"min_params {lo:,}"
            dropped.append(f"candidate {n} ({describe(over)}): {params:,} parameters, outside {limit}")
            continue
        cells.append(Cell(cell=f"c{len(cells):03d}", index=len(cells), overrides=over, preset=cfg.preset or None,
                          epochs=cfg.run.epochs, params=params))
    if not cells:
        key = "max_params" if "max_params" in spec.constraints else "min_params"
        raise bad(spec.path, f"constraints.{key}", f"a budget that keeps at least one of the {len(dropped)} cells",
                  spec.constraints[key])
    return Sweep(spec=spec, cells=cells, fixed=fixed, dropped=dropped)


def load_sweep(path: str | Path, count: bool = True) -> Sweep:
    """Read, check and expand a spec file."""
    return expand(load_spec(path), count=count)


# ----------------------------------------------------------------------------------------- sweep.json


def sweep_record(sweep: Sweep) -> dict[str, Any]:
    """The content of <out_dir>/<name>/sweep.json (read by `cifar-dist report` to group runs by cell)."""
    s = sweep.spec
    return {
        "name": s.name, "spec": str(s.path), "spec_sha256": s.sha256, "preset": s.preset, "fixed": sweep.fixed,
        "out_dir": str(sweep.dir),
        "cells": [{"cell": c.cell, "index": c.index, "overrides": c.overrides, "params": c.params,
                   "preset": c.preset, "epochs": c.epochs} for c in sweep.cells],
        "seeds": s.seeds,
        "array": {"size": len(sweep.runs), "index": "cell position * len(seeds) + seed position"},
        "runs": [{"index": r.index, "run": r.name, "cell": r.cell.cell, "seed": r.seed} for r in sweep.runs],
        "dropped": sweep.dropped,
        **({"search": search_record(s)} if s.search else {}),
    }


def search_record(spec: Spec) -> dict[str, Any]:
    """The `search` entry of sweep.json: the search settings and where its study is."""
    s = spec.search
    assert s is not None
    space = {d.name: {d.kind: d.args if d.kind != "zip" else len(d.args)} for d in s.space}
    return {"pruner": s.pruner, "objective": s.objective, "direction": s.direction, "trials": s.trials,
            "epochs": {"min": s.min_epochs, "max": s.max_epochs, "reduction_factor": s.reduction_factor},
            "sampler": s.sampler, "seed": s.seed, "space": space, "study": STUDY_FILE}


def write_sweep_json(sweep: Sweep) -> None:
    """Write sweep.json, first refusing a changed spec that would give a started run another config."""
    check_unchanged(sweep, read_sweep_json(sweep.dir))
    atomic_write_json(sweep.dir / SWEEP_FILE, sweep_record(sweep), indent=1)


def check_unchanged(sweep: Sweep, old: dict[str, Any] | None) -> None:
    """A cell id must keep its meaning once one of its runs has started: resuming a checkpoint under other
    overrides would silently mix two configurations. Appending cells or seeds is fine."""
    if not old or old.get("spec_sha256") == sweep.spec.sha256:
        return
    new = json.loads(json.dumps(sweep_record(sweep)))  # the same JSON types as the file
    before = {c["cell"]: (c.get("preset"), c.get("overrides")) for c in old.get("cells", [])}
    for c in new["cells"]:
        started = [r for r in sweep.runs if r.cell.cell == c["cell"] and r.dir.is_dir()]
        if not started:
            continue
        was = before.get(c["cell"])
        now = (c["preset"], c["overrides"])
        if old.get("fixed") != new["fixed"]:
            raise bad(sweep.spec.path, "fixed", f"the fixed overrides the runs in {sweep.dir} started with "
                      f"({describe(old.get('fixed') or {})}; or a new sweep name)", describe(sweep.fixed))
        if was is not None and tuple(was) != now:
            raise bad(sweep.spec.path, c["cell"], f"the overrides {started[0].name} started with "
                      f"({describe(was[1] or {})}; or a new sweep name)", describe(c["overrides"]))
