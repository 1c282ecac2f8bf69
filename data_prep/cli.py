"""The one parser for conversion: ``python -m data_prep SOURCE ...`` and ``cifar-dist prepare SOURCE ...``.

Both entry points call `main`, which reads the command line once against `PrepareArgs` (SOURCE, --out and
the fields of `PrepOptions`) through the project's strict flag runner, `cifar_dist.runner.run_schema`.

`prepare` calls `write_beton`, prints a dataset summary table on stdout and returns an exit status —
0 on success (also when the outputs were already up to date), 2 on a `DataPrepError` (one
``error: <path>: expected ..., found ...`` line on stderr), 130 on Ctrl-C (SIGINT) and 143 on SIGTERM,
each with one line and no temporaries left. Status lines go to stdout; progress bars (when enabled) to stderr.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar_dist.runner import run_schema
from cifar_dist.schema import opt

from .errors import DataPrepError
from .options import PrepOptions
from .writer import output_paths, write_beton

PROG = "python -m data_prep"


def format_summary(manifest: dict, out: str | os.PathLike[str]) -> str:
    """A plain-text table: one row per class with train/test/total counts, then a total row."""
    classes = manifest["class_names"]
    counts = manifest["counts"]
    paths = output_paths(out, manifest["name"])
    mode = manifest["write_mode"] + (
        f" q{manifest['jpeg_quality']}" if manifest["write_mode"] == "jpg" else ""
    )
    labels = f", {manifest['labels']} labels" if manifest.get("labels") else ""
    head = (
        f"{manifest['name']}: {manifest['dataset']}{labels}, {len(classes)} classes, {mode}, "
        f"{'verified' if manifest.get('verified') else 'not verified'}\n"
        f"  {paths['train']}  {paths['test']}  {paths['manifest']}"
    )
    width = max(5, *(len(c) for c in classes))
    rows = [f"{'class':<{width}}  {'train':>7}  {'test':>7}  {'total':>7}", "-" * (width + 27)]
    for c in classes:
        tr, te = counts["train"]["per_class"][c], counts["test"]["per_class"][c]
        rows.append(f"{c:<{width}}  {tr:>7}  {te:>7}  {tr + te:>7}")
    tr, te = counts["train"]["total"], counts["test"]["total"]
    rows += ["-" * (width + 27), f"{'total':<{width}}  {tr:>7}  {te:>7}  {tr + te:>7}"]
    return head + "\n" + "\n".join(rows)


@dataclass(frozen=True)
class _Where:
    source: str = opt(help="what to convert: an official archive (cifar-10-python.tar.gz, cifar-100-python.tar.gz), "
                           "an extracted batches folder (cifar-10-batches-py/, cifar-100-python/), an image-folder "
                           "tree train/<class>/*, test/<class>/* (folder or .tar/.tar.gz), an http(s) URL, or the "
                           "shorthand cifar10 / cifar100 to download the official archive. "
                           "Example: ~/Downloads/cifar-10-python.tar.gz")
    out: str = opt("data", "output folder, created if needed. Example: --out data/")


@dataclass(frozen=True)
class PrepareArgs(PrepOptions, _Where):  # fields: SOURCE and --out (from _Where) first, then PrepOptions'
    """Convert CIFAR-10/100 into FFCV .beton files.

    Writes <name>_train.beton, <name>_test.beton and <name>_manifest.json (classes, per-split and
    per-class counts, write mode, row order, source sha256, each file's sha256, ffcv version) into
    --out. Writes are atomic (temporary names renamed at the end); re-running with the same source and
    options does nothing unless --force or a .beton no longer has the sha256 its manifest recorded.
    Image folders are written in a seeded shuffled order (the official archives are already mixed).
    """


EPILOG = """\
examples:
  # official CIFAR-10 archive already on disk -> data/cifar10_{train,test}.beton + data/cifar10_manifest.json
  python -m data_prep ~/Downloads/cifar-10-python.tar.gz --out data/

  # download the official archive (md5-checked, cached in ~/.cache/cifar_dist) and verify the result
  python -m data_prep cifar10 --out data/ --verify

  # CIFAR-100 with the 20 coarse labels, JPEG-compressed at quality 95, under another name
  python -m data_prep cifar-100-python.tar.gz --labels coarse --mode jpg --jpeg_quality 95 --name c100coarse

  # an image-folder tree (train/<class>/*.jpg, test/<class>/*.jpg) as a tar.gz, 2 worker processes
  python -m data_prep ../shared/data/cifar10-jpeg.tar.gz --out data/ --name cifar10 --num_workers 2

  # the same thing through the project CLI (same flags)
  cifar-dist prepare ../shared/data/cifar10-jpeg.tar.gz --out data/ --name cifar10

exit status: 0 written or already up to date, 2 bad input (one 'error:' line on stderr), 130 interrupted;
a failed run leaves nothing behind, not even the output folder it created.
"""


def prepare(source: str, *, out: str = "data", **options: Any) -> int:
    """Convert `source` into .beton files and a manifest in `out`, print a summary; return the exit status
    (see the module docstring). `options` are the fields of `PrepOptions`, as `write_beton` takes them."""
    created = _missing_dirs(out)
    term = _stop_on_sigterm()
    try:
        manifest = write_beton(str(source), str(out), log=lambda msg: print(msg, flush=True), **options)
    except DataPrepError as exc:
        _remove_empty(created)
        sys.stdout.flush()
        print(f"error: {exc.one_line()}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the writer removed its temporaries
        _remove_empty(created)
        sys.stdout.flush()
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        print(f"error: stopped by {signal.Signals(signum).name}; no output files were changed", file=sys.stderr,
              flush=True)
        return 128 + signum
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
    print(format_summary(manifest, out), flush=True)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM during a conversion: unwinds like Ctrl-C, so every temporary is removed on the way out."""


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _stop_on_sigterm():
    """Make SIGTERM raise Terminated (main thread only); returns the previous handler to restore."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals stay as they are
        return None


def _missing_dirs(out: str | os.PathLike[str]) -> list[Path]:
    """`out` and those of its parents that do not exist yet, deepest first."""
    missing, p = [], Path(out).absolute()
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the folders of `dirs` (deepest first) while they exist and are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Read `argv` (default sys.argv[1:]) once against `PrepareArgs`, then run `prepare`; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_schema(prepare, PrepareArgs, argv, prog, epilog=EPILOG)

