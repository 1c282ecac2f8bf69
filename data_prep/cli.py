"""Command line: ``python -m data_prep SOURCE --out DIR ...`` and `prepare` for the project's Fire CLI.

`prepare` is the single implementation behind both entry points: it calls `write_beton`, prints a
dataset summary table on stdout and returns an exit status — 0 on success (also when the outputs were
already up to date), 2 on a `DataPrepError` (one ``error: <path>: expected ..., found ...`` line on
stderr), 130 on Ctrl-C. Status lines go to stdout; progress bars (when enabled) to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DataPrepError
from .writer import output_paths, write_beton

EXAMPLES = """\
examples:
  # official CIFAR-10 archive already on disk -> data/cifar10_{train,test}.beton + data/cifar10_manifest.json
  python -m data_prep ~/Downloads/cifar-10-python.tar.gz --out data/

  # download the official archive (md5-checked, cached in ~/.cache/cifar_dist) and verify the result
  python -m data_prep cifar10 --out data/ --verify

  # CIFAR-100 with the 20 coarse labels, JPEG-compressed at quality 95, under another name
  python -m data_prep cifar-100-python.tar.gz --labels coarse --mode jpg --jpeg_quality 95 --name c100coarse

  # an image-folder tree (train/<class>/*.jpg, test/<class>/*.jpg) as a tar.gz, 2 worker processes
  python -m data_prep ../shared/data/cifar10-jpeg.tar.gz --out data/ --name cifar10 --num_workers 2

  # same thing through the project CLI
  cifar-dist prepare ../shared/data/cifar10-jpeg.tar.gz --out data/ --name cifar10

exit status: 0 written or already up to date, 2 bad input (one 'error:' line on stderr), 130 interrupted.
"""


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


def prepare(
    source: str,
    out: str = "data",
    name: str | None = None,
    mode: str = "raw",
    jpeg_quality: int = 90,
    labels: str = "fine",
    force: bool = False,
    verify: bool = False,
    num_workers: int = 2,
    md5: str | None = None,
    cache_dir: str | None = None,
    progress: bool | None = None,
) -> int:
    """Write ``<out>/<name>_{train,test}.beton`` and ``<name>_manifest.json`` from a CIFAR source.

    Args:
        source: official archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), extracted
            batches folder, image-folder tree (folder or .tar/.tar.gz), an URL, or ``cifar10`` /
            ``cifar100`` to download the official archive.
        out: output folder (created if needed).
        name: file-name prefix (default cifar10 / cifar100 / folder or archive name).
        mode: "raw" (pixel-exact) or "jpg".
        jpeg_quality: JPEG quality 1..100 for mode "jpg".
        labels: "fine" or "coarse" (CIFAR-100 only).
        force: rewrite even if the outputs are up to date.
        verify: re-read the written files and compare them with the source.
        num_workers: processes for decoding source images and for FFCV's writer.
        md5: expected md5 of the source archive.
        cache_dir: download cache (default ~/.cache/cifar_dist).
        progress: progress bars on stderr (default: only when stderr is a terminal).

    Returns:
        The exit status: 0 success or up to date, 2 bad input, 130 interrupted. On 2 and 130 the output
        folders this call created (still empty) are removed again: a failed run leaves nothing behind.
    """
    created = _missing_dirs(out)
    try:
        manifest = write_beton(
            str(source),
            out,
            name=None if name is None else str(name),
            mode=str(mode),
            jpeg_quality=jpeg_quality,
            labels=str(labels),
            force=bool(force),
            verify=bool(verify),
            num_workers=num_workers,
            cache_dir=cache_dir,
            md5=None if md5 is None else str(md5),
            progress=progress,
            log=lambda msg: print(msg, flush=True),
        )
    except DataPrepError as exc:
        _remove_empty(created)
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        _remove_empty(created)
        sys.stdout.flush()
        print("error: interrupted; no output files were changed", file=sys.stderr, flush=True)
        return 130
    print(format_summary(manifest, out), flush=True)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m data_prep`` (every option documented with an example)."""
    p = argparse.ArgumentParser(
        prog="python -m data_prep",
        description=(
            "Convert CIFAR-10/100 into FFCV .beton files. Writes <name>_train.beton, <name>_test.beton\n"
            "and <name>_manifest.json (classes, per-split/per-class counts, write mode, source sha256,\n"
            "ffcv version, resolution) into --out. Writes are atomic (temporary names renamed at the end);\n"
            "re-running with the same source and options does nothing unless --force."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        help="what to convert: an official archive (cifar-10-python.tar.gz, cifar-100-python.tar.gz), an "
        "extracted batches folder (cifar-10-batches-py/, cifar-100-python/), an image-folder tree "
        "train/<class>/*, test/<class>/* (folder or .tar/.tar.gz), an http(s) URL, or the shorthand "
        "cifar10 / cifar100 to download the official archive. Example: ~/Downloads/cifar-10-python.tar.gz",
    )
    p.add_argument(
        "--out", default="data", help="output folder, created if needed (default: data). Example: --out data/"
    )
    p.add_argument(
        "--name",
        default=None,
        help="file-name prefix of the outputs (default: cifar10, cifar100, or the folder/archive name). "
        "Example: --name cifar10 writes cifar10_train.beton",
    )
    p.add_argument(
        "--mode",
        choices=("raw", "jpg"),
        default="raw",
        help="how FFCV stores images: raw = pixel-exact (default), jpg = JPEG-compressed (smaller, lossy). "
        "Example: --mode jpg",
    )
    p.add_argument(
        "--jpeg_quality",
        "--jpeg-quality",
        type=int,
        default=90,
        metavar="Q",
        help="JPEG quality 1..100 for --mode jpg (default: 90). Example: --jpeg_quality 95",
    )
    p.add_argument(
        "--labels",
        choices=("fine", "coarse"),
        default="fine",
        help="CIFAR-100 label set: fine = 100 classes (default), coarse = 20 superclasses. Example: --labels coarse",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rewrite even if the existing manifest shows the outputs are up to date. Example: --force",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-read the written files and check counts, labels and pixels against the source "
        "(raw: exact; jpg: mean abs difference bound). Example: --verify",
    )
    p.add_argument(
        "--num_workers",
        "--num-workers",
        type=int,
        default=2,
        metavar="N",
        help="processes for decoding source images and for FFCV's writer (default: 2). Example: --num_workers 4",
    )
    p.add_argument(
        "--md5",
        default=None,
        help="expected md5 of the source archive; a mismatch is an error (downloads of the official "
        "archives are always checked). Example: --md5 c58f30108f718f92721af3b95e74349a",
    )
    p.add_argument(
        "--cache_dir",
        "--cache-dir",
        default=None,
        help="where downloads are cached (default: $CIFAR_DIST_CACHE or ~/.cache/cifar_dist). "
        "Example: --cache_dir /scratch/cache",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars on stderr (default: only when stderr is a terminal). Example: --no-progress",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]) and run `prepare`; return the exit status."""
    args = build_parser().parse_args(argv)
    return prepare(
        args.source,
        out=args.out,
        name=args.name,
        mode=args.mode,
        jpeg_quality=args.jpeg_quality,
        labels=args.labels,
        force=args.force,
        verify=args.verify,
        num_workers=args.num_workers,
        md5=args.md5,
        cache_dir=args.cache_dir,
        progress=args.progress,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "format_summary", "main", "prepare"]
