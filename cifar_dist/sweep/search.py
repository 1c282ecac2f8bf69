"""Adaptive search (`search:` specs): the rungs of the pruner, what the search costs in epochs, the
space as Optuna suggestions (the checks a search spec gets at plan time are in plan.py).

Rungs. Optuna's SuccessiveHalvingPruner (`asha`) judges a trial when it reports epoch
`min * eta**k` (k = 0, 1, ...) below `max`: it survives rung k if its objective is in the top 1/eta
of every trial that reached rung k before it (the first trials of a rung always survive). The
HyperbandPruner (`hyperband`) runs `floor(log_eta(max/min)) + 1` such brackets, bracket s starting its
rungs at `min * eta**s`, and puts trial n in a bracket by crc32("<study>_<n>") (Optuna's rule).

Costs (trial-epochs), printed by `cifar-dist sweep plan`: without pruning every trial trains `max` epochs;
the worst case with pruning is the same (every trial better than all earlier ones at every rung: nothing is
pruned); the expected cost is the mean over simulated searches whose trials have a random quality,
kept at every rung, judged by Optuna's promotion rule in the order they start.
"""

from __future__ import annotations

import binascii
import json
import math
import random
from typing import Any

from cifar_dist.sweep.spec import Dim, Search, round4

SCALARS = (type(None), bool, int, float, str)  # what Optuna's categorical distribution may hold


def n_brackets(search: Search) -> int:
    if search.pruner == "asha":
        return 1
    return math.floor(math.log(search.max_epochs / search.min_epochs, search.reduction_factor)) + 1  # as Optuna


def bracket_rungs(search: Search, bracket: int = 0) -> list[int]:
    """The epochs at which the pruner judges a trial of `bracket` (all below max)."""
    out, k = [], 0
    while (e := search.min_epochs * search.reduction_factor ** (bracket + k)) < search.max_epochs:
        out.append(e)
        k += 1
    return out


def all_rungs(search: Search) -> list[int]:
    """Every epoch at which some bracket judges a trial: where a worker pauses its trainer."""
    return sorted({e for b in range(n_brackets(search)) for e in bracket_rungs(search, b)})


def bracket_of(search: Search, study_name: str, number: int) -> int:
    """Trial `number`'s Hyperband bracket, by Optuna's rule (HyperbandPruner._get_bracket_id); 0 for asha."""
    if search.pruner == "asha":
        return 0
    brackets, eta = n_brackets(search), search.reduction_factor
    budgets = [math.ceil(brackets * eta ** (brackets - 1 - b) / (brackets - b)) for b in range(brackets)]
    n = binascii.crc32(f"{study_name}_{number}".encode()) % sum(budgets)
    for b, budget in enumerate(budgets):
        n -= budget
        if n < 0:
            return b
    raise AssertionError("unreachable")


def _promoted(value: float, competing: list[float], eta: int) -> bool:
    """Optuna's SuccessiveHalvingPruner rule (maximising; `competing` includes `value`)."""
    idx = max(len(competing) // eta - 1, 0)
    return value >= sorted(competing)[-(idx + 1)]


def trial_epochs(search: Search, study_name: str, qualities: list[float]) -> list[int]:
    """Epochs each trial trains when trial n has objective `qualities[n]` at every rung (see Costs above)."""
    seen: dict[tuple[int, int], list[float]] = {}  # (bracket, rung) -> values that reached it
    out = []
    for n, q in enumerate(qualities):
        bracket = bracket_of(search, study_name, n)
        epochs = search.max_epochs
        for k, e in enumerate(bracket_rungs(search, bracket)):
            competing = seen.setdefault((bracket, k), [])
            competing.append(q)
            if not _promoted(q, competing, search.reduction_factor):
                epochs = e
                break
        out.append(epochs)
    return out


def costs(search: Search, study_name: str) -> dict[str, float]:
    """Trial-epochs: unpruned, worst case, expected (mean of simulated searches) and how many were simulated."""
    sims = max(20, min(1000, 20000 // search.trials))
    rng = random.Random(0)
    draws = ([rng.random() for _ in range(search.trials)] for _ in range(sims))
    expected = sum(sum(trial_epochs(search, study_name, q)) for q in draws) / sims
    unpruned = search.trials * search.max_epochs
    return {"unpruned": unpruned, "worst": unpruned, "expected": expected, "simulations": sims}


# ------------------------------------------------------------------------------------------ the space


def suggest(trial, space: tuple[Dim, ...]) -> dict[str, Any]:
    """The overrides of an Optuna trial: one suggestion per dimension (floats rounded to 4 digits, as
    `random:` draws are; non-scalar choices suggested as their JSON text; a zip group as its index)."""
    over: dict[str, Any] = {}
    for d in space:
        if d.kind == "zip":
            over.update(d.args[trial.suggest_categorical(d.name, list(range(len(d.args))))])
        elif d.kind == "choice":
            if all(isinstance(v, SCALARS) for v in d.args):
                over[d.name] = trial.suggest_categorical(d.name, list(d.args))
            else:
                over[d.name] = json.loads(trial.suggest_categorical(d.name, [json.dumps(v) for v in d.args]))
        elif d.kind == "randint":
            over[d.name] = trial.suggest_int(d.name, *d.args)
        else:
            over[d.name] = round4(trial.suggest_float(d.name, *d.args, log=d.kind == "loguniform"))
    return over
