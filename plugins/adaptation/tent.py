"""TENT: entropy minimisation through the normalisation layers (Wang et al., 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from medadapt.engine import AdaptationMethod, batch_norm_layers
from medadapt.plugins.adaptation.losses import mean_entropy


class Tent(AdaptationMethod):
    """Makes the model confident on target patches by changing only its batch-norm layers.

    Every weight stays as trained at the source except the scale and shift of each
    batch-norm layer; those learn to minimise the entropy of the target predictions, with
    the layers normalising by target batch statistics. No labels and no source data.
    """

    name = "tent"
    needs_source_data: ClassVar[bool] = False
    needs_target_labels: ClassVar[bool] = False

    def setup(self, model: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().setup(model, feature_dim, num_classes)
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ValueError("tent needs a backbone with batch-norm layers; this one has none")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for layer in self.layers:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)

    def parameter_groups(self, lr: float, backbone_lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for layer in self.layers for p in layer.parameters()], "lr": lr}]

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        entropy = mean_entropy(self.model(target_batch["patches"]))
        return {"loss": entropy, "entropy": entropy}
