"""The one exception type of `data_prep`: `DataPrepError`."""

from __future__ import annotations

from os import PathLike

from cifar_dist.errors import InputError


class DataPrepError(InputError):
    """Every problem a user can fix (a missing path, a corrupt archive, a wrong image size, an output directory
    that cannot be created, a full disk, ...), as an `InputError` of the project whose message is one line of
    the form ``<path>: expected <what>, found <what>``.

    Attributes:
        path: the file, directory, archive member or URL the problem is about.
        expected: what `data_prep` needed there.
        found: what it found instead.
    """

    def __init__(self, path: str | PathLike[str], expected: str, found: str) -> None:
        self.path = str(path)
        self.expected = expected
        self.found = found
        text = f"{self.path}: expected {expected}, found {found}"  # without the ``error:`` prefix
        super().__init__(text.replace("\r", " ").replace("\n", " "))  # one line: newlines are flattened

    def __reduce__(self) -> tuple[type[DataPrepError], tuple[str, str, str]]:
        # picklable across process pools despite the three-argument constructor
        return (type(self), (self.path, self.expected, self.found))
