"""SHOT: source hypothesis transfer (Liang et al., 2020)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medadapt.engine import AdaptationMethod, NoParams
from medadapt.plugins.adaptation.losses import diversity, features_and_logits, mean_entropy


class SHOT(AdaptationMethod):
    """Keeps the source classifier layer and retrains the features for it on target patches.

    The loss is information maximisation (confident predictions that still use every class)
    plus cross-entropy with self-supervised pseudo-labels: at the start of every epoch the
    target features are grouped around one centroid per class (weighted by the predictions,
    then refined once with hard assignments); a patch's pseudo-label is its nearest centroid
    by cosine similarity. No labels and no source data. The features learn at a tenth of
    the learning rate (``feature_lr_factor``; the paper's backbone, too, learns at a tenth),
    chosen on the development seeds: at the full rate SHOT fell far below the unadapted
    model on some seeds (docs/adaptation.md).
    """

    name = "shot"
    needs_source_data: ClassVar[bool] = False
    needs_target_labels: ClassVar[bool] = False
    #: Chosen on the development seeds for speed (docs/adaptation.md, benchmarks/method_study.py).
    drop_incomplete_batch: ClassVar[bool] = True

    class Params(NoParams):
        pseudo_label_weight: float = Field(
            default=0.3, ge=0.0, description="beta: weight of the pseudo-label loss"
        )
        feature_lr_factor: float = Field(
            default=0.1,
            gt=0.0,
            le=1.0,
            description="the features learn at the backbone's learning rate times this",
        )

    def setup(self, model: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().setup(model, feature_dim, num_classes)
        for parameter in model.head.parameters():
            parameter.requires_grad_(False)
        self.centroids: Tensor | None = None

    def parameter_groups(self, lr: float, backbone_lr: float) -> list[dict[str, Any]]:
        rate = backbone_lr * self.params.feature_lr_factor
        return [{"params": list(self.model.features.parameters()), "lr": rate}]

    @torch.no_grad()
    def epoch_start(self, target_patches: Callable[[], Iterable[Tensor]]) -> None:
        was_training = self.model.training
        self.model.eval()
        features, probabilities = [], []
        for patches in target_patches():
            f, logits = features_and_logits(self.model, patches)
            features.append(F.normalize(f.float(), dim=1))
            probabilities.append(F.softmax(logits.float(), dim=1))
        self.model.train(was_training)
        f, p = torch.cat(features), torch.cat(probabilities)
        centroids = F.normalize(p.T @ f / (p.sum(dim=0)[:, None] + 1e-8), dim=1)
        hard = F.one_hot((f @ centroids.T).argmax(dim=1), self.num_classes).float()
        refined = hard.T @ f / (hard.sum(dim=0)[:, None] + 1e-8)
        # A class no patch is nearest to keeps its soft centroid.
        empty = hard.sum(dim=0) == 0
        refined[empty] = centroids[empty]
        self.centroids = F.normalize(refined, dim=1)

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if self.centroids is None:
            raise RuntimeError("shot: epoch_start must run before the first step")
        features, logits = features_and_logits(self.model, target_batch["patches"])
        entropy, spread = mean_entropy(logits), diversity(logits)
        centroids = self.centroids.to(features.device)
        pseudo = (F.normalize(features.detach().float(), dim=1) @ centroids.T).argmax(dim=1)
        pseudo_loss = F.cross_entropy(logits, pseudo)
        loss = entropy - spread + self.params.pseudo_label_weight * pseudo_loss
        return {"loss": loss, "entropy": entropy, "diversity": spread, "pseudo": pseudo_loss}
