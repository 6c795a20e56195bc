"""DAN: multi-kernel maximum mean discrepancy between the sites' features (Long et al., 2015)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from medadapt.engine import AdaptationMethod
from medadapt.engine.contracts.components import NoParams
from medadapt.plugins.adaptation.losses import source_task_and_features

#: Bandwidths as multiples of the batch's mean squared distance, as in DAN.
KERNEL_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def multi_kernel_mmd(source: Tensor, target: Tensor) -> Tensor:
    """The squared MMD of two samples under a sum of Gaussian kernels (biased estimate)."""
    joint = torch.cat([source.float(), target.float()])
    distances = torch.cdist(joint, joint) ** 2
    base = distances.detach().sum() / max(joint.shape[0] ** 2 - joint.shape[0], 1)
    base = torch.clamp(base, min=1e-8)
    kernel = sum(torch.exp(-distances / (base * scale)) for scale in KERNEL_SCALES)
    n = source.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class MMD(AdaptationMethod):
    """Learns the source task while making the two sites' feature distributions match.

    Needs labelled source data; the target site's labels are not used.
    """

    name = "mmd"
    needs_source_data: ClassVar[bool] = True
    needs_target_labels: ClassVar[bool] = False

    class Params(NoParams):
        weight: float = Field(default=1.0, ge=0.0, description="lambda: weight of the MMD loss")

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        task, source_features, target_features = source_task_and_features(
            self.model, source_batch, target_batch
        )
        alignment = multi_kernel_mmd(source_features, target_features)
        return {"loss": task + self.params.weight * alignment, "task": task, "mmd": alignment}
