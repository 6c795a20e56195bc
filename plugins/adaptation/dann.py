"""DANN: domain-adversarial training with gradient reversal (Ganin et al., 2016)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medadapt.engine import AdaptationMethod, NoParams
from medadapt.plugins.adaptation.losses import source_task_and_features


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, coefficient: float) -> Tensor:
        ctx.coefficient = coefficient  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coefficient * grad, None  # type: ignore[attr-defined]


def reverse_gradient(x: Tensor, coefficient: float) -> Tensor:
    """The identity going forward; the gradient times ``-coefficient`` going back."""
    return _ReverseGradient.apply(x, coefficient)  # type: ignore[no-any-return]


def warm_up(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule for the reversal coefficient: 0 at the start, towards 1 at the end.

    Example:
        >>> warm_up(0.0), round(warm_up(1.0), 4)
        (0.0, 0.9999)
    """
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DANN(AdaptationMethod):
    """Learns the source task with features a domain discriminator cannot tell apart.

    A small network learns to tell source from target features; the gradient reversal
    layer makes the feature extractor work against it, with a coefficient that rises from
    0 as training progresses (the warm-up of the paper). The source and target batches go
    through the network in one pass, so batch norm normalises them together (as in SKADA
    and the paper; chosen on the development seeds, docs/adaptation.md). Needs labelled
    source data; the target site's labels are not used.
    """

    name = "dann"
    needs_source_data: ClassVar[bool] = True
    needs_target_labels: ClassVar[bool] = False
    #: Chosen on the development seeds for speed (docs/adaptation.md, benchmarks/method_study.py).
    drop_incomplete_batch: ClassVar[bool] = True

    class Params(NoParams):
        weight: float = Field(default=1.0, ge=0.0, description="weight of the domain loss")
        hidden: int = Field(default=256, gt=0, description="discriminator width")

    def setup(self, model: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().setup(model, feature_dim, num_classes)
        hidden = self.params.hidden
        self.discriminator = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, 1),
        )

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        task, source_features, target_features = source_task_and_features(
            self.model, source_batch, target_batch, self.name
        )
        coefficient = warm_up(self.progress)
        features = torch.cat([source_features, target_features])
        domains = torch.cat(
            [torch.ones(len(source_features)), torch.zeros(len(target_features))]
        ).to(features.device)
        logits = self.discriminator(reverse_gradient(features, coefficient)).squeeze(1)
        domain = F.binary_cross_entropy_with_logits(logits.float(), domains)
        return {"loss": task + self.params.weight * domain, "task": task, "domain": domain}
