"""The in-memory form every source reader returns: one `SplitArrays` per split inside `SourceData`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDE = 32
SPLITS = ("train", "test")


@dataclass(frozen=True)
class SplitArrays:
    """One split in memory: images uint8 (N, 32, 32, 3) RGB and labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class SourceData:
    """A whole data set read from a source.

    Attributes:
        dataset: "cifar10", "cifar100" or "image_folder".
        class_names: label index -> class name.
        train, test: the two splits, rows in the order they are written (see `data_prep.sources.write_order`).
    """

    dataset: str
    class_names: tuple[str, ...]
    train: SplitArrays
    test: SplitArrays

    def split(self, name: str) -> SplitArrays:
        """The split called `name` ("train" or "test")."""
        return {"train": self.train, "test": self.test}[name]

