"""Deep CORAL: align the feature covariances of the two sites (Sun and Saenko, 2016)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import Field
from torch import Tensor

from medadapt.engine import AdaptationMethod
from medadapt.engine.contracts.components import NoParams
from medadapt.plugins.adaptation.losses import source_task_and_features


def coral_distance(source: Tensor, target: Tensor) -> Tensor:
    """Squared Frobenius distance between the feature covariances, over 4 d^2."""
    d = source.shape[1]

    def covariance(x: Tensor) -> Tensor:
        centred = x - x.mean(dim=0, keepdim=True)
        return centred.T @ centred / max(x.shape[0] - 1, 1)

    return ((covariance(source.float()) - covariance(target.float())) ** 2).sum() / (4 * d * d)


class Coral(AdaptationMethod):
    """Learns the source task while making target features vary as source features do.

    Needs labelled source data; the target site's labels are not used.
    """

    name = "coral"
    needs_source_data: ClassVar[bool] = True
    needs_target_labels: ClassVar[bool] = False

    class Params(NoParams):
        weight: float = Field(default=1.0, ge=0.0, description="lambda: weight of the CORAL loss")

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        task, source_features, target_features = source_task_and_features(
            self.model, source_batch, target_batch
        )
        alignment = coral_distance(source_features, target_features)
        return {"loss": task + self.params.weight * alignment, "task": task, "coral": alignment}
