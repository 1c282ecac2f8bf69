"""Convert CIFAR-10/100 sources into FFCV ``.beton`` files plus a JSON manifest.

Public API:

* `write_beton(source, out_dir, ...) -> dict` — the library entry point (returns the manifest);
* `data_prep.cli.prepare(source, out="data", ...) -> int` — CLI entry (prints a summary, returns
  the exit status); ``python -m data_prep`` wraps it;
* `read_beton(path, indices=None)` / `read_labels(path)` — read a written beton back without a Loader;
* `DataPrepError` — the one exception for bad inputs (one-line message: path, expected, found).

Importing this package does not import FFCV (that happens on first write or read).
"""

from .errors import DataPrepError
from .sources import SourceData, Split
from .writer import output_paths, read_beton, read_labels, verify_split, write_beton

__all__ = [
    "DataPrepError",
    "SourceData",
    "Split",
    "output_paths",
    "read_beton",
    "read_labels",
    "verify_split",
    "write_beton",
]
