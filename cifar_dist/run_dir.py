"""The files of a run directory and of a sweep folder: the one module that knows their names and reads them.

A run directory, `<out_dir>/<name>/` (the trainer's main process writes it: cifar_dist.engine.logs):
    config.yaml        the resolved config          command.txt   the command line
    env.json           package versions, git SHA, world size, device
    metrics.jsonl      one JSON object per finished epoch (`RunDir.metrics_rows`)
    events.out.tfevents.*   TensorBoard scalars, hparams, confusion matrix, parameter count
    checkpoints/last   the resume state (cifar_dist.engine.checkpoint: checkpoint.json, train_state.json,
                       ...); checkpoints/.last.old the one before; checkpoints/best the best epoch's weights
    paused.json        {"epoch", "epochs"}: the session stopped at run.stop_after (removed when one starts)
    result.json        written when the run has finished (removed while a resumed session runs)
    .lock              names the process holding the run's lock (cifar_dist.engine.rundir)
    status.json        the trainer's true exit status (`RunDir.write_status`, below)
    sweep_task.json    a sweep's last attempt at the run (slurm/sweep.sh, the local runner)
    trial.json         a search trial's lease (cifar_dist.sweep.study)

A sweep folder, `<out_dir>/<sweep>/`: sweep.json (the cells and runs), study.journal (a search's Optuna
study), .local_runner.json (the local runner holding the folder), and one run directory per run,
`<cell>-s<seed>` (`RUN_NAME`; a search trial's is `t<nnn>-s<seed>`).

status.json exists because a launcher hides the trainer's status: `accelerate launch` exits 1 whenever its
trainer exits non-zero (torchrun reports a ChildFailedError), so a stop after a checkpoint (3) looks like a
crash (1). The main process (global rank 0) therefore writes `{"exit": 3, "state": "stopped", "time": ...}`
atomically when it ends; slurm/sweep.sh, slurm/train.sh and `sweep status` read it from there. Other ranks
write nothing (on node-local run directories only rank 0's node has the file).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NONFINITE, EXIT_OK, EXIT_STOPPED, InputError
from cifar_dist.files import FileFormatError, atomic_write_json, read_json, read_json_or_none

RESULT, STATUS_FILE, TASK_FILE = "result.json", "status.json", "sweep_task.json"  # imported by name; RunDir has all
CHECKPOINT_META, TRAIN_STATE = "checkpoint.json", "train_state.json"  # in a checkpoint folder
SWEEP_FILE, STUDY_FILE, RUNNER_FILE = "sweep.json", "study.journal", ".local_runner.json"  # in a sweep folder
RUN_NAME = re.compile(r"^(?P<cell>.+)-s(?P<seed>\d+)$")  # a sweep's run directory: <cell>-s<seed>
STATES = {EXIT_OK: "finished", EXIT_FAILED: "failed", EXIT_BAD_INPUT: "bad_input", EXIT_STOPPED: "stopped",
          EXIT_NONFINITE: "nonfinite"}


def is_rank0(local: bool = False) -> bool:
    """Whether this process is global rank 0 (RANK), or with `local` the first process of its launcher on
    this node (LOCAL_RANK, else RANK). Without a launcher (neither set) a process is rank 0."""
    rank = (local and os.environ.get("LOCAL_RANK")) or os.environ.get("RANK") or "0"
    return rank.strip() == "0"


def read_jsonl(path: str | os.PathLike[str], on_torn_tail: Callable[[str], object] | None = None,
               int_key: str | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-blank line ([] when the file is missing).

    A line that is not a JSON object, or (with `int_key`) has no integer at that key, is a FileFormatError
    naming the file and the line. With `on_torn_tail`, a last line that is not a JSON object is the torn end
    of a write (a file being appended to, or one cut by a kill or a full disk): it is left out and handed to
    `on_torn_tail`."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) and on_torn_tail is not None and i == len(lines):
            on_torn_tail(line)
        elif not isinstance(row, dict):
            raise FileFormatError(f"{path}:{i}: expected one JSON object per line, found {line[:60]!r}")
        elif int_key and not (isinstance(row.get(int_key), int) and not isinstance(row[int_key], bool)):
            raise FileFormatError(f"{path}:{i}: expected an object with an integer \"{int_key}\", "
                                  f"found {line[:60]!r}")
        else:
            rows.append(row)
    return rows


def _check_result(path: Path, res: Any) -> dict[str, Any]:
    if not isinstance(res, dict):
        raise FileFormatError(f"{path}: expected a JSON object, found {type(res).__name__}")
    for key in ("final", "best"):
        if not isinstance(res.get(key), dict):
            raise FileFormatError(f"{path}: expected an object under {key!r}, found {res.get(key)!r}")
    if not isinstance(res["final"].get("test_acc"), (int, float)):
        raise FileFormatError(f"{path}: expected a number at final.test_acc, "
                              f"found {res['final'].get('test_acc')!r}")
    return res


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"<run>/{name}")


def _object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing, unreadable or not an object."""
    value = read_json_or_none(path)
    return value if isinstance(value, dict) else None


class RunDir:
    """One run directory's files (the layout is in the module docstring). Reading changes nothing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    config = _file("config.yaml")
    command = _file("command.txt")
    env = _file("env.json")
    metrics = _file("metrics.jsonl")
    result = _file(RESULT)
    status = _file(STATUS_FILE)
    paused = _file("paused.json")
    task = _file(TASK_FILE)  # a sweep's attempt at the run
    trial = _file("trial.json")  # a search trial's lease
    checkpoints = _file("checkpoints")
    events = _file("events.out.tfevents.*")  # a pattern, for messages; event_files() lists the files

    def event_files(self) -> list[Path]:
        return sorted(self.path.glob(self.events.name))

    @property
    def is_finished(self) -> bool:
        """A run with result.json has finished (a sweep never trains it again)."""
        return self.result.is_file()

    @property
    def holds_run(self) -> bool:
        """A folder with config.yaml, metrics.jsonl or result.json (what a report reads as a run)."""
        return self.path.is_dir() and any(p.is_file() for p in (self.config, self.metrics, self.result))

    def traces(self) -> list[str]:
        """The names of what a run left here: config.yaml, metrics.jsonl, result.json, checkpoints,
        paused.json, event files (a fresh run refuses a folder with any)."""
        left = (self.config, self.metrics, self.result, self.checkpoints, self.paused)
        found = [p.name for p in left if p.exists()]
        return found + ([self.events.name] if self.event_files() else [])

    def metrics_rows(self, on_torn_tail: Callable[[str], object] | None = None) -> list[dict[str, Any]]:
        """metrics.jsonl, one row per finished epoch, each with an integer "epoch" (see `read_jsonl`)."""
        return read_jsonl(self.metrics, on_torn_tail, int_key="epoch")

    def last_metrics(self) -> dict[str, Any] | None:
        """The last whole row of metrics.jsonl, which the run may be writing (None when there is none)."""
        try:
            rows = read_jsonl(self.metrics, on_torn_tail=lambda line: None)
        except FileFormatError:
            return None
        return rows[-1] if rows else None

    def read_result(self, strict: bool = False) -> dict[str, Any] | None:
        """result.json, None while the run has not finished. `strict` (the report): `final` and `best`
        objects and a number at final.test_acc, else FileFormatError naming the file. Otherwise (status lines
        of a run that may be half-written): the JSON object as it is, None for anything else."""
        if not self.is_finished:
            return None
        if strict:
            return _check_result(self.result, read_json(self.result))
        return _object(self.result)

    def read_task(self) -> dict[str, Any]:
        """sweep_task.json ({} when missing or unreadable)."""
        return _object(self.task) or {}

    def read_trial(self) -> dict[str, Any]:
        """trial.json, a search trial's lease ({} when missing or unreadable)."""
        return _object(self.trial) or {}

    def write_status(self, exit_status: int) -> None:
        """Record the trainer's exit status in status.json (global rank 0 only; atomic; one line)."""
        if not is_rank0():
            return
        record = {"exit": exit_status, "state": STATES.get(exit_status, "failed"), "time": int(time.time())}
        atomic_write_json(self.status, record, indent=None)

    def read_status(self) -> dict[str, Any] | None:
        """The recorded status ({"exit", "state", "time"}), or None when the run recorded none (killed, still
        running, or not started)."""
        record = _object(self.status) or {}
        return record if isinstance(record.get("exit"), int) else None


# ------------------------------------------------------------------------------------------ sweep folders


def run_name(cell: str, seed: int) -> str:
    """The directory name of one run of a sweep: <cell>-s<seed> (parsed back by RUN_NAME)."""
    return f"{cell}-s{seed}"


def trial_name(number: int, seed: int) -> str:
    """The run directory of search trial `number`: t<nnn>-s<seed> (a `<cell>-s<seed>` name for the report)."""
    return run_name(f"t{number:03d}", seed)


def read_sweep_json(sweep_dir: Path) -> dict[str, Any] | None:
    """<sweep_dir>/sweep.json as `cifar-dist sweep` writes it; None when missing or unreadable."""
    return _object(Path(sweep_dir) / SWEEP_FILE)


class StudyError(InputError):
    """The study journal cannot be replayed; the message names it."""


def replayed(path: Path, make):
    """`make()` (a JournalStorage, which replays the journal when built), or StudyError naming the journal."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 -- optuna fails a damaged journal in many ways (JSON, asserts, keys)
        why = (str(e).strip().splitlines() or [""])[0][:120]
        raise StudyError(f"{path}: expected an Optuna journal of this search, found a damaged one "
                         f"({type(e).__name__}{': ' + why if why else ''}); move it aside to start the search "
                         f"afresh") from None


def load_trials(sweep_dir: Path, name: str) -> list[Any] | None:
    """The FrozenTrials of the study in `sweep_dir` (None without a study file), read without any lock."""
    path = Path(sweep_dir) / STUDY_FILE
    if not path.is_file():
        return None
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name,
                                  storage=replayed(path, lambda: JournalStorage(JournalFileBackend(str(path)))))
    except KeyError:  # the file exists, the study is not created yet
        return []
    return study.get_trials(deepcopy=False)
