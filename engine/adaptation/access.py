"""What each adaptation method may see, decided here and not left to the methods.

- The target site's patients are split by patient with the target profile's seed, exactly
  as ``validate`` will split them; the **test split is set aside before anything is
  loaded** and never reaches adaptation's datasets, so no choice made in adapt can depend
  on it.
- Target labels reach the training and validation data only as
  ``adaptation.target_labels`` allows: ``none`` removes every label; ``validation`` keeps
  the validation patients' labels only (they choose, no method trains on them); ``few``
  keeps ``labels_per_class`` per class among the training patients; ``all`` keeps both.
- Source data are opened only when a source profile is given, and only for a method (or a
  selection score) that declares it needs them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from medadapt.engine.contracts.components import (
    UNADAPTED,
    AdaptationMethod,
    ComponentKind,
    SampleRecord,
    Split,
)
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.augment import training_transform
from medadapt.engine.data.datasets import PatchDataset
from medadapt.engine.data.samples import open_site_data
from medadapt.engine.data.splits import keep_labels_per_class, site_split
from medadapt.engine.models.card import ModelCard
from medadapt.engine.profile import AUTO, AdaptationChoice, Profile


class Unadapted(AdaptationMethod):
    """The source model as it is: a candidate like every other, never changed."""

    name = UNADAPTED
    needs_source_data: ClassVar[bool] = False
    needs_target_labels: ClassVar[bool] = False
    trains: ClassVar[bool] = False

    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        raise RuntimeError("the unadapted model takes no training step")


@dataclass(frozen=True)
class TargetSplit:
    """The target records adaptation may use, with only the labels it may see."""

    train: list[SampleRecord]
    validation: list[SampleRecord]
    set_aside: int
    labelled: dict[str, int]

    @property
    def validation_labelled(self) -> bool:
        """Whether any validation sample keeps its label."""
        return any(r.label is not None for r in self.validation)


def target_split(records: list[SampleRecord], profile: Profile) -> TargetSplit:
    """Split the target site by patient and strip the labels adaptation may not see.

    The test split is counted and dropped here; what is returned never contains it.

    Example:
        >>> from medadapt.engine.profile import SplitFractions
        >>> records = [SampleRecord(f"p{i}", "s", "", label="a" if i % 2 else "b")
        ...            for i in range(10)]
        >>> profile = Profile.model_construct(
        ...     seed=0, adaptation=AdaptationChoice(target_labels="none"),
        ...     data=type("D", (), {"split": SplitFractions(train=0.6, validation=0.2,
        ...                                                  test=0.2)})(),
        ...     task=type("T", (), {"positive_class": "a"})())
        >>> split = target_split(records, profile)
        >>> split.set_aside, {r.label for r in split.train + split.validation}
        (2, {None})
    """
    assert profile.data is not None
    choice = profile.adaptation_settings
    assigned = site_split(records, profile)
    train = [r for r in assigned if r.split is Split.TRAIN]
    validation = [r for r in assigned if r.split is Split.VALIDATION]
    set_aside = sum(r.split is Split.TEST for r in assigned)
    if choice.target_labels == "none":
        train, validation = _unlabelled(train), _unlabelled(validation)
    elif choice.target_labels == "validation":
        train = _unlabelled(train)
    elif choice.target_labels == "few":
        train = keep_labels_per_class(train, choice.labels_per_class, profile.seed)
        validation = _unlabelled(validation)
    elif profile.training.labels_per_class is not None:  # all, within a label budget
        # As in train: the patches beyond the budget are left out, not kept unlabelled.
        budget = keep_labels_per_class(train, profile.training.labels_per_class, profile.seed)
        train = [r for r in budget if r.label is not None]
    labelled = Counter(r.label for r in train + validation if r.label is not None)
    return TargetSplit(train, validation, set_aside, dict(labelled))


def _unlabelled(records: list[SampleRecord]) -> list[SampleRecord]:
    return [dataclasses.replace(r, label=None) for r in records]


def check_fit(card: ModelCard, target: Profile) -> None:
    """The target's patches must be the ones the model was trained on.

    Raises:
        InvalidInputError: naming every preprocessing key that differs.
    """
    if card.level != target.task.level:
        raise InvalidInputError(
            f"the model predicts per {card.level} (its card's level), and the target "
            f"profile's task.level is {target.task.level}: a model answers the question it "
            "was trained on"
        )
    wanted = card.preprocessing.model_dump(mode="json")
    given = target.preprocessing.model_dump(mode="json")
    differing = sorted(key for key in wanted if wanted[key] != given.get(key))
    if differing:
        details = "; ".join(
            f"preprocessing.{key}: the model expects {wanted[key]!r}, the profile has "
            f"{given.get(key)!r}"
            for key in differing
        )
        raise InvalidInputError(
            f"the target profile's patches differ from the ones the model was trained on "
            f"({details}); use the model's preprocessing in the target profile"
        )


def method_class(registry: ComponentRegistry, name: str) -> type[AdaptationMethod]:
    """The adaptation method class of that name (:class:`Unadapted` for the unadapted one)."""
    if name == UNADAPTED:
        return Unadapted
    cls = registry.get(ComponentKind.ADAPTATION_METHODS, name)
    assert issubclass(cls, AdaptationMethod)
    return cls


def _refusal(
    cls: type[AdaptationMethod], choice: AdaptationChoice, has_source: bool, same_classes: bool
) -> str | None:
    """Why the data do not allow a method, or None."""
    if cls.needs_source_data and not has_source:
        return (
            f"{cls.name!r} needs labelled source data: give the source site's profile with "
            "--source-profile (the source data must be allowed to be used here)"
        )
    if cls.needs_target_labels and choice.target_labels in ("none", "validation"):
        return (
            f"{cls.name!r} needs labels at the target site's training patients, and the "
            f"target profile's adaptation.target_labels is {choice.target_labels}"
        )
    if not same_classes and not cls.needs_target_labels:
        return (
            f"{cls.name!r} keeps the source model's classes, and the target's differ; only "
            "a method trained with target labels (finetune) can learn new classes"
        )
    return None


def candidate_methods(
    name: str,
    choice: AdaptationChoice,
    registry: ComponentRegistry,
    has_source: bool,
    same_classes: bool,
) -> list[str]:
    """The methods to run: the one named, or under ``auto`` every one the data allow.

    Raises:
        InvalidInputError: the named method, or under ``auto`` every method, is refused,
            with the reason.
    """
    if name != AUTO:
        problem = _refusal(method_class(registry, name), choice, has_source, same_classes)
        if problem:
            raise InvalidInputError(problem)
        return [name]
    names = choice.candidates or registry.names(ComponentKind.ADAPTATION_METHODS)
    allowed = [
        n
        for n in names
        if _refusal(method_class(registry, n), choice, has_source, same_classes) is None
    ]
    if not same_classes and not allowed:
        raise InvalidInputError(
            "the target's classes differ from the source model's: only finetune, with "
            "adaptation.target_labels few or all, can adapt it"
        )
    return allowed


def source_data(
    profile: Profile, registry: ComponentRegistry, cache_dir: Path | None
) -> tuple[Dataset, Dataset]:
    """The source site's labelled training and validation splits (its seed and fractions).

    Raises:
        InvalidInputError: a split holds no labelled sample.
    """
    assert profile.data is not None
    site = open_site_data(profile, registry, cache_dir)
    records = [r for r in site_split(site.records, profile) if r.label is not None]
    train = [r for r in records if r.split is Split.TRAIN]
    validation = [r for r in records if r.split is Split.VALIDATION]
    if not train or not validation:
        raise InvalidInputError(
            f"{profile.site.name}: the source site needs labelled samples in its train and "
            "validation splits"
        )
    return (
        PatchDataset(
            site.loader,
            train,
            profile.task.classes,
            transform=training_transform(profile, registry),
            seed=profile.seed,
        ),
        PatchDataset(site.loader, validation, profile.task.classes),
    )
