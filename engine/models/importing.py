"""``medadapt model import``: a model trained outside medadapt, made a medadapt model folder.

Most sites that need adaptation already have a model, trained by someone else in plain
PyTorch or as a MONAI bundle. Its state dict (safetensors, or a ``.pt`` file read with
``weights_only=True``), or the bundle folder (engine/models/bundle.py), becomes a model folder
(engine/models/model.py) that ``shift``, ``adapt``, ``validate`` and ``batch`` take like any other:

- the key names may be the backbone's published layout (torchvision's for the ResNets,
  MONAI's for DenseNet-121), classifier layer included, or medadapt's own;
- what the weights cannot say (the classes, the positive class, the window, the spacing, the
  patch size, the backbone) comes from a profile, checked like every profile;
- anything that does not fit is refused by name: missing or extra keys, wrong shapes, a
  classifier layer with another number of outputs than the profile's classes, a pickled
  file, a TorchScript file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor

from medadapt.engine.contracts.components import Backbone
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.models.bundle import INFERENCE, METADATA, BundleNetwork, is_bundle, read_bundle
from medadapt.engine.models.card import ImportRecord, ModelCard, card_fields, profile_hash
from medadapt.engine.models.model import (
    WEIGHTS,
    Classifier,
    build_classifier,
    file_sha256,
    profile_backbone,
    save_model,
)
from medadapt.engine.models.runfolder import Provenance, claim_folder, remove_outputs
from medadapt.engine.models.weights import load_matching, load_weights_file
from medadapt.engine.profile import Profile

#: What an import writes into its folder (besides the run-folder records).
IMPORT_OUTPUTS = ("card.json", WEIGHTS)


@dataclass(frozen=True)
class ImportResult:
    """The model folder written, and what the import had to change."""

    model_dir: Path
    layout: str
    notes: list[str]
    #: For a MONAI bundle: its name, version, network and config hashes.
    bundle: dict[str, str] | None = None


def import_model(
    weights: Path,
    profile: Profile,
    registry: ComponentRegistry,
    out_dir: Path,
    overwrite: bool = False,
) -> ImportResult:
    """Write ``out_dir`` as a medadapt model folder holding the weights of ``weights``.

    Args:
        weights: a state dict: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` saved with
            ``torch.save(model.state_dict(), ...)``; or a MONAI bundle folder whose
            ``network_def`` is the profile's backbone.
        profile: says the backbone (``backbone.name`` and its parameters), the classes and
            the positive class (``task``) and the preprocessing the model was trained with.
        out_dir: the model folder to write (``adapt --from``, ``validate --model`` take it).
        overwrite: write over a folder made by something else.

    Raises:
        InvalidInputError: the file is not a state dict that fits the backbone and the
            classes; the message names the keys, the shapes or the reason.
    """
    if profile.backbone is None:
        raise InvalidInputError(
            f"the profile of {profile.site.name!r} has no 'backbone' section: it must say "
            "which network the weights are for (backbone.name, e.g. resnet18)"
        )
    backbone = profile_backbone(profile, registry)
    bundle: BundleNetwork | None = None
    if weights.is_dir():
        if not is_bundle(weights):
            raise InvalidInputError(
                f"{weights}: a folder, and not a MONAI bundle (no {METADATA}); give the "
                "weights file (a state dict: .safetensors or .pt) or a bundle folder"
            )
        bundle = read_bundle(weights, profile, backbone)
        path, state = bundle.weights, bundle.state
        name = f"{weights.name}/{path.relative_to(weights)}"
    else:
        _refuse_torchscript(weights)
        path, state, name = weights, load_weights_file(weights), weights.name
    model, layout, notes = _classifier(path, state, backbone, profile)
    if bundle is not None:
        notes = bundle.notes + notes
    digest = file_sha256(path)
    reads = [path] if bundle is None else [path, weights / METADATA, weights / INFERENCE]
    provenance = Provenance(
        "model import",
        {"weights": digest, "profile": profile_hash(profile)}
        | ({} if bundle is None else {k: v for k, v in bundle.record.items() if "sha" in k}),
        {},
        {"file": repr(name)},
    )
    with claim_folder(out_dir, provenance, overwrite=overwrite, reads=reads) as claim:
        if claim.fresh:
            remove_outputs(out_dir, IMPORT_OUTPUTS)
        card = ModelCard(
            **card_fields(profile, backbone, name),
            versions={"medadapt": metadata.version("medadapt"), "torch": torch.__version__},
            imported=ImportRecord(
                file=name,
                sha256=digest,
                layout=layout,
                notes=notes,
                bundle=None if bundle is None else bundle.record,
            ),
        )
        save_model(out_dir, model, card)
    return ImportResult(out_dir, layout, notes, None if bundle is None else bundle.record)


def _refuse_torchscript(path: Path) -> None:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
        raise InvalidInputError(
            f"{path}: a TorchScript file. Its network is compiled code, not layers medadapt "
            "can rebuild, change (batch-norm statistics, a new head) and save again, so it "
            "cannot be adapted. Import the weights instead: where the model is defined, "
            "torch.save(model.state_dict(), 'weights.pt')"
        )


def _classifier(
    path: Path, state: dict[str, Tensor], backbone: Backbone, profile: Profile
) -> tuple[Classifier, str, list[str]]:
    """The classifier the weights describe, the layout they came in, and what changed."""
    classes = profile.task.classes
    mode, pooling = profile.preprocessing.patch_mode, profile.preprocessing.pooling
    if "head.weight" in state and any(key.startswith("features.") for key in state):
        model = build_classifier(backbone, mode, len(classes), pooling=pooling)
        try:
            load_matching(model, state, "the profile's backbone and classes")
        except InvalidInputError as exc:
            raise InvalidInputError(f"{path}: {exc}") from None
        return model, "medadapt", []
    prefix = backbone.classifier_prefix
    if prefix is None:
        raise InvalidInputError(
            f"{path}: the keys are not medadapt's (features.*, head.*), and the backbone "
            f"{backbone.name!r} publishes no other layout to import from"
        )
    head = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if set(head) != {"weight", "bias"}:
        found = ", ".join(sorted(prefix + key for key in head)) or "none"
        raise InvalidInputError(
            f"{path}: no classifier layer {prefix}weight and {prefix}bias for "
            f"{backbone.name!r} (found: {found}). Weights of a backbone alone train a new "
            "model: give the file as backbone.weights (backbone: {name: ..., weights: FILE}) to "
            "`medadapt train`"
        )
    notes: list[str] = []
    features_state = {key: value for key, value in state.items() if not key.startswith(prefix)}
    model = build_classifier(backbone, mode, len(classes), features_state, pooling=pooling)
    weight, bias = head["weight"], head["bias"]
    outputs = weight.shape[0]
    if outputs == 1 and len(classes) == 2:
        # One logit z for the positive class: softmax over (0, z) gives sigmoid(z) for it.
        positive = classes.index(profile.task.positive_class)
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
        if positive == 0:
            weight, bias = weight.flip(0), bias.flip(0)
        notes.append(
            f"the one-logit output ({prefix}weight) became two logits, 0 for "
            f"{classes[1 - positive]!r} and the saved one for {classes[positive]!r}: the same "
            "probabilities (softmax over the two equals the sigmoid of the one)"
        )
    elif outputs != len(classes):
        raise InvalidInputError(
            f"{path}: the classifier layer {prefix}weight has {outputs} outputs, but the "
            f"profile's task.classes has {len(classes)} ({', '.join(classes)}); give the "
            "classes in the order the model was trained with"
        )
    if weight.shape[1] != model.head.in_features:
        raise InvalidInputError(
            f"{path}: {prefix}weight has shape {tuple(weight.shape)}, the backbone "
            f"{backbone.name!r} gives {model.head.in_features} features"
        )
    model.head.load_state_dict({"weight": weight, "bias": bias})
    first = _first_convolution(state)
    if first is not None and first.shape[1] != _in_channels(model):
        notes.append(
            f"the first convolution was trained on {first.shape[1]} channels and now reads "
            f"{_in_channels(model)} ({mode} patches): its weights are summed over the "
            "channels, which gives a grey image the response of the same image repeated"
        )
    layout = "monai" if prefix.startswith("class_layers") else "torchvision"
    return model, layout, notes


def _first_convolution(state: dict[str, Tensor]) -> Tensor | None:
    for key in ("conv1.weight", "features.conv0.weight"):
        if key in state:
            return state[key]
    return None


def _in_channels(model: Classifier) -> int:
    for module in model.features.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d):
            return module.in_channels
    raise AssertionError("a backbone without a convolution")
