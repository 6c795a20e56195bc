"""``medadapt model export``: a model folder written for deployment, checked before it is kept.

What is exported is the deployed network: a batch of patches in, prepared as the model card
says (lesion-centred, resampled to its spacing, windowed to [0, 1]: engine/data/patches.py), and
one probability per class out, the same softmax medadapt's own validation reads. The format is
a plugin (an :class:`~medadapt.engine.contracts.exporter.Exporter`; the built-in ones are
plugins/export/). Every export is run on probe patches before it is kept, and kept only when its
probabilities agree with medadapt's within :data:`TOLERANCE`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medadapt.engine.contracts.components import ComponentKind
from medadapt.engine.contracts.errors import ExitCode, InvalidInputError, MedadaptError
from medadapt.engine.contracts.exporter import Exporter
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.models.card import ModelCard
from medadapt.engine.models.model import Classifier, atomic_file, load_model, patch_shape
from medadapt.engine.output.atomic import atomic_folder

#: The most an export's probability may differ from medadapt's on any probe patch.
TOLERANCE = 1e-5
#: How many probe patches every export is checked on.
PROBES = 32


class ExportDisagrees(MedadaptError):
    """An exported file does not reproduce medadapt's probabilities; it was not kept."""

    exit_code = ExitCode.NOT_PASSED


class Probabilities(nn.Module):
    """The deployed network: prepared patches in, one probability per class out."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, patches: Tensor) -> Tensor:
        return torch.softmax(self.classifier(patches), dim=1)


@dataclass(frozen=True)
class Agreement:
    """How an export compared with medadapt on probe patches."""

    patches: int
    max_difference: float


@dataclass(frozen=True)
class ExportResult:
    """What ``export_model`` wrote and how it was checked.

    Attributes:
        path: the file (TorchScript, ONNX) or folder (MONAI bundle).
        format: the exporter's name (``torchscript``, ``onnx``, ``monai-bundle``, a plugin's).
        agreement: the check on probe patches; None for ONNX without onnxruntime.
        notes: what the user should know (a check not run, validation figures not included).
    """

    path: Path
    format: str
    agreement: Agreement | None
    notes: list[str]


def export_model(
    model_dir: Path,
    registry: ComponentRegistry,
    fmt: str,
    out: Path,
    report: Path | None = None,
    overwrite: bool = False,
    probes: Tensor | None = None,
) -> ExportResult:
    """Write the model in ``model_dir`` as ``fmt`` to ``out``, checked on probe patches.

    Args:
        model_dir: a medadapt model folder (weights and card).
        fmt: an exporter's name: ``torchscript``, ``onnx``, ``monai-bundle`` or a plugin's.
        out: the file to write (a folder for a format that writes one).
        report: a ``report.json`` (or its folder) from ``medadapt validate`` of this model:
            its figures go into the export, for a format that ``takes_report``.
        overwrite: replace ``out`` when it exists.
        probes: the patches to check on; :data:`PROBES` patches drawn in [0, 1] when None.

    Raises:
        InvalidInputError: an unknown format, ``out`` exists, the report is of another
            model, or the format's packages are missing.
        ExportDisagrees: the written file's probabilities differ from medadapt's by more
            than :data:`TOLERANCE`; nothing is left at ``out``.
    """
    exporter = registry.build(Exporter, fmt)
    if report is not None and not exporter.takes_report:
        takes = [
            name
            for name in registry.names(ComponentKind.EXPORTERS)
            if _takes_report(registry, name)
        ]
        raise InvalidInputError(
            f"--report goes into the metadata of {' or '.join(takes) or 'no installed format'}, "
            f"not of {fmt}: use it with --format {takes[0] if takes else '...'}"
        )
    loaded = load_model(model_dir, registry)
    figures = _validation_figures(report, loaded.card) if report is not None else None
    _check_out(out, exporter, overwrite, model_dir)
    network = Probabilities(loaded.model).eval()
    patches = probe_patches(loaded.card) if probes is None else probes
    with torch.no_grad():
        expected = network(patches).numpy()
    notes: list[str] = []
    writing = atomic_file(out) if exporter.writes == "file" else atomic_folder(out)
    with writing as temporary:
        notes += exporter.write(network, loaded.card, temporary, figures)
        actual = exporter.run(temporary, patches, notes)
        agreement = None if actual is None else _agree(actual, expected, out)
    return ExportResult(out, fmt, agreement, notes)


def _takes_report(registry: ComponentRegistry, name: str) -> bool:
    return bool(getattr(registry.get(ComponentKind.EXPORTERS, name), "takes_report", False))


def probe_patches(card: ModelCard, count: int = PROBES, seed: int = 0) -> Tensor:
    """``count`` patches of the card's shape, values in [0, 1] as windowed patches have."""
    spec = card.preprocessing
    shape = (count, *patch_shape(spec))
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _validation_figures(report: Path, card: ModelCard) -> dict[str, Any]:
    path = report / "report.json" if report.is_dir() else report
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        measured = data["models"]["model"]["weights_sha256"]
        results = data["results"]["model"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidInputError(
            f"{path}: not a report.json written by medadapt validate ({exc})"
        ) from None
    if measured != card.weights_sha256:
        raise InvalidInputError(
            f"{path}: this report measured another model (weights {str(measured)[:12]}..., "
            f"the model exported has {str(card.weights_sha256)[:12]}...): its figures cannot "
            "go into this model's bundle; validate this model and give that report"
        )
    counts = data.get("data", {})
    return {
        "site": data.get("site"),
        "date": data.get("date"),
        "confidence_level": data.get("confidence_level"),
        "operating_point_rule": data.get("operating_point_rule"),
        "threshold": results["threshold"],
        "auroc": results["auroc"],
        "sensitivity": results["sensitivity"],
        "specificity": results["specificity"],
        "calibration_error": results.get("calibration_error"),
        "test_patients": counts.get("patients", {}).get("test"),
        "test_samples": counts.get("validated_samples", {}).get("test"),
        "verdict": data.get("acceptance", {}).get("verdict"),
        "report_weights_sha256": measured,
    }


def _agree(actual: np.ndarray, expected: np.ndarray, out: Path) -> Agreement:
    difference = float(np.abs(actual - expected).max())
    if not difference <= TOLERANCE:  # also refuses NaN
        raise ExportDisagrees(
            f"{out}: the exported model's probabilities differ from medadapt's by up to "
            f"{difference:.2g} on {len(expected)} probe patches (allowed: {TOLERANCE:g}); "
            "nothing was written"
        )
    return Agreement(len(expected), difference)


def _check_out(out: Path, exporter: Exporter, overwrite: bool, model_dir: Path) -> None:
    if out.is_symlink():
        raise InvalidInputError(
            f"{out}: a symbolic link (to {out.readlink()}); replacing it would replace either "
            "the link or what it points to, and which was meant cannot be known: give the "
            "file or folder itself as --out, or remove the link"
        )
    model = model_dir.resolve()
    if out.resolve() == model or (out.exists() and out.resolve().is_relative_to(model)):
        what = "the model folder itself" if out.resolve() == model else "a file of the model"
        raise InvalidInputError(
            f"{out}: {what} being exported; "
            "the export would replace the model it is made from: choose an --out outside "
            f"{model_dir}"
        )
    if not out.exists():
        if not out.parent.is_dir():
            raise InvalidInputError(
                f"{out.parent}: the folder to write {out.name} into does not exist"
            )
        return
    if not overwrite:
        raise InvalidInputError(f"{out}: exists; give --overwrite to replace it")
    refusal = exporter.refuses_to_replace(out)
    if refusal is not None:
        raise InvalidInputError(f"{out}: {refusal}")
