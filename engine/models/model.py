"""The classifier (backbone features + linear head) and models on disk.

A model is a folder: ``weights.safetensors`` (never pickle) and ``card.json``, which says
what the model is (classes, preprocessing, backbone), where it came from (profile and data
hashes, engine and plugin versions, seed) and the SHA-256 of the weights. Loading checks
that hash and refuses weights that do not match their card.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from medadapt.engine.contracts.components import Backbone
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.pseudonym import data_paths
from medadapt.engine.models.card import CARD_FORMAT, ModelCard
from medadapt.engine.output.atomic import atomic_file
from medadapt.engine.output.text import read_json_file
from medadapt.engine.profile import Preprocessing, Profile

WEIGHTS = "weights.safetensors"
CARD = "card.json"


class Classifier(nn.Module):
    """Features from a backbone, then a linear layer to one logit per class."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def in_channels(patch_mode: str) -> int:
    """Input channels of a patch: three adjacent slices for 2.5D, else one."""
    return 3 if patch_mode == "2.5d" else 1


class SlicePooling(nn.Module):
    """A 2D backbone read over every slice of a series: (N, C, S, H, W) patches to (N, F)
    features, the slices' features pooled.

    ``mean`` averages them, so that with the linear head the series' logits are the mean of
    the slices' logits; ``max`` keeps each feature's strongest slice (max pooling, as in
    multiple-instance learning). Adaptation methods see one feature vector per series.
    """

    def __init__(self, features: nn.Module, pooling: str) -> None:
        super().__init__()
        self.slices = features
        self.pooling = pooling

    def forward(self, x: Tensor) -> Tensor:
        n, c, s, h, w = x.shape
        per_slice = self.slices(x.transpose(1, 2).reshape(n * s, c, h, w)).reshape(n, s, -1)
        return per_slice.mean(dim=1) if self.pooling == "mean" else per_slice.amax(dim=1)


def patch_shape(preprocessing: Preprocessing) -> tuple[int, ...]:
    """The shape of one patch the model takes, channels first: (C, y, x) or (C, z, y, x),
    and (1, slices, y, x) for the slices of a series."""
    spec = preprocessing
    channels = in_channels(spec.patch_mode)
    if spec.slices is not None:
        return (channels, spec.slices, *spec.patch_size)
    return (channels, *spec.patch_size)


def build_classifier(
    backbone: Backbone,
    patch_mode: str,
    num_classes: int,
    state_dict: Mapping[str, Tensor] | None = None,
    pooling: str | None = None,
) -> Classifier:
    """A classifier on ``backbone``, its features loaded from ``state_dict`` when given;
    with ``pooling``, a 2D backbone over a series' slices (:class:`SlicePooling`)."""
    spatial_dims = 3 if patch_mode == "3d" else 2
    features, feature_dim = backbone.build(in_channels(patch_mode), spatial_dims, state_dict)
    if pooling is not None:
        features = SlicePooling(features, pooling)
    return Classifier(features, feature_dim, num_classes)


def backbone_features(model: Classifier) -> nn.Module:
    """The backbone's own module in a classifier (inside a :class:`SlicePooling`), whose
    stages a backbone names."""
    features = model.features
    return features.slices if isinstance(features, SlicePooling) else features


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(folder: Path, model: nn.Module | Mapping[str, Tensor], card: ModelCard) -> Path:
    """Write a model folder atomically: weights first, then the card that names their hash.

    ``model`` is the network or its state dict.
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    save_weights(state, folder / WEIGHTS)
    final = card.model_copy(
        update={"format": CARD_FORMAT, "weights_sha256": file_sha256(folder / WEIGHTS)}
    )
    write_json_atomic(folder / CARD, final.as_json())
    return folder


def torch_bytes(obj: object) -> bytes:
    """``torch.save`` of ``obj``, in memory. Files are written from these bytes by Python,
    which says a full disk as an OSError; PyTorch's own file writer fails there with a
    RuntimeError, or aborts the process."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_weights(state_dict: Mapping[str, Tensor], path: Path) -> None:
    """Write weights as safetensors, atomically (a reader never sees half a file)."""
    state = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    data = save(state)  # in memory first: a full disk is then Python's OSError, said plainly
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)


@dataclass(frozen=True)
class LoadedModel:
    """A model read back from its folder."""

    model: Classifier
    card: ModelCard
    backbone: Backbone


def load_model(folder: Path, registry: ComponentRegistry) -> LoadedModel:
    """Read a model folder, checking its weights against the card.

    Raises:
        InvalidInputError: the folder, card or weights are missing, the weights' hash does
            not match the card, or the backbone is not installed.
    """
    card_file, weights_file = folder / CARD, folder / WEIGHTS
    if folder.is_file():
        raise InvalidInputError(
            f"{folder}: a file, not a model folder. A state dict trained elsewhere becomes a "
            f"model folder with: medadapt model import {folder} -p PROFILE --out FOLDER "
            "(docs/models.md)"
        )
    if not card_file.is_file() or not weights_file.is_file():
        raise InvalidInputError(
            f"{folder}: not a medadapt model (expected {CARD} and {WEIGHTS}). A model trained "
            "elsewhere becomes one with `medadapt model import WEIGHTS -p PROFILE --out "
            "FOLDER` (docs/models.md)"
        )
    card = read_card(card_file)
    actual = file_sha256(weights_file)
    if card.weights_sha256 != actual:
        raise InvalidInputError(
            f"{weights_file}: the weights do not match their card (sha256 {actual[:12]}..., "
            f"the card says {str(card.weights_sha256)[:12]}...): they were changed or "
            "belong to another model; refusing to load them"
        )
    model, backbone = build_from_card(card, registry)
    model.load_state_dict(load_file(str(weights_file)))
    return LoadedModel(model, card, backbone)


def read_card(path: Path) -> ModelCard:
    """Read and check a ``card.json``.

    Raises:
        InvalidInputError: the file is not JSON, is of a newer format, or a field is missing
            or of the wrong type (the message names the field).
    """
    data = read_json_file(path, "a model card")
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, int) and found > CARD_FORMAT:
        raise InvalidInputError(
            f"{path}: card format {found} is newer than this medadapt reads ({CARD_FORMAT}); "
            "upgrade medadapt"
        )
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'card'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(f"{path}: not a valid model card ({problems})") from None


def build_from_card(card: ModelCard, registry: ComponentRegistry) -> tuple[Classifier, Backbone]:
    """The untrained network a model card describes, and its backbone component."""
    backbone = registry.build(Backbone, card.backbone.name, card.backbone.params)
    spec = card.preprocessing
    model = build_classifier(backbone, spec.patch_mode, len(card.classes), pooling=spec.pooling)
    return model, backbone


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON so that a reader never sees half a file."""
    text = json.dumps(data_paths.json(data), indent=2, sort_keys=True, default=str)
    with atomic_file(path) as temporary:
        temporary.write_text(text)


def state_to_cpu(state: Mapping[str, Any], copy: bool = False) -> dict[str, Any]:
    """A (nested) state dict with every tensor on the CPU, for checkpoints.

    Args:
        state: a model's or optimiser's state dict.
        copy: copy tensors already on the CPU too, so that training can go on changing
            the originals while the copy is written.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            tensor = value.detach().cpu()
            out[key] = tensor.clone() if copy and tensor.data_ptr() == value.data_ptr() else tensor
        elif isinstance(value, Mapping):
            out[key] = state_to_cpu(value, copy)
        else:
            out[key] = value
    return out


def profile_backbone(profile: Profile, registry: ComponentRegistry) -> Backbone:
    """The backbone component the profile's ``backbone`` section names, with its parameters."""
    assert profile.backbone is not None
    backbone = registry.build(
        Backbone, profile.backbone.name, profile.backbone.params, base_dir=profile.base_dir
    )
    return backbone
