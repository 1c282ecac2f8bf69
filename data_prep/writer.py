"""Converting a CIFAR source into two FFCV ``.beton`` files and a manifest, safely: `write_beton`.

Contract:

* Outputs in ``out_dir``: ``<name>_train.beton``, ``<name>_test.beton`` and ``<name>_manifest.json``.
  Each beton has two fields, ``image`` = ``RGBImageField(write_mode=mode, jpeg_quality=q,
  max_resolution=32)`` and ``label`` = ``IntField()``. Rows are in source order for the official
  archives and in a seeded shuffled order for image folders (see `data_prep.image_folder`).
* Atomic: everything is written under temporary names (``.<file>.tmp-<pid>``) in ``out_dir`` and
  renamed at the end, manifest last. On any failure (a full disk, Ctrl-C, ...) the temporaries are
  removed and no new beton or manifest appears; files of an earlier successful run are untouched.
* Each split is written by FFCV in a child process with a deadline (`data_prep.split_writer`).
* Idempotent: nothing is written while the outputs are up to date (`data_prep.manifest`), unless ``force=True``.
* ``verify=True`` re-reads the files and checks them against the source (`data_prep.beton.verify_split`).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifar_dist.files import atomic_write_json, pid_alive

from .arrays import SPLITS, SourceData
from .beton import verify_split
from .errors import DataPrepError
from .manifest import build_manifest, file_entries, manifest_options, up_to_date
from .options import PrepOptions
from .sources import SourceSpec, check_labels, check_name, read_source, resolve_source, source_sha256
from .split_writer import SplitJob, write_splits

Log = Callable[[str], None]


def output_paths(out_dir: str | os.PathLike[str], name: str) -> dict[str, Path]:
    """Final paths: {"train": <name>_train.beton, "test": <name>_test.beton, "manifest": <name>_manifest.json}."""
    out = Path(out_dir)
    return {
        "train": out / f"{name}_train.beton",
        "test": out / f"{name}_test.beton",
        "manifest": out / f"{name}_manifest.json",
    }


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


def _remove_stale_temps(finals: dict[str, Path]) -> None:
    """Delete the temporaries (`_Conversion.temps`) of `finals` left by earlier runs whose process no longer exists."""
    names = "|".join(re.escape(path.name) for path in finals.values())
    pattern = re.compile(rf"^\.({names})\.tmp-(\d+)$")
    for p in finals["manifest"].parent.iterdir():
        m = pattern.match(p.name)
        if m and int(m.group(2)) != os.getpid() and not pid_alive(int(m.group(2))):
            p.unlink(missing_ok=True)


def write_beton(
    source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, log: Log | None = print, **options: Any
) -> dict:
    """Convert `source` (what `data_prep.sources.resolve_source` takes) into the outputs in `out_dir` (created if
    needed), as the module docstring says; return the manifest (the existing one when they were up to date).
    `log` receives one-line status messages (None: silent); `options` are the fields of `PrepOptions`."""
    opts = PrepOptions(**options)
    opts.check()
    say: Log = log or (lambda _msg: None)
    _check_out_dir(Path(out_dir))  # before a possible download; created only once the source is found
    spec = resolve_source(source, cache_dir=opts.cache_dir, md5=opts.md5, progress=opts.show_progress)
    out = _prepare_out_dir(Path(out_dir))
    check_labels(opts.labels, spec.dataset)
    name = check_name(str(opts.name) if opts.name is not None else spec.default_name)
    finals = output_paths(out, name)
    _remove_stale_temps(finals)
    sha = source_sha256(spec)
    options = manifest_options(spec, opts, name, sha)
    existing = None if opts.force else up_to_date(finals, options)
    if existing is None:
        return _Conversion(spec, opts, name, finals, say).run(options)
    say(f"{name}: up to date in {out} (same source sha256 {sha[:12]}, options and .beton sha256; "
        "use --force to rewrite)")
    if opts.verify:
        data = read_source(spec, labels=opts.labels, num_workers=opts.num_workers, progress=opts.show_progress)
        _verify(finals, finals, data, opts, say, sha256="as in the manifest")
    return existing


def _verify(files: dict[str, Path], finals: dict[str, Path], data: SourceData, opts: PrepOptions, say: Log,
            **note: str) -> dict[str, Any]:
    """`verify_split` of each split's file in `files` (named as in `finals`), each report said as it comes."""
    reports = {}
    for split in SPLITS:
        reports[split] = verify_split(files[split], data.split(split), mode=opts.mode, jpeg_quality=opts.jpeg_quality,
                                      shown=str(finals[split]))
        say(f"verified {finals[split].name}: {dict(reports[split], **note)}")
    return reports


class _Conversion:
    """Read the source, write both splits under temporary names, verify, then rename into place."""

    def __init__(self, spec: SourceSpec, opts: PrepOptions, name: str, finals: dict[str, Path], say: Log) -> None:
        self.spec, self.opts, self.name, self.finals, self.say = spec, opts, name, finals, say
        self.temps = {key: path.with_name(f".{path.name}.tmp-{os.getpid()}") for key, path in finals.items()}
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        self.seconds[stage] = time.perf_counter() - t0
        return result

    def run(self, options: dict[str, Any]) -> dict:
        spec, opts, name = self.spec, self.opts, self.name
        self.say(f"{name}: reading {spec.dataset} source {spec.origin}")
        data: SourceData = self._timed("read", lambda: read_source(
            spec, labels=opts.labels, num_workers=opts.num_workers, progress=opts.show_progress))
        self.say(f"{name}: read {len(data.train)} train + {len(data.test)} test images in {self.seconds['read']:.1f} s")
        for split in SPLITS:
            if len(data.split(split)) == 0:
                raise DataPrepError(spec.given, f"at least one {split} image", f"no {split} images")
        try:
            self._timed("write", lambda: self._write(data))
            verification = self._timed("verify", lambda: _verify(self.temps, self.finals, data, opts, self.say)) \
                if opts.verify else None
            self.seconds["total"] = time.perf_counter() - self.started
            files = file_entries(self.temps, self.finals)
            manifest = build_manifest(data, spec, options, files, verification, self.seconds)
            self._commit(manifest)
        except BaseException:
            for tmp in self.temps.values():
                tmp.unlink(missing_ok=True)
            raise
        f = self.finals
        self.say(f"{name}: wrote {f['train'].name}, {f['test'].name}, {f['manifest'].name} "
                 f"in {time.perf_counter() - self.started:.1f} s")
        return manifest

    def _write(self, data: SourceData) -> None:
        opts = self.opts
        for split in SPLITS:
            self.say(f"{self.name}: writing {self.finals[split]} ({len(data.split(split))} images, {opts.mode})")
        jobs = [SplitJob(self.temps[split], self.finals[split], data.split(split)) for split in SPLITS]
        write_splits(jobs, opts)

    def _commit(self, manifest: dict[str, Any]) -> None:
        """Rename the betons into place, then the manifest (written first, so a full disk changes nothing)."""
        temps, finals = self.temps, self.finals
        try:
            atomic_write_json(temps["manifest"], manifest)
            finals["manifest"].unlink(missing_ok=True)  # never leave an old manifest next to new betons
            for key in (*SPLITS, "manifest"):
                os.replace(temps[key], finals[key])
        except OSError as exc:
            out = finals["manifest"].parent
            raise DataPrepError(out, "a writable output directory", f"an error ({exc.strerror or exc})") from exc
