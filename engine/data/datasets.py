"""PyTorch datasets over sample records, streaming patches from the disk cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medadapt.engine.contracts.components import UNLABELLED as UNLABELLED
from medadapt.engine.contracts.components import SampleRecord
from medadapt.engine.data.samples import PatchLoader


class PatchDataset(Dataset):
    """(patch, class index) pairs; the patch is read from the cache when it is asked for.

    Nothing is held in memory beyond the records, so memory does not grow with the number
    of samples. With a ``transform`` (training augmentations), each sample is augmented in
    HU before the window, with a random state derived from the seed, the epoch and the
    sample's position: the same seed gives the same augmented samples, in any number of
    worker processes, and after a resume.

    Args:
        loader: turns a record into its patch (cached on disk).
        records: the samples.
        classes: class names; a record's label becomes its index here.
        transform: augmentations for training samples, or None.
        seed: the profile's seed, for the augmentations.
    """

    def __init__(
        self,
        loader: PatchLoader,
        records: Sequence[SampleRecord],
        classes: Sequence[str],
        transform: Callable[[Any], Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.loader = loader
        self.records = list(records)
        self.index = {name: i for i, name in enumerate(classes)}
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Which epoch the samples are drawn for (the loop calls this)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        record = self.records[item]
        hu = np.array(self.loader.patch_hu(record), dtype=np.float32)
        if self.transform is not None:
            self.transform.set_random_state(seed=_sample_seed(self.seed, self.epoch, item))
            hu = np.asarray(self.transform(hu), dtype=np.float32)
        patch = self.loader.window(hu)
        label = UNLABELLED if record.label is None else self.index[record.label]
        return torch.from_numpy(np.ascontiguousarray(patch)), label

    def labels(self) -> list[int]:
        """Every sample's class index, without reading a patch."""
        return [UNLABELLED if r.label is None else self.index[r.label] for r in self.records]


def _sample_seed(seed: int, epoch: int, item: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + item) % 2**32
