"""PyTorch datasets over sample records, streaming patches from the disk cache."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medadapt.engine.components import SampleRecord
from medadapt.engine.samples import PatchLoader

#: The label index of an unlabelled sample.
UNLABELLED = -1


class PatchDataset(Dataset):
    """(patch, class index) pairs; the patch is read from the cache when it is asked for.

    Nothing is held in memory beyond the records, so memory does not grow with the number
    of samples.

    Args:
        loader: turns a record into its patch (cached on disk).
        records: the samples.
        classes: class names; a record's label becomes its index here.
    """

    def __init__(
        self, loader: PatchLoader, records: Sequence[SampleRecord], classes: Sequence[str]
    ) -> None:
        self.loader = loader
        self.records = list(records)
        self.index = {name: i for i, name in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        record = self.records[item]
        patch = np.array(self.loader.patch(record), dtype=np.float32)
        label = UNLABELLED if record.label is None else self.index[record.label]
        return torch.from_numpy(patch), label

    def labels(self) -> list[int]:
        """Every sample's class index, without reading a patch."""
        return [UNLABELLED if r.label is None else self.index[r.label] for r in self.records]
