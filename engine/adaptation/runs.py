"""One adaptation method at one seed, in the engine's loop: the method's objective, and the
run folder it leaves (best weights, per-epoch validation predictions, history)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from medadapt.engine.contracts.components import AdaptationMethod, Backbone, SelectionScore
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.hookspecs import RunInfo
from medadapt.engine.contracts.host import PluginHost
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.models.card import ModelCard
from medadapt.engine.models.inference import batches, infer
from medadapt.engine.models.model import Classifier, build_from_card
from medadapt.engine.output.text import read_json_file
from medadapt.engine.profile import Training
from medadapt.engine.training.distributed import World
from medadapt.engine.training.loop import FitResult, Trainer, steps_per_epoch
from medadapt.engine.training.objective import EpochJudge, Objective, Predict, ScoreJudge

#: A run's predictions on the target validation split at its best epoch (numbers only).
PROBABILITIES = "validation-probabilities.npy"
#: Written last: a run folder with it is finished and is reused when adapt runs again.
FINISHED = "candidate.json"


@dataclass
class CandidateRun:
    """One method at one seed: where it is, and how its best epoch was judged."""

    method: str
    seed: int
    score: float | None
    val_auroc: float | None
    best_epoch: int
    folder: Path

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "folder": str(self.folder)}

    @classmethod
    def read(cls, folder: Path) -> CandidateRun | None:
        """The finished run in ``folder``, or None when it has not finished."""
        finished = folder / FINISHED
        if not finished.is_file():
            return None
        saved = read_json_file(finished, "a finished adaptation run's record")
        return cls(**{**saved, "folder": Path(saved["folder"])})

    def probabilities(self) -> np.ndarray:
        """Its predictions on the target validation split at its best epoch."""
        return np.load(self.folder / PROBABILITIES)


#: Told about every epoch of every candidate run: (method, seed, epoch, predict), where
#: ``predict(data, with_features)`` predicts a dataset with that epoch's model. For
#: benchmarks and research (benchmarks/adaptation.py measures every epoch on the test split
#: with it); ``adapt`` itself never hands one the test split.
EpochObserver = Callable[[str, int, int, Predict], None]


class MethodObjective(Objective):
    """An adaptation method's training step in the loop: it draws the source batches a
    method needs, tells the method how far training is, and starts its epochs.

    Args:
        method: the method, already ``setup`` with the model.
        judge: how an epoch is judged (validation labels, or a selection score).
        plain: the target training data without augmentation, for the method's epoch start.
        source_train: labelled source data, for a method that needs them.
        batch_size: of the source batches and the epoch-start batches.
        total_steps: the steps of the whole run, for ``method.progress``.
        seed: orders the source batches.
        backbone_lr: the learning rate of the features; the head and the method's own
            modules learn at ``lr``.
    """

    def __init__(
        self,
        method: AdaptationMethod,
        judge: EpochJudge,
        *,
        plain: Dataset,
        source_train: Dataset | None,
        batch_size: int,
        total_steps: int,
        seed: int,
        lr: float,
        backbone_lr: float,
        label: str = "",
        observer: EpochObserver | None = None,
    ) -> None:
        super().__init__(judge, label)
        self.method = method
        self.observer = observer
        self.trains = method.trains
        self.plain = plain
        self.source_train = source_train
        self.batch_size = batch_size
        self.total_steps = max(1, total_steps)
        self.seed = seed
        self.lr, self.backbone_lr = lr, backbone_lr
        self._taken = itertools.count()
        self._source_batches: Iterator[Any] | None = None

    def parameter_groups(self, model: nn.Module) -> Sequence[dict[str, Any]]:
        """The method's parameter groups without frozen parameters.

        Raises:
            InvalidInputError: nothing is left to learn.
        """
        groups = [
            {**group, "params": [p for p in group["params"] if p.requires_grad]}
            for group in self.method.parameter_groups(self.lr, self.backbone_lr)
        ]
        groups = [group for group in groups if group["params"]]
        if not groups:
            raise InvalidInputError(
                f"{self.method.name!r} has nothing left to learn: training.freeze froze every "
                "parameter it trains"
            )
        return groups

    def extra_modules(self) -> dict[str, nn.Module]:
        return self.method.extra_modules()

    def start_epoch(self, epoch: int) -> None:
        self.method.epoch_start(self._target_patches)

    def _target_patches(self) -> Iterator[Tensor]:
        assert self.devices is not None
        loader = DataLoader(self.plain, batch_size=self.batch_size, shuffle=False)
        return (self.devices.to_device(patches) for patches, _ in loader)

    def end_epoch(self, epoch: int, predict: Predict) -> None:
        if self.observer is not None:
            self.observer(self.method.name, self.seed, epoch, predict)

    def step(self, model: nn.Module, patches: Tensor, labels: Tensor) -> dict[str, Tensor]:
        assert self.devices is not None
        self.method.progress = min(1.0, next(self._taken) / self.total_steps)
        source_batch = None
        if self.method.needs_source_data:
            if self._source_batches is None:
                assert self.source_train is not None
                self._source_batches = forever(self.source_train, self.batch_size, self.seed)
            source_patches, source_labels = next(self._source_batches)
            source_batch = {
                "patches": self.devices.to_device(source_patches),
                "labels": source_labels.to(self.devices.device),
            }
        return self.method.update(source_batch, {"patches": patches, "labels": labels})


def run_method(
    model: Classifier,
    method: AdaptationMethod,
    train: Dataset,
    validation: Dataset,
    training: Training,
    run: RunInfo,
    world: World,
    host: PluginHost,
    positive_index: int,
    *,
    selection: SelectionScore | None = None,
    plain: Dataset | None = None,
    source_train: Dataset | None = None,
    source_validation: Dataset | None = None,
    quiet: bool = True,
    frozen: Sequence[nn.Module] = (),
    observer: EpochObserver | None = None,
) -> FitResult:
    """Adapt ``model`` in place with ``method``, with the engine's training loop.

    Args:
        train: target training data, (patch, class index or -1) pairs, augmented.
        validation: target validation data; without labels, ``selection`` picks the epoch.
        run: the job; ``run.output_dir`` gets the checkpoints, the best weights and every
            epoch's validation predictions.
        selection: a label-free score that judges each epoch; None: the validation labels.
        plain: the target training data without augmentation (for the method's epoch
            start); default ``train``.
        source_train: labelled source data, for methods that need it.
        source_validation: the source validation split, for a selection score that needs
            it (DEV).
        frozen: modules kept as loaded (``training.freeze``): no gradient, and their
            batch-norm statistics are not recomputed.
        observer: told about every epoch, with a way to predict any dataset with it.

    Returns:
        The loop's result; ``run.output_dir/best.safetensors`` holds the best epoch's
        weights, which are also loaded into ``model``.
    """
    if method.needs_source_data and source_train is None:
        raise InvalidInputError(f"{method.name!r} needs labelled source data")
    method.setup(model, model.head.in_features, model.head.out_features)
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    epochs = training.epochs if method.trains else 1
    training = training.model_copy(update={"epochs": epochs})
    judge = (
        EpochJudge(positive_index, training.selection_metric)
        if selection is None
        else ScoreJudge(selection, positive_index, source_validation)
    )
    options = training.optimizer
    drop = method.drop_incomplete_batch
    replicas = world.size if world.distributed else 1
    steps = steps_per_epoch(len(train), training.batch_size, drop, replicas)  # type: ignore[arg-type]
    objective = MethodObjective(
        method,
        judge,
        plain=plain if plain is not None else train,
        source_train=source_train,
        batch_size=training.batch_size,
        total_steps=epochs * steps,
        seed=run.seed,
        lr=options.lr,
        backbone_lr=options.lr * options.backbone_lr_factor,
        label=f"{method.name} seed {run.seed}",
        observer=observer,
    )
    run.output_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        model,
        train,
        validation,
        training,
        run,
        world,
        host,
        objective,
        frozen=frozen,
        quiet=quiet,
        batch_norm_pass="always",
        drop_incomplete=drop,
    )
    fit = trainer.fit(resume=(run.output_dir / "checkpoint.pt").is_file())
    model.load_state_dict(load_file(str(fit.best_weights)))
    return fit


def forever(data: Dataset, batch_size: int, seed: int) -> Iterator[Any]:
    """Shuffled batches of ``data``, epoch after epoch, each epoch's order from the seed.

    The last incomplete batch of an epoch is dropped, unless ``data`` is smaller than one
    batch: then each epoch is that one smaller batch.

    Raises:
        InvalidInputError: ``data`` is empty.
    """
    size = len(data)  # type: ignore[arg-type]
    if size == 0:
        raise InvalidInputError("the source site's training split holds no labelled sample")
    for epoch in itertools.count():
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed * 7_919 + epoch)
        yield from DataLoader(
            data,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            drop_last=size >= batch_size,
        )


def fresh_model(
    registry: ComponentRegistry, card: ModelCard, state: Mapping[str, Tensor], num_classes: int
) -> tuple[Classifier, Backbone]:
    """The source model again (and its backbone), with a new classifier layer when the
    classes differ."""
    model, backbone = build_from_card(card, registry)
    model.load_state_dict(dict(state))
    if num_classes != len(card.classes):
        model.head = nn.Linear(model.head.in_features, num_classes)
    return model, backbone


def probabilities(model: nn.Module, data: Dataset, device: torch.device) -> np.ndarray:
    """The model's class probabilities on ``data``, in order."""
    inferred = infer(model, batches(data), prepare=lambda patches: patches.to(device))
    assert inferred.probabilities is not None
    return inferred.probabilities
