"""A MONAI bundle: a folder MONAI's bundle tools read, and ``medadapt model import`` takes back.

- ``configs/metadata.json``: inputs, outputs, the preprocessing, the intended use, and the
  validation figures of a given report.json (``--report``);
- ``configs/inference.json``: the network from ``models/model.ts``, so MONAI runs it without
  medadapt;
- ``models/model.pt``: the state dict, for ``medadapt model import``;
- ``docs/README.md``: the bundle in words.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from torch import Tensor, nn

from medadapt.engine import Exporter, ModelCard, in_channels, patch_shape, torch_bytes
from medadapt.plugins.export.card import input_text, origin, version
from medadapt.plugins.export.torchscript import run_torchscript, write_torchscript

#: The bundle's layout (the MONAI Bundle Specification's), as engine/models/bundle.py reads it.
METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
STATE_DICT = Path("models") / "model.pt"
TORCHSCRIPT = Path("models") / "model.ts"
#: Where the MONAI Bundle Specification's metadata schema lives (written, never fetched).
MONAI_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
    "meta_schema_20240725.json"
)


def write_bundle(
    network: nn.Module, card: ModelCard, figures: Mapping[str, Any] | None, folder: Path
) -> None:
    """Write a MONAI bundle of ``network`` into ``folder`` (which exists and is empty)."""
    for part in ("configs", "models", "docs"):
        (folder / part).mkdir()
    write_torchscript(network, card, folder / TORCHSCRIPT)
    (folder / STATE_DICT).write_bytes(torch_bytes(network.classifier.state_dict()))
    (folder / METADATA).write_text(json.dumps(bundle_metadata(card, figures), indent=2) + "\n")
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": "$@network_def.eval()",
    }
    (folder / INFERENCE).write_text(json.dumps(inference, indent=2) + "\n")
    (folder / "docs" / "README.md").write_text(bundle_readme(card, figures))


def bundle_metadata(card: ModelCard, figures: Mapping[str, Any] | None) -> dict[str, Any]:
    """``configs/metadata.json`` in the MONAI Bundle Specification's fields, and medadapt's."""
    spec = card.preprocessing
    channels = in_channels(spec.patch_mode)
    versions = {name: version(name) for name in ("monai", "torch", "numpy")}
    return {
        "schema": MONAI_SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by medadapt {version('medadapt')}"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {},
        "name": f"{card.site} {card.positive_class} classifier",
        "task": f"classify a lesion-centred CT patch as {' or '.join(card.classes)}",
        "description": origin(card),
        "authors": "exported by medadapt",
        "copyright": "",
        "intended_use": card.intended_use or "not stated in the model card",
        "data_source": origin(card),
        "data_type": "dicom",
        "image_classes": f"{channels} channel CT patch, windowed to [0, 1]",
        "pred_classes": f"{len(card.classes)} probabilities: {', '.join(card.classes)}",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "CT",
                    "num_channels": channels,
                    "spatial_shape": list(patch_shape(spec)[1:]),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": _channel_def(spec.patch_mode),
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(card.classes),
                    "spatial_shape": [len(card.classes)],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {str(i): name for i, name in enumerate(card.classes)},
                }
            },
        },
        "medadapt": {
            "preprocessing": spec.model_dump(mode="json"),
            "input": input_text(card),
            "positive_class": card.positive_class,
            "trained_at": card.trained_at,
            "adapted_to": card.adapted_to,
            "decision": (
                card.adaptation.decision.statement
                if card.adaptation and card.adaptation.decision
                else None
            ),
            "backbone": card.backbone.model_dump(mode="json"),
            "weights_sha256": card.weights_sha256,
            "validation": figures,
        },
    }


def bundle_readme(card: ModelCard, figures: Mapping[str, Any] | None) -> str:
    """``docs/README.md``: the bundle in words, for the person deploying it."""
    lines = [
        f"# {card.site} {card.positive_class} classifier",
        "",
        f"{origin(card)}.",
        "",
        f"Intended use: {(card.intended_use or 'not stated in the model card').rstrip('.')}.",
        "",
        "## Input and output",
        "",
        input_text(card) + ".",
        "",
        f"Output: one probability per class ({', '.join(card.classes)}); the probability of "
        f"{card.positive_class!r} is the model's score.",
        "",
        "Run it with MONAI (`configs/inference.json` loads `models/model.ts`), or with "
        "PyTorch alone: `torch.jit.load('models/model.ts')`. `models/model.pt` is the state "
        "dict, which `medadapt model import` takes back.",
        "",
        "## Validation",
        "",
    ]
    if figures is None:
        lines.append(
            "No validation figures: no report of this model was given when it was exported. "
            "Validate the model at the site that will use it before it is used."
        )
    else:
        auroc = figures["auroc"]
        lines += [
            f"Measured by `medadapt validate` at {figures['site']} on {figures['date']}, on "
            f"{figures['test_patients']} test patients ({figures['test_samples']} samples) "
            "that played no part in training, adaptation or the choice of the model:",
            "",
            f"- AUROC {auroc['value']:.3f} ({figures['confidence_level']:.0%} interval "
            f"{auroc['low']:.3f} to {auroc['high']:.3f})",
        ]
        for name in ("sensitivity", "specificity"):
            value = figures[name]
            lines.append(
                f"- {name} {value['value']:.3f} ({value['low']:.3f} to {value['high']:.3f}) "
                f"at the threshold {figures['threshold']:.4f} ({figures['operating_point_rule']})"
            )
        lines += ["", f"Verdict against the site's acceptance criteria: {figures['verdict']}."]
    decision = card.adaptation.decision if card.adaptation else None
    if decision is not None:
        lines += ["", "## How this model was chosen", "", decision.statement + "."]
    return "\n".join(lines) + "\n"


def _channel_def(mode: str) -> dict[str, str]:
    if mode == "2.5d":
        return {
            "0": "previous slice (z minus one spacing)",
            "1": "lesion centre slice",
            "2": "next slice (z plus one spacing)",
        }
    return {"0": "CT"}


class MonaiBundle(Exporter):
    """A MONAI bundle folder: TorchScript network, state dict, metadata and README."""

    name = "monai-bundle"
    writes: ClassVar[Literal["file", "folder"]] = "folder"
    takes_report: ClassVar[bool] = True
    example = "a bundle folder"

    def write(
        self, network: nn.Module, card: ModelCard, out: Path, figures: Mapping[str, Any] | None
    ) -> list[str]:
        write_bundle(network, card, figures, out)
        if figures is not None:
            return []
        return [
            "no validation figures in the bundle: validate the model at the site that "
            "will use it (medadapt validate) and export again with --report"
        ]

    def run(self, out: Path, patches: Tensor, notes: list[str]) -> np.ndarray | None:
        return run_torchscript(out / TORCHSCRIPT, patches)

    def refuses_to_replace(self, existing: Path) -> str | None:
        bundle = existing.is_dir() and (existing / METADATA).is_file()
        if existing.is_dir() and (bundle or not any(existing.iterdir())):
            return None
        return "exists and is not a MONAI bundle; refusing to replace it (choose another --out)"
