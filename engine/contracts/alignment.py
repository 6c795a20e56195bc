"""The base of feature-alignment methods: learn the source task while a distance between the
two sites' feature vectors shrinks (DomainBed's AbstractMMD is the model).

A method is its distance: a subclass names itself, names its loss term and implements
:meth:`FeatureAlignment.distance`; the step, the source task's loss and the weight are here::

    class Coral(FeatureAlignment):
        \"\"\"Makes target features vary as source features do.\"\"\"

        name = "coral"
        term = "coral"

        def distance(self, source: Tensor, target: Tensor) -> Tensor:
            return coral_distance(source, target)
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from medadapt.engine.contracts.components import UNLABELLED, AdaptationMethod, NoParams


def supervised_loss(logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """Cross-entropy on the labelled samples of a batch (0 when none is labelled)."""
    labels = batch["labels"]
    if not bool((labels != UNLABELLED).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=UNLABELLED)


class FeatureAlignment(AdaptationMethod):
    """Learns the source task while making the two sites' features alike.

    Each step minimises the source batch's cross-entropy plus ``weight`` times
    :meth:`distance` between the source and target batches' feature vectors. Needs labelled
    source data; the target site's labels are not used. The step's losses are ``loss``,
    ``task`` and the subclass's ``term``, each logged per epoch.
    """

    needs_source_data: ClassVar[bool] = True
    needs_target_labels: ClassVar[bool] = False
    #: The alignment loss's name among the step's losses (``coral``, ``mmd``).
    term: ClassVar[str]

    class Params(NoParams):
        weight: float = Field(
            default=1.0, ge=0.0, description="lambda: weight of the alignment loss"
        )

    @abstractmethod
    def distance(self, source: Tensor, target: Tensor) -> Tensor:
        """How far apart the sites' features are: ``source`` and ``target`` are (batch,
        features); a scalar that training makes small."""

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if source_batch is None:
            raise RuntimeError(f"{self.name} needs a source batch at every step")
        source_features = self.model.features(source_batch["patches"])
        source_logits = self.model.head(source_features)
        target_features = self.model.features(target_batch["patches"])
        task = supervised_loss(source_logits, source_batch)
        alignment = self.distance(source_features, target_features)
        return {"loss": task + self.params.weight * alignment, "task": task, self.term: alignment}
