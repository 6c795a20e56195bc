"""A model's predictions on one split of a site, and the AUROC they reach.

This is the only place that reads a site's **test** split, and only after a model is final:
``adapt`` sets that split aside, ``train`` never looks at it. The split is recomputed here
from the profile exactly as those jobs computed it (by patient, with the profile's seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medadapt.engine.contracts.components import DataSource, SampleRecord, Split
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.datasets import PatchDataset
from medadapt.engine.data.samples import PatchLoader, open_site_data
from medadapt.engine.data.splits import site_split
from medadapt.engine.models.inference import batches, infer
from medadapt.engine.models.model import LoadedModel, load_model
from medadapt.engine.profile import Profile


@dataclass(frozen=True)
class Predictions:
    """What a model said about the labelled samples of one split."""

    scores: np.ndarray  # probability of the positive class, one per sample
    labels: np.ndarray  # 1 for the positive class, else 0
    patients: list[str]  # the pseudonymised patient of each sample
    #: The samples, in order (attributes for subgroups; never written out: locators may
    #: hold identifying text).
    records: list[SampleRecord] = field(default_factory=list, repr=False)

    @property
    def auroc(self) -> float | None:
        """The AUROC, or None when the split holds one class only."""
        if 0 < self.labels.sum() < len(self.labels):
            return float(roc_auc_score(self.labels, self.scores))
        return None


def predict(
    model_dir: Path,
    profile: Profile,
    registry: ComponentRegistry,
    split: Split = Split.TEST,
    cache_dir: Path | None = None,
    batch_size: int = 64,
) -> Predictions:
    """Run the model in ``model_dir`` on the labelled samples of ``split`` at the profile's site.

    The patches are made with the model's own preprocessing (from its card).

    Raises:
        InvalidInputError: the model's classes lack the profile's positive class, or the
            split holds no labelled sample.
    """
    loaded = load_model(model_dir, registry)
    check_positive_class(loaded, profile, model_dir)
    assert profile.data is not None
    site = open_site_data(profile, registry, cache_dir)
    records = [
        r
        for r in site_split(site.records, profile)
        if r.split is split and r.label in loaded.card.classes
    ]
    if not records:
        raise InvalidInputError(
            f"{profile.site.name}: the {split.value} split holds no labelled sample"
        )
    return predict_records(loaded, profile.task.positive_class, site.source, records, cache_dir)


def check_positive_class(loaded: LoadedModel, profile: Profile, model_dir: Path) -> None:
    """Refuse a model whose classes lack the profile's positive class."""
    classes = list(loaded.card.classes)
    if profile.task.positive_class not in classes:
        raise InvalidInputError(
            f"{model_dir}: the model's classes {classes} do not include the profile's "
            f"positive class {profile.task.positive_class!r}"
        )


def predict_records(
    loaded: LoadedModel,
    positive: str,
    source: DataSource,
    records: Sequence[SampleRecord],
    cache_dir: Path | None = None,
    batch_size: int = 64,
    device: torch.device | None = None,
) -> Predictions:
    """The loaded model's probability of ``positive`` for each record, with its own
    preprocessing (from its card), computed on ``device`` (default: where the model is)."""
    classes = list(loaded.card.classes)
    spec = loaded.card.preprocessing
    loader = PatchLoader(source, spec, cache_dir)
    data = PatchDataset(loader, list(records), classes)
    model = loaded.model if device is None else loaded.model.to(device)
    where = next(model.parameters()).device
    inferred = infer(model, batches(data, batch_size), prepare=lambda p: p.to(where))
    assert inferred.probabilities is not None
    return Predictions(
        scores=inferred.probabilities[:, classes.index(positive)],
        labels=np.array([int(r.label == positive) for r in records]),
        patients=[r.patient_key for r in records],
        records=list(records),
    )
