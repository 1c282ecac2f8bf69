"""A search's Optuna study beside its runs, and who trains which trial.

Storage: `<out_dir>/<name>/study.journal`, Optuna's JournalStorage on a JournalFileBackend: an append-only
log of operations that every worker replays. Each append holds `study.journal.lock`, a symlink
(JournalFileSymlinkLock: atomic on any NFS version; the O_EXCL JournalFileOpenLock needs NFSv3+), which
another process breaks after 30 s without change, so a worker killed while appending cannot block the
others; an append is one small write, and readers take no lock and skip a partly written last line.

Trials: trial n trains in the normal run directory `<sweep>/t<nnn>-s<seed>/`, which also holds
`trial.json`, the trial's lease:
    {"trial": n, "trial_id": id, "overrides": {...}, "worker": "<worker id>", "token": "<claim>",
     "host": ..., "pid": <worker pid>, "trainer_pid": ..., "heartbeat": <unix time>,
     "lease": "running" | "preempted" | "released", "takeovers": k, "pruned_at": epoch, "state": ...}
Worker ids are stable across restarts: the backend names them (`<array job>_<task>` under SLURM, which a
requeued task keeps; `local-<i>` for `sweep run --local`). Claims happen under `claims.lock` (JournalFileOpenLock), in this order:
  1. a trial of the study still RUNNING whose lease names this worker (a requeued task or a rerun resumes it);
  2. a RUNNING trial whose lease is stale: "running" with a heartbeat older than 3 heartbeats (or, on the
     same host, with both the worker and its trainer gone), or "preempted" by a worker that is no longer
     held by the backend that gave out its id (`Backend.holds`: in squeue) or, when that backend cannot tell, not
     heard of for 3 heartbeats (a worker no backend owns: as a "running" lease). A trial taken over after its
     worker died more than MAX_TAKEOVERS times is marked failed instead;
  3. a new trial (study.ask) while fewer than `search.trials` trials exist, counting every trial but those
     rejected by the spec's parameter budget (state FAIL, user attr "rejected").
A worker renews its lease every heartbeat (under the same lock) and stops its trainer if the lease was
taken. A trial is asked once and told once, so the study never counts it twice.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar_dist.files import atomic_write_json, pid_alive
from cifar_dist.run_dir import STUDY_FILE, RunDir, load_trials, replayed
from cifar_dist.sweep.backend import owner_of
from cifar_dist.sweep.plan import Sweep
from cifar_dist.sweep.search import bracket_of, suggest
from cifar_dist.sweep.spec import Search
from cifar_dist.sweep.trainer import host

CLAIMS = "claims"  # <sweep>/claims.lock guards claims and lease renewals
MAX_TAKEOVERS = 2  # a trial whose worker died more often than this is marked failed
STALE_BEATS = 3  # a lease is stale after this many missed heartbeats


def make_sampler(search: Search, number: int = 0):
    """The sampler for trial `number`, seeded by (search.seed, number): a trial's random draws do not depend
    on which worker asks for it (TPE's later proposals still depend on the trials finished before)."""
    import optuna

    seed = search.seed * 1_000_003 + number
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(search: Search):
    import optuna

    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=search.min_epochs, max_resource=search.max_epochs,
                                              reduction_factor=search.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.min_epochs,
                                                  reduction_factor=search.reduction_factor)


def open_study(sweep: Sweep):
    """Create or load the sweep's study (named after the sweep; the sweep directory is created if needed);
    returns (study, its JournalStorage): the storage's public API addresses a trial by id (`trial_id`), which
    the study keeps to itself."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    search = sweep.spec.search
    assert search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = sweep.dir / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    store = replayed(path, lambda: JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileSymlinkLock(str(path)))))
    study = optuna.create_study(storage=store, study_name=sweep.spec.name, direction=search.direction,
                                sampler=make_sampler(search), pruner=make_pruner(search), load_if_exists=True)
    return study, store


def trial_id(study, store, number: int) -> int:
    """The storage's id of trial `number` of `study` (what `optuna.trial.Trial(study, id)` takes)."""
    return store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study.study_name), number)


@contextlib.contextmanager
def claims_lock(sweep: Sweep):
    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(str(sweep.dir / CLAIMS))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------ trial records


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(RunDir(run_dir).trial, record, indent=1)


@dataclass
class Claim:
    """A trial this worker now holds."""

    number: int
    trial_id: int
    dir: Path
    overrides: dict[str, Any]
    token: str
    how: str  # new | resumed | taken over

    @property
    def files(self) -> RunDir:
        return RunDir(self.dir)


def lease_is_stale(record: dict[str, Any], search: Search, look) -> bool:
    """Whether another worker may take this trial (rules in the module docstring). `look(name)`: the `look()`
    of backend `name` (`cifar_dist.sweep.backend`), asked only for a lease of one of its workers."""
    age = time.time() - float(record.get("heartbeat") or 0)
    stale_age = age > STALE_BEATS * search.heartbeat
    same_host_gone = record.get("host") == host() and not pid_alive(record.get("pid")) \
        and not pid_alive(record.get("trainer_pid"))
    if record.get("lease") == "running":
        return stale_age or same_host_gone
    if record.get("lease") == "preempted":
        owner = str(record.get("worker"))
        backend = owner_of(owner)
        if backend is not None:  # a worker its backend queues (a requeued SLURM task): stale once it left the queue
            held = backend.holds(owner, look(backend.name))
            return stale_age if held is None else not held
        return same_host_gone or stale_age
    return False


def _lease(record: dict[str, Any], me: str, how: str) -> dict[str, Any]:
    taken = how == "taken over" and record.get("lease") == "running"
    return {**record, "worker": me, "token": uuid.uuid4().hex, "host": host(), "pid": os.getpid(),
            "trainer_pid": None, "previous_trainer": record.get("trainer_pid"), "previous_host": record.get("host"), "heartbeat": time.time(), "lease": "running",
            "takeovers": int(record.get("takeovers") or 0) + int(taken)}


def _counted(trials: list[Any]) -> int:
    return sum("rejected" not in t.user_attrs for t in trials)


def _new_trial(study, store, sweep: Sweep, me: str, check_budget) -> Claim | None:
    """study.ask() with the trial's own sampler; None when the budget rejected the draw (told FAIL)."""
    import optuna

    search = sweep.spec.search
    number = len(study.get_trials(deepcopy=False))  # under the claims lock: the number ask will give
    study.sampler = make_sampler(search, number)
    trial = study.ask()
    over = suggest(trial, search.space)
    problem = check_budget(over)
    if problem:
        trial.set_user_attr("rejected", problem)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    bracket = bracket_of(search, sweep.spec.name, trial.number)
    trial.set_user_attr("overrides", over)
    trial.set_user_attr("bracket", bracket)
    run_dir = sweep.trial_dir(trial.number)
    run_dir.mkdir(parents=True, exist_ok=True)
    tid = trial_id(study, store, trial.number)
    record = _lease({"trial": trial.number, "trial_id": tid, "overrides": over, "bracket": bracket}, me, "new")
    write_record(run_dir, record)
    return Claim(trial.number, tid, run_dir, over, record["token"], "new")


def claim(study, store, sweep: Sweep, me: str, look, check_budget) -> Claim | str:
    """Under the claims lock: a Claim, or "wait" (other live workers hold the open trials) or "done".
    `study, store`: from `open_study`; `look`: as for `lease_is_stale`; `check_budget(overrides)`: why a
    draw is outside the spec's budget."""
    import optuna

    search = sweep.spec.search
    assert search is not None
    running = optuna.trial.TrialState.RUNNING
    trials = study.get_trials(deepcopy=False)
    open_trials = [t for t in trials if t.state == running]
    order = sorted(open_trials, key=lambda t: RunDir(sweep.trial_dir(t.number)).read_trial().get("worker") != me)
    live = False
    for t in order:
        run_dir = sweep.trial_dir(t.number)
        record = RunDir(run_dir).read_trial()
        if not record:  # its worker died between ask and the record (both happen under this lock): no run
            reason = "its worker died before the trial started"
            store.set_trial_user_attr(trial_id(study, store, t.number), "rejected", reason)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            continue
        mine = record.get("worker") == me
        if not mine and not lease_is_stale(record, search, look):
            live = live or record.get("lease") == "running"
            continue
        how = "resumed" if mine else "taken over"
        new = _lease(record, me, how)
        if new["takeovers"] > MAX_TAKEOVERS:
            write_record(run_dir, {**new, "lease": "released", "state": "fail",
                                   "reason": f"its worker died {new['takeovers']} times"})
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            continue
        write_record(run_dir, new)
        return Claim(t.number, trial_id(study, store, t.number), run_dir, record.get("overrides") or {},
                     new["token"], how)
    for _ in range(100):
        if _counted(study.get_trials(deepcopy=False)) >= search.trials:
            break
        got = _new_trial(study, store, sweep, me, check_budget)
        if got is not None:
            return got
    return "wait" if live else "done"


def renew(sweep: Sweep, c: Claim, **fields: Any) -> bool:
    """Renew this worker's lease (heartbeat and `fields`, under the claims lock); False if it was taken."""
    with claims_lock(sweep):
        record = c.files.read_trial()
        if record.get("token") != c.token:
            return False
        write_record(c.dir, {**record, "heartbeat": time.time(), **fields})
        return True


def search_finished(sweep: Sweep) -> bool:
    """Every trial of the search asked and told (a worker started now would have nothing to do)."""
    search = sweep.spec.search
    trials = load_trials(sweep.dir, sweep.spec.name)
    if search is None or trials is None:
        return False
    return _counted(trials) >= search.trials and all(t.state.is_finished() for t in trials)
