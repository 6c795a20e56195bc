"""The model card: what a model is, where it came from, and, for an adapted model, what the
decision to keep it rested on.

A card is ``card.json`` beside the weights in a model folder (engine/models/model.py). In code it
is a typed, frozen :class:`ModelCard`; nothing reads it through string keys. Cards are
checked when read: a card missing a field, or with a field of the wrong type, is refused
with the field's name.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medadapt.engine.contracts.components import UNADAPTED, Backbone, SampleRecord
from medadapt.engine.profile import Preprocessing, Profile

#: The card's format; a reader refuses formats newer than it knows.
CARD_FORMAT = 1


class _Part(BaseModel):
    # Unknown fields are ignored, so a card written by a later release still loads.
    model_config = ConfigDict(extra="ignore", frozen=True)


class BackboneInfo(_Part):
    """The feature extractor: a backbone component and its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    #: ``imagenet``, ``none`` or the name of the weights file it started from.
    pretrained: str = "none"


class DecisionRecord(_Part):
    """Why ``adapt`` kept this model (engine/adaptation/decision.py).

    Attributes:
        rule: the decision rule component that decided.
        evidence: ``labels`` when the site's validation labels measured the candidates,
            ``label-free`` when they did not (the choice is then a proposal).
        statement: one sentence a person reads, e.g. "kept coral: validation AUROC +0.08
            (0.02 to 0.14) over the unadapted model, on 40 labelled patients".
        margin: the kept model's validation AUROC minus the unadapted model's, with its
            paired patient-bootstrap interval; None without labels.
    """

    rule: str
    evidence: Literal["labels", "label-free"]
    statement: str
    margin: dict[str, float | int | None] | None = None


class AdaptationRecord(_Part):
    """How an adapted model was made from its source model."""

    method: str
    selection: str
    target_labels: str
    source_site: str
    source_weights_sha256: str
    source_card_sha256: str
    decision: DecisionRecord | None = None


class ImportRecord(_Part):
    """Where a model trained outside medadapt came from (``medadapt model import``).

    Attributes:
        file: the name of the imported weights file.
        sha256: its SHA-256.
        layout: whose key names it used: ``torchvision``, ``monai`` (the backbone's published
            layout) or ``medadapt``.
        notes: what the import changed, in words (a first convolution summed to one
            channel, a one-logit output turned into two).
        bundle: for a MONAI bundle: its name, version, network and the SHA-256 of its
            metadata.json and inference.json.
    """

    file: str
    sha256: str
    layout: str
    notes: list[str] = Field(default_factory=list)
    bundle: dict[str, str] | None = None


class ModelCard(_Part):
    """Everything a model folder says about its model, besides the weights.

    Example:
        >>> card = ModelCard.model_validate({
        ...     "site": "A", "classes": ["benign", "malignant"], "positive_class": "malignant",
        ...     "preprocessing": {"window": {"level": 40, "width": 400}, "patch_mode": "2d",
        ...                       "patch_size": [48, 48]},
        ...     "backbone": {"name": "resnet18"}})
        >>> card.trained_at, card.adaptation is None
        ('A', True)
    """

    format: int = CARD_FORMAT
    site: str
    intended_use: str | None = None
    body_region: str | None = None
    classes: list[str]
    positive_class: str
    #: ``lesion``: a prediction per lesion patch; ``series``: per series (``task.level``).
    level: Literal["lesion", "series"] = "lesion"
    preprocessing: Preprocessing
    backbone: BackboneInfo
    training: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    profile_sha256: str | None = None
    data_manifest_sha256: str | None = None
    best_epoch: int | None = None
    #: The best epoch's validation figures (``val_auroc``, ``val_score``, ...).
    validation: dict[str, float | None] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    world_size: int = 1
    device: str | None = None
    #: Per-epoch figures of the run that made these weights.
    history: list[dict[str, Any]] = Field(default_factory=list)
    #: For an adapted model: the source model's training history.
    source_history: list[dict[str, Any]] = Field(default_factory=list)
    adaptation: AdaptationRecord | None = None
    #: For a model trained outside medadapt: the file it was imported from.
    imported: ImportRecord | None = None
    #: Written by :func:`~medadapt.engine.models.model.save_model`; loading checks it.
    weights_sha256: str | None = None

    @property
    def trained_at(self) -> str:
        """The site whose labels trained the model (the source site of an adapted one)."""
        return self.adaptation.source_site if self.adaptation else self.site

    @property
    def adapted_to(self) -> str | None:
        """The site it was adapted to, or None for a model that was not adapted (the
        unadapted model kept by ``adapt`` has a record of that decision, and no site)."""
        if self.adaptation is None or self.adaptation.method == UNADAPTED:
            return None
        return self.site

    def as_json(self) -> dict[str, Any]:
        """The card as JSON values, as ``card.json`` holds it."""
        return self.model_dump(mode="json")


def data_manifest_hash(records: list[SampleRecord]) -> str:
    """A hash of which samples (by pseudonym) went into which split with which label."""
    rows = sorted(
        (r.patient_key, r.series_key, str(r.label), str(r.centre), str(r.split)) for r in records
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def profile_hash(profile: Profile) -> str:
    """A hash of everything the profile says about the site, its data and its model.

    ``training.device`` is left out: where a job computes belongs to the machine it runs on
    (``--device`` overrides it), and a run resumed on another device is the same run.
    """
    document = profile.model_dump(mode="json")
    document["training"].pop("device", None)
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def card_fields(profile: Profile, backbone: Backbone, pretrained: str) -> dict[str, Any]:
    """What a model card takes from the profile that made the model: the site, the task,
    the preprocessing, the backbone (started from ``pretrained``), the seed, the hash."""
    return {
        "site": profile.site.name,
        "intended_use": profile.intended_use,
        "body_region": profile.body_region,
        "classes": profile.task.classes,
        "positive_class": profile.task.positive_class,
        "level": profile.task.level,
        "preprocessing": profile.preprocessing,
        "backbone": BackboneInfo(
            name=backbone.name,
            params=backbone.params.model_dump(mode="json"),
            pretrained=pretrained,
        ),
        "seed": profile.seed,
        "profile_sha256": profile_hash(profile),
    }
