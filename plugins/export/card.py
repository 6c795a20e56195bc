"""What every export says about its model, in words and as JSON: taken from the model card."""

from __future__ import annotations

import json
from importlib import metadata

from medadapt.engine import ModelCard, patch_shape


def card_text(card: ModelCard) -> str:
    return json.dumps(card.as_json(), sort_keys=True)


def input_text(card: ModelCard) -> str:
    spec = card.preprocessing
    spacing = (
        "at the voxel spacing of the series"
        if spec.spacing_mm is None
        else f"resampled to {' x '.join(f'{s:g}' for s in spec.spacing_mm)} mm (z, y, x)"
    )
    return (
        f"Input: float32 patches of shape (N, {', '.join(map(str, patch_shape(spec)))}), "
        f"{spec.patch_mode} patches centred on "
        f"{'the middle of the series' if card.level == 'series' else 'the lesion'}, {spacing}, "
        f"Hounsfield units windowed at level {spec.window.level:g} and "
        f"width {spec.window.width:g} and scaled to [0, 1]"
    )


def origin(card: ModelCard) -> str:
    text = f"Trained at {card.trained_at} on a {card.backbone.name} backbone"
    if card.adapted_to:
        assert card.adaptation is not None
        text += f", adapted to {card.adapted_to} with {card.adaptation.method}"
    return text


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
