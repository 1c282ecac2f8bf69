"""Writing the splits to ``.beton`` files in a child process with a deadline per split (see `data_prep.ffcv_child`).

FFCV's writer forks workers, cannot report a dead one, and deadlocks when forked after an FFCV
Loader ran in the same process. Running it in a fresh process of its own session makes every
failure an exit status: `write_splits` raises `DataPrepError` when the child fails (a full disk, a
dead worker) or misses its deadline, and in every case stops the child's whole session (workers
included) before it returns, so no process is left behind and no caller ever hangs.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from .arrays import SplitArrays
from .errors import DataPrepError
from .options import PrepOptions

CHUNK = 100  # samples per work item of an FFCV writer worker (data_prep.ffcv_child)
TIMEOUT_BASE = 300.0  # seconds a split may take: this much plus TIMEOUT_PER_IMAGE per image
TIMEOUT_PER_IMAGE = 0.02
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


@dataclass(frozen=True)
class SplitJob:
    """One split to write.

    Attributes:
        path: the (temporary) file the child writes.
        shown: the file named in messages and on the progress bar (the final name).
        split: the images and labels.
    """

    path: Path
    shown: Path
    split: SplitArrays

    @property
    def workers_cap(self) -> int:
        return -(-len(self.split) // CHUNK)  # FFCV hands out work in chunks of CHUNK samples

    def seconds(self, timeout: float | None) -> float:
        """The seconds this split may take: `timeout`, or when None TIMEOUT_BASE + TIMEOUT_PER_IMAGE per image
        (the first split's time includes importing FFCV)."""
        return timeout if timeout is not None else TIMEOUT_BASE + TIMEOUT_PER_IMAGE * len(self.split)


@dataclass
class _Outcome:
    status: int | None = None  # None: a split missed its deadline
    error: str = ""  # the child's own "error ..." line
    current: int = 0  # the split being written


def write_splits(jobs: list[SplitJob], opts: PrepOptions) -> None:
    """Write every job's split to its path in one child process; raise DataPrepError on a failure or timeout.
    `opts` gives the image field's mode and JPEG quality, the FFCV writer's worker processes, the progress bar
    and the deadline (write_timeout)."""
    cmd = [sys.executable, "-m", "data_prep.ffcv_child", opts.mode, str(opts.jpeg_quality)]
    for job in jobs:
        cmd += [str(job.path), str(len(job.split)), str(max(1, min(opts.num_workers, job.workers_cap)))]
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    env=_child_env(), start_new_session=True)
        except OSError as exc:
            raise DataPrepError(jobs[0].shown, "a process for the FFCV writer", f"an error ({exc})") from exc
        feeder = threading.Thread(target=_feed, args=(proc.stdin, jobs), name="feed-ffcv-writer", daemon=True)
        try:
            feeder.start()
            outcome = _follow(proc, jobs, opts)
        finally:
            end_session(proc)
            feeder.join(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        job = jobs[min(outcome.current, len(jobs) - 1)]
        if outcome.status is None:
            raise DataPrepError(job.shown, f"the FFCV writer to finish within {job.seconds(opts.write_timeout):g} s",
                                "no result in time (its processes were stopped)")
        if outcome.status != 0:
            raise DataPrepError(job.shown, "the FFCV writer to encode every sample", _failure(outcome, log))


def _child_env() -> dict[str, str]:
    """The environment of the child: this copy of data_prep importable, no progress bars of FFCV's own."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TQDM_DISABLE": "1"}


def _feed(stream: IO[bytes], jobs: list[SplitJob]) -> None:
    """Send the splits' arrays to the child (a thread: the child may die before reading them)."""
    try:
        for job in jobs:
            stream.write(memoryview(np.ascontiguousarray(job.split.images, dtype=np.uint8)).cast("B"))
            stream.write(np.ascontiguousarray(job.split.labels, dtype="<i8").tobytes())
        stream.close()
    except (OSError, ValueError):  # the child ended early; its status says why
        pass


def _follow(proc: subprocess.Popen, jobs: list[SplitJob], opts: PrepOptions) -> _Outcome:
    """Read the child's protocol lines until it exits or the split being written misses its deadline."""
    outcome = _Outcome()
    deadline = time.monotonic() + jobs[0].seconds(opts.write_timeout)
    bar: tqdm | None = None
    pending = b""
    with selectors.DefaultSelector() as sel, contextlib.ExitStack() as stack:
        stack.callback(lambda: bar is not None and bar.close())
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                kind, _, rest = line.decode(errors="replace").partition(" ")
                if kind == "start" and rest.isdigit() and int(rest) < len(jobs):
                    outcome.current = int(rest)
                    job = jobs[outcome.current]
                    deadline = time.monotonic() + job.seconds(opts.write_timeout)
                    bar = tqdm(total=len(job.split), desc=f"write {job.shown.name}", unit="img",
                               disable=not opts.show_progress)
                elif kind == "done" and rest.isdigit() and bar is not None:
                    bar.update(max(0, min(int(rest), bar.total) - bar.n))
                elif kind == "wrote" and bar is not None:
                    bar.update(bar.total - bar.n)
                    bar.close()
                elif kind == "error":
                    outcome.error = rest
        else:
            return outcome
    try:
        outcome.status = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    return outcome


def _failure(outcome: _Outcome, log: IO[bytes]) -> str:
    """What went wrong: the child's report and the last exception line in its stderr (a worker's)."""
    log.seek(0)
    lines = log.read()[-(1 << 16):].decode(errors="replace").splitlines()
    cause = next((m.group(0).strip() for line in reversed(lines) if (m := _EXCEPTION_LINE.match(line))), "")
    said = outcome.error or f"the writer process exited with status {outcome.status}"
    return f"{said} ({cause})" if cause and cause not in said else said


def end_session(proc: subprocess.Popen) -> None:
    """Leave no process of the child's session behind: wait briefly, then SIGTERM, then SIGKILL.

    SIGTERM first lets multiprocessing's resource tracker (which ignores it) remove FFCV's shared
    memory once the writer and its workers are gone.
    """
    steps = [(signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)]
    if proc.poll() is not None:
        steps.insert(0, (None, 2.0))
    for sig, grace in steps:
        if sig is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        stop = time.monotonic() + grace
        while time.monotonic() < stop:
            proc.poll()
            if not session_alive(proc.pid):
                return
            time.sleep(0.05)


def session_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of process group `pgid` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):  # zombies of a non-reaping init do not count
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return not Path("/proc/self/stat").exists()
