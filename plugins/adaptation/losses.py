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
    model: nn.Module,
    source_batch: Mapping[str, Tensor] | None,
    target_batch: Mapping[str, Tensor],
    method: str = "this method",
) -> tuple[Tensor, Tensor, Tensor]:
    """The supervised loss on the source batch, and both sites' feature vectors, from one
    forward pass of the two batches together.

    Batch norm then normalises each step's batch with both sites' statistics, as SKADA's
    methods and the DANN paper do. DANN uses it: on the development seeds it raised DANN's
    mean AUROC on both scanner pairs (docs/adaptation.md); CORAL and MMD did not gain on
    both, and keep a pass per site (``FeatureAlignment``).
    """
    if source_batch is None:
        raise RuntimeError(f"{method} needs a source batch at every step")
    source = source_batch["patches"]
    features = model.features(torch.cat([source, target_batch["patches"]]))
    source_features, target_features = features[: len(source)], features[len(source) :]
    return supervised(model.head(source_features), source_batch), source_features, target_features
