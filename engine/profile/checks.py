"""What the structure cannot say: every component a profile names exists and accepts its
parameters, the components suit the task (an augmentation that would change what the
labels depend on is refused), and the summary ``medadapt profile check`` prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from medadapt.engine.contracts.components import (
    AdaptationMethod,
    Augmentation,
    Backbone,
    Component,
    ComponentKind,
    DataSource,
    DecisionRule,
    LabelProperty,
)
from medadapt.engine.contracts.registry import ComponentRegistry, UnknownComponentError
from medadapt.engine.profile.document import Loc, ProfileDocument, ProfileIssue
from medadapt.engine.profile.schema import AUTO, Profile, Task, validation_labelled


def _chosen_components(profile: Profile) -> list[tuple[ComponentKind, Loc, str, dict[str, Any]]]:
    """(kind, key path of the name, name, params) for every component the profile names."""
    chosen: list[tuple[ComponentKind, Loc, str, dict[str, Any]]] = []
    if profile.data is not None:
        chosen.append(
            (
                ComponentKind.DATA_SOURCES,
                ("data", "source"),
                profile.data.source,
                profile.data.params,
            )
        )
    for index, augmentation in enumerate(profile.augmentations):
        chosen.append(
            (
                ComponentKind.AUGMENTATIONS,
                ("augmentations", index, "name"),
                augmentation.name,
                augmentation.params,
            )
        )
    if profile.backbone is not None:
        chosen.append(
            (
                ComponentKind.BACKBONES,
                ("backbone", "name"),
                profile.backbone.name,
                profile.backbone.params,
            )
        )
    if profile.adaptation is not None:
        if profile.adaptation.method != AUTO:
            chosen.append(
                (
                    ComponentKind.ADAPTATION_METHODS,
                    ("adaptation", "method"),
                    profile.adaptation.method,
                    profile.adaptation.params,
                )
            )
        for index, name in enumerate(profile.adaptation.candidates):
            chosen.append(
                (ComponentKind.ADAPTATION_METHODS, ("adaptation", "candidates", index), name, {})
            )
        decision = profile.adaptation.decision
        if decision.rule is not None:
            chosen.append(
                (
                    ComponentKind.DECISION_RULES,
                    ("adaptation", "decision", "rule"),
                    decision.rule,
                    decision.params,
                )
            )
    if profile.selection is not None:
        chosen.append(
            (
                ComponentKind.SELECTION_SCORES,
                ("selection", "score"),
                profile.selection.score,
                profile.selection.params,
            )
        )
    return chosen


def check_components(
    profile: Profile, registry: ComponentRegistry, document: ProfileDocument
) -> list[ProfileIssue]:
    issues: list[ProfileIssue] = []
    for kind, name_loc, name, params in _chosen_components(profile):
        try:
            cls = registry.get(kind, name)
        except UnknownComponentError as exc:
            issues.append(document.issue(name_loc, str(exc)))
            continue
        params_loc = (*name_loc[:-1], "params")
        try:
            given = registry.parameters(kind, name, params)
        except ValueError as exc:
            issues.append(document.issue(name_loc, str(exc)))
            continue
        try:
            component = cls.from_params(given, base_dir=document.path.parent)
        except ValidationError as exc:
            issues.extend(document.issues_from(exc, cls.Params, params_loc))
            continue
        problem = _unsuitable(component, profile, registry)
        if problem:
            issues.append(document.issue(name_loc, problem))
            continue
        # A label file that is not there yet is the job's to report (the export may come
        # later); one that is there must have what the source reads, at the task's level.
        label_file = profile.data.label_file if isinstance(component, DataSource) else None
        if profile.data is not None and label_file and Path(label_file).is_file():
            assert isinstance(component, DataSource)
            level = profile.task.level
            fits = component.label_file_level(Path(label_file))
            if fits is not None and fits != level:
                issues.append(
                    document.issue(("data", "label_file"), _level_mismatch(label_file, fits, level))
                )
                continue
            unreadable = component.check_label_file(Path(label_file))
            if unreadable:
                issues.append(document.issue(("data", "label_file"), unreadable))
    return issues


def _level_mismatch(label_file: Path, fits: str, level: str) -> str:
    if fits == "series":
        return (
            f"{label_file}: no lesion location (x_mm, y_mm, z_mm or slice, row, column): the "
            f"file labels whole series, which fits task.level: series; this profile's "
            f"task.level is {level}"
        )
    return (
        f"{label_file}: places lesions (it has lesion location columns), which fits "
        f"task.level: lesion; this profile's task.level is {level}"
    )


def _unsuitable(component: object, profile: Profile, registry: ComponentRegistry) -> str | None:
    """Why a component cannot serve this profile's task, or None when it can."""
    if isinstance(component, DataSource) and profile.task.level not in component.label_levels:
        return (
            f"the data source {component.name!r} reads {', '.join(sorted(component.label_levels))}"
            f"-level labels only, and task.level is {profile.task.level}"
        )
    if isinstance(component, DecisionRule) and component.needs_labels:
        assert profile.adaptation is not None
        if not validation_labelled(profile.adaptation.target_labels):
            return (
                f"the decision rule {component.name!r} needs labelled validation patients, "
                f"and adaptation.target_labels is {profile.adaptation.target_labels}; set it "
                "to validation, or choose a label-free rule (agreement-guard)"
            )
    if isinstance(component, Augmentation):
        return unsafe_augmentation(component, profile.task, registry)
    if isinstance(component, Backbone):
        dims = profile.preprocessing.spatial_dims
        if dims not in component.spatial_dims:
            return (
                f"the backbone {component.name!r} takes {_dims(component.spatial_dims)} input, "
                f"and preprocessing.patch_mode {profile.preprocessing.patch_mode!r} gives "
                f"{dims}D patches"
            )
        smallest = min(profile.preprocessing.patch_size)
        if smallest < component.min_patch_size:
            return (
                f"the backbone {component.name!r} needs patches of at least "
                f"{component.min_patch_size} voxels a side, and preprocessing.patch_size is "
                f"{profile.preprocessing.patch_size}"
            )
        unknown = [stage for stage in profile.training.freeze if stage not in component.stage_names]
        if unknown:
            stages = ", ".join(component.stage_names) or "none"
            return (
                f"training.freeze names {', '.join(map(repr, unknown))}, which the backbone "
                f"{component.name!r} does not have; its stages are: {stages}"
            )
        if (
            profile.backbone is not None
            and profile.backbone.weights == "imagenet"
            and (component.imagenet_url is None)
        ):
            return (
                f"the backbone {component.name!r} has no ImageNet weights; set backbone.weights "
                "to none or to a local weights file"
            )
    if (
        isinstance(component, AdaptationMethod)
        and component.needs_target_labels
        and (profile.adaptation is None or profile.adaptation.target_labels == "none")
    ):
        return (
            f"the adaptation method {component.name!r} needs labels at this site, and "
            "adaptation.target_labels is none; set it to few or all, or choose a method "
            "that needs no target labels"
        )
    return None


_UNITS = {
    LabelProperty.ABSOLUTE_HU: ("HU", "task.hu_tolerance"),
    LabelProperty.SIZE: ("", "task.size_tolerance"),
}


def unsafe_augmentation(
    augmentation: Augmentation, task: Task, registry: ComponentRegistry
) -> str | None:
    """Why an augmentation would change what the task's labels depend on, or None if safe.

    The message names the augmentation, the property, the bound against the tolerance, and
    the installed augmentations that keep the property.
    """
    changes = augmentation.changes()
    for needed in task.label_depends_on:
        bound = changes.get(needed, 0.0)
        tolerance = task.tolerance(needed)
        if bound <= tolerance:
            continue
        unit, setting = _UNITS.get(needed, ("", ""))
        amount = (
            "without a bound"
            if math.isinf(bound)
            else f"by up to {bound:g}{' ' + unit if unit else ''}"
        )
        allowed = (
            f"; the labels tolerate {tolerance:g}{' ' + unit if unit else ''} ({setting})"
            if setting
            else ""
        )
        safe = [
            name
            for name in registry.names(ComponentKind.AUGMENTATIONS)
            if _within_tolerances(
                registry.get(ComponentKind.AUGMENTATIONS, name).from_params({}), task
            )
        ]
        return (
            f"the augmentation {augmentation.name!r} changes {needed.value} {amount}, and this "
            f"task's labels depend on {needed.value} (task.label_depends_on){allowed}. Remove "
            "it, make its bound smaller than the tolerance, or use one that is safe for this "
            f"task: {', '.join(safe) or 'none is installed'}"
        )
    return None


def _within_tolerances(augmentation: Component, task: Task) -> bool:
    changes = augmentation.changes() if isinstance(augmentation, Augmentation) else {}
    return all(changes.get(p, 0.0) <= task.tolerance(p) for p in task.label_depends_on)


def _dims(spatial_dims: frozenset[int]) -> str:
    return " or ".join(f"{d}D" for d in sorted(spatial_dims))


def summarize(profile: Profile) -> dict[str, Any]:
    """The few facts that tell a person which profile this is, for ``profile check``.

    Example:
        >>> from medadapt.engine.profile import load_profile
        >>> summarize(load_profile("hospital_profiles/template.yaml"))["site"]
        'Hospital B'
    """
    acceptance = profile.acceptance.model_dump(exclude_none=True, exclude={"operating_point"})
    point = profile.acceptance.operating_point
    acceptance["operating_point"] = point.rule + (
        "" if point.target is None else f" {point.target:g}"
    )
    return {
        "site": profile.site.name,
        "body_region": profile.body_region,
        "classes": profile.task.classes,
        "positive_class": profile.task.positive_class,
        "patches": f"{profile.preprocessing.patch_mode} "
        + "x".join(str(n) for n in profile.preprocessing.patch_size),
        "window": {
            "level": profile.preprocessing.window.level,
            "width": profile.preprocessing.window.width,
        },
        "components": {
            kind.label.replace(" ", "_"): name
            for kind, _, name, _ in _chosen_components(profile)
            if kind not in (ComponentKind.AUGMENTATIONS, ComponentKind.ADAPTATION_METHODS)
        },
        "augmentations": [augmentation.name for augmentation in profile.augmentations],
        "adaptation": None
        if profile.adaptation is None
        else {
            "method": profile.adaptation.method,
            "target_labels": profile.adaptation.target_labels,
        },
        "acceptance": acceptance,
        "seed": profile.seed,
    }
