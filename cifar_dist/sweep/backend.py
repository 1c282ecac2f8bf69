"""The seam between a sweep and where its runs train: the `Backend` protocol and its registry.

A backend starts or queues runs (`submit`) and says which it holds now (`queued`). `sweep status` and the
search workers' leases read it only through this protocol, so neither knows how a backend names its jobs.
Two are built in: `slurm` (a job array: slurm.py) and `local` (subprocesses of this machine: local.py).

A new backend is one file of this package: a class with the members below, registered with
`register_backend(MyBackend())` at the end of the file, and one import line in `sweep/__init__.py`
(see the README's layout section).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Queued:
    """What a backend says of one run it holds."""

    state: str  # running | pending | failed (it knows the attempt ended without a result)
    detail: str  # its own words for the run: "job 12_3", "local"


@dataclass(frozen=True)
class WorkerSlot:
    """One search worker a backend starts: its number, id and a directory for its sweep_task.json."""

    index: int  # array index / local worker number
    name: str  # worker-<i> (SLURM names the worker <array job>_<i> itself), local-<i>
    dir: Path


class Backend(Protocol):
    """Where the runs of a sweep train (submitit's Executor is the model). `sweep` is a plan.Sweep and a run a
    plan.Run: this module sits below plan.py (the search's lease rules in study.py read the registry)."""

    name: str  # the registry key

    def submit(self, sweep: Any, runs: list[Any], parallel: int) -> int:
        """Start or queue `runs` (Run, or a search's worker slots with index and name), `parallel` at a
        time; the exit status."""
        ...

    def look(self, sweep: Any) -> Any:
        """One look at this backend's queue for `sweep`, read by `queued` and `holds`; None when nothing
        answers (a backend without a queue of its own returns None)."""
        ...

    def queued(self, runs: list[Any], look: Any) -> dict[str, Queued]:
        """{run name: Queued} for those of `runs` this backend holds now (queued or running), from `look`
        (the answer of `look()`, or None) and each run's sweep_task.json."""
        ...

    def owns(self, worker: str) -> bool:
        """Whether `worker` is a search worker id this backend gives out (its lease is judged by `holds`)."""
        ...

    def holds(self, worker: str, look: Any) -> bool | None:
        """Whether this backend still holds its worker `worker` (queued or running) per `look`; None when
        it cannot tell (`look` is None)."""
        ...


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a backend under its name; a name given twice is an error."""
    if backend.name in _BACKENDS:
        raise ValueError(f"sweep backend {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def backends() -> list[Backend]:
    """Every registered backend, in registration order (the first to speak for a run wins)."""
    return list(_BACKENDS.values())


def get_backend(name: str) -> Backend:
    return _BACKENDS[name]


def queued_runs(runs: list[Any], look: Any) -> dict[str, Queued]:
    """What the backends hold of `runs`; a run two backends speak for gets the first one's word."""
    out: dict[str, Queued] = {}
    for backend in backends():
        for name, q in backend.queued(runs, look).items():
            out.setdefault(name, q)
    return out


def owner_of(worker: str) -> Backend | None:
    """The backend that gives out the worker id `worker` (None: a worker judged by its host and pids)."""
    return next((b for b in backends() if b.owns(worker)), None)
