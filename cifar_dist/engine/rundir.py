"""The run directory as a shared resource: one writer at a time, a config a resume may not silently change,
and write errors (a full disk above all) as one line naming the file.

- `take_lock(run_dir, accelerator)`: the main process holds `fcntl.flock` on `<run>/.lock` for the life of
  the process (the kernel releases it on any exit, kill -9 included); a second run with the same directory
  stops with one line naming the holder's pid and host.
- `check_resume_config(run_dir, config_yaml, force, say)`: a resume under other values lists the keys that
  differ and stops, except for `MAY_CHANGE_ON_RESUME`; `--resume=force` accepts anything (and says what).
- `disk_errors(path, after)`: an OSError while writing `path` becomes `RunDirError`, one line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from cifar_dist.config import flatten
from cifar_dist.errors import InputError

LOCK_FILE = ".lock"

# Keys that may take another value when a run resumes: they decide how long it trains, when it evaluates,
# stops early, logs or checkpoints, where its files are, how many loader threads it uses, or whether the
# model is compiled -- not what one optimizer step computes. Any other change needs --resume=force.
MAY_CHANGE_ON_RESUME = (
    "run.epochs", "run.eval_every", "run.eval_batch_size", "run.tta", "run.log_every_steps", "run.progress",
    "run.checkpoint_every_steps", "run.early_stop_patience", "run.early_stop_window", "run.early_stop_drop",
    "run.early_stop_start", "run.out_dir", "run.name", "run.stop_after", "run.allow_cpu", "run.dist_timeout_s",
    "data.dir", "data.num_workers", "model.compile",
)

_HELD: dict[str, IO[str]] = {}  # run directory -> its open, locked .lock file (kept for the process' life)


class RunDirError(InputError):
    """The run directory cannot be used as asked (locked, another config, a write failed)."""


@contextmanager
def disk_errors(path: Path | str, after: str = "") -> Iterator[None]:
    """Turn an OSError while writing `path` into one line: "<path>: disk full (...)" [; after]."""
    try:
        yield
    except OSError as e:
        what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot write"
        raise RunDirError(f"{e.filename or path}: {what} ({e.strerror or e})" + (f"; {after}" if after else "")) \
            from None


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on <run_dir>/.lock until the process ends; RunDirError if another process has it."""
    key = str(run_dir.resolve())
    if key in _HELD:  # this process holds it already (a second session in one process)
        return
    with disk_errors(run_dir / LOCK_FILE):
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 -- kept open: the lock lives as long as the file
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        try:
            holder = json.loads(f.read() or "{}")
        except ValueError:
            holder = {}
        f.close()
        raise RunDirError(f"{run_dir}: in use by another run (pid {holder.get('pid', '?')} on host "
                          f"{holder.get('host', '?')}, lock {run_dir / LOCK_FILE}); wait for it to end or choose "
                          f"another --run.name") from None
    with disk_errors(run_dir / LOCK_FILE):
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        f.flush()
    _HELD[key] = f


def release_lock(run_dir: Path) -> None:
    """Let another run take the directory (the end of a run in a process that goes on)."""
    f = _HELD.pop(str(run_dir.resolve()), None)
    if f is not None:
        f.close()  # closing the only descriptor releases the flock


def agree(accelerator, message: str) -> str:
    """Every process learns the first non-empty message of any process ("" when all are fine)."""
    if accelerator.num_processes == 1:
        return message
    from accelerate.utils import gather_object

    return next((m for m in gather_object([message]) if m), "")


def take_lock(run_dir: Path, accelerator) -> None:
    """The main process locks the run directory; every process stops with its error when that fails."""
    message = ""
    if accelerator.is_main_process:
        try:
            lock_run_dir(run_dir)
        except RunDirError as e:
            message = str(e)
    message = agree(accelerator, message)
    if message:
        raise RunDirError(message)


def _flat_yaml(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return flatten(data)


def check_resume_config(run_dir: Path, config_yaml: str, force: bool, say: Callable[[str], None]) -> None:
    """Compare the config this session resolved (`config_yaml`) with the one the run started with."""
    path = run_dir / "config.yaml"
    try:
        old = _flat_yaml(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        if force:
            say(f"resume: {path} unreadable ({e}); resuming anyway (--resume=force)")
            return
        raise RunDirError(f"{path}: cannot read the config the run started with ({e}); "
                          f"--resume=force resumes anyway") from None
    new = _flat_yaml(config_yaml)
    missing = object()
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, missing) != new.get(k, missing))
    if not changed:
        return
    text = ", ".join(f"{k} {_show(old.get(k, missing), missing)} -> {_show(new.get(k, missing), missing)}"
                     for k in changed)
    fixed = [k for k in changed if k not in MAY_CHANGE_ON_RESUME]
    if fixed and not force:
        raise RunDirError(f"--resume: the config differs from {path} in {', '.join(fixed)} ({text}); these keys "
                          f"cannot change on resume: use --resume=force to resume anyway, or another --run.name")
    say(f"resume: config changed: {text}" + (" (--resume=force)" if fixed else ""))


def _show(value: Any, missing: object) -> str:
    return "(unset)" if value is missing else json.dumps(value)
