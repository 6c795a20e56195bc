"""Fine-tuning with target labels, all or a few per class, with optional L2-SP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from medadapt.engine import AdaptationMethod, NoParams
from medadapt.plugins.adaptation.losses import supervised


class FineTune(AdaptationMethod):
    """Trains the source model further on labelled target patches.

    The engine gives it a new classifier layer when the target's classes differ from the
    source's (moving from chest to head), freezes the stages in ``training.freeze`` and lets
    the backbone learn at ``training.optimizer.backbone_lr_factor`` times the learning rate.
    ``l2_sp`` pulls the features' weights towards the source weights (Li et al., 2018), which
    keeps what the source taught when target labels are few.
    """

    name = "finetune"
    needs_source_data: ClassVar[bool] = False
    needs_target_labels: ClassVar[bool] = True

    class Params(NoParams):
        l2_sp: float = Field(
            default=0.0, ge=0.0, description="alpha: weight of the pull towards source weights"
        )

    def setup(self, model: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().setup(model, feature_dim, num_classes)
        self.start = {
            name: parameter.detach().clone()
            for name, parameter in model.features.named_parameters()
            if parameter.requires_grad
        }

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        task = supervised(self.model(target_batch["patches"]), target_batch)
        if self.params.l2_sp == 0.0:
            return {"loss": task, "task": task}
        pull = torch.stack(
            [
                ((parameter - self.start[name].to(parameter.device)) ** 2).sum()
                for name, parameter in self.model.features.named_parameters()
                if name in self.start
            ]
        ).sum()
        return {"loss": task + self.params.l2_sp / 2 * pull, "task": task, "l2_sp": pull}
