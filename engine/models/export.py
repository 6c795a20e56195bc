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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from medadapt.engine.contracts.components import ComponentKind, Split
from medadapt.engine.contracts.errors import ExitCode, InvalidInputError, MedadaptError
from medadapt.engine.contracts.exporter import Exporter
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.models.card import ModelCard
from medadapt.engine.models.model import Classifier, atomic_file, load_model, patch_shape
from medadapt.engine.output.atomic import atomic_folder

if TYPE_CHECKING:
    from medadapt.engine.profile import Profile

#: The most an export's probability may differ from medadapt's on any probe patch: an
#: absolute difference of probabilities, any class.
TOLERANCE = 1e-5
#: How many probe patches every export is checked on, beside a site's own patches.
PROBES = 32
#: A probe patch is informative when medadapt's largest class probability on it is below
#: this (for two classes: both probabilities within (0.01, 0.99)). On a saturated patch,
#: where the probabilities are 0 and 1 to the last bit, an export that is wrong in every
#: weight can still agree exactly.
SATURATED = 0.99
#: How far the made probes' probabilities must spread before they are used.
SPREAD = (0.2, 0.8)
#: The fewest informative probe patches a check is accepted on.
MIN_INFORMATIVE = 8
#: At most this many of a site's validation patches join the probes.
SITE_PROBES = 64


class ExportDisagrees(MedadaptError):
    """An exported file does not reproduce medadapt's probabilities; it was not kept."""

    exit_code = ExitCode.NOT_PASSED


class UninformativeCheck(MedadaptError):
    """The probe patches cannot tell a faithful export from a wrong one; nothing was kept."""

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
    #: probes on which medadapt's largest class probability is below :data:`SATURATED`
    informative: int


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
    profile: Profile | None = None,
) -> ExportResult:
    """Write the model in ``model_dir`` as ``fmt`` to ``out``, checked on probe patches.

    The probes are :data:`PROBES` patches made for this model, each moved by gradient
    steps until medadapt's probabilities on it lie within (0.01, 0.99), where an export
    that computes something else shows it (:func:`informative_probes`), and, with a
    ``profile``, up to :data:`SITE_PROBES` of the site's own validation patches, prepared
    as the card says (never its test patients').

    Args:
        model_dir: a medadapt model folder (weights and card).
        fmt: an exporter's name: ``torchscript``, ``onnx``, ``monai-bundle`` or a plugin's.
        out: the file to write (a folder for a format that writes one).
        report: a ``report.json`` (or its folder) from ``medadapt validate`` of this model:
            its figures go into the export, for a format that ``takes_report``.
        overwrite: replace ``out`` when it exists.
        probes: the patches to check on instead of the ones above.
        profile: the site whose validation patches join the probes.

    Raises:
        InvalidInputError: an unknown format, ``out`` exists, the report is of another
            model, or the format's packages are missing.
        ExportDisagrees: the written file's probabilities differ from medadapt's by more
            than :data:`TOLERANCE`; nothing is left at ``out``.
        UninformativeCheck: fewer than :data:`MIN_INFORMATIVE` probes give medadapt a
            probability within (0.01, 0.99), so agreement would prove nothing; nothing is
            left at ``out``.
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
    site = None if profile is None else validation_patches(profile, registry, loaded.card)
    notes: list[str] = []
    writing = atomic_file(out) if exporter.writes == "file" else atomic_folder(out)
    with writing as temporary:  # nothing is left at out unless every step below succeeds
        notes += exporter.write(network, loaded.card, temporary, figures)
        patches = _probes(loaded.model, loaded.card, probes, site)
        with torch.no_grad():
            expected = network(patches).numpy()
        informative = _informative(expected, model_dir)
        actual = exporter.run(temporary, patches, notes)
        agreement = None if actual is None else _agree(actual, expected, out, informative)
    return ExportResult(out, fmt, agreement, notes)


def _probes(
    classifier: nn.Module, card: ModelCard, given: Tensor | None, site: Tensor | None
) -> Tensor:
    if given is not None:
        return given
    made = informative_probes(classifier, card)
    return made if site is None else torch.cat([site, made])


def _informative(expected: np.ndarray, model_dir: Path) -> int:
    informative = int((expected.max(axis=1) < SATURATED).sum())
    if informative < MIN_INFORMATIVE:
        raise UninformativeCheck(
            f"{model_dir}: medadapt's probabilities are saturated (a class at 0.99 or more) "
            f"on {len(expected) - informative} of the {len(expected)} probe patches, and "
            f"within (0.01, 0.99) on {informative} (at least {MIN_INFORMATIVE} needed): an "
            "export would agree on saturated patches whatever it computed; give patches "
            "the model is unsure of (--profile, for the site's validation patches); "
            "nothing was written"
        )
    return informative


def _takes_report(registry: ComponentRegistry, name: str) -> bool:
    return bool(getattr(registry.get(ComponentKind.EXPORTERS, name), "takes_report", False))


def probe_patches(card: ModelCard, count: int = PROBES, seed: int = 0) -> Tensor:
    """``count`` patches of the card's shape, values in [0, 1] as windowed patches have."""
    spec = card.preprocessing
    shape = (count, *patch_shape(spec))
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def informative_probes(
    classifier: nn.Module,
    card: ModelCard,
    count: int = PROBES,
    seed: int = 0,
    steps: int = 30,
) -> Tensor:
    """``count`` patches of the card's shape on which ``classifier``'s probabilities are
    spread over (0.01, 0.99): where an export that computes even slightly otherwise gives
    other probabilities.

    A model is sure of itself on uniform noise (its probabilities 0 and 1 to the last bit),
    so each probe starts from :func:`probe_patches` and takes gradient steps on its pixels,
    kept in (0, 1) as windowed patches are, until the log-odds of its class (probe ``i``
    aims at class ``i`` modulo the number of classes) moves towards a value spread evenly
    from probability 0.05 to 0.95 among the probes. It stops when no probe is saturated and
    each class's probability, on the probes aimed at it, reaches from :data:`SPREAD`'s low
    end to its high end, or after ``steps``. The model's weights are not changed
    (``classifier`` in eval mode).
    """
    start = probe_patches(card, count, seed).clamp(0.02, 0.98)
    pixels = torch.logit(start).requires_grad_(True)
    aimed = torch.arange(count) % len(card.classes)
    wanted = torch.logit(torch.linspace(0.05, 0.95, count))
    optimiser = torch.optim.Adam([pixels], lr=0.3)
    was_training = classifier.training
    classifier.eval()
    try:
        for _ in range(steps):
            logits = classifier(torch.sigmoid(pixels))
            chosen = logits.gather(1, aimed[:, None])[:, 0]
            others = logits.scatter(1, aimed[:, None], float("-inf")).logsumexp(1)
            probabilities = torch.softmax(logits.detach(), 1)
            aimed_at = probabilities.gather(1, aimed[:, None])[:, 0]
            unsure = bool((probabilities.max(1).values < SATURATED).all())
            if unsure and all(
                aimed_at[aimed == c].min() <= SPREAD[0] and aimed_at[aimed == c].max() >= SPREAD[1]
                for c in range(min(len(card.classes), count))
            ):
                break
            loss = ((chosen - others - wanted) ** 2).sum()
            (gradient,) = torch.autograd.grad(loss, [pixels])
            pixels.grad = gradient
            optimiser.step()
    finally:
        classifier.train(was_training)
    return torch.sigmoid(pixels).detach()


def validation_patches(
    profile: Profile, registry: ComponentRegistry, card: ModelCard, limit: int = SITE_PROBES
) -> Tensor:
    """Up to ``limit`` patches of the site's validation patients (the split every job
    sees; never the test split's), prepared as ``card`` says.

    Raises:
        InvalidInputError: the site has no validation patients.
    """
    from medadapt.engine.data.datasets import PatchDataset
    from medadapt.engine.data.samples import PatchLoader, open_site_data
    from medadapt.engine.data.splits import site_split

    data = open_site_data(profile, registry)
    records = [r for r in site_split(data.records, profile) if r.split is Split.VALIDATION]
    if not records:
        raise InvalidInputError(
            f"{profile.site.name}: no validation patients in data.split, so no patches of the "
            "site to check the export on: give the split a validation fraction"
        )
    loader = PatchLoader(data.source, card.preprocessing)
    dataset = PatchDataset(loader, records[:limit], list(card.classes))
    return torch.stack([patch for patch, _ in dataset])


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


def _agree(actual: np.ndarray, expected: np.ndarray, out: Path, informative: int) -> Agreement:
    difference = float(np.abs(actual - expected).max())
    if not difference <= TOLERANCE:  # also refuses NaN
        raise ExportDisagrees(
            f"{out}: the exported model's probabilities differ from medadapt's by up to "
            f"{difference:.2g} on {len(expected)} probe patches (allowed: {TOLERANCE:g}, "
            "absolute, on probabilities); nothing was written"
        )
    return Agreement(len(expected), difference, informative)


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
