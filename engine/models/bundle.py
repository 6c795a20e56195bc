"""MONAI bundles: read one to import its network, write one to deploy a medadapt model.

A MONAI bundle is a folder (the MONAI Bundle Specification): ``configs/metadata.json``
says what the network takes and gives, ``configs/inference.json`` how to build it
(``network_def``), and ``models/`` holds its weights (``model.pt``, a state dict) and often a
TorchScript copy (``model.ts``).

Reading never runs the bundle's code. MONAI's own parser evaluates the ``$`` expressions of
a config, which can do anything; medadapt reads the JSON as data, takes ``network_def``'s
``_target_`` and its literal arguments (``@name`` references to literal values are
followed), and refuses anything else by name. The weights are read with
``weights_only=True`` (engine/models/weights.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from medadapt.engine.contracts.components import Backbone
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.models.model import file_sha256
from medadapt.engine.models.weights import load_weights_file
from medadapt.engine.profile import Profile

METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
STATE_DICT = Path("models") / "model.pt"
TORCHSCRIPT = Path("models") / "model.ts"

#: ``network_def`` arguments medadapt reads; any other is listed in the import's notes.
_SHAPE_ARGUMENTS = ("spatial_dims", "in_channels", "out_channels", "num_classes")


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` looks like a MONAI bundle (it has ``configs/metadata.json``)."""
    return (folder / METADATA).is_file()


@dataclass(frozen=True)
class BundleNetwork:
    """What a bundle says about its network, read without running any of it.

    Attributes:
        weights: the state dict file (``models/model.pt``).
        state: its tensors.
        target: ``network_def``'s ``_target_``.
        arguments: ``network_def``'s other arguments, resolved to literal values.
        record: name, version and hashes of the bundle, for the model card.
        notes: what the import did not carry over, in words.
    """

    weights: Path
    state: dict[str, Tensor]
    target: str
    arguments: dict[str, Any]
    record: dict[str, str]
    notes: list[str] = field(default_factory=list)


def read_bundle(folder: Path, profile: Profile, backbone: Backbone) -> BundleNetwork:
    """Read a bundle's network for ``backbone``, checking it against ``profile``.

    Raises:
        InvalidInputError: a config is missing or not JSON, ``network_def`` is an
            expression or another network than the profile's backbone, its dimensions or
            outputs disagree with the profile, or the weights are TorchScript only.
    """
    metadata = _json(folder / METADATA)
    inference = _json(folder / INFERENCE)
    network = inference.get("network_def")
    if network is None:
        raise InvalidInputError(
            f"{folder / INFERENCE}: no 'network_def': the bundle does not say which network "
            "its weights are for"
        )
    exported = metadata.get("medadapt")
    if isinstance(network, str) and isinstance(exported, Mapping):
        return _exported_by_medadapt(folder, exported, metadata, backbone)
    if isinstance(network, str):
        network = _resolve(inference, network, "network_def", folder)
    if not isinstance(network, Mapping) or not isinstance(network.get("_target_"), str):
        raise InvalidInputError(
            f"{folder / INFERENCE}: network_def is not a component with a '_target_' "
            f"(found {str(network)[:80]!r})"
        )
    target = str(network["_target_"])
    if target not in backbone.bundle_networks:
        known = ", ".join(sorted(n for n in backbone.bundle_networks if "." not in n)) or "none"
        raise InvalidInputError(
            f"{folder / INFERENCE}: network_def builds {target!r}, which is not the profile's "
            f"backbone {backbone.name!r} (its bundle networks: {known}); set backbone.name "
            "to the backbone that rebuilds this network"
        )
    arguments = {
        key: _resolve(inference, value, f"network_def.{key}", folder)
        for key, value in network.items()
        if not key.startswith("_")
    }
    notes = _check_shape(folder, arguments, metadata, profile)
    weights, state = _weights(folder, notes)
    record = _record(folder, metadata, target)
    return BundleNetwork(weights, state, target, arguments, record, notes)


def _record(folder: Path, metadata: Mapping[str, Any], network: str) -> dict[str, str]:
    return {
        "name": str(metadata.get("name") or folder.name),
        "version": str(metadata.get("version", "")),
        "network": network,
        "metadata_sha256": file_sha256(folder / METADATA),
        "inference_sha256": file_sha256(folder / INFERENCE),
    }


def _exported_by_medadapt(
    folder: Path, exported: Mapping[str, Any], metadata: Mapping[str, Any], backbone: Backbone
) -> BundleNetwork:
    """A bundle ``medadapt model export`` wrote: its network is TorchScript for MONAI, and
    its state dict (medadapt's key names) is read back for the backbone it names."""
    named = exported.get("backbone", {}).get("name") if isinstance(exported, Mapping) else None
    if named != backbone.name:
        raise InvalidInputError(
            f"{folder / METADATA}: medadapt exported this bundle from a {named!r} model, but "
            f"the profile's backbone is {backbone.name!r}"
        )
    notes: list[str] = []
    weights, state = _weights(folder, notes)
    target = f"medadapt {named}"
    return BundleNetwork(weights, state, target, {}, _record(folder, metadata, target), notes)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidInputError(f"{path}: missing; a MONAI bundle has {METADATA} and {INFERENCE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _resolve(config: Mapping[str, Any], value: Any, where: str, folder: Path) -> Any:
    """A config value as a literal: ``@name`` references followed, expressions refused."""
    seen: set[str] = set()
    while isinstance(value, str) and value.startswith("@"):
        name = value[1:]
        if name in seen or name not in config or "::" in name or "#" in name:
            raise InvalidInputError(
                f"{folder / INFERENCE}: {where} refers to {value!r}, which is not a value at "
                "the top of the config; give the value itself"
            )
        seen.add(name)
        value = config[name]
    if isinstance(value, str) and value.startswith("$"):
        raise InvalidInputError(
            f"{folder / INFERENCE}: {where} is an expression ({value[:60]!r}). medadapt reads "
            "a bundle as data and never runs its code: give the value itself"
        )
    return value


def _check_shape(
    folder: Path, arguments: Mapping[str, Any], metadata: Mapping[str, Any], profile: Profile
) -> list[str]:
    notes: list[str] = []
    mode = profile.preprocessing.patch_mode
    dims = 3 if mode == "3d" else 2
    spatial = arguments.get("spatial_dims")
    if spatial is not None and spatial != dims:
        raise InvalidInputError(
            f"{folder / INFERENCE}: network_def.spatial_dims is {spatial}, but the profile's "
            f"preprocessing.patch_mode {mode!r} gives {dims}D patches"
        )
    outputs = arguments.get("out_channels", arguments.get("num_classes"))
    classes = list(profile.task.classes)
    if isinstance(outputs, int) and outputs not in (len(classes), 1):
        raise InvalidInputError(
            f"{folder / INFERENCE}: network_def gives {outputs} outputs, but the profile's "
            f"task.classes has {len(classes)} ({', '.join(classes)})"
        )
    output = _first(metadata, "network_data_format", "outputs")
    names = output.get("channel_def") if isinstance(output, Mapping) else None
    if isinstance(names, Mapping) and len(names) == len(classes):
        declared = [str(names[key]) for key in sorted(names, key=str)]
        if [n.lower() for n in declared] != [c.lower() for c in classes]:
            raise InvalidInputError(
                f"{folder / METADATA}: the outputs are {', '.join(declared)} "
                f"(network_data_format channel_def), the profile's task.classes "
                f"{', '.join(classes)}: give the classes in the order the network outputs them"
            )
    image = _first(metadata, "network_data_format", "inputs")
    shape = image.get("spatial_shape") if isinstance(image, Mapping) else None
    wanted = list(profile.preprocessing.patch_size)
    if isinstance(shape, list) and all(isinstance(s, int) for s in shape) and shape != wanted:
        notes.append(
            f"the bundle's network was made for inputs of {shape} and will read patches of "
            f"{wanted} (preprocessing.patch_size): validate it before relying on it"
        )
    ignored = sorted(set(arguments) - set(_SHAPE_ARGUMENTS))
    if ignored:
        shown = ", ".join(f"{key}={arguments[key]!r}" for key in ignored)
        notes.append(
            f"network_def arguments not carried over ({shown}): the backbone builds its "
            "own network, and a setting that changes the layers is refused by the weights"
        )
    return notes


def _first(metadata: Mapping[str, Any], *path: str) -> Any:
    """The first entry of a nested section (``inputs.image``, ``outputs.pred``), or None."""
    value: Any = metadata
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(value, Mapping) and value:
        return next(iter(value.values()))
    return None


def _weights(folder: Path, notes: list[str]) -> tuple[Path, dict[str, Tensor]]:
    for candidate in (STATE_DICT, STATE_DICT.with_suffix(".pth"), Path("models/model.safetensors")):
        path = folder / candidate
        if path.is_symlink():
            _check_link(folder, path, notes)
        if path.is_file():
            return path, load_weights_file(path)
    if (folder / TORCHSCRIPT).is_file():
        raise InvalidInputError(
            f"{folder / TORCHSCRIPT}: the bundle's only weights are TorchScript, compiled code "
            "medadapt cannot rebuild, change (batch-norm statistics, a new head) and save "
            "again. Add its state dict as models/model.pt: where the network is defined, "
            "torch.save(network.state_dict(), 'models/model.pt')"
        )
    found = (
        sorted(p.name for p in (folder / "models").glob("*") if p.is_file())
        if (folder / "models").is_dir()
        else []
    )
    raise InvalidInputError(
        f"{folder}: no {STATE_DICT} in the bundle (models/ holds: {', '.join(found) or 'nothing'})"
    )


def _check_link(folder: Path, link: Path, notes: list[str]) -> None:
    """A weights file that is a symbolic link: refused when it leads nowhere (or to a
    folder); followed with a note when it leads out of the bundle, so that the card's
    record of the weights is read knowing they came from elsewhere."""
    target = link.resolve()
    if not target.exists():
        raise InvalidInputError(
            f"{link}: a symbolic link to {link.readlink()}, which does not exist; copy the "
            "weights into the bundle, or mend the link"
        )
    if not target.is_file():
        raise InvalidInputError(
            f"{link}: a symbolic link to {target}, a folder, not a weights file"
        )
    if not target.is_relative_to(folder.resolve()):
        notes.append(
            f"{link.relative_to(folder)} is a symbolic link that leaves the bundle: the "
            f"weights were read from {target}"
        )
