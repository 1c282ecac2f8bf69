"""Sweeps: a YAML spec becomes numbered cells, and every cell x seed becomes one run, on SLURM or locally.

    cifar-dist sweep plan   slurm/grids/seed001_grid.yaml   # cells, parameter counts, the sbatch command
    cifar-dist sweep submit slurm/grids/seed001_grid.yaml   # sbatch the unfinished runs as one job array
    cifar-dist sweep status slurm/grids/seed001_grid.yaml   # pending / running / done / failed per run
    cifar-dist sweep run    slurm/grids/seed001_grid.yaml --local --parallel 2   # no SLURM: P subprocesses
    python -m cifar_dist.sweep resolve GRID INDEX [--shell] # the train flags of array index INDEX

Spec (every key but `name` optional; unknown keys are errors):

    name: seed001_grid              # runs land in <out_dir>/<name>/<cell>-s<seed>/
    preset: seed001_resnet18_5m     # base preset; a `preset` axis may vary it per cell
    out_dir: runs                   # parent of the sweep directory, relative to the working directory
    fixed:                          # overrides of every cell: section.key: value
      run.epochs: 51
    grid:                           # Cartesian product; the first axis varies slowest
      run.global_batch_size: [128, 256, 512]
      optim.lookahead: [true, false]
    zip:                            # axes that vary together (equal lengths), as one more grid axis;
      optim.name: [adam, sgd]       # a list of such mappings gives several zipped groups
      optim.weight_decay: [0.0, 5.0e-4]
    random:                         # random search, crossed with the grid as its innermost axis
      samples: 32                   # number of draws (constraints may drop some)
      seed: 2                       # search seed: the same seed gives the same draws
      params:                       # drawn in the order written
        optim.lr: {loguniform: [1.0e-4, 1.0e-1]}   # floats are rounded to 4 significant digits
        model.dropout: {uniform: [0.0, 0.5]}
        model.c1: {randint: [14, 38]}              # integers, both ends included
        model.blocks: {choice: [[3, 3, 3], [7, 7, 7]]}
    seeds: [0, 1, 2]                # repeats of every cell (run.seed); an integer n means 0..n-1
    constraints:                    # parameter budget (trainable parameters at 10 classes)
      max_params: 5000000           # cells outside [min_params, max_params] are dropped from the plan
    parallel: 8                     # array tasks running at once (sbatch --array=...%8)
    sbatch: [--time=02:00:00]       # extra sbatch options (they beat the #SBATCH lines of sweep.sh)

PyYAML reads `1e-2` (no dot) as a string; the config check turns it into the number anyway.
Every cell is checked with `cifar_dist.config.resolve` and its model is built (on the meta device) to count
parameters, so a bad key or model option fails at plan time: one line (file, key, expected, found), exit 2.

Numbering: cells are c000, c001, ... in expansion order (grid axes, zip groups, random draws), counted
after the constraints, so the same spec always gives the same cells. Runs are cell-major:
array index = cell position * len(seeds) + seed position, run name `<cell>-s<seed>`, flags
`--run.out_dir=<out_dir>/<name> --run.name=<cell>-s<seed> --run.seed=<seed> --resume=auto`.
`<out_dir>/<name>/sweep.json` (written by plan, submit, run and the first array task) lists the cells
for `cifar-dist report`; SLURM logs go to `<out_dir>/<name>/slurm/%A_%a.out`, local ones to `logs/<run>.out`.

Skip and resume: a run with result.json is finished and never trained again; any other run starts with
`--resume=auto`, which continues from its last checkpoint. `submit` leaves out finished runs and runs
already in squeue; `slurm/sweep.sh` checks again when a task starts. Editing a spec: more seeds or new
cells at the end are fine, but a cell whose runs have started must keep its overrides (and the fixed ones
their values) -- plan, submit, run and resolve refuse otherwise (exit 2), as resuming its checkpoint under
another config would mix two experiments; use a new sweep name instead.

Status (`sweep status`), from the run directory, `sweep_task.json` (written by sweep.sh and the local
runner: state, exit status, job id, host, pid) and, when it answers, `squeue` (jobs named after the sweep,
which `submit` does, or with the job id recorded in sweep_task.json):
    done     result.json exists
    running  squeue lists the task as running; without squeue: the run has started (checkpoint, metrics or
             a sweep_task.json saying running) and has no result; a local run must have a live pid
    pending  squeue lists the task as pending (also after a requeue), or nothing has started yet
    failed   the last attempt ended without a result (trainer error, non-finite loss, stopped and not
             requeued, killed); resubmitting resumes it from its checkpoint
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cifar_dist.config import ConfigError, flatten, model_options, resolve
from cifar_dist.slurm_resources import sbatch_resources

REPO = Path(__file__).resolve().parent.parent
SWEEP_SCRIPT = REPO / "slurm" / "sweep.sh"
SPEC_KEYS = ("name", "preset", "out_dir", "fixed", "grid", "zip", "random", "seeds", "constraints", "parallel",
             "sbatch")
RANDOM_KEYS = ("samples", "seed", "params")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
CONSTRAINTS = ("max_params", "min_params")
SET_BY_SWEEP = ("run.out_dir", "run.name", "run.seed")  # one value per run, chosen by the sweep
TASK_FILE = "sweep_task.json"  # written by slurm/sweep.sh and the local runner into the run directory
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 3


class SpecError(ValueError):
    """A bad sweep spec; the message is one line: file, key, what was expected, what was found."""


def _bad(path: Path | str, key: str, expected: str, found: Any) -> SpecError:
    return SpecError(f"{path}: {key}: expected {expected}, found {found!r}")


# ----------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Spec:
    """A checked sweep spec (still unexpanded). Axes hold override dicts, one per value."""

    path: Path
    name: str
    preset: str | None
    out_dir: str
    fixed: dict[str, Any]
    axes: list[list[dict[str, Any]]]  # grid axes, then zip groups, then the random draws
    origin: dict[str, str]  # override key -> where the spec sets it (for error messages)
    seeds: list[int]
    constraints: dict[str, int]
    parallel: int
    sbatch: list[str]
    sha256: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_key(path: Path, where: str, key: Any, origin: dict[str, str], allow_preset: bool = True) -> str:
    if not isinstance(key, str) or not key:
        raise _bad(path, where, "an override key like optim.lr", key)
    if key == "preset" and not allow_preset:
        raise _bad(path, f"{where}.preset", "the top-level preset key (fixed holds section.key overrides)", key)
    if key in SET_BY_SWEEP:
        raise _bad(path, f"{where}.{key}", "no value (the sweep sets run.out_dir, run.name and run.seed)", key)
    if key in origin:
        raise _bad(path, f"{where}.{key}", f"a key set once (it is already in {origin[key]})", key)
    origin[key] = f"{where}.{key}"
    return key


def _number(v: Any) -> Any:
    """YAML 1.1 reads 1e-3 as a string; accept it as the number it means."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _distribution(path: Path, key: str, d: Any) -> tuple[str, Any]:
    expected = f"one of {{{', '.join(f'{n}: [...]' for n in DISTRIBUTIONS)}}}"
    if not isinstance(d, dict) or len(d) != 1 or next(iter(d)) not in DISTRIBUTIONS:
        raise _bad(path, key, expected, d)
    kind, args = next(iter(d.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise _bad(path, f"{key}.choice", "a non-empty list of values", args)
        return kind, args
    if not isinstance(args, list) or len(args) != 2:
        raise _bad(path, f"{key}.{kind}", "[low, high]", args)
    lo, hi = (_number(a) for a in args)
    if kind == "randint":
        if not (_is_int(lo) and _is_int(hi) and lo <= hi):
            raise _bad(path, f"{key}.randint", "[low, high] integers with low <= high", args)
    elif not (_is_num(lo) and _is_num(hi) and lo < hi):
        raise _bad(path, f"{key}.{kind}", "[low, high] numbers with low < high", args)
    elif kind == "loguniform" and lo <= 0:
        raise _bad(path, f"{key}.loguniform", "[low, high] with 0 < low < high", args)
    return kind, (lo, hi)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def draw(rng: random.Random, kind: str, args: Any) -> Any:
    """One value of a distribution. Uses only random() and randrange(), whose streams Python keeps stable."""
    if kind == "choice":
        return args[rng.randrange(len(args))]
    lo, hi = args
    if kind == "randint":
        return lo + rng.randrange(hi - lo + 1)
    if kind == "uniform":
        return _round(lo + (hi - lo) * rng.random())
    return _round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * rng.random()))


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file; raises SpecError (one line) on anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise _bad(path, "(top level)", "a mapping of spec keys", type(data).__name__)
    for key in data:
        if key not in SPEC_KEYS:
            raise _bad(path, str(key), f"a known key ({', '.join(SPEC_KEYS)})", key)
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise _bad(path, "name", "a sweep name of letters, digits, _ . - (it names a directory)", name)
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise _bad(path, "preset", "a preset name", preset)
    out_dir = data.get("out_dir", "runs")
    if not isinstance(out_dir, str) or not out_dir:
        raise _bad(path, "out_dir", "a directory path", out_dir)

    origin: dict[str, str] = {}
    fixed_raw = data.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        raise _bad(path, "fixed", "a mapping of section.key: value", fixed_raw)
    fixed = {_check_key(path, "fixed", k, origin, allow_preset=False): v for k, v in flatten(fixed_raw).items()}

    axes: list[list[dict[str, Any]]] = []
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise _bad(path, "grid", "a mapping of section.key: [values]", grid)
    for key, values in grid.items():
        _check_key(path, "grid", key, origin)
        if not isinstance(values, list) or not values:
            raise _bad(path, f"grid.{key}", "a non-empty list of values", values)
        axes.append([{key: v} for v in values])

    zips = data.get("zip") or []
    zips = [zips] if isinstance(zips, dict) else zips
    if not isinstance(zips, list):
        raise _bad(path, "zip", "a mapping of section.key: [values] (or a list of them)", zips)
    for i, group in enumerate(zips):
        where = "zip" if len(zips) == 1 else f"zip[{i}]"
        if not isinstance(group, dict) or not group:
            raise _bad(path, where, "a non-empty mapping of section.key: [values]", group)
        lengths = set()
        for key, values in group.items():
            _check_key(path, where, key, origin)
            if not isinstance(values, list) or not values:
                raise _bad(path, f"{where}.{key}", "a non-empty list of values", values)
            lengths.add(len(values))
        if len(lengths) != 1:
            sizes = {k: len(v) for k, v in group.items()}
            raise _bad(path, where, "lists of equal length (they vary together)", sizes)
        keys = list(group)
        axes.append([dict(zip(keys, vals)) for vals in zip(*(group[k] for k in keys))])

    rnd = data.get("random")
    if rnd is not None:
        if not isinstance(rnd, dict):
            raise _bad(path, "random", "a mapping with samples, seed, params", rnd)
        for key in rnd:
            if key not in RANDOM_KEYS:
                raise _bad(path, f"random.{key}", f"a known key ({', '.join(RANDOM_KEYS)})", key)
        samples, seed, params = rnd.get("samples"), rnd.get("seed", 0), rnd.get("params")
        if not _is_int(samples) or samples < 1:
            raise _bad(path, "random.samples", "a positive integer", samples)
        if not _is_int(seed):
            raise _bad(path, "random.seed", "an integer", seed)
        if not isinstance(params, dict) or not params:
            raise _bad(path, "random.params", "a non-empty mapping of section.key: {distribution: args}", params)
        dists = [(_check_key(path, "random.params", k, origin), _distribution(path, f"random.params.{k}", d))
                 for k, d in params.items()]
        rng = random.Random(seed)
        axes.append([{k: draw(rng, kind, args) for k, (kind, args) in dists} for _ in range(samples)])

    seeds = data.get("seeds", [0])
    if _is_int(seeds) and seeds > 0:
        seeds = list(range(seeds))
    if (not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise _bad(path, "seeds", "a non-empty list of distinct integers >= 0 (or a count)", seeds)

    constraints = data.get("constraints") or {}
    if not isinstance(constraints, dict):
        raise _bad(path, "constraints", "a mapping (max_params, min_params)", constraints)
    for key, v in constraints.items():
        if key not in CONSTRAINTS:
            raise _bad(path, f"constraints.{key}", f"a known constraint ({', '.join(CONSTRAINTS)})", key)
        v = _number(v)
        if not (_is_num(v) and v > 0 and float(v).is_integer()):
            raise _bad(path, f"constraints.{key}", "a positive number of parameters", constraints[key])
        constraints[key] = int(v)

    parallel = data.get("parallel", 8)
    if not _is_int(parallel) or parallel < 1:
        raise _bad(path, "parallel", "a positive integer", parallel)
    sbatch = data.get("sbatch") or []
    if not isinstance(sbatch, list) or not all(isinstance(a, str) and a.startswith("-") for a in sbatch):
        raise _bad(path, "sbatch", "a list of sbatch options like --time=02:00:00", sbatch)
    return Spec(path=path, name=name, preset=preset, out_dir=out_dir, fixed=fixed, axes=axes, origin=origin,
                seeds=seeds, constraints=constraints, parallel=parallel, sbatch=sbatch,
                sha256=hashlib.sha256(raw).hexdigest())


# ------------------------------------------------------------------------------------------ expansion


@dataclass(frozen=True)
class Cell:
    cell: str  # c000, c001, ...
    index: int  # position among the kept cells
    overrides: dict[str, Any]  # the keys that vary (canonical values from the resolved config)
    preset: str | None  # the preset this cell starts from
    epochs: int  # run.epochs after all overrides
    params: int | None  # trainable parameters at 10 classes (None when not counted)


@dataclass(frozen=True)
class Run:
    index: int  # array index: cell position * len(seeds) + seed position
    cell: Cell
    seed: int
    name: str  # <cell>-s<seed>
    dir: Path  # <out_dir>/<sweep>/<name>


@dataclass(frozen=True)
class Sweep:
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
        return [Run(index=c.index * len(seeds) + j, cell=c, seed=s, name=f"{c.cell}-s{s}", dir=self.dir / f"{c.cell}-s{s}")
                for c in self.cells for j, s in enumerate(seeds)]

    def train_flags(self, run: Run) -> list[str]:
        """The flags of `python -m cifar_dist.train` for one run."""
        flags = [f"--preset={run.cell.preset}"] if run.cell.preset else []
        over = {**self.fixed, **{k: v for k, v in run.cell.overrides.items() if k != "preset"}}
        flags += [f"--{k}={flag_value(v)}" for k, v in over.items()]
        flags += [f"--run.out_dir={self.dir}", f"--run.name={run.name}", f"--run.seed={run.seed}", "--resume=auto"]
        return flags


def flag_value(v: Any) -> str:
    """A value as the train CLI reads it back (Fire literals; lists without spaces)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(flag_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _canonical(cfg, key: str) -> Any:
    if key == "preset":
        return cfg.preset
    section, _, name = key.partition(".")
    v = getattr(getattr(cfg, section), name)
    return list(v) if isinstance(v, tuple) else v


_PARAM_CACHE: dict[tuple, int] = {}


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


def count_model_params(name: str, options: dict[str, Any]) -> int:
    """Trainable parameters of a model at 10 classes; built on the meta device (no memory, no init), cached."""
    key = (name, tuple(sorted((k, _freeze(v)) for k, v in options.items())))
    if key not in _PARAM_CACHE:
        import torch

        from cifar_dist.models import count_params, create_model

        try:
            with torch.device("meta"):
                n = count_params(create_model(name, num_classes=10, **options))
        except (RuntimeError, NotImplementedError):  # a model that cannot be built on the meta device
            n = count_params(create_model(name, num_classes=10, **options))
        _PARAM_CACHE[key] = n
    return _PARAM_CACHE[key]


def _describe(over: dict[str, Any]) -> str:
    return " ".join(f"{k}={flag_value(v)}" for k, v in over.items()) or "(base config)"


def expand(spec: Spec, count: bool = True) -> Sweep:
    """All cells of a spec, each checked with `resolve`; parameters counted when `count` or constraints."""
    count = count or bool(spec.constraints)
    cells: list[Cell] = []
    dropped: list[str] = []
    fixed: dict[str, Any] = dict(spec.fixed)
    lo, hi = spec.constraints.get("min_params", 0), spec.constraints.get("max_params", 0)
    for n, combo in enumerate(itertools.product(*spec.axes) if spec.axes else [()]):
        over: dict[str, Any] = {}
        for part in combo:
            over.update(part)
        preset = over.get("preset", spec.preset)
        if preset is not None and not isinstance(preset, str):
            raise _bad(spec.path, spec.origin["preset"], "a preset name", preset)
        try:
            cfg = resolve(preset, None, {**spec.fixed, **{k: v for k, v in over.items() if k != "preset"}})
        except ConfigError as e:
            msg = str(e)
            m = re.match(r"--([\w.]+): (.*)", msg)
            if m and m.group(1) in spec.origin:
                raise SpecError(f"{spec.path}: {spec.origin[m.group(1)]}: {m.group(2)}") from e
            where = spec.origin.get("preset", "preset") if msg.startswith("--preset") else f"candidate {n}"
            raise SpecError(f"{spec.path}: {where}: {msg.removeprefix('--preset: ')}") from e
        over = {k: _canonical(cfg, k) for k in over}
        fixed = {k: _canonical(cfg, k) for k in spec.fixed}
        params = None
        if count:
            try:
                params = count_model_params(cfg.model.name, model_options(cfg.model))
            except ValueError as e:  # an option the model does not take, an unknown model
                raise SpecError(f"{spec.path}: candidate {n} ({_describe(over)}): {e}") from e
            if (hi and params > hi) or (lo and params < lo):
                limit = f"max_params {hi:,}" if hi and params > hi else f"min_params {lo:,}"
                dropped.append(f"candidate {n} ({_describe(over)}): {params:,} parameters, outside {limit}")
                continue
        cells.append(Cell(cell=f"c{len(cells):03d}", index=len(cells), overrides=over, preset=cfg.preset or None,
                          epochs=cfg.run.epochs, params=params))
    if not cells:
        key = "max_params" if "max_params" in spec.constraints else "min_params"
        raise _bad(spec.path, f"constraints.{key}", f"a budget that keeps at least one of the {len(dropped)} cells",
                   spec.constraints[key])
    return Sweep(spec=spec, cells=cells, fixed=fixed, dropped=dropped)


def load_sweep(path: str | Path, count: bool = True) -> Sweep:
    return expand(load_spec(path), count=count)


# ----------------------------------------------------------------------------------- files and state


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    }


def write_sweep_json(sweep: Sweep) -> Path:
    """Write sweep.json, first refusing a changed spec that would give a started run another config."""
    path = sweep.dir / "sweep.json"
    check_unchanged(sweep, _read_json(path))
    _atomic_write(path, json.dumps(sweep_record(sweep), indent=1) + "\n")
    return path


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
            raise _bad(sweep.spec.path, "fixed", f"the fixed overrides the runs in {sweep.dir} started with "
                       f"({_describe(old.get('fixed') or {})}; or a new sweep name)", _describe(sweep.fixed))
        if was is not None and tuple(was) != now:
            raise _bad(sweep.spec.path, c["cell"], f"the overrides {started[0].name} started with "
                       f"({_describe(was[1] or {})}; or a new sweep name)", _describe(c["overrides"]))


def is_finished(run: Run) -> bool:
    return (run.dir / "result.json").is_file()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_task(run: Run, state: str, exit_status: int | None, job: str, pid: int) -> None:
    """Record the outcome of an attempt in <run>/sweep_task.json (same fields as slurm/sweep.sh writes)."""
    record = {"state": state, "exit": exit_status, "job": job, "host": socket.gethostname().split(".")[0],
              "pid": pid, "time": int(time.time())}
    _atomic_write(run.dir / TASK_FILE, json.dumps(record) + "\n")


def last_metrics(run: Run) -> dict[str, Any] | None:
    """The last row of metrics.jsonl (None when there is none)."""
    path = run.dir / "metrics.jsonl"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _pid_alive(pid: Any) -> bool:
    if not _is_int(pid) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def squeue_tasks(job_name: str) -> dict[str, Any] | None:
    """Array tasks in squeue for this user: {"by_index": {index: (job id, state)} for jobs named job_name,
    "by_job": {"<job>_<index>": state}}; None when squeue is missing or does not answer."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i|%T|%j"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    by_index: dict[int, tuple[str, str]] = {}
    by_job: dict[str, str] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        jobid, state, name = parts
        by_job[jobid] = state
        m = re.fullmatch(r"(\d+)_(\d+)", jobid)
        if m and name == job_name:
            by_index[int(m.group(2))] = (jobid, state)
    return {"by_index": by_index, "by_job": by_job}


RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING")


def run_state(run: Run, queue: dict[str, Any] | None) -> tuple[str, str]:
    """(pending | running | done | failed, detail) of one run; the rules are in the module docstring."""
    if is_finished(run):
        return "done", ""
    task = _read_json(run.dir / TASK_FILE) or {}
    started = bool(task) or (run.dir / "metrics.jsonl").is_file() or (run.dir / "checkpoints").is_dir()
    local_here = task.get("job") == "local" and task.get("host") == socket.gethostname().split(".")[0]
    if local_here and task.get("state") == "running":
        if _pid_alive(task.get("pid")):
            return "running", "local"
        return "failed", "local runner gone before the run finished"
    if queue is not None:
        job = str(task.get("job"))
        if job in queue["by_job"]:
            qjob, qstate = job, queue["by_job"][job]
        else:
            qjob, qstate = queue["by_index"].get(run.index, (None, None))
        if qstate in RUNNING_STATES:
            return "running", f"job {qjob}"
        if qstate:
            return "pending", f"job {qjob} {qstate.lower()}"
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
    if state == "done":
        res = _read_json(run.dir / "result.json") or {}
        acc = (res.get("final") or {}).get("test_acc")
        return f"{res.get('epochs', epochs)}/{epochs}", f"test_acc={acc:.2f} (final)" if _is_num(acc) else ""
    row = last_metrics(run)
    if not row:
        return f"0/{epochs}", ""
    for key in ("test_acc", "val_acc", "train_loss"):
        if _is_num(row.get(key)):
            return f"{row.get('epoch', 0)}/{epochs}", f"{key}={row[key]:.4g} (epoch {row.get('epoch')})"
    return f"{row.get('epoch', 0)}/{epochs}", ""


def status_rows(sweep: Sweep, queue: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for run in sweep.runs:
        state, detail = run_state(run, queue)
        epoch, metric = _metric_text(run, state)
        rows.append({"index": run.index, "run": run.name, "cell": run.cell.cell, "seed": run.seed, "state": state,
                     "epoch": epoch, "metric": metric, "detail": detail})
    return rows


# ------------------------------------------------------------------------------------------- commands


def array_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (sbatch --array syntax)."""
    parts = []
    for _, group in itertools.groupby(enumerate(sorted(indices)), key=lambda t: t[1] - t[0]):
        g = [v for _, v in group]
        parts.append(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]))
    return ",".join(parts)


def _display_path(p: Path) -> str:
    rel = os.path.relpath(p)
    return str(p) if rel.startswith("..") else rel


def sbatch_command(sweep: Sweep, indices: list[int], parallel: int, extra: list[str] | None = None) -> list[str]:
    """The sbatch command line of a job array over `indices` (array index = run index)."""
    cmd = ["sbatch", f"--job-name={sweep.spec.name}", f"--array={array_ranges(indices)}%{parallel}",
           f"--output={sweep.dir / 'slurm' / '%A_%a.out'}"]
    if Path.cwd().resolve() != REPO:  # sweep.sh finds the code through the submit directory otherwise
        cmd.append(f"--export=ALL,CIFAR_DIST_ROOT={REPO}")
    given = [*sweep.spec.sbatch, *(extra or [])]
    # GPUs only where the partition has them, never more CPUs than a node has (sweep.sh asks for neither)
    cmd += [*sbatch_resources(given), *given, _display_path(SWEEP_SCRIPT), str(sweep.spec.path)]
    return cmd


def _print_plan(sweep: Sweep, parallel: int) -> None:
    s = sweep.spec
    runs = sweep.runs
    fixed = _describe(sweep.fixed) if sweep.fixed else "none"
    print(f"sweep {s.name} ({s.path}): preset {s.preset or 'defaults'}; fixed: {fixed}")
    print(f"{len(sweep.cells)} cells x {len(s.seeds)} seeds {s.seeds} = {len(runs)} runs in {sweep.dir}/<cell>-s<seed>")
    if sweep.dropped:
        print(f"dropped {len(sweep.dropped)} of {len(sweep.dropped) + len(sweep.cells)} candidates (constraints "
              f"{', '.join(f'{k}={v:,}' for k, v in s.constraints.items())}):")
        for line in sweep.dropped:
            print(f"  {line}")
    print(f"{'cell':5s} {'params':>11s}  overrides")
    for c in sweep.cells:
        params = f"{c.params:,}" if c.params is not None else "?"
        print(f"{c.cell:5s} {params:>11s}  {_describe(c.overrides)}")
    print(f"array index = cell position x {len(s.seeds)} + seed position ({runs[0].name} -> 0, "
          f"{runs[-1].name} -> {runs[-1].index})")
    print("submit with:")
    print(f"  {shlex.join(sbatch_command(sweep, [r.index for r in runs], parallel))}")
    print(f"  (or: cifar-dist sweep submit {s.path}, which leaves out finished runs)")
    print(f"run here without SLURM:\n  cifar-dist sweep run {s.path} --local --parallel 2")


def cmd_plan(args) -> int:
    sweep = load_sweep(args.grid)
    write_sweep_json(sweep)
    (sweep.dir / "slurm").mkdir(parents=True, exist_ok=True)
    _print_plan(sweep, args.parallel or sweep.spec.parallel)
    return EXIT_OK


def _max_array_size() -> int | None:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.M)
    return int(m.group(1)) if m else None


def cmd_submit(args) -> int:
    sweep = load_sweep(args.grid)
    write_sweep_json(sweep)
    (sweep.dir / "slurm").mkdir(parents=True, exist_ok=True)
    queue = squeue_tasks(sweep.spec.name)
    todo, finished, queued = [], 0, 0
    for run in sweep.runs:
        if is_finished(run):
            finished += 1
        elif queue is not None and run.index in queue["by_index"]:
            queued += 1
        else:
            todo.append(run.index)
    print(f"sweep {sweep.spec.name}: {len(sweep.runs)} runs; skipping {finished} finished"
          + (f" and {queued} already queued" if queued else "") + f"; submitting {len(todo)}")
    if not todo:
        print("nothing to submit")
        return EXIT_OK
    cmd = sbatch_command(sweep, todo, args.parallel or sweep.spec.parallel, args.sbatch_args)
    if args.dry_run:
        print(shlex.join(cmd))
        return EXIT_OK
    limit = _max_array_size()
    if limit is not None and max(todo) >= limit:
        raise SpecError(f"{sweep.spec.path}: array index {max(todo)}: expected below MaxArraySize={limit} of "
                        f"this cluster, found {len(sweep.runs)} runs; split the spec")
    print(shlex.join(cmd), flush=True)
    try:
        # Tasks run the interpreter that submits them (sbatch's default --export=ALL passes it on).
        env = {**os.environ, "CIFAR_DIST_PYTHON": os.environ.get("CIFAR_DIST_PYTHON") or sys.executable}
        out = subprocess.run(cmd[:1] + ["--parsable"] + cmd[1:], stdout=subprocess.PIPE, text=True, env=env)
    except FileNotFoundError:
        print("error: sbatch: command not found (is this a SLURM login node?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if out.returncode:
        print(f"error: sbatch exited with status {out.returncode}", file=sys.stderr)
        return out.returncode
    job = out.stdout.strip().split(";")[0]
    print(f"submitted job array {job}; logs in {sweep.dir / 'slurm'}; progress: cifar-dist sweep status "
          f"{sweep.spec.path}")
    return EXIT_OK


def cmd_status(args) -> int:
    sweep = load_sweep(args.grid, count=False)
    queue = squeue_tasks(sweep.spec.name)
    rows = status_rows(sweep, queue)
    if args.json:
        print(json.dumps({"name": sweep.spec.name, "squeue": queue is not None, "runs": rows}, indent=1))
        return EXIT_OK
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "pending", "failed")}
    print(f"sweep {sweep.spec.name}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + ("" if queue is not None else " (squeue not available: running = started without a result)"))
    print(f"{'run':10s} {'index':>5s}  {'state':8s} {'epoch':>7s}  {'last metric':30s} detail")
    for r in rows:
        print(f"{r['run']:10s} {r['index']:5d}  {r['state']:8s} {r['epoch']:>7s}  {r['metric']:30s} {r['detail']}")
    return EXIT_OK


def cmd_resolve(args) -> int:
    spec = load_spec(args.grid)
    record = _read_json(Path(spec.out_dir) / spec.name / "sweep.json")
    sweep_file_ok = bool(record) and record.get("spec_sha256") == spec.sha256
    sweep = expand(spec, count=not sweep_file_ok)  # counts parameters only for constraints or a new sweep.json
    if not sweep_file_ok:
        write_sweep_json(sweep)
    runs = sweep.runs
    if not 0 <= args.index < len(runs):
        raise SpecError(f"{spec.path}: array index: expected 0..{len(runs) - 1}, found {args.index}")
    run = runs[args.index]
    flags = sweep.train_flags(run)
    if not args.shell:
        print(shlex.join(flags))
        return EXIT_OK
    print(f"run_name={shlex.quote(run.name)}")
    print(f"run_dir={shlex.quote(str(run.dir))}")
    print(f"cell={run.cell.cell}")
    print(f"seed={run.seed}")
    print(f"finished={int(is_finished(run))}")
    print(f"train_args=({shlex.join(flags)})")
    return EXIT_OK


def _local_command(flags: list[str], procs: int, port: int) -> list[str]:
    if procs <= 1:
        return [sys.executable, "-m", "cifar_dist.train", *flags]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch" / "cpu.yaml"),
            "--num_processes", str(procs), "--main_process_port", str(port), "-m", "cifar_dist.train", *flags]


def run_local(sweep: Sweep, parallel: int, procs: int) -> int:
    """Run every unfinished run of the sweep here, `parallel` at a time; SIGINT/SIGTERM checkpoint and stop."""
    runs = sweep.runs
    todo = []
    for run in runs:
        if is_finished(run):
            print(f"skip {run.name}: finished ({run.dir / 'result.json'})", flush=True)
        else:
            todo.append(run)
    print(f"sweep {sweep.spec.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, running {len(todo)} "
          f"({parallel} at a time, {procs} process(es) each); logs in {sweep.dir / 'logs'}", flush=True)
    stop: list[int] = []
    active: dict[subprocess.Popen, Run] = {}

    def on_signal(signum, frame):
        if not stop:
            print(f"got {signal.Signals(signum).name}: stopping the runs (they save a checkpoint)", flush=True)
        stop.append(signum)
        for proc in active:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    failed = done = 0
    try:
        queue = list(todo)
        while queue or active:
            while queue and not stop and len(active) < parallel:
                run = queue.pop(0)
                run.dir.mkdir(parents=True, exist_ok=True)
                log_path = sweep.dir / "logs" / f"{run.name}.out"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                port = 29500 + (os.getpid() + run.index) % 20000
                cmd = _local_command(sweep.train_flags(run), procs, port)
                with log_path.open("a") as log:
                    log.write(f"$ {shlex.join(cmd)}\n")
                    log.flush()
                    # A session of its own: a terminal's Ctrl-C reaches only this runner, which sends SIGTERM.
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
                active[proc] = run
                write_task(run, "running", None, "local", proc.pid)
                print(f"start {run.name} ({_describe(run.cell.overrides)}, seed {run.seed}) pid {proc.pid}", flush=True)
            if stop and queue:
                queue.clear()
            for proc in [p for p in active if p.poll() is not None]:
                run = active.pop(proc)
                if is_finished(run):
                    done += 1
                    write_task(run, "done", proc.returncode, "local", proc.pid)
                    print(f"done  {run.name}", flush=True)
                elif stop:
                    write_task(run, "preempted", proc.returncode, "local", proc.pid)
                    print(f"stopped {run.name} (exit {proc.returncode}); rerun to resume", flush=True)
                else:
                    failed += 1
                    write_task(run, "failed", proc.returncode, "local", proc.pid)
                    print(f"FAILED {run.name}: exit {proc.returncode}; see {sweep.dir / 'logs' / run.name}.out",
                          flush=True)
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(f"sweep {sweep.spec.name}: {done} trained, {len(runs) - len(todo)} skipped, {failed} failed"
          + (", stopped by a signal" if stop else ""), flush=True)
    if stop:
        return EXIT_STOPPED
    return EXIT_FAILED if failed else EXIT_OK


def cmd_run(args) -> int:
    if not args.local:
        print("error: sweep run: expected --local (on a SLURM cluster use `cifar-dist sweep submit`)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    sweep = load_sweep(args.grid)
    write_sweep_json(sweep)
    return run_local(sweep, args.parallel or 1, args.procs)


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="cifar-dist sweep", description=doc[0],
                                epilog=doc[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{plan,submit,status,run,resolve}")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("grid", metavar="GRID", help="sweep spec (YAML), e.g. slurm/grids/seed001_grid.yaml")
        return sp

    sp = add("plan", "print the numbered cells, parameter counts and the sbatch command; submit nothing")
    sp.add_argument("--parallel", type=int, help="array tasks at once (default: the spec's parallel)")
    sp = add("submit", "sbatch the unfinished runs as a job array; sbatch options may follow a --, "
                       "e.g. `submit GRID -- --partition=gpu --wait`")
    sp.usage = "cifar-dist sweep submit [-h] [--parallel P] [--dry-run] GRID [-- SBATCH_OPTION ...]"
    sp.add_argument("--parallel", type=int, help="array tasks at once (default: the spec's parallel)")
    sp.add_argument("--dry-run", action="store_true", help="print the sbatch command (for the runs neither "
                                                           "finished nor in squeue), do not submit")
    sp = add("status", "show every run as pending / running / done / failed with its last metric")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = add("run", "run the sweep on this machine without SLURM (same skip/resume rules)")
    sp.add_argument("--local", action="store_true", help="required: run here, as subprocesses")
    sp.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    sp.add_argument("--procs", type=int, default=int(os.environ.get("CIFAR_DIST_CPU_PROCS", "1")),
                    help="training processes per run (2+ = accelerate launch, launch/cpu.yaml); default "
                         "$CIFAR_DIST_CPU_PROCS or 1")
    sp = add("resolve", "print the train flags of one array index (used by slurm/sweep.sh)")
    sp.add_argument("index", type=int, metavar="INDEX", help="array index = cell position x len(seeds) + seed position")
    sp.add_argument("--shell", action="store_true", help="bash assignments: run_name, run_dir, cell, seed, "
                                                        "finished, train_args=(...)")
    return p


COMMANDS = {"plan": cmd_plan, "submit": cmd_submit, "status": cmd_status, "run": cmd_run, "resolve": cmd_resolve}


def main(argv: list[str] | None = None) -> int:
    """`cifar-dist sweep ...`; returns the exit status (2 = bad spec or arguments, one line on stderr)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after -- goes to sbatch (argparse would not leave it alone)
        extra, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    if extra and args.command != "submit":
        print(f"error: sweep {args.command}: unexpected arguments after --: {' '.join(extra)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.sbatch_args = extra
    try:
        return COMMANDS[args.command](args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
