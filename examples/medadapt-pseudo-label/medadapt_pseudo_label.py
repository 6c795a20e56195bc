"""Pseudo-labelling: a medadapt adaptation method in one file (docs/plugins.md)."""

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from medadapt.engine import AdaptationMethod, hookimpl


class PseudoLabel(AdaptationMethod):
    """Trains on the target patches the model already classifies confidently."""

    name = "pseudo-label"
    needs_source_data: ClassVar[bool] = True
    needs_target_labels: ClassVar[bool] = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        threshold: float = Field(default=0.9, gt=0.5, lt=1.0, description="confidence kept")
        weight: float = Field(default=1.0, ge=0.0, description="weight of the target loss")

    def update(
        self,
        source_batch: Mapping[str, torch.Tensor] | None,
        target_batch: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        assert source_batch is not None  # needs_source_data: the engine always gives one
        source = F.cross_entropy(self.model(source_batch["patches"]), source_batch["labels"])
        logits = self.model(target_batch["patches"])
        confidence, guess = logits.detach().softmax(dim=1).max(dim=1)
        kept = confidence >= self.params.threshold
        target = F.cross_entropy(logits[kept], guess[kept]) if kept.any() else logits.sum() * 0.0
        loss = source + self.params.weight * target
        return {"loss": loss, "source": source, "target": target, "kept": kept.float().mean()}


@hookimpl
def medadapt_adaptation_methods() -> list[type[AdaptationMethod]]:
    return [PseudoLabel]
