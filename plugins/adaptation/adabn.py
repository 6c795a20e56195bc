"""AdaBN: batch-norm statistics re-estimated on the target site (Li et al., 2016)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar

from torch import Tensor

from medadapt.engine import AdaptationMethod, batch_norm_layers, recompute_batch_norm


class AdaBN(AdaptationMethod):
    """Replaces the source site's batch-norm statistics by the target site's.

    No weight changes and no labels are needed: the mean and variance every batch-norm layer
    normalises with are measured on the target training patches. A scanner that shifts or
    scales intensities, or adds noise, moves those statistics; AdaBN puts them back.
    """

    name = "adabn"
    needs_source_data: ClassVar[bool] = False
    needs_target_labels: ClassVar[bool] = False
    trains: ClassVar[bool] = False

    def epoch_start(self, target_patches: Callable[[], Iterable[Tensor]]) -> None:
        if not batch_norm_layers(self.model):
            raise ValueError("adabn needs a backbone with batch-norm layers; this one has none")
        recompute_batch_norm(self.model, target_patches())

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        raise RuntimeError("adabn takes no training step (trains is False)")
