"""The run directory as a shared resource: one writer at a time (`lock_run_dir`), a config a resume may not
silently change (`check_resume_config`), one run per folder (`check_fresh`), and write errors (a full disk
above all) as one line naming the file (`disk_errors`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifar_dist.config import flatten
from cifar_dist.errors import EXIT_BAD_INPUT, InputError
from cifar_dist.files import read_json_or_none
from cifar_dist.run_dir import RESULT, RunDir

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

# Keys a resume changes by design and reports nothing about: run.stop_after is where this session pauses (an
# ASHA rung: each rung resumes the trial with the next one), not a change of the experiment.
SESSION_KEYS = ("run.stop_after",)

@dataclass
class _Held:
    fd: int  # the open, flock-ed directory (or .lock file where the file system cannot lock directories)
    created: list[Path]  # the directory and its parents that did not exist before this lock, deepest first
    begun: bool = False  # the session has started writing the directory (mark_begun)


_HELD: dict[str, _Held] = {}  # run directory -> its lock, kept for the process' life (or until end_run)


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


def _lock_fd(run_dir: Path) -> tuple[int, bool]:
    """An open descriptor of the run directory, flock-ed exclusively (BlockingIOError when another process
    holds it), and False. Where a file system cannot flock a directory (some NFS setups), the .lock file is
    locked instead: its descriptor and True."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, False
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on `run_dir` until the process ends (`fcntl.flock`: the kernel releases it on any
    exit, kill -9 included); RunDirError, naming the holder's pid and host, if another process has it. They are
    read from `<run>/.lock`, which only names the holder: deleting it lets no second run in."""
    key = str(run_dir.resolve())
    if key in _HELD:  # this process holds it already (a second session in one process)
        return
    created, p = [], run_dir.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    with disk_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd, on_file = _lock_fd(run_dir)
        except BlockingIOError:
            holder = read_json_or_none(run_dir / LOCK_FILE)
            holder = holder if isinstance(holder, dict) else {}
            raise RunDirError(f"{run_dir}: in use by another run (pid {holder.get('pid', '?')} on host "
                              f"{holder.get('host', '?')}, lock {run_dir / LOCK_FILE}); wait for it to end or "
                              f"choose another --run.name") from None
    _HELD[key] = _Held(fd, created)
    holder = (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode()
    try:
        with disk_errors(run_dir / LOCK_FILE):  # in place: where the lock is on .lock, its inode must stay
            out = fd if on_file else os.open(run_dir / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.ftruncate(out, 0)
                os.pwrite(out, holder, 0)
            finally:
                if out != fd:
                    os.close(out)
    except RunDirError:
        end_run(run_dir, EXIT_BAD_INPUT)
        raise


def mark_begun(run_dir: Path) -> None:
    """The session starts writing the run directory: from here on its end is always recorded."""
    held = _HELD.get(str(run_dir.resolve()))
    if held is not None:
        held.begun = True


def end_run(run_dir: Path, exit_status: int) -> None:
    """The owner's last word on a run directory: record `exit_status` in status.json and release the lock.
    Nothing happens without the lock. A refusal (bad input) before the session wrote anything changes
    nothing: a directory this process created for it (only .lock in it) is removed, and an existing
    status.json is kept (one is written only where none is, for the scripts that removed it before the start).
    Another run may then take the directory, also while this process goes on."""
    held = _HELD.pop(str(run_dir.resolve()), None)
    if held is None:
        return
    try:
        refused = exit_status == EXIT_BAD_INPUT and not held.begun
        if refused and held.created and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            for d in held.created:  # the run directory, then the parents made for it, while empty
                if any(d.iterdir()):
                    break
                d.rmdir()
        elif not (refused and RunDir(run_dir).status.exists()):
            RunDir(run_dir).write_status(exit_status)
    except OSError:  # a full disk: the error already reported says so; the exit status still tells
        pass
    finally:
        os.close(held.fd)  # closing the only descriptor releases the flock


def check_fresh(run_dir: Path, mode: str, has_checkpoint: bool) -> None:
    """One run, one folder. `--resume=none` refuses a directory that holds another run's files; with
    `--resume=auto|force` and no checkpoint (an attempt stopped before its first one) the run starts afresh
    and replaces that attempt's metrics and events, unless the directory holds a finished run's result.json.
    The refusal names `--resume=auto` and a free name."""
    found = RunDir(run_dir).traces()
    if not found or (mode != "none" and (has_checkpoint or RESULT not in found)):
        return
    free = next(f"{run_dir.name}-{i}" for i in range(2, 10**6) if not (run_dir.parent / f"{run_dir.name}-{i}").exists())
    if mode == "none":
        raise RunDirError(f"{run_dir}: holds a run already ({', '.join(found)}); --resume=auto continues it, or "
                          f"choose a free name such as --run.name={free}")
    raise RunDirError(f"{run_dir}: holds a finished run (result.json) but no checkpoint to resume from "
                      f"({run_dir / 'checkpoints' / 'last'}); choose a free name such as --run.name={free}")


def agree(accelerator, message: str) -> str:
    """Every process learns the first non-empty message of any process ("" when all are fine)."""
    if accelerator.num_processes == 1:
        return message
    from accelerate.utils import gather_object

    return next((m for m in gather_object([message]) if m), "")


def first_error(accelerator, work: Callable[[], object], everywhere: bool = False) -> str:
    """Run `work` on the main process (on every process with `everywhere`); every process learns the first
    one-line `InputError` message it raised, as from `agree` ("" when it worked everywhere)."""
    message = ""
    if everywhere or accelerator.is_main_process:
        try:
            work()
        except InputError as e:
            message = str(e)
    return agree(accelerator, message)


def _flat_yaml(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return flatten(data)


def check_resume_config(run_dir: Path, config_yaml: str, force: bool, say: Callable[[str], None]) -> None:
    """Compare the config this session resolved (`config_yaml`) with the one the run started with."""
    path = RunDir(run_dir).config
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
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k, missing) != new.get(k, missing) and k not in SESSION_KEYS)
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
