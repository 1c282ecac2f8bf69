"""Convert CIFAR-10/100 sources into FFCV ``.beton`` files plus a JSON manifest.

Public API:

* `write_beton(source, out_dir, log=print, **options) -> dict` — the library entry point (returns the
  manifest; the options are the fields of `PrepOptions`);
* `data_prep.cli.prepare(source, out="data", ...) -> int` — the command (prints a summary, returns
  the exit status); ``python -m data_prep`` and ``cifar-dist prepare`` both run it via `data_prep.cli.main`;
* `read_beton(path, indices=None)` / `read_labels(path)` — read a written beton back without a Loader;
* `DataPrepError` — the one exception for bad inputs (one-line message: path, expected, found).

Importing this package does not import FFCV (that happens on first read; writes run in a child process).
"""

from .beton import read_beton, read_labels
from .errors import DataPrepError
from .writer import output_paths, write_beton

__all__ = ["DataPrepError", "output_paths", "read_beton", "read_labels", "write_beton"]
