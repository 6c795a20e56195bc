"""What a run optimises and how its epochs are judged: the objective the loop is given.

The loop (engine/training/loop.py) owns epochs, the optimiser, checkpoints, DDP and progress; an
:class:`Objective` owns the rest: the loss of one training batch, what happens before an
epoch, which parameters learn, and, through its :class:`EpochJudge`, which epoch is best.
Training a source model uses :class:`Supervised`; every adaptation method runs under
:class:`medadapt.engine.adaptation.runs.MethodObjective`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import Dataset

from medadapt.engine.contracts.components import SelectionScore, SourceValidation
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.data.datasets import UNLABELLED


@dataclass(frozen=True)
class ValidationOutputs:
    """A model's predictions on a validation split at the end of an epoch.

    Attributes:
        probabilities: shape (samples, classes).
        features: shape (samples, feature_dim); empty unless the judge asked for them.
        labels: class indices, ``-1`` where a sample has no label.
    """

    probabilities: np.ndarray
    features: np.ndarray
    labels: np.ndarray


#: Predicts a dataset with the model as it is now: (data, with features) -> outputs.
Predict = Callable[[Dataset, bool], ValidationOutputs]


@dataclass(frozen=True)
class EpochMeasures:
    """What the judge measured on the validation split (None: not measurable there)."""

    val_loss: float | None
    val_auroc: float | None
    val_accuracy: float | None
    val_score: float | None = None


@dataclass(frozen=True)
class Devices:
    """Where the loop runs: its device, and how it moves a batch of patches there."""

    device: torch.device
    to_device: Callable[[Tensor], Tensor]


class EpochJudge:
    """Judges an epoch from the model's predictions on the validation split.

    This base judges by the validation labels: ``metric`` ``"auroc"`` (higher is better;
    the loss where AUROC cannot be measured) or ``"loss"`` (lower is better).

    Args:
        positive_index: the class whose probability AUROC is computed for.
        metric: ``"auroc"`` or ``"loss"``.
        class_weights: per-class weights of the validation loss, or None.
    """

    #: Whether :meth:`measure` needs the model's features as well as its probabilities.
    needs_features: bool = False

    def __init__(
        self, positive_index: int, metric: str = "auroc", class_weights: Tensor | None = None
    ) -> None:
        self.positive_index = positive_index
        self.metric = metric
        self.class_weights = None if class_weights is None else class_weights.cpu().float()

    def measure(self, outputs: ValidationOutputs, predict: Predict) -> EpochMeasures:
        """The epoch's figures; ``predict`` serves a judge that needs other data (DEV)."""
        return labelled_measures(outputs, self.positive_index, self.class_weights)

    def better(self, result: EpochMeasures, best: EpochMeasures) -> bool:
        """Whether ``result`` beats the best epoch so far."""
        if self.metric == "auroc" and result.val_auroc is not None:
            return best.val_auroc is None or result.val_auroc > best.val_auroc
        if result.val_loss is None or best.val_loss is None:
            return False
        return result.val_loss < best.val_loss


class ScoreJudge(EpochJudge):
    """Judges an epoch without labels, by a label-free selection score.

    Args:
        selection: the selection score.
        positive_index: the class whose AUROC is reported where some labels exist.
        source_validation: labelled source data, for a score that needs them (DEV).

    Raises:
        InvalidInputError: the score needs source data and none were given.
    """

    needs_features = True

    def __init__(
        self,
        selection: SelectionScore,
        positive_index: int,
        source_validation: Dataset | None = None,
    ) -> None:
        super().__init__(positive_index)
        if selection.needs_source_data and source_validation is None:
            raise InvalidInputError(
                f"the selection score {selection.name!r} needs the source site's validation "
                "data: give the source profile"
            )
        self.selection = selection
        self.source_validation = source_validation

    def measure(self, outputs: ValidationOutputs, predict: Predict) -> EpochMeasures:
        if self.selection.needs_source_data:
            assert self.source_validation is not None
            theirs = predict(self.source_validation, True)
            source = SourceValidation(theirs.probabilities, theirs.features, theirs.labels)
            score = self.selection.score(  # type: ignore[call-arg]
                outputs.probabilities, outputs.features, source=source
            )
        else:
            score = self.selection.score(outputs.probabilities, outputs.features)
        labelled = labelled_measures(outputs, self.positive_index, None)
        return EpochMeasures(
            labelled.val_loss, labelled.val_auroc, labelled.val_accuracy, float(score)
        )

    def better(self, result: EpochMeasures, best: EpochMeasures) -> bool:
        assert result.val_score is not None
        assert best.val_score is not None
        return self.selection.goodness(result.val_score) > self.selection.goodness(best.val_score)


def labelled_measures(
    outputs: ValidationOutputs, positive_index: int, class_weights: Tensor | None
) -> EpochMeasures:
    """Loss, AUROC and accuracy on the labelled samples (None where there are too few).

    Example:
        >>> outputs = ValidationOutputs(np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]),
        ...                             np.empty((0, 0)), np.array([0, 1, -1]))
        >>> labelled_measures(outputs, 1, None).val_auroc
        1.0
    """
    labelled = outputs.labels != UNLABELLED
    p, y = outputs.probabilities[labelled], outputs.labels[labelled]
    if not len(y):
        return EpochMeasures(None, None, None)
    loss = float(
        nn.functional.nll_loss(
            torch.log(torch.from_numpy(p).clamp(min=1e-12)),
            torch.from_numpy(y).long(),
            weight=class_weights,
        )
    )
    positive = (y == positive_index).astype(int)
    auroc = None
    if 0 < positive.sum() < len(y):
        auroc = float(roc_auc_score(positive, p[:, positive_index]))
    return EpochMeasures(loss, auroc, float((p.argmax(axis=1) == y).mean()))


class Objective:
    """What a run optimises and how its epochs are judged.

    The loop calls :meth:`bind` once, then per epoch :meth:`start_epoch` and
    :meth:`step` for every training batch, and judges the epoch with :attr:`judge`.

    Args:
        judge: picks the best epoch from the validation predictions.
        label: shown before the epoch line of the progress bar (which method).
    """

    #: False for a run that takes no training step (AdaBN): each epoch is
    #: :meth:`start_epoch` then validation.
    trains: bool = True

    def __init__(self, judge: EpochJudge, label: str = "") -> None:
        self.judge = judge
        self.label = label
        self.devices: Devices | None = None

    def bind(self, devices: Devices) -> None:
        """Told where the loop runs, before the first epoch."""
        self.devices = devices

    def parameter_groups(self, model: nn.Module) -> Sequence[dict[str, Any]]:
        """The optimiser's parameter groups: by default every trainable parameter."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def extra_modules(self) -> dict[str, nn.Module]:
        """Modules outside the model that train with it (a domain discriminator): moved to
        the device and kept in the checkpoint."""
        return {}

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch's training (and before validation for a run that does
        not train)."""

    def step(self, model: nn.Module, patches: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The losses of one training batch; the loop minimises the ``"loss"`` entry."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, predict: Predict) -> None:
        """Called on the main process after each epoch is judged (not timed with it), with
        a way to predict any dataset with the epoch's model."""


class Supervised(Objective):
    """Plain supervised training: cross-entropy on the labelled samples.

    Args:
        judge: the epoch judge (by the validation labels).
        param_groups: optimiser groups (per-group learning rates); default every
            trainable parameter at the profile's learning rate.
        class_weights: per-class loss weights, or None.
    """

    def __init__(
        self,
        judge: EpochJudge,
        param_groups: Sequence[dict[str, Any]] | None = None,
        class_weights: Tensor | None = None,
    ) -> None:
        super().__init__(judge)
        self.groups = param_groups
        self.criterion = nn.CrossEntropyLoss(weight=class_weights, ignore_index=UNLABELLED)

    def bind(self, devices: Devices) -> None:
        super().bind(devices)
        self.criterion = self.criterion.to(devices.device)

    def parameter_groups(self, model: nn.Module) -> Sequence[dict[str, Any]]:
        return self.groups or super().parameter_groups(model)

    def step(self, model: nn.Module, patches: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return {"loss": self.criterion(model(patches), labels)}
