"""Fetching the official CIFAR archives into a local cache.

Contract: `fetch(url, cache_dir, md5)` returns the path of a cached file whose md5 equals `md5` (when
one is given). A download goes to a temporary name in the cache directory, is md5-checked and only
then renamed to its final name, so the cache never holds a partial or corrupt archive. Every failure
(no network, HTTP error, wrong md5, unwritable cache) raises `DataPrepError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from .errors import DataPrepError

CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialArchive:
    """One of the archives published at https://www.cs.toronto.edu/~kriz/cifar.html."""

    url: str
    md5: str


OFFICIAL: dict[str, OfficialArchive] = {  # by dataset
    "cifar10": OfficialArchive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
    ),
    "cifar100": OfficialArchive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"
    ),
}


def is_url(source: str) -> bool:
    """True when `source` is an http(s) or ftp URL rather than a local path."""
    return urlparse(source).scheme in ("http", "https", "ftp")


def url_file_name(url: str) -> str:
    """The file name a URL's path ends in (``cifar-10-python.tar.gz``), or ""."""
    return urlparse(url).path.rsplit("/", 1)[-1]


def official_md5(url: str) -> str | None:
    """The published md5 of the archive `url` names (matched by file name), or None if not official."""
    return next((a.md5 for a in OFFICIAL.values() if url_file_name(a.url) == url_file_name(url)), None)


def default_cache_dir() -> Path:
    """``$CIFAR_DIST_CACHE``, else ``$XDG_CACHE_HOME/cifar_dist``, else ``~/.cache/cifar_dist``."""
    if os.environ.get("CIFAR_DIST_CACHE"):
        return Path(os.environ["CIFAR_DIST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cifar_dist"


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest ("md5" or "sha256") of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str, cache_dir: Path, md5: str | None, *, timeout: float = 30.0, progress: bool = True
) -> Path:
    """Download `url` into `cache_dir` (or reuse a cached copy with the right md5) and return its path (see the
    module docstring)."""
    name = url_file_name(url) or "download"
    dest = cache_dir / name
    if dest.is_file() and (md5 is None or file_digest(dest, "md5") == md5.lower()):
        return dest
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataPrepError(
            cache_dir, "a writable cache directory", f"an error ({exc.strerror or exc})"
        ) from exc
    tmp = cache_dir / f".{name}.part-{os.getpid()}"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=f"download {name}", disable=not progress
                ) as bar:
                    while block := response.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataPrepError(
                url,
                "a reachable download URL (offline? pass a local archive path instead)",
                f"a network error: {reason}",
            ) from exc
        except OSError as exc:
            raise DataPrepError(tmp, "a writable cache file", f"an error ({exc.strerror or exc})") from exc
        got = digest.hexdigest()
        if md5 is not None and got != md5.lower():
            raise DataPrepError(url, f"a download with md5 {md5.lower()}", f"md5 {got}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
