"""The options of a conversion, `PrepOptions`: `data_prep.writer` and `data_prep.split_writer` both read them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from cifar_dist.schema import opt

from .errors import DataPrepError
from .sources import check_labels, check_name

MODES = ("raw", "jpg")


@dataclass(frozen=True)
class PrepOptions:
    """The keyword arguments of `write_beton` and the flags of `prepare` (each field's help text is its flag's)."""

    name: str | None = opt(None, "file-name prefix of the outputs (default: cifar10, cifar100, or the folder/archive "
                                 "name). Example: --name cifar10 writes cifar10_train.beton")
    mode: str = opt("raw", "how FFCV stores images: raw = pixel-exact, jpg = JPEG-compressed (smaller, lossy). "
                           "Example: --mode jpg")
    jpeg_quality: int = opt(90, "JPEG quality 1..100 for --mode jpg. Example: --jpeg_quality 95")
    labels: str = opt("fine", "CIFAR-100 label set: fine = 100 classes, coarse = 20 superclasses. "
                              "Example: --labels coarse")
    force: bool = opt(False, "rewrite even if the existing manifest shows the outputs are up to date. Example: --force")
    verify: bool = opt(False, "re-read the written files and check counts, labels and pixels against the source "
                              "(raw: exact; jpg: mean abs difference bound); with up-to-date outputs, checks them "
                              "and their sha256. Example: --verify")
    num_workers: int = opt(2, "threads decoding source images, processes of FFCV's writer. Example: --num_workers 4")
    cache_dir: str | os.PathLike[str] | None = opt(None, "where downloads are cached (default: $CIFAR_DIST_CACHE or "
                                                         "~/.cache/cifar_dist). Example: --cache_dir /scratch/cache")
    md5: str | None = opt(None, "expected md5 of the source archive; a mismatch is an error (downloads of the "
                                "official archives are always checked). Example: --md5 c58f30108f718f92721af3b95e74349a")
    progress: bool | None = opt(None, "progress bars on stderr (default none: only when stderr is a terminal); "
                                      "--noprogress turns them off. Example: --noprogress")
    write_timeout: float | None = opt(None, "seconds one split may take to write (default none: 300 s plus 0.02 s "
                                            "per image). Example: --write_timeout 1800")

    def check(self) -> None:
        """Raise DataPrepError naming the flag of the first invalid option."""
        if self.mode not in MODES:
            raise DataPrepError("--mode", "raw or jpg", repr(self.mode))
        if not _is_int(self.jpeg_quality) or not 1 <= self.jpeg_quality <= 100:
            raise DataPrepError("--jpeg_quality", "an integer in 1..100", repr(self.jpeg_quality))
        check_labels(self.labels)
        if not _is_int(self.num_workers) or self.num_workers < 1:
            raise DataPrepError("--num_workers", "an integer >= 1", repr(self.num_workers))
        if self.write_timeout is not None and not self.write_timeout > 0:
            raise DataPrepError("--write_timeout", "a number of seconds > 0", repr(self.write_timeout))
        if self.name is not None:
            check_name(str(self.name))

    @property
    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else bool(self.progress)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
