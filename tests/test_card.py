"""The model card is a typed object: read, checked, and refused with the field's name."""

from __future__ import annotations

import json

import pytest

from medadapt.engine import InvalidInputError
from medadapt.engine.contracts.components import UNADAPTED
from medadapt.engine.models.card import AdaptationRecord, DecisionRecord, ModelCard
from medadapt.engine.models.model import read_card

CARD = {
    "site": "Hospital A",
    "classes": ["benign", "malignant"],
    "positive_class": "malignant",
    "preprocessing": {
        "window": {"level": 40, "width": 400},
        "patch_mode": "2d",
        "patch_size": [48, 48],
    },
    "backbone": {"name": "resnet18"},
}


def write(tmp_path, card) -> object:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    return path


def test_a_card_is_read_into_its_fields(tmp_path):
    card = read_card(write(tmp_path, CARD))
    assert card.classes == ["benign", "malignant"]
    assert card.preprocessing.patch_size == [48, 48]
    assert card.backbone.name == "resnet18"
    assert card.trained_at == "Hospital A"
    assert card.adapted_to is None


def test_a_card_missing_a_field_is_refused_with_its_name(tmp_path):
    broken = {k: v for k, v in CARD.items() if k != "classes"}
    with pytest.raises(InvalidInputError, match=r"card.json: not a valid model card \(classes:"):
        read_card(write(tmp_path, broken))


def test_a_field_of_the_wrong_type_is_refused_with_its_path(tmp_path):
    broken = {**CARD, "preprocessing": {**CARD["preprocessing"], "patch_mode": "4d"}}
    with pytest.raises(InvalidInputError, match=r"preprocessing\.patch_mode"):
        read_card(write(tmp_path, broken))


def test_a_card_of_a_newer_format_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="card format 99 is newer"):
        read_card(write(tmp_path, {**CARD, "format": 99}))


def test_an_unadapted_model_kept_by_adapt_is_not_called_adapted():
    decision = DecisionRecord(
        rule="validation-bootstrap",
        evidence="labels",
        statement="kept the unadapted model: ...",
    )
    record = AdaptationRecord(
        method=UNADAPTED,
        selection="validation AUROC (target labels)",
        target_labels="validation",
        source_site="Hospital A",
        source_weights_sha256="0" * 64,
        source_card_sha256="1" * 64,
        decision=decision,
    )
    card = ModelCard.model_validate({**CARD, "adaptation": record.model_dump()})
    assert card.adapted_to is None
    assert card.trained_at == "Hospital A"
    adapted = card.model_copy(
        update={"site": "Hospital B", "adaptation": record.model_copy(update={"method": "coral"})}
    )
    assert adapted.adapted_to == "Hospital B"
    assert adapted.trained_at == "Hospital A"
    assert ModelCard.model_validate(adapted.as_json()) == adapted
