"""The process FFCV's writer runs in: ``python -m data_prep.ffcv_child MODE QUALITY [PATH COUNT WORKERS]...``.

`data_prep.split_writer` starts it and stops its whole session (see there). It writes the splits one
after the other (FFCV's import costs seconds, paid once). Protocol:

* stdin, per split: COUNT images as raw uint8 bytes (COUNT, 32, 32, 3) RGB, then COUNT labels as
  int64 (little endian);
* stdout: per split ``start I``, ``done K`` about every 0.2 s (samples handed to FFCV's workers so
  far) and ``wrote I``; at the end ``ok``, or ``error TEXT`` on a failure. Exit status 0 means every
  PATH is complete.

FFCV's writer forks worker processes and has no error path: when a worker dies (a full disk, ...)
it waits forever for samples that never come. A thread here watches the workers' exit statuses;
when one fails it stops the others, reports and ends this process. The workers' own tracebacks go
to this process's stderr, which the parent keeps to quote the cause. Only FFCV's public writer API
is used (`DatasetWriter.from_indexed_dataset`).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading

import numpy as np

from .arrays import SIDE
from .split_writer import CHUNK

POLL_SECONDS = 0.2


class Samples:
    """Indexable (image, label) pairs as FFCV's writer expects; counts the samples fetched."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels
        self.fetched = multiprocessing.RawValue("Q", 0)  # shared with the forked workers

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        self.fetched.value += 1  # unsynchronised: a progress figure only
        return self.images[index], int(self.labels[index])


def say(line: str) -> None:
    """One protocol line on stdout."""
    sys.stdout.write(line.replace("\n", " ") + "\n")
    sys.stdout.flush()


def stop_workers(workers: dict[int, multiprocessing.Process]) -> None:
    for p in workers.values():
        if p.exitcode is None:
            p.kill()
        p.join(timeout=2)


def watch(samples: Samples, done: threading.Event) -> None:
    """Report progress; when a worker fails, stop the others and end this process with status 1."""
    workers: dict[int, multiprocessing.Process] = {}
    while not done.wait(POLL_SECONDS):
        workers.update((p.pid, p) for p in multiprocessing.active_children())
        failed = [p.exitcode for p in workers.values() if p.exitcode not in (None, 0)]
        if failed and not done.is_set():
            stop_workers(workers)
            say(f"error an FFCV writer worker exited with status {failed[0]}")
            os._exit(1)
        say(f"done {samples.fetched.value}")


def read_input(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays the parent sends on stdin."""
    sizes = (count * SIDE * SIDE * 3, count * 8)
    blobs = [sys.stdin.buffer.read(size) for size in sizes]
    if [len(b) for b in blobs] != list(sizes):
        raise EOFError(f"expected {sum(sizes)} bytes on stdin, found {sum(len(b) for b in blobs)}")
    images = np.frombuffer(blobs[0], dtype=np.uint8).reshape(count, SIDE, SIDE, 3)
    return images, np.frombuffer(blobs[1], dtype="<i8")


def write(path: str, mode: str, jpeg_quality: int, workers: int, samples: Samples) -> None:
    """Write `samples` to `path` with FFCV's DatasetWriter while `watch` looks after the workers."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {
        "image": RGBImageField(write_mode=mode, jpeg_quality=jpeg_quality, max_resolution=SIDE),
        "label": IntField(),
    }
    writer = DatasetWriter(path, fields, num_workers=workers)
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(samples, done), name="ffcv-workers", daemon=True)
    watcher.start()
    try:
        writer.from_indexed_dataset(samples, chunksize=CHUNK)
    finally:
        done.set()
        watcher.join()


def main(argv: list[str]) -> int:
    mode, quality, *splits = argv
    try:
        for i in range(len(splits) // 3):
            path, count, workers = splits[3 * i : 3 * i + 3]
            say(f"start {i}")
            images, labels = read_input(int(count))
            write(path, mode, int(quality), int(workers), Samples(images, labels))
            say(f"wrote {i}")
    except BaseException as exc:  # noqa: B036 - every failure is reported on the protocol
        stop_workers({p.pid: p for p in multiprocessing.active_children()})
        say(f"error {type(exc).__name__}: {exc}")
        return 1
    say("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
