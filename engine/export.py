"""``medadapt model export``: a model folder as TorchScript, ONNX or a MONAI bundle.

What is exported is the deployed network: a batch of patches in, prepared as the model card
says (lesion-centred, resampled to its spacing, windowed to [0, 1]: engine/data/patches.py), and
one probability per class out, the same softmax medadapt's own validation reads. Every
export is run on probe patches before it is kept, and kept only when its probabilities agree
with medadapt's within :data:`TOLERANCE`; the TorchScript and ONNX files carry the model
card, so a deployed file still says what it is and where it came from.

- ``torchscript``: ``torch.jit.trace``; runs with PyTorch alone. PyTorch has deprecated
  TorchScript in favour of ``torch.export``; it is written because deployment tools still
  take it.
- ``onnx``: torch.onnx's exporter (``dynamo=True``), which needs the ``onnx`` and
  ``onnxscript`` packages (``pip install 'medadapt[onnx]'``); checked with onnxruntime when
  it is installed, and said plainly when it is not.
- ``monai-bundle``: a folder MONAI's bundle tools read: ``configs/metadata.json`` (inputs,
  outputs, the preprocessing, the intended use, and the validation figures of a given
  report.json), ``configs/inference.json`` (the network from ``models/model.ts``, so MONAI
  runs it without medadapt), ``models/model.pt`` (the state dict, for ``model import``) and
  ``docs/README.md``.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medadapt.engine.contracts.errors import ExitCode, InvalidInputError, MedadaptError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.models.bundle import INFERENCE, METADATA, STATE_DICT, TORCHSCRIPT, is_bundle
from medadapt.engine.models.card import ModelCard
from medadapt.engine.models.model import (
    Classifier,
    atomic_file,
    in_channels,
    load_model,
    patch_shape,
    torch_bytes,
)
from medadapt.engine.output.atomic import atomic_folder

FORMATS = ("torchscript", "onnx", "monai-bundle")
#: The most an export's probability may differ from medadapt's on any probe patch.
TOLERANCE = 1e-5
#: How many probe patches every export is checked on.
PROBES = 32
#: Where the MONAI Bundle Specification's metadata schema lives (written, never fetched).
MONAI_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
    "meta_schema_20240725.json"
)


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
        format: one of :data:`FORMATS`.
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
        fmt: ``torchscript``, ``onnx`` or ``monai-bundle``.
        out: the file to write (a folder for ``monai-bundle``).
        report: a ``report.json`` (or its folder) from ``medadapt validate`` of this model:
            its figures go into the bundle's metadata. Only for ``monai-bundle``.
        overwrite: replace ``out`` when it exists.
        probes: the patches to check on; :data:`PROBES` patches drawn in [0, 1] when None.

    Raises:
        InvalidInputError: an unknown format, ``out`` exists, the report is of another
            model, or ONNX's packages are missing.
        ExportDisagrees: the written file's probabilities differ from medadapt's by more
            than :data:`TOLERANCE`; nothing is left at ``out``.
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    if report is not None and fmt != "monai-bundle":
        raise InvalidInputError(
            "--report goes into a MONAI bundle's metadata: use it with --format monai-bundle"
        )
    loaded = load_model(model_dir, registry)
    figures = _validation_figures(report, loaded.card) if report is not None else None
    _check_out(out, fmt, overwrite, model_dir)
    network = Probabilities(loaded.model).eval()
    patches = probe_patches(loaded.card) if probes is None else probes
    with torch.no_grad():
        expected = network(patches).numpy()
    notes: list[str] = []
    if fmt == "torchscript":
        with atomic_file(out) as temporary:
            write_torchscript(network, loaded.card, temporary)
            agreement = _agree(run_torchscript(temporary, patches), expected, out)
    elif fmt == "onnx":
        with atomic_file(out) as temporary:
            write_onnx(network, loaded.card, temporary)
            agreement = _agree_onnx(temporary, patches, expected, out, notes)
    else:
        with atomic_folder(out) as temporary:
            write_bundle(network, loaded.card, figures, temporary)
            agreement = _agree(run_torchscript(temporary / TORCHSCRIPT, patches), expected, out)
        if figures is None:
            notes.append(
                "no validation figures in the bundle: validate the model at the site that "
                "will use it (medadapt validate) and export again with --report"
            )
    return ExportResult(out, fmt, agreement, notes)


def probe_patches(card: ModelCard, count: int = PROBES, seed: int = 0) -> Tensor:
    """``count`` patches of the card's shape, values in [0, 1] as windowed patches have."""
    spec = card.preprocessing
    shape = (count, *patch_shape(spec))
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --- TorchScript --------------------------------------------------------------------------


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    # PyTorch warns on every TorchScript call that it is deprecated (the module docstring
    # says why it is still written); the warning is for PyTorch users, not for ours.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def write_torchscript(network: Probabilities, card: ModelCard, path: Path) -> None:
    """Trace ``network`` and save it, the card inside the file as ``medadapt/card.json``."""
    example = probe_patches(card, count=2, seed=1)
    with _quiet_deprecation(), torch.no_grad():
        traced = torch.jit.trace(network, example)
        buffer = io.BytesIO()  # in memory first: PyTorch's own writer aborts on a full disk
        torch.jit.save(traced, buffer, _extra_files={"medadapt/card.json": _card_text(card)})
    path.write_bytes(buffer.getvalue())


def run_torchscript(path: Path, patches: Tensor) -> np.ndarray:
    """The probabilities a saved TorchScript file gives for ``patches``."""
    with _quiet_deprecation(), torch.no_grad():
        network = torch.jit.load(str(path), map_location="cpu")
        return network(patches).numpy()


# --- ONNX ---------------------------------------------------------------------------------


def write_onnx(network: Probabilities, card: ModelCard, path: Path) -> None:
    """Export ``network`` to one ONNX file (batch size free), the card in its metadata."""
    missing = [name for name in ("onnx", "onnxscript") if not _installed(name)]
    if missing:
        raise InvalidInputError(
            f"ONNX export needs the {' and '.join(missing)} package"
            f"{'s' if len(missing) > 1 else ''}, which medadapt does not install by default: "
            "pip install 'medadapt[onnx]'"
        )
    import onnx

    example = probe_patches(card, count=2, seed=1)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own notes on its internals
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=["patches"],
            output_names=["probabilities"],
            dynamic_shapes={"patches": {0: batch}},
            verbose=False,
        )
    assert program is not None
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    for key, value in _onnx_metadata(card).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _onnx_metadata(card: ModelCard) -> dict[str, str]:
    return {
        "medadapt_card": _card_text(card),
        "classes": json.dumps(card.classes),
        "positive_class": card.positive_class,
        "input": _input_text(card),
    }


def run_onnx(path: Path, patches: Tensor) -> np.ndarray:
    """The probabilities an ONNX file gives for ``patches``, through onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"patches": patches.numpy()})[0]


def _agree_onnx(
    path: Path, patches: Tensor, expected: np.ndarray, out: Path, notes: list[str]
) -> Agreement | None:
    if not _installed("onnxruntime"):
        notes.append(
            "not checked: onnxruntime is not installed, so the ONNX file was not run here "
            "(pip install onnxruntime, then export again to check it)"
        )
        return None
    return _agree(run_onnx(path, patches), expected, out)


# --- MONAI bundle -------------------------------------------------------------------------


def write_bundle(
    network: Probabilities, card: ModelCard, figures: dict[str, Any] | None, folder: Path
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


def bundle_metadata(card: ModelCard, figures: dict[str, Any] | None) -> dict[str, Any]:
    """``configs/metadata.json`` in the MONAI Bundle Specification's fields, and medadapt's."""
    spec = card.preprocessing
    channels = in_channels(spec.patch_mode)
    versions = {name: _version(name) for name in ("monai", "torch", "numpy")}
    return {
        "schema": MONAI_SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by medadapt {_version('medadapt')}"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {},
        "name": f"{card.site} {card.positive_class} classifier",
        "task": f"classify a lesion-centred CT patch as {' or '.join(card.classes)}",
        "description": _origin(card),
        "authors": "exported by medadapt",
        "copyright": "",
        "intended_use": card.intended_use or "not stated in the model card",
        "data_source": _origin(card),
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
            "input": _input_text(card),
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


def bundle_readme(card: ModelCard, figures: dict[str, Any] | None) -> str:
    """``docs/README.md``: the bundle in words, for the person deploying it."""
    lines = [
        f"# {card.site} {card.positive_class} classifier",
        "",
        f"{_origin(card)}.",
        "",
        f"Intended use: {(card.intended_use or 'not stated in the model card').rstrip('.')}.",
        "",
        "## Input and output",
        "",
        _input_text(card) + ".",
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


# --- shared -------------------------------------------------------------------------------


def _agree(actual: np.ndarray, expected: np.ndarray, out: Path) -> Agreement:
    difference = float(np.abs(actual - expected).max())
    if not difference <= TOLERANCE:  # also refuses NaN
        raise ExportDisagrees(
            f"{out}: the exported model's probabilities differ from medadapt's by up to "
            f"{difference:.2g} on {len(expected)} probe patches (allowed: {TOLERANCE:g}); "
            "nothing was written"
        )
    return Agreement(len(expected), difference)


def _check_out(out: Path, fmt: str, overwrite: bool, model_dir: Path) -> None:
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
    if fmt == "monai-bundle" and not (out.is_dir() and (is_bundle(out) or not any(out.iterdir()))):
        raise InvalidInputError(
            f"{out}: exists and is not a MONAI bundle; refusing to replace it "
            "(choose another --out)"
        )
    if fmt != "monai-bundle" and out.is_dir():
        raise InvalidInputError(f"{out}: a folder; the {fmt} export is one file")


def _card_text(card: ModelCard) -> str:
    return json.dumps(card.as_json(), sort_keys=True)


def _input_text(card: ModelCard) -> str:
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


def _channel_def(mode: str) -> dict[str, str]:
    if mode == "2.5d":
        return {
            "0": "previous slice (z minus one spacing)",
            "1": "lesion centre slice",
            "2": "next slice (z plus one spacing)",
        }
    return {"0": "CT"}


def _origin(card: ModelCard) -> str:
    text = f"Trained at {card.trained_at} on a {card.backbone.name} backbone"
    if card.adapted_to:
        assert card.adaptation is not None
        text += f", adapted to {card.adapted_to} with {card.adaptation.method}"
    return text


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
