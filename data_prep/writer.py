"""Writing CIFAR splits to FFCV ``.beton`` files, safely, with a manifest.

`write_beton` is the library entry point. Its contract:

* Outputs in ``out_dir``: ``<name>_train.beton``, ``<name>_test.beton`` and ``<name>_manifest.json``.
  Each beton has two fields, ``image`` = ``RGBImageField(write_mode=mode, jpeg_quality=q,
  max_resolution=32)`` and ``label`` = ``IntField()``, with samples in source order.
* Atomic: everything is written under temporary names (``.<file>.tmp-<pid>``) in ``out_dir`` and
  renamed at the end, manifest last. On any failure (including Ctrl-C) the temporaries are removed
  and no new beton or manifest appears; files of an earlier successful run are left untouched.
* Idempotent: if the existing manifest records the same source sha256 and options and both betons
  are present with the recorded sizes, nothing is written (unless ``force=True``).
* ``verify=True`` re-reads the written files with ``ffcv.reader.Reader`` (no Loader, so no JIT and
  no writer/loader fork hazard) before they are renamed into place, and checks counts, every label,
  and pixels (raw: every image bit-exact; jpg: a sample's mean absolute difference under a bound).
* Errors a user can fix raise `DataPrepError` (one line: path, expected, found).

FFCV's writer forks worker processes, and a fork after an FFCV ``Loader`` ran in the same process
can deadlock on numba's compiler lock. `write_beton` compiles the numba lookups the workers use
before forking, and a watchdog turns a failed or stalled worker (no sample fetched for
`STALL_SECONDS`) into a `DataPrepError` instead of a hang; still, prefer writing before any Loader
or in a fresh process (``python -m data_prep``). Importing FFCV sets torch's thread count to 1;
`write_beton` restores the previous value.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import importlib.metadata
import json
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .download import file_digests
from .errors import DataPrepError
from .sources import (
    SIDE,
    SPLITS,
    SourceData,
    SourceSpec,
    Split,
    check_name,
    read_source,
    resolve_source,
    source_sha256,
)

MANIFEST_VERSION = 1
MODES = ("raw", "jpg")
VERIFY_JPEG_SAMPLE = 2048  # images per split compared pixel-wise in jpg mode
Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------- #
# FFCV access


def _ffcv() -> ModuleType:
    """Import ffcv's writer, fields and reader, undoing its side effect on torch's thread count."""
    threads = None
    if "ffcv" not in sys.modules:
        import torch

        threads = torch.get_num_threads()
    import ffcv.fields
    import ffcv.reader
    import ffcv.writer

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return ffcv


def ffcv_version() -> str:
    """The installed FFCV distribution version (ffcv.__version__ is wrong in 1.0.2)."""
    try:
        return importlib.metadata.version("ffcv")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - ffcv is a dependency
        return "unknown"


class _ArrayDataset:
    """Indexable (image, label) view of a Split, as FFCV's writer expects.

    Every access bumps `heartbeat` (a shared counter), which the parent watches for stalls.
    """

    def __init__(self, split: Split, heartbeat: Any) -> None:
        self.images = split.images
        self.labels = split.labels
        self.heartbeat = heartbeat

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        self.heartbeat.value += 1  # unsynchronised on purpose: any change means progress
        return self.images[index], int(self.labels[index])


def _guarded_worker(failures: Any, *args: Any) -> None:
    """Run FFCV's worker job; on failure report it to the parent instead of dying silently.

    FFCV's parent process waits for a sample count that a dead worker never reaches, so an
    unreported failure (disk full, ...) would hang it. The parent watches `failures`.
    """
    try:
        _ffcv().writer.worker_job_indexed_dataset(*args)
    except BaseException as exc:  # noqa: B036 - report everything, including KeyboardInterrupt
        failures.put(f"{type(exc).__name__}: {exc}")
        sys.exit(1)


class _WriterStopped(Exception):
    """Raised in the main thread (via SIGUSR1) when the watchdog gives up on FFCV's writer."""


def _raise_writer_stopped(signum: int, frame: Any) -> None:
    raise _WriterStopped()


class _Watchdog:
    """Watches FFCV writer workers from a thread and interrupts the main thread when they fail or stall.

    FFCV's writer loop has no error path: it polls a counter until every sample is written. The
    watchdog raises `_WriterStopped` in the main thread (via SIGUSR1) when a worker reports an
    exception, exits with a non-zero status, or no sample is fetched for `stall_seconds` (the known
    deadlock of a writer forked after an FFCV Loader ran in the same process). `reason` says why.
    Only active when used from the main thread (signal handlers can only be installed there).
    """

    def __init__(self, stall_seconds: float) -> None:
        self.failures = multiprocessing.SimpleQueue()
        self.heartbeat = multiprocessing.RawValue("Q", 0)
        self.stall_seconds = stall_seconds
        self.reason = ""
        self.children: dict[int, multiprocessing.Process] = {}
        self._known = {p.pid for p in multiprocessing.active_children()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None

    def __enter__(self) -> _Watchdog:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, _raise_writer_stopped)
            self._thread = threading.Thread(target=self._watch, name="data_prep-writer-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join()
        finally:
            if self._thread is not None:
                signal.signal(signal.SIGUSR1, self._previous)
            for p in list(self.children.values()):  # only our writer's workers
                if p.is_alive():
                    p.terminate()
                p.join(timeout=5)

    def _watch(self) -> None:
        main_ident = threading.main_thread().ident
        last_beat, last_change = -1, time.monotonic()
        while not self._stop.wait(0.1):
            for p in multiprocessing.active_children():
                if p.pid not in self._known:
                    self.children.setdefault(p.pid, p)
            beat = self.heartbeat.value
            if beat != last_beat:
                last_beat, last_change = beat, time.monotonic()
            if not self.failures.empty():
                self.reason = f"a worker failed ({self.failures.get()})"
            elif any(p.exitcode not in (None, 0) for p in list(self.children.values())):
                self.reason = "a worker process died"
            elif time.monotonic() - last_change > self.stall_seconds:
                self.reason = (
                    f"no progress for {self.stall_seconds:g} s (FFCV's writer deadlocks when forked after an "
                    "FFCV Loader ran in the same process; write in a fresh process, e.g. python -m data_prep)"
                )
            if self.reason and not self._stop.is_set():
                signal.pthread_kill(main_ident, signal.SIGUSR1)
                return


STALL_SECONDS = 180.0  # a writer that fetches no sample for this long is considered hung


@contextlib.contextmanager
def _writer_progress(ffcv_writer: ModuleType, desc: str, enabled: bool) -> Iterator[None]:
    """Give FFCV's own writer progress bar a label, or silence it."""
    original = ffcv_writer.tqdm
    ffcv_writer.tqdm = functools.partial(original, desc=desc, unit="img", disable=not enabled)
    try:
        yield
    finally:
        ffcv_writer.tqdm = original


def _write_split(
    path: Path, final: Path, split: Split, mode: str, jpeg_quality: int, num_workers: int, progress: bool
) -> None:
    """Write one split to `path` with FFCV's DatasetWriter (`final` names the file in messages)."""
    ffcv = _ffcv()
    fields = {
        "image": ffcv.fields.RGBImageField(write_mode=mode, jpeg_quality=jpeg_quality, max_resolution=SIDE),
        "label": ffcv.fields.IntField(),
    }
    # Compile the numba lookups the workers use here, so forked workers never need numba's compiler.
    for key in ("raw", "jpg"):
        ffcv.fields.rgb_image.IMAGE_MODES[key]
    n = len(split)
    chunksize = 100
    workers = max(1, min(num_workers, -(-n // chunksize)))
    writer = ffcv.writer.DatasetWriter(str(path), fields, num_workers=workers)
    done = False
    try:
        with _writer_progress(ffcv.writer, f"write {final.name}", progress), _Watchdog(STALL_SECONDS) as dog:
            dataset = _ArrayDataset(split, dog.heartbeat)
            if hasattr(writer, "_write_common"):  # ffcv 1.0.x: run FFCV's worker job through our guard
                todo = ffcv.utils.chunks(list(enumerate(range(n))), chunksize)
                writer._write_common(n, todo, functools.partial(_guarded_worker, dog.failures), (dataset,))
            else:  # pragma: no cover - other ffcv versions: failures are not reported, only stalls
                writer.from_indexed_dataset(dataset, chunksize=chunksize)
        done = True
    except _WriterStopped:
        raise DataPrepError(final, "the FFCV writer to encode every sample", dog.reason) from None
    except OSError as exc:
        raise DataPrepError(final, "a writable output file", f"an error ({exc.strerror or exc})") from exc
    finally:
        shm = getattr(writer, "metadata_sm", None)
        if not done and shm is not None and not isinstance(shm, int):  # FFCV frees it only on success
            with contextlib.suppress(Exception):
                shm.close()
                shm.unlink()


# --------------------------------------------------------------------------------------------- #
# Reading back and verification


def _open_beton(path: Path) -> tuple[Any, np.ndarray, np.ndarray]:
    """Open a beton with ffcv.reader.Reader; return (reader, image metadata, label metadata)."""
    ffcv = _ffcv()
    try:
        reader = ffcv.reader.Reader(str(path))
    except Exception as exc:  # the reader raises assorted types on a bad header
        raise DataPrepError(
            path, "a readable .beton file", f"an error ({type(exc).__name__}: {exc})"
        ) from exc
    names = list(reader.field_names)
    if sorted(names) != ["image", "label"] or not isinstance(
        reader.handlers["image"], ffcv.fields.RGBImageField
    ):
        raise DataPrepError(
            path, "fields image (RGBImageField) and label (IntField)", f"fields {', '.join(names)}"
        )
    meta = reader.metadata
    return reader, meta[f"f{names.index('image')}"], meta[f"f{names.index('label')}"]


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """All labels (N,) int64 of a beton written here, straight from its metadata table."""
    _, _, label_meta = _open_beton(Path(path))
    return np.asarray(label_meta, dtype=np.int64).reshape(-1)


def read_beton(
    path: str | os.PathLike[str], indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read images (N, 32, 32, 3) uint8 RGB and labels (N,) int64 back from a beton written here.

    Uses ``ffcv.reader.Reader`` for the header, metadata and allocation table and copies (raw) or
    OpenCV-decodes (jpg) the image bytes itself: no Loader, no JIT, no worker processes.
    `indices` selects rows (default: all).

    Raises:
        DataPrepError: the file is not a beton with ``image`` (RGBImageField) and ``label`` fields.
    """
    path = Path(path)
    reader, img_meta, label_meta = _open_beton(path)
    rows = np.arange(len(img_meta)) if indices is None else np.asarray(indices, dtype=np.int64)
    labels = np.asarray(label_meta[rows], dtype=np.int64).reshape(-1)
    table = np.sort(reader.alloc_table, order="ptr")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    images = np.empty((len(rows), SIDE, SIDE, 3), dtype=np.uint8)
    cv2 = None
    for out_ix, row in enumerate(rows):
        m = img_meta[row]
        h, w, ptr = int(m["height"]), int(m["width"]), int(m["data_ptr"])
        if (h, w) != (SIDE, SIDE):
            raise DataPrepError(path, f"{SIDE}x{SIDE} images", f"{w}x{h} at row {row}")
        if int(m["mode"]) == 1:  # raw: HWC RGB bytes
            images[out_ix] = np.asarray(data[ptr : ptr + SIDE * SIDE * 3]).reshape(SIDE, SIDE, 3)
        else:  # jpg: FFCV encodes with OpenCV from BGR
            if cv2 is None:
                import cv2
            size = int(table["size"][np.searchsorted(table["ptr"], ptr)])
            bgr = cv2.imdecode(np.asarray(data[ptr : ptr + size]), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape != (SIDE, SIDE, 3):
                raise DataPrepError(path, "a decodable JPEG image", f"undecodable data at row {row}")
            images[out_ix] = bgr[:, :, ::-1]
    return images, labels


def _jpeg_roundtrip_error(images: np.ndarray, quality: int) -> float:
    """Mean absolute difference JPEG compression at `quality` causes on `images` (OpenCV codec)."""
    import cv2

    total = 0.0
    for img in images:
        ok, enc = cv2.imencode(".jpg", img[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        dec = cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1]
        total += float(np.abs(dec.astype(np.int16) - img.astype(np.int16)).mean())
    return total / max(1, len(images))


def verify_split(
    path: str | os.PathLike[str], split: Split, *, mode: str, jpeg_quality: int, shown: str | None = None
) -> dict:
    """Check a written beton against the source split; return a small report dict.

    Checks: sample count, every label, and pixels — raw: every image bit-exact; jpg: on up to
    VERIFY_JPEG_SAMPLE evenly spaced images, mean absolute difference <= 1.25 * (the error an
    OpenCV JPEG round trip at the same quality causes) + 0.5.

    Raises:
        DataPrepError: naming `shown` (default `path`) and the first mismatch.
    """
    shown = shown or str(path)
    all_labels = read_labels(path)
    n = len(all_labels)
    if n != len(split):
        raise DataPrepError(shown, f"{len(split)} images (as in the source)", f"{n} images")
    rows = (
        np.arange(n)
        if mode == "raw"
        else np.unique(np.linspace(0, n - 1, min(n, VERIFY_JPEG_SAMPLE)).astype(np.int64))
    )
    bad = np.flatnonzero(all_labels != split.labels)
    if bad.size:
        i = int(bad[0])
        raise DataPrepError(
            shown,
            "labels identical to the source",
            f"{bad.size} different (first at row {i}: {all_labels[i]} vs {split.labels[i]})",
        )
    images, _ = read_beton(path, rows)
    src = split.images[rows]
    report: dict[str, Any] = {"images": n, "labels_checked": n, "pixels_checked_images": int(len(rows))}
    if mode == "raw":
        diff = np.flatnonzero((images != src).reshape(len(rows), -1).any(axis=1))
        if diff.size:
            raise DataPrepError(
                shown,
                "pixels identical to the source (raw mode)",
                f"{diff.size} different images (first at row {int(rows[diff[0]])})",
            )
        report["max_abs_diff"] = 0
    else:
        mad = float(np.abs(images.astype(np.int16) - src.astype(np.int16)).mean()) if len(rows) else 0.0
        bound = 1.25 * _jpeg_roundtrip_error(src, jpeg_quality) + 0.5
        if mad > bound:
            raise DataPrepError(
                shown,
                f"mean absolute pixel difference <= {bound:.2f} (jpg quality {jpeg_quality})",
                f"{mad:.2f}",
            )
        report.update(mean_abs_diff=round(mad, 4), bound=round(bound, 4))
    return report


# --------------------------------------------------------------------------------------------- #
# Output files


def output_paths(out_dir: str | os.PathLike[str], name: str) -> dict[str, Path]:
    """Final paths: {"train": <name>_train.beton, "test": <name>_test.beton, "manifest": <name>_manifest.json}."""
    out = Path(out_dir)
    return {
        "train": out / f"{name}_train.beton",
        "test": out / f"{name}_test.beton",
        "manifest": out / f"{name}_manifest.json",
    }


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _check_out_dir(out: Path) -> None:
    """Fail early, without creating anything, if `out` or one of its parents is not a folder."""
    for ancestor in (out, *out.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                what = "an existing file" if ancestor == out else f"{ancestor} is a file, not a folder"
                raise DataPrepError(out, "a writable output directory", what)
            return


def _prepare_out_dir(out: Path) -> Path:
    """Create `out` if needed and prove it is writable (a probe file), or raise DataPrepError."""
    _check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".data_prep-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataPrepError(out, "a writable output directory", f"an error ({exc.strerror or exc})") from exc
    return out


def _remove_stale_temps(out: Path, name: str) -> None:
    """Delete temporaries of earlier runs for `name` whose process no longer exists."""
    pattern = re.compile(rf"^\.{re.escape(name)}_(train\.beton|test\.beton|manifest\.json)\.tmp-(\d+)$")
    for p in out.iterdir():
        m = pattern.match(p.name)
        if m and int(m.group(2)) != os.getpid() and not _pid_alive(int(m.group(2))):
            p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _options(
    spec: SourceSpec, name: str, mode: str, jpeg_quality: int, labels: str, sha: str
) -> dict[str, Any]:
    """The manifest entries that decide whether existing outputs are up to date."""
    return {
        "format_version": MANIFEST_VERSION,
        "name": name,
        "dataset": spec.dataset,
        "labels": labels if spec.dataset == "cifar100" else None,
        "write_mode": mode,
        "jpeg_quality": jpeg_quality if mode == "jpg" else None,
        "image_resolution": SIDE,
        "source_sha256": sha,
    }


def load_manifest(path: str | os.PathLike[str]) -> dict | None:
    """The manifest at `path`, or None if it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _up_to_date(paths: dict[str, Path], options: dict[str, Any]) -> dict | None:
    """Return the existing manifest if it matches `options` and its betons exist with recorded sizes."""
    manifest = load_manifest(paths["manifest"])
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in options.items()):
        return None
    for split in SPLITS:
        entry = (manifest.get("files") or {}).get(split) or {}
        if not paths[split].is_file() or paths[split].stat().st_size != entry.get("bytes"):
            return None
    return manifest


def _file_sha256(path: Path) -> str:
    return file_digests(path)[1]


def _build_manifest(
    data: SourceData,
    spec: SourceSpec,
    options: dict[str, Any],
    temps: dict[str, Path],
    finals: dict[str, Path],
    verification: dict[str, Any] | None,
    seconds: dict[str, float],
) -> dict[str, Any]:
    per_class = {
        split: np.bincount(data.split(split).labels, minlength=len(data.class_names)) for split in SPLITS
    }
    source = spec.origin if spec.origin != spec.given else str(Path(spec.given).expanduser().resolve())
    mode, quality = options["write_mode"], options["jpeg_quality"]
    return {
        **options,
        "class_names": list(data.class_names),
        "num_classes": len(data.class_names),
        "counts": {
            split: {
                "total": len(data.split(split)),
                "per_class": {c: int(k) for c, k in zip(data.class_names, per_class[split])},
            }
            for split in SPLITS
        },
        "image_shape": [SIDE, SIDE, 3],
        "fields": {
            "image": {
                "type": "RGBImageField",
                "write_mode": mode,
                "jpeg_quality": quality,
                "max_resolution": SIDE,
            },
            "label": {"type": "IntField"},
        },
        "files": {
            split: {
                "path": finals[split].name,
                "bytes": temps[split].stat().st_size,
                "sha256": _file_sha256(temps[split]),
            }
            for split in SPLITS
        },
        "source": source,
        "source_kind": spec.kind,
        "ffcv_version": ffcv_version(),
        "verified": verification is not None,
        "verification": verification,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def write_beton(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    mode: str = "raw",
    jpeg_quality: int = 90,
    labels: str = "fine",
    force: bool = False,
    verify: bool = False,
    num_workers: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
    md5: str | None = None,
    progress: bool | None = None,
    log: Log | None = print,
) -> dict:
    """Convert a CIFAR source into ``<name>_train.beton``, ``<name>_test.beton`` and ``<name>_manifest.json``.

    Args:
        source: archive path, batches folder, image-folder tree (folder or tar), URL, or
            ``cifar10``/``cifar100`` (download of the official archive).
        out_dir: output folder (created if needed).
        name: file-name prefix; default ``cifar10``/``cifar100``/the folder or archive name.
        mode: "raw" (pixel-exact) or "jpg".
        jpeg_quality: 1..100, used in jpg mode.
        labels: "fine" or "coarse" (CIFAR-100 only).
        force: rewrite even when the outputs are up to date.
        verify: re-read the written files and compare them with the source (see module docs).
        num_workers: processes for decoding source images and for FFCV's writer.
        cache_dir: where downloads are cached (default `download.default_cache_dir()`).
        md5: expected md5 of a local archive or download (downloads of the official archives are
            always checked against the published md5).
        progress: show progress bars on stderr; None = only when stderr is a terminal.
        log: receives one-line status messages (None = silent).

    Returns:
        The manifest dict (the existing one when the outputs were already up to date).

    Raises:
        DataPrepError: any bad input or output location; no new outputs are left behind.
    """
    started = time.perf_counter()
    say: Log = log or (lambda _msg: None)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if mode not in MODES:
        raise DataPrepError("--mode", "raw or jpg", repr(mode))
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise DataPrepError("--jpeg_quality", "an integer in 1..100", repr(jpeg_quality))
    if labels not in ("fine", "coarse"):
        raise DataPrepError("--labels", "fine or coarse", repr(labels))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise DataPrepError("--num_workers", "an integer >= 1", repr(num_workers))
    if name is not None:
        check_name(str(name))
    _check_out_dir(Path(out_dir))  # before a possible download; created only once the source is found
    spec = resolve_source(source, cache_dir=cache_dir, md5=md5, progress=show)
    out = _prepare_out_dir(Path(out_dir))
    if labels == "coarse" and spec.dataset != "cifar100":
        raise DataPrepError(
            "--labels",
            "fine for a CIFAR-10 or image-folder source (coarse exists only in CIFAR-100)",
            "coarse",
        )
    name = check_name(str(name) if name is not None else spec.default_name)
    finals = output_paths(out, name)
    _remove_stale_temps(out, name)
    sha = source_sha256(spec)
    options = _options(spec, name, mode, jpeg_quality, labels, sha)

    existing = None if force else _up_to_date(finals, options)
    if existing is not None:
        say(
            f"{name}: up to date in {out} (same source sha256 {sha[:12]} and options; use --force to rewrite)"
        )
        if verify:
            data = read_source(spec, labels=labels, num_workers=num_workers, progress=show)
            for split in SPLITS:
                report = verify_split(finals[split], data.split(split), mode=mode, jpeg_quality=jpeg_quality)
                say(f"verified {finals[split].name}: {report}")
        return existing

    say(f"{name}: reading {spec.dataset} source {spec.origin}")
    seconds: dict[str, float] = {}
    stage = time.perf_counter()
    data = read_source(spec, labels=labels, num_workers=num_workers, progress=show)
    seconds["read"] = time.perf_counter() - stage
    say(f"{name}: read {len(data.train)} train + {len(data.test)} test images in {seconds['read']:.1f} s")
    for split in SPLITS:
        if len(data.split(split)) == 0:
            raise DataPrepError(spec.given, f"at least one {split} image", f"no {split} images")
    temps = {key: _temp_path(path) for key, path in finals.items()}
    try:
        stage = time.perf_counter()
        for split in SPLITS:
            say(f"{name}: writing {finals[split]} ({len(data.split(split))} images, {mode})")
            _write_split(
                temps[split], finals[split], data.split(split), mode, jpeg_quality, num_workers, show
            )
        seconds["write"] = time.perf_counter() - stage  # includes importing FFCV (numba JIT) once
        verification = None
        stage = time.perf_counter()
        if verify:
            verification = {}
            for split in SPLITS:
                verification[split] = verify_split(
                    temps[split],
                    data.split(split),
                    mode=mode,
                    jpeg_quality=jpeg_quality,
                    shown=str(finals[split]),
                )
                say(f"verified {finals[split].name}: {verification[split]}")
            seconds["verify"] = time.perf_counter() - stage
        seconds["total"] = time.perf_counter() - started
        manifest = _build_manifest(data, spec, options, temps, finals, verification, seconds)
        try:
            temps["manifest"].write_text(json.dumps(manifest, indent=2) + "\n")
            finals["manifest"].unlink(missing_ok=True)  # never leave an old manifest next to new betons
            for key in (*SPLITS, "manifest"):
                os.replace(temps[key], finals[key])
        except OSError as exc:
            raise DataPrepError(
                out, "a writable output directory", f"an error ({exc.strerror or exc})"
            ) from exc
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    say(
        f"{name}: wrote {finals['train'].name}, {finals['test'].name}, {finals['manifest'].name} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return manifest
