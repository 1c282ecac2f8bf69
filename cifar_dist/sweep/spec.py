"""The sweep spec: a YAML file read into a frozen `Spec`, every value checked before anything expands.

Scalar values go through the run config's own coercion (`cifar_dist.config`), so a spec accepts a value
exactly when `--section.key=value` would (PyYAML's `1e-3` string is the number it means); what the
spec adds on top (a positive count, a name that can be a directory) is checked after it (`SpecError`).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifar_dist.config import ConfigError, flatten
from cifar_dist.errors import InputError
from cifar_dist.overrides import coerce_value as coerce
from cifar_dist.resources import locate

SPEC_KEYS = ("name", "preset", "out_dir", "fixed", "grid", "zip", "random", "seeds", "constraints", "parallel",
             "sbatch", "search")
RANDOM_KEYS = ("samples", "seed", "params")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
CONSTRAINTS = ("max_params", "min_params")
SET_BY_SWEEP = ("run.out_dir", "run.name", "run.seed", "run.stop_after")  # one value per run, chosen by the sweep
SEARCH_KEYS = ("pruner", "objective", "trials", "epochs", "sampler", "seed", "heartbeat")
PRUNERS = ("asha", "hyperband")  # Optuna's SuccessiveHalvingPruner (asynchronous) and HyperbandPruner
SAMPLERS = ("random", "tpe")
# Per-epoch metrics.jsonl columns a search may optimise, and their direction.
OBJECTIVES = {"val_acc": "maximize", "ema_val_acc": "maximize", "test_acc": "maximize", "ema_test_acc": "maximize",
              "train_acc": "maximize", "test_loss": "minimize", "train_loss": "minimize"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SpecError(InputError):
    """A bad sweep spec; the message is one line: file, key, what was expected, what was found."""


def bad(path: Path | str, key: str, expected: str, found: Any) -> SpecError:
    return SpecError(f"{path}: {key}: expected {expected}, found {found!r}")


@dataclass(frozen=True)
class Dim:
    """One axis of a search space: `choice` (a grid axis), `zip` (a zip group: args are override dicts),
    or a `random.params` distribution (uniform, loguniform, randint, choice)."""

    name: str  # the override key; for a zip group "zip" or "zip[i]"
    kind: str
    args: Any


@dataclass(frozen=True)
class Search:
    """A spec's `search:` block: an adaptive search (Optuna sampler + pruner) over the spec's space."""

    pruner: str  # asha | hyperband
    objective: str  # a per-epoch metrics.jsonl column
    direction: str  # maximize | minimize (from the objective)
    trials: int
    min_epochs: int
    max_epochs: int
    reduction_factor: int
    sampler: str  # random | tpe
    seed: int
    heartbeat: float  # seconds between a worker's heartbeats; a lease is stale after 3 missed
    space: tuple[Dim, ...]


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
    search: Search | None = None  # set for `search:` specs; then `axes` is empty and the space is search.space


def checked(path: Path, key: str, tp: Any, value: Any, expected: str,
            ok: Callable[[Any], Any] = lambda v: True) -> Any:
    """`value` coerced to `tp` by the run config's rules, then `ok(value)`; else SpecError naming `key`."""
    try:
        v = coerce(key, tp, value)
    except ConfigError:
        raise bad(path, key, expected, value) from None
    if not ok(v):
        raise bad(path, key, expected, value)
    return v


def _check_key(path: Path, where: str, key: Any, origin: dict[str, str], allow_preset: bool = True) -> str:
    if not isinstance(key, str) or not key:
        raise bad(path, where, "an override key like optim.lr", key)
    if key == "preset" and not allow_preset:
        raise bad(path, f"{where}.preset", "the top-level preset key (fixed holds section.key overrides)", key)
    if key in SET_BY_SWEEP:
        raise bad(path, f"{where}.{key}", f"no value (the sweep sets {', '.join(SET_BY_SWEEP[:-1])} and {SET_BY_SWEEP[-1]})", key)
    if key in origin:
        raise bad(path, f"{where}.{key}", f"a key set once (it is already in {origin[key]})", key)
    origin[key] = f"{where}.{key}"
    return key


def _values(path: Path, key: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise bad(path, key, "a non-empty list of values", values)
    return values


def _distribution(path: Path, key: str, d: Any) -> tuple[str, Any]:
    expected = f"one of {{{', '.join(f'{n}: [...]' for n in DISTRIBUTIONS)}}}"
    if not isinstance(d, dict) or len(d) != 1 or next(iter(d)) not in DISTRIBUTIONS:
        raise bad(path, key, expected, d)
    kind, args = next(iter(d.items()))
    where = f"{key}.{kind}"
    if kind == "choice":
        return kind, _values(path, where, args)
    if not isinstance(args, list) or len(args) != 2:
        raise bad(path, where, "[low, high]", args)
    tp, expected = (int, "integers with low <= high") if kind == "randint" else (float, "numbers with low < high")
    try:
        lo, hi = (coerce(where, tp, a) for a in args)
        ok = lo <= hi if kind == "randint" else lo < hi
    except ConfigError:
        ok = False
    if ok and kind == "loguniform" and lo <= 0:
        raise bad(path, where, "[low, high] with 0 < low < high", args)
    if not ok:
        raise bad(path, where, f"[low, high] {expected}", args)
    return kind, (lo, hi)


def round4(x: float) -> float:
    """A drawn float rounded to 4 significant digits (a `random:` draw's and a search suggestion's)."""
    return float(f"{x:.4g}")


def draw(rng: random.Random, kind: str, args: Any) -> Any:
    """One value of a distribution. Uses only random() and randrange(), whose streams Python keeps stable."""
    if kind == "choice":
        return args[rng.randrange(len(args))]
    lo, hi = args
    if kind == "randint":
        return lo + rng.randrange(hi - lo + 1)
    if kind == "uniform":
        return round4(lo + (hi - lo) * rng.random())
    return round4(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * rng.random()))


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise bad(path, "(top level)", "a mapping of spec keys", type(data).__name__)
    for key in data:
        if key not in SPEC_KEYS:
            raise bad(path, str(key), f"a known key ({', '.join(SPEC_KEYS)})", key)
    return data, raw


def _fixed(path: Path, data: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
    fixed_raw = data.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        raise bad(path, "fixed", "a mapping of section.key: value", fixed_raw)
    return {_check_key(path, "fixed", k, origin, allow_preset=False): v for k, v in flatten(fixed_raw).items()}


def _axis(path: Path, where: str, group: dict[str, Any], origin: dict[str, str]) -> list[dict[str, Any]]:
    """Keys whose value lists vary together (a zip group; a grid key is a group of one) as one axis: one
    override dict per position."""
    for key, values in group.items():
        _check_key(path, where, key, origin)
        _values(path, f"{where}.{key}", values)
    if len({len(v) for v in group.values()}) != 1:
        sizes = {k: len(v) for k, v in group.items()}
        raise bad(path, where, "lists of equal length (they vary together)", sizes)
    return [dict(zip(group, vals)) for vals in zip(*group.values())]


def _grid_axes(path: Path, data: dict[str, Any], origin: dict[str, str]) -> list[list[dict[str, Any]]]:
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise bad(path, "grid", "a mapping of section.key: [values]", grid)
    return [_axis(path, "grid", {key: values}, origin) for key, values in grid.items()]


def _zip_axes(path: Path, data: dict[str, Any], origin: dict[str, str]) -> list[list[dict[str, Any]]]:
    zips = data.get("zip") or []
    zips = [zips] if isinstance(zips, dict) else zips
    if not isinstance(zips, list):
        raise bad(path, "zip", "a mapping of section.key: [values] (or a list of them)", zips)
    axes = []
    for i, group in enumerate(zips):
        where = "zip" if len(zips) == 1 else f"zip[{i}]"
        if not isinstance(group, dict) or not group:
            raise bad(path, where, "a non-empty mapping of section.key: [values]", group)
        axes.append(_axis(path, where, group, origin))
    return axes


def _random_params(path: Path, data: dict[str, Any], origin: dict[str, str],
                   search: bool) -> tuple[int, int, list[tuple[str, tuple[str, Any]]]] | None:
    """(samples, seed, [(key, (kind, args))]) of the `random:` block; in a search only params (samples=0)."""
    rnd = data.get("random")
    if rnd is None:
        return None
    if not isinstance(rnd, dict):
        raise bad(path, "random", "a mapping with samples, seed, params", rnd)
    for key in rnd:
        if key not in RANDOM_KEYS:
            raise bad(path, f"random.{key}", f"a known key ({', '.join(RANDOM_KEYS)})", key)
        if search and key != "params":
            raise bad(path, f"random.{key}", "only params in a search (search.trials and search.seed set the draws)",
                      rnd[key])
    samples = 0 if search else checked(path, "random.samples", int, rnd.get("samples"), "a positive integer",
                                       lambda v: v >= 1)
    seed = 0 if search else checked(path, "random.seed", int, rnd.get("seed", 0), "an integer")
    params = rnd.get("params")
    if not isinstance(params, dict) or not params:
        raise bad(path, "random.params", "a non-empty mapping of section.key: {distribution: args}", params)
    dists = [(_check_key(path, "random.params", k, origin), _distribution(path, f"random.params.{k}", d))
             for k, d in params.items()]
    return samples, seed, dists


def _random_axis(path: Path, data: dict[str, Any], origin: dict[str, str]) -> list[list[dict[str, Any]]]:
    parsed = _random_params(path, data, origin, search=False)
    if parsed is None:
        return []
    samples, seed, dists = parsed
    rng = random.Random(seed)
    return [[{k: draw(rng, kind, args) for k, (kind, args) in dists} for _ in range(samples)]]


def _space(path: Path, data: dict[str, Any], origin: dict[str, str]) -> tuple[Dim, ...]:
    """A search's space: grid axes as choices, zip groups as one choice of override dicts, random params."""
    dims = [Dim(next(iter(axis[0])), "choice", [next(iter(v.values())) for v in axis])
            for axis in _grid_axes(path, data, origin)]
    zips = _zip_axes(path, data, origin)
    dims += [Dim("zip" if len(zips) == 1 else f"zip[{i}]", "zip", axis) for i, axis in enumerate(zips)]
    parsed = _random_params(path, data, origin, search=True)
    dims += [Dim(k, kind, args) for k, (kind, args) in (parsed[2] if parsed else [])]
    return tuple(dims)


def _search(path: Path, data: dict[str, Any], origin: dict[str, str]) -> Search:
    """The `search:` block (the space comes from grid:, zip:, random.params)."""
    block = data["search"]
    if not isinstance(block, dict):
        raise bad(path, "search", f"a mapping of {', '.join(SEARCH_KEYS)}", block)
    for key in block:
        if key not in SEARCH_KEYS:
            raise bad(path, f"search.{key}", f"a known key ({', '.join(SEARCH_KEYS)})", key)
    pruner = checked(path, "search.pruner", str, block.get("pruner", "asha"), f"one of {', '.join(PRUNERS)}",
                     lambda v: v in PRUNERS)
    objective = checked(path, "search.objective", str, block.get("objective", "val_acc"),
                        f"a per-epoch metric ({', '.join(OBJECTIVES)})", lambda v: v in OBJECTIVES)
    trials = checked(path, "search.trials", int, block.get("trials"), "a positive integer", lambda v: v >= 1)
    epochs = block.get("epochs")
    if not isinstance(epochs, dict) or set(epochs) - {"min", "max", "reduction_factor"} or "max" not in epochs:
        raise bad(path, "search.epochs", "{min: E, max: E, reduction_factor: N}", epochs)
    lo = checked(path, "search.epochs.min", int, epochs.get("min", 1), "a positive integer", lambda v: v >= 1)
    hi = checked(path, "search.epochs.max", int, epochs["max"], f"an integer >= search.epochs.min ({lo})",
                 lambda v: v >= lo)
    eta = checked(path, "search.epochs.reduction_factor", int, epochs.get("reduction_factor", 3),
                  "an integer >= 2", lambda v: v >= 2)
    sampler = checked(path, "search.sampler", str, block.get("sampler", "tpe"), f"one of {', '.join(SAMPLERS)}",
                      lambda v: v in SAMPLERS)
    seed = checked(path, "search.seed", int, block.get("seed", 0), "an integer")
    heartbeat = checked(path, "search.heartbeat", float, block.get("heartbeat", 30), "seconds > 0", lambda v: v > 0)
    space = _space(path, data, origin)
    if not space:
        raise bad(path, "search", "a search space (grid:, zip: or random.params)", "none")
    if "run.epochs" in origin:
        raise bad(path, origin["run.epochs"], "no run.epochs in a search (search.epochs.max sets it)", "run.epochs")
    return Search(pruner=pruner, objective=objective, direction=OBJECTIVES[objective], trials=trials, min_epochs=lo,
                  max_epochs=hi, reduction_factor=eta, sampler=sampler, seed=seed, heartbeat=heartbeat, space=space)


def _seeds(path: Path, data: dict[str, Any]) -> list[int]:
    seeds = data.get("seeds", [0])
    expected = "a non-empty list of distinct integers >= 0 (or a count)"
    if isinstance(seeds, list):
        got = checked(path, "seeds", tuple[int, ...], seeds, expected,
                      lambda v: v and min(v) >= 0 and len(set(v)) == len(v))
        return list(got)
    return list(range(checked(path, "seeds", int, seeds, expected, lambda v: v > 0)))


def _constraints(path: Path, data: dict[str, Any]) -> dict[str, int]:
    constraints = data.get("constraints") or {}
    if not isinstance(constraints, dict):
        raise bad(path, "constraints", "a mapping (max_params, min_params)", constraints)
    out = {}
    for key, v in constraints.items():
        if key not in CONSTRAINTS:
            raise bad(path, f"constraints.{key}", f"a known constraint ({', '.join(CONSTRAINTS)})", key)
        out[key] = int(checked(path, f"constraints.{key}", float, v, "a positive number of parameters",
                               lambda x: x > 0 and x.is_integer()))
    return out


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file; raises SpecError (one line) on anything wrong."""
    path = locate(path)  # slurm/grids/... also from another directory: the shipped grid
    data, raw = _read(path)
    name = checked(path, "name", str, data.get("name"),
                   "a sweep name of letters, digits, _ . - (it names a directory)", NAME.fullmatch)
    preset = checked(path, "preset", str | None, data.get("preset"), "a preset name")
    out_dir = checked(path, "out_dir", str, data.get("out_dir", "runs"), "a directory path", bool)
    origin: dict[str, str] = {}
    fixed = _fixed(path, data, origin)
    search = _search(path, data, origin) if "search" in data else None
    if search:
        axes = []
    else:
        axes = [*_grid_axes(path, data, origin), *_zip_axes(path, data, origin), *_random_axis(path, data, origin)]
    seeds, constraints = _seeds(path, data), _constraints(path, data)
    if search and len(seeds) != 1:
        raise bad(path, "seeds", "one seed in a search (each trial is one run)", data.get("seeds"))
    if search:  # every trial has the full schedule; the worker pauses it at the rungs
        fixed["run.epochs"] = search.max_epochs
        origin["run.epochs"] = "search.epochs.max"
    parallel = checked(path, "parallel", int, data.get("parallel", 8), "a positive integer", lambda v: v >= 1)
    sbatch = data.get("sbatch") or []
    if not isinstance(sbatch, list) or not all(isinstance(a, str) and a.startswith("-") for a in sbatch):
        raise bad(path, "sbatch", "a list of sbatch options like --time=02:00:00", sbatch)
    return Spec(path=path, name=name, preset=preset, out_dir=out_dir, fixed=fixed, axes=axes, origin=origin,
                seeds=seeds, constraints=constraints, parallel=parallel, sbatch=sbatch,
                sha256=hashlib.sha256(raw).hexdigest(), search=search)
