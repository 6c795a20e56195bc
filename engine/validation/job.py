"""The validation job: measure a model on the site's test patients and judge it.

``validate`` predicts on the validation split (to choose the operating point and, when asked,
a calibration temperature, both before the test is looked at) and on the test split, and
measures, each with a patient-level bootstrap interval (engine/validation/metrics.py): AUROC, the
operating point's sensitivity, specificity, PPV and NPV, calibration, subgroups, and the
paired difference against a baseline model. The profile's acceptance criteria are judged
on these numbers. Everything goes into one dictionary, written as report.json, from which
report.html is rendered (engine/validation/report.py): the two cannot disagree.

Nothing identifying leaves this module: samples are named by their keyed patient pseudonym,
and a record's locator (which may hold a file path with a name in it) is never written.
"""

from __future__ import annotations

import csv
import datetime
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medadapt.engine.contracts.components import UNADAPTED, Rejection, SampleRecord, Split
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.host import PluginHost
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.augment import one_of_each_class, preview
from medadapt.engine.data.samples import SiteData, open_site_data
from medadapt.engine.data.splits import site_split
from medadapt.engine.models.card import data_manifest_hash, profile_hash
from medadapt.engine.models.inference import compute_device
from medadapt.engine.models.model import LoadedModel, atomic_file, load_model
from medadapt.engine.models.runfolder import Provenance, claim_folder, json_hash, profile_reads
from medadapt.engine.output.text import csv_row
from medadapt.engine.profile import Profile
from medadapt.engine.validation.acceptance import judge, warnings
from medadapt.engine.validation.evaluate import Predictions, check_positive_class, predict_records
from medadapt.engine.validation.metrics import (
    PatientBootstrap,
    apply_temperature,
    auroc,
    confusion,
    expected_calibration_error,
    fit_temperature,
    operating_threshold,
    rates,
    reliability,
    resampled_auroc,
    roc_points,
)
from medadapt.engine.validation.report import ReportImages, write_report

#: Every prediction the report's numbers come from: model, split, patient pseudonym, label,
#: score and the subgroup attributes, so anyone can recompute them.
PREDICTIONS = "predictions.csv"


@dataclass(frozen=True)
class ValidationResult:
    """Where the report went and what it concluded."""

    out_dir: Path
    report: dict[str, Any]

    @property
    def verdict(self) -> str:
        return str(self.report["acceptance"]["verdict"])


def validate(
    profile: Profile,
    registry: ComponentRegistry,
    host: PluginHost,
    model_dir: Path,
    out_dir: Path,
    baseline_dir: Path | None = None,
    shift: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
    quiet: bool = False,
    *,
    overwrite: bool = False,
) -> ValidationResult:
    """Measure the model in ``model_dir`` on the profile's test patients and write the report.

    Args:
        profile: the site whose test split is measured; its ``acceptance`` section is the gate.
        registry, host: components and plugins.
        model_dir: the model to judge (an adapted model, usually).
        out_dir: where report.json, report.html and their figures go.
        baseline_dir: a model to compare with (the unadapted source model, usually).
        shift: the result of ``medadapt shift`` for this site, shown in the report.
        cache_dir: the patch cache.
        quiet: no progress output.
        overwrite: write into a folder made by something else (another model, another
            job).

    The models are read and the folder claimed (see :mod:`medadapt.engine.models.runfolder`)
    before any data are.

    Raises:
        InvalidInputError: a model lacks the positive class, a split has no labelled
            sample of both classes, or ``out_dir`` is held by another job or was made by
            something else (without ``overwrite``).
    """
    loaded = load_model(model_dir, registry)
    check_positive_class(loaded, profile, model_dir)
    models = {"model": (model_dir, loaded)}
    if baseline_dir is not None:
        baseline = load_model(baseline_dir, registry)
        check_positive_class(baseline, profile, baseline_dir)
        models["baseline"] = (baseline_dir, baseline)
    provenance = Provenance(
        "validate",
        {
            "profile": profile_hash(profile),
            **{name: model.card.weights_sha256 for name, (_, model) in models.items()},
            "shift": json_hash(shift) if shift is not None else None,
        },
        {"seed": profile.seed},
        {"site": repr(profile.site.name), "model": str(model_dir)},
    )
    reads = [folder for folder, _ in models.values()] + profile_reads(profile)
    with claim_folder(out_dir, provenance, overwrite=overwrite, reads=reads):
        return _validate(profile, registry, host, models, out_dir, shift, cache_dir)


def _validate(
    profile: Profile,
    registry: ComponentRegistry,
    host: PluginHost,
    models: dict[str, tuple[Path, LoadedModel]],
    out_dir: Path,
    shift: Mapping[str, Any] | None,
    cache_dir: Path | None,
) -> ValidationResult:
    loaded = models["model"][1]
    for folder, model in models.values():
        if model.card.level != profile.task.level:
            raise InvalidInputError(
                f"{folder}: the model predicts per {model.card.level}, and the profile's "
                f"task.level is {profile.task.level}: validate it with a profile at its level"
            )
    site = open_site_data(profile, registry, cache_dir)
    records = site_split(site.records, profile)
    splits = {
        split: [r for r in records if r.split is split and r.label in loaded.card.classes]
        for split in (Split.VALIDATION, Split.TEST)
    }
    for split, chosen in splits.items():
        if len({r.label == profile.task.positive_class for r in chosen}) < 2:
            raise InvalidInputError(
                f"{profile.site.name}: the {split.value} split needs labelled samples of both "
                f"the positive class and another class to validate (has {len(chosen)} "
                "labelled samples); label more patients or change data.split"
            )
    level = profile.report.confidence_level
    device = compute_device(profile.training.device)
    predictions = {
        name: {
            split: predict_records(
                model, profile.task.positive_class, site.source, chosen, cache_dir, device=device
            )
            for split, chosen in splits.items()
        }
        for name, (_, model) in models.items()
    }
    test = predictions["model"][Split.TEST]
    boot = PatientBootstrap(test.patients, level=level, seed=profile.seed)
    results = {name: _measure(by_split, profile, boot) for name, by_split in predictions.items()}
    report: dict[str, Any] = {
        "title": profile.report.title or f"Validation at {profile.site.name}",
        "site": profile.site.name,
        "intended_use": profile.intended_use,
        "body_region": profile.body_region,
        "positive_class": profile.task.positive_class,
        "classes": list(profile.task.classes),
        "level": profile.task.level,
        "date": datetime.date.today().isoformat(),
        "confidence_level": level,
        "operating_point_rule": _rule_text(profile),
        "bootstrap": {"resamples": boot.resamples, "unit": "patient", "seed": boot.seed},
        "models": {
            name: _describe_model(model, folder) for name, (folder, model) in models.items()
        },
        "results": results,
        "comparison": _compare(predictions, results, boot) if "baseline" in predictions else None,
        "subgroups": _subgroups(test, profile, level),
        "data": _data_section(site, records, splits, profile),
        "training": _curves(loaded),
        "shift": dict(shift) if shift is not None else None,
        "failures": _failures(test, results["model"]["threshold"], profile),
    }
    report["acceptance"] = judge(profile, report)
    if "baseline" in results:
        alone = {**report, "results": {"model": results["baseline"]}, "comparison": None}
        report["baseline_acceptance"] = judge(profile, alone, baseline=True)
    report["warnings"] = warnings(report, profile)
    report["what_changed"] = _what_changed(report)
    report["limitations"] = _limitations(report, profile)
    report["provenance"] = _provenance(profile, loaded, records, host)
    _write_predictions(out_dir / PREDICTIONS, predictions, profile)
    images = _report_images(report, profile, registry, site, predictions)
    sections = host.report_sections(report)
    write_report(report, out_dir, profile.report.formats, images, sections)
    return ValidationResult(out_dir, report)


def _report_images(
    report: Mapping[str, Any],
    profile: Profile,
    registry: ComponentRegistry,
    site: SiteData,
    predictions: Mapping[str, Mapping[Split, Predictions]],
) -> ReportImages:
    """What report.html draws from the data: the failure examples' middle slices and the
    profile's augmentations on up to four validation samples, one class in turn."""
    if "html" not in profile.report.formats:
        return ReportImages()
    test = predictions["model"][Split.TEST]
    failures = [
        _middle(np.asarray(site.loader.patch(test.records[failure["index"]])))
        for failure in report["failures"]["examples"]
    ]
    shown = None
    if profile.augmentations:
        chosen = one_of_each_class(predictions["model"][Split.VALIDATION].records, 4)
        shown = preview(profile, registry, site.loader, chosen, 4)
    return ReportImages(failures, shown)


def _middle(patch: np.ndarray) -> np.ndarray:
    while patch.ndim > 2:
        patch = patch[patch.shape[0] // 2]
    return patch


def _write_predictions(
    path: Path, predictions: Mapping[str, Mapping[Split, Predictions]], profile: Profile
) -> None:
    attributes = list(profile.report.subgroups)
    with atomic_file(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_row(["model", "split", "patient", "label", "score", *attributes]))
        for name, by_split in predictions.items():
            for split, made in by_split.items():
                for record, label, score in zip(
                    made.records, made.labels, made.scores, strict=True
                ):
                    writer.writerow(
                        csv_row(
                            [name, split.value, record.patient_key, int(label), repr(float(score))]
                            + [attribute_text(record.attributes.get(a)) for a in attributes]
                        )
                    )


# --- measurements --------------------------------------------------------------------------


def _measure(
    by_split: Mapping[Split, Predictions], profile: Profile, boot: PatientBootstrap
) -> dict[str, Any]:
    """Every number of one model: threshold from validation, the rest on test."""
    val, test = by_split[Split.VALIDATION], by_split[Split.TEST]
    point = profile.acceptance.operating_point
    threshold = operating_threshold(val.labels, val.scores, point.rule, point.target)
    labels, scores = test.labels, test.scores
    measured: dict[str, Any] = {
        "auroc": boot.interval(
            auroc(labels, scores), resampled_auroc(labels, scores, boot.weights())
        ).as_dict(),
        "roc": roc_points(labels, scores),
        "threshold": threshold,
        "operating_point_on_validation": rates(val.labels, val.scores, threshold),
        "confusion": confusion(labels, scores, threshold),
    }
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        measured[name] = boot.estimate(_rate(labels, scores, threshold, name)).as_dict()
    measured["calibration_error"] = boot.estimate(
        lambda i: expected_calibration_error(labels[i], scores[i])
    ).as_dict()
    measured["reliability"] = reliability(labels, scores)
    if profile.report.recalibrate:
        temperature = fit_temperature(val.labels, val.scores)
        calibrated = apply_temperature(scores, temperature)
        measured["recalibrated"] = {
            "temperature": temperature,
            "fitted_on": "validation split",
            "calibration_error": boot.estimate(
                lambda i: expected_calibration_error(labels[i], calibrated[i])
            ).as_dict(),
            "reliability": reliability(labels, calibrated),
        }
    return measured


def _rule_text(profile: Profile) -> str:
    point = profile.acceptance.operating_point
    if point.rule == "youden":
        return "the threshold with the largest sensitivity + specificity"
    kind = "sensitivity" if point.rule == "min_sensitivity" else "specificity"
    other = "specific" if kind == "sensitivity" else "sensitive"
    return f"the most {other} threshold whose {kind} is at least {point.target:g}"


def _rate(
    labels: np.ndarray, scores: np.ndarray, threshold: float, name: str
) -> Callable[[np.ndarray], float | None]:
    return lambda i: rates(labels[i], scores[i], threshold)[name]


def _compare(
    predictions: Mapping[str, Mapping[Split, Predictions]],
    results: Mapping[str, Mapping[str, Any]],
    boot: PatientBootstrap,
) -> dict[str, Any]:
    """Model minus baseline on the same test samples, with paired bootstrap intervals.

    Sensitivity and specificity are each model's at its own operating point (chosen by the
    same rule on its own validation predictions).
    """
    model, baseline = predictions["model"][Split.TEST], predictions["baseline"][Split.TEST]
    labels = model.labels
    a, b = auroc(labels, model.scores), auroc(labels, baseline.scores)
    compared = {
        "auroc_difference": boot.interval(
            None if a is None or b is None else a - b,
            resampled_auroc(labels, model.scores, boot.weights())
            - resampled_auroc(labels, baseline.scores, boot.weights()),
        ).as_dict()
    }
    for name in ("sensitivity", "specificity"):
        compared[f"{name}_difference"] = boot.estimate(
            _paired(
                _rate(labels, model.scores, results["model"]["threshold"], name),
                _rate(labels, baseline.scores, results["baseline"]["threshold"], name),
            )
        ).as_dict()
    return compared


def _paired(
    first: Callable[[np.ndarray], float | None], second: Callable[[np.ndarray], float | None]
) -> Callable[[np.ndarray], float | None]:
    """The difference of two statistics on the same resample."""

    def difference(i: np.ndarray) -> float | None:
        a, b = first(i), second(i)
        return None if a is None or b is None else a - b

    return difference


def _subgroups(test: Predictions, profile: Profile, level: float) -> list[dict[str, Any]]:
    """AUROC per value of each chosen attribute; small groups kept and flagged."""
    groups = []
    for attribute in profile.report.subgroups:
        values = [r.attributes.get(attribute) for r in test.records]
        for value in sorted({attribute_text(v) for v in values}):
            inside = np.array([attribute_text(v) == value for v in values])
            patients = [p for p, keep in zip(test.patients, inside, strict=True) if keep]
            labels, scores = test.labels[inside], test.scores[inside]
            boot = PatientBootstrap(patients, level=level, seed=profile.seed)
            estimate = boot.interval(
                auroc(labels, scores), resampled_auroc(labels, scores, boot.weights())
            )
            count = len(set(patients))
            groups.append(
                {
                    "attribute": attribute,
                    "value": value,
                    "samples": int(inside.sum()),
                    "patients": count,
                    "positives": int(labels.sum()),
                    "auroc": estimate.as_dict(),
                    "too_small": count < profile.report.small_group_patients,
                }
            )
    # An attribute with one value across the test split is no breakdown: its one row is
    # the overall figure again, and the report says so instead of repeating it.
    for group in groups:
        group["only_value"] = sum(g["attribute"] == group["attribute"] for g in groups) == 1
    return groups


def attribute_text(value: Any) -> str:
    """An acquisition attribute's value as shown and grouped: "not recorded" when missing.

    Example:
        >>> attribute_text(1.25), attribute_text(None), attribute_text("B30f")
        ('1.25', 'not recorded', 'B30f')
    """
    if value is None or value == "":
        return "not recorded"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _failures(test: Predictions, threshold: float, profile: Profile) -> dict[str, Any]:
    """The most confident errors at the operating point, of both kinds: first the missed
    positives the model was surest were not positive (the error a clinician most needs to
    see), then the false alarms it was surest of, half of ``report.failure_examples`` each
    (the other kind fills in where one has too few). Each example indexes the test samples.
    """
    positive = profile.task.positive_class
    scores, labels = test.scores, test.labels
    missed = sorted(
        (i for i in range(len(scores)) if labels[i] and scores[i] < threshold),
        key=lambda i: (scores[i], i),
    )
    alarms = sorted(
        (i for i in range(len(scores)) if not labels[i] and scores[i] >= threshold),
        key=lambda i: (-scores[i], i),
    )
    wanted = profile.report.failure_examples
    shown_missed = min(len(missed), max((wanted + 1) // 2, wanted - len(alarms)))
    shown_alarms = min(len(alarms), wanted - shown_missed)
    kinds = [(i, f"missed {positive}") for i in missed[:shown_missed]]
    kinds += [(i, "false alarm") for i in alarms[:shown_alarms]]
    return {
        "threshold": threshold,
        "missed_positives": len(missed),
        "false_alarms": len(alarms),
        "examples": [
            {
                "index": i,
                "patient": test.patients[i],
                "truth": positive if labels[i] else f"not {positive}",
                "kind": kind,
                "score": float(scores[i]),
            }
            for i, kind in kinds
        ],
    }


# --- context -------------------------------------------------------------------------------


def _describe_model(loaded: LoadedModel, folder: Path) -> dict[str, Any]:
    card = loaded.card
    return {
        "folder": folder.name,
        "trained_at": card.trained_at,
        "adapted_to": card.adapted_to,
        "adaptation": card.adaptation.model_dump(mode="json") if card.adaptation else None,
        "weights_sha256": card.weights_sha256,
        "backbone": card.backbone.name,
        "seed": card.seed,
    }


def _data_section(
    site: SiteData,
    records: list[SampleRecord],
    splits: Mapping[Split, list[SampleRecord]],
    profile: Profile,
) -> dict[str, Any]:
    per_split: dict[str, dict[str, int]] = {}
    patients: dict[str, set[str]] = {}
    for record in records:
        name = record.split.value if record.split else "none"
        per_split.setdefault(name, Counter())[record.label or "unlabelled"] += 1  # type: ignore[index]
        patients.setdefault(name, set()).add(record.patient_key)
    overlap = set.intersection(*patients.values()) if len(patients) > 1 else set()
    rejected = Counter(_reason_kind(r) for r in site.rejections)
    return {
        "samples": {k: dict(v) for k, v in per_split.items()},
        "patients": {k: len(v) for k, v in patients.items()},
        "patients_disjoint": not overlap,
        "rejected_inputs": dict(rejected),
        "warnings": sorted(set(site.warnings)),
        "unmatched_label_rows": sum(1 for r in site.rejections if r.path.suffix.lower() == ".csv"),
        "split_seed": profile.seed,
        "validated_samples": {k.value: len(v) for k, v in splits.items()},
    }


def _reason_kind(rejection: Rejection) -> str:
    """A rejection's reason as a category: without the label row's number, pseudonyms and
    bracketed details (an exception's text), so that like counts with like.

    Example:
        >>> _reason_kind(Rejection(Path("labels.csv"),
        ...     "row 24: no usable series for patient patient-0123456789abcdef with the given"
        ...     " study/series"))
        'label row: no usable series for patient with the given study/series'
    """
    reason = re.sub(r"^row \d+: ", "", rejection.reason)
    reason = re.sub(r"\b(patient|study|series|image)-[0-9a-f]{16}\b ?", "", reason)
    reason = reason.split(" (")[0].strip()
    return ("label row: " if rejection.path.suffix.lower() == ".csv" else "") + reason


def _curves(loaded: LoadedModel) -> dict[str, list[dict[str, Any]]]:
    """Per-epoch history from the model card: the adaptation's and the source training's
    for an adapted model, the training's otherwise (empty for cards without history)."""
    card = loaded.card
    if card.adapted_to:
        curves = {"adaptation": card.history, "source training": card.source_history}
    else:
        curves = {"training": card.history}
    return {name: list(rows) for name, rows in curves.items() if rows}


def _what_changed(report: Mapping[str, Any]) -> str:
    model = report["models"]["model"]
    a = model["adaptation"]
    decision = a.get("decision") if a else None
    why = f" How adapt chose it: {decision['statement']}." if decision else ""
    if a and a["method"] != UNADAPTED:
        return (
            f"The model trained at {a['source_site']} was adapted to {report['site']} with "
            f"{a['method']} (target labels used: {a['target_labels']}).{why}"
        )
    return f"The model trained at {model['trained_at']} is used at {report['site']} as it is.{why}"


def _limitations(report: Mapping[str, Any], profile: Profile) -> list[str]:
    notes = [
        f"Measured on {report['data']['patients'].get('test', 0)} test patients of "
        f"{report['site']} only, retrospectively; no prospective use was tested.",
        "The operating point was chosen on the validation split; the test split was used "
        "once, to measure.",
    ]
    for group in report["subgroups"]:
        if group["too_small"]:
            notes.append(
                f"{group['attribute'].replace('_', ' ')} {group['value']}: "
                f"{group['patients']} test patients, too few to judge this group."
            )
    for attribute in profile.report.subgroups:
        values = {g["value"] for g in report["subgroups"] if g["attribute"] == attribute}
        if len(values) == 1:
            notes.append(
                f"Every test image has the same {attribute.replace('_', ' ')} "
                f"({next(iter(values))}): other values were not tested."
            )
    if report["comparison"] is None:
        notes.append("No baseline model was given: the effect of adaptation is not shown.")
    if report["shift"] is None:
        notes.append("No shift analysis was given: how this site differs is not shown.")
    return notes


def _provenance(
    profile: Profile, loaded: LoadedModel, records: list[SampleRecord], host: PluginHost
) -> dict[str, Any]:
    from importlib import metadata

    return {
        "medadapt": metadata.version("medadapt"),
        "plugins": {p.name: p.version for p in host.describe()},
        "profile_sha256": profile_hash(profile),
        "data_manifest_sha256": data_manifest_hash(records),
        "model_card": loaded.card.model_dump(
            mode="json",
            include={
                "site",
                "classes",
                "positive_class",
                "backbone",
                "seed",
                "best_epoch",
                "profile_sha256",
                "data_manifest_sha256",
                "weights_sha256",
                "versions",
            },
        ),
        "seed": profile.seed,
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
