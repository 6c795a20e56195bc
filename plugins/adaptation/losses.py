"""Losses the adaptation methods share: entropy, diversity, and supervised source loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medadapt.engine import supervised_loss as supervised


def features_and_logits(model: nn.Module, patches: Tensor) -> tuple[Tensor, Tensor]:
    """The classifier's feature vectors and logits for a batch."""
    features = model.features(patches)
    return features, model.head(features)


def mean_entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy of the predictions (nats): low when the model is confident."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def diversity(logits: Tensor) -> Tensor:
    """Entropy of the mean prediction: high when the batch uses every class."""
    mean = F.softmax(logits, dim=1).mean(dim=0)
    return -(mean * torch.log(mean + 1e-8)).sum()


def source_task_and_features(
    model: nn.Module, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """The supervised loss on the source batch, and both sites' feature vectors."""
    if source_batch is None:
        raise RuntimeError("this method needs a source batch at every step")
    source_features, source_logits = features_and_logits(model, source_batch["patches"])
    target_features = model.features(target_batch["patches"])
    return supervised(source_logits, source_batch), source_features, target_features
