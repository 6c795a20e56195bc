"""Hospital profiles: one YAML file says what a site has and what it wants.

:func:`load_profile` reads a profile, validates its structure (unknown keys are errors) and,
given the component registry, checks every component it names and their parameters, so a
job never starts on a profile that would fail half-way. Every problem becomes a
:class:`ProfileIssue` naming the file, the line, the key path and what was expected.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
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
    ProfilePath,
)
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry, UnknownComponentError
from medadapt.engine.contracts.wording import did_you_mean


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Section):
    """Who the profile describes."""

    name: str = Field(min_length=1, description="the hospital or site name shown in reports")
    description: str = Field(default="", description="scanners, protocols, anything notable")


class Task(_Section):
    """What the model predicts."""

    classes: list[str] = Field(min_length=2, description="class names, as in the label file")
    positive_class: str = Field(description="the class sensitivity is measured for")
    label_depends_on: list[LabelProperty] = Field(
        default_factory=list,
        description="image properties the labels depend on; augmentations must keep them",
    )
    hu_tolerance: NonNegativeFloat = Field(
        default=0.0,
        description="how many HU an intensity augmentation may shift without changing a label",
    )
    size_tolerance: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="how much (a fraction) lesion size may change without changing a label",
    )
    level: Literal["lesion", "series"] = Field(
        default="lesion",
        description="lesion: a sample per lesion, centred on it; series: a sample per "
        "series, labelled as a whole (one label file row per series or per patient)",
    )

    def tolerance(self, needed: LabelProperty) -> float:
        """How much change of a property the labels survive: HU, a fraction, or nothing."""
        if needed is LabelProperty.ABSOLUTE_HU:
            return self.hu_tolerance
        if needed is LabelProperty.SIZE:
            return self.size_tolerance
        return 0.0

    @model_validator(mode="after")
    def _positive_class_is_a_class(self) -> Task:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be different from each other, got {self.classes}")
        if self.positive_class not in self.classes:
            raise ValueError(
                f"positive_class {self.positive_class!r} is not one of the classes "
                f"{self.classes}{did_you_mean(self.positive_class, self.classes)}"
            )
        return self


class SplitFractions(_Section):
    """How patients are divided; a patient is never in two splits."""

    train: float = Field(default=0.7, ge=0.0, le=1.0, description="fraction of patients")
    validation: float = Field(default=0.15, ge=0.0, le=1.0, description="fraction of patients")
    test: float = Field(default=0.15, gt=0.0, le=1.0, description="fraction of patients")

    @model_validator(mode="after")
    def _fractions_add_up(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must add up to 1, got {total:g}")
        return self


class Data(_Section):
    """Where the site's images and labels come from."""

    source: str = Field(description="the data source component, e.g. dicom-ct")
    params: dict[str, Any] = Field(default_factory=dict, description="the source's parameters")
    label_file: ProfilePath | None = Field(
        default=None, description="CSV of labels; relative to this profile's folder"
    )
    split: SplitFractions = Field(default_factory=SplitFractions)


class Window(_Section):
    """The HU window that maps Hounsfield units to the model's input range."""

    level: float = Field(description="window centre in HU (lung -600, soft tissue 40)")
    width: PositiveFloat = Field(description="window width in HU (lung 1500, soft tissue 400)")


#: The largest side of a patch, in voxels: a whole CT slice is 512.
MAX_PATCH_SIDE = 1024
#: The most voxels one patch may hold (64 MiB as float32): beyond, a batch would not fit
#: the memory of the machines medadapt runs on, and the job would end out of memory.
MAX_PATCH_VOXELS = 2**24


class Preprocessing(_Section):
    """Deterministic steps before augmentation; they are part of the cache key."""

    window: Window
    spacing_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        default=None, description="resample to this (z, y, x) voxel size; null keeps native"
    )
    patch_mode: Literal["2d", "2.5d", "3d"] = Field(
        description="2d: one slice; 2.5d: three adjacent slices as channels; 3d: a volume"
    )
    patch_size: list[Annotated[int, Field(gt=0, le=MAX_PATCH_SIDE)]] = Field(
        description="(y, x) voxels for 2d and 2.5d, (z, y, x) for 3d"
    )
    slices: Annotated[int, Field(gt=0, le=MAX_PATCH_SIDE)] | None = Field(
        default=None,
        description="task.level series with 2d patches: how many slices of the series (at "
        "spacing_mm's z, around its middle) make one sample",
    )
    pooling: Literal["mean", "max"] | None = Field(
        default=None,
        description="with slices: how the slices' features make the series' (mean: the "
        "series logit is the mean of the slice logits; max: each feature's strongest slice)",
    )

    @model_validator(mode="after")
    def _slices_with_pooling(self) -> Preprocessing:
        if (self.slices is None) != (self.pooling is None):
            raise ValueError(
                "slices and pooling go together: a series' slices (slices), and how their "
                "features are pooled (pooling: mean or max)"
            )
        if self.slices is not None and self.patch_mode != "2d":
            raise ValueError("slices and pooling are for 2d patches of a series")
        return self

    @model_validator(mode="after")
    def _patch_size_matches_mode(self) -> Preprocessing:
        expected = 3 if self.patch_mode == "3d" else 2
        if len(self.patch_size) != expected:
            raise ValueError(
                f"patch_size needs {expected} numbers for {self.patch_mode} patches "
                f"({'z, y, x' if expected == 3 else 'y, x'}), got {self.patch_size}"
            )
        depth = {"2.5d": 3}.get(self.patch_mode, self.slices or 1)
        voxels = depth * math.prod(self.patch_size)
        if voxels > MAX_PATCH_VOXELS:
            raise ValueError(
                f"patch_size {self.patch_size} makes patches of {voxels:,} voxels "
                f"({voxels * 4 / 2**20:,.0f} MiB each, before a batch is made): at most "
                f"{MAX_PATCH_VOXELS:,} (a 256 x 256 x 256 volume); choose a smaller patch or "
                "a coarser spacing_mm"
            )
        return self

    @property
    def spatial_dims(self) -> int:
        """2 for slice patches (2D and 2.5D), 3 for volume patches."""
        return 3 if self.patch_mode == "3d" else 2


class AugmentationChoice(_Section):
    """One augmentation and its parameters."""

    name: str = Field(description="the augmentation component")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters")


class BackboneChoice(_Section):
    """The feature extractor and where its pretrained weights are."""

    name: str = Field(description="the backbone component, e.g. resnet18")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters")
    weights: str = Field(
        default="none",
        description="imagenet (torchvision's, from the torch hub cache), none, or a local file",
    )

    @field_validator("weights")
    @classmethod
    def _resolve_weights_path(cls, value: str, info: ValidationInfo) -> str:
        if value in ("imagenet", "none") or Path(value).is_absolute():
            return value
        base_dir = (info.context or {}).get("base_dir")
        return str(Path(base_dir) / value) if base_dir is not None else value

    @property
    def weights_file(self) -> Path | None:
        """The local weights file, when ``weights`` names one."""
        return None if self.weights in ("imagenet", "none") else Path(self.weights)


AUTO = "auto"


def validation_labelled(target_labels: str) -> bool:
    """Whether adaptation may see the validation patients' labels."""
    return target_labels in ("validation", "all")


class DecisionChoice(_Section):
    """How ``auto`` decides which candidate to keep, the unadapted model among them."""

    rule: str | None = Field(
        default=None,
        description="a decision rule component; default validation-bootstrap when the "
        "validation patients are labelled, else agreement-guard",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters")


class AdaptationChoice(_Section):
    """How the model is carried to this site, and which of its labels may be used."""

    method: str = Field(
        default=AUTO,
        description="an adaptation method component (e.g. tent), or auto: try every "
        "candidate the data allow and keep one, or the unadapted model, by the decision rule",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters")
    source_model: ProfilePath | None = Field(
        default=None, description="the model folder trained at the source site"
    )
    target_labels: Literal["none", "validation", "few", "all"] = Field(
        default="none",
        description="which labels of this site adaptation may use: none; validation (the "
        "validation patients' labels choose each run's epoch, the method and whether to "
        "adapt at all, and no method trains on them); few per class (labels_per_class, "
        "drawn from training patients); or all (training and validation)",
    )
    labels_per_class: PositiveInt = Field(
        default=10, description="with target_labels: few, the labelled samples per class"
    )
    candidates: list[str] = Field(
        default_factory=list,
        description="the methods auto tries; empty: every installed method the data allow",
    )
    decision: DecisionChoice = Field(
        default_factory=DecisionChoice,
        description="how auto decides which candidate to keep (docs/adaptation.md)",
    )


class SelectionChoice(_Section):
    """How a model is chosen among epochs without target labels."""

    score: str = Field(description="the selection score component, e.g. entropy")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters")


class OptimizerChoice(_Section):
    """How weights are updated."""

    name: Literal["adamw", "sgd"] = Field(default="adamw", description="adamw or sgd")
    lr: PositiveFloat = Field(default=1e-3, description="learning rate of the new layers")
    weight_decay: NonNegativeFloat = Field(default=1e-4)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="for sgd")
    backbone_lr_factor: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="the backbone learns at lr x this (e.g. 0.1 for pretrained weights)",
    )


class Training(_Section):
    """How a model is trained: the loop, the optimiser, stopping and the hardware."""

    epochs: PositiveInt = Field(default=20, description="the most epochs to train")
    batch_size: PositiveInt = Field(default=32)
    optimizer: OptimizerChoice = Field(default_factory=OptimizerChoice)
    schedule: Literal["cosine", "constant"] = Field(
        default="cosine", description="learning rate over the epochs"
    )
    early_stopping_patience: PositiveInt | None = Field(
        default=5, description="stop after this many epochs without improvement; null never"
    )
    selection_metric: Literal["auroc", "loss"] = Field(
        default="auroc", description="what picks the best epoch on the validation split"
    )
    freeze: list[str] = Field(
        default_factory=list, description="backbone stages kept as loaded, e.g. [stem, stage1]"
    )
    class_weights: Literal["balanced", "none"] = Field(
        default="balanced", description="weigh the loss so each class counts equally"
    )
    labels_per_class: PositiveInt | None = Field(
        default=None,
        description="a label budget: train on this many labelled training samples per class "
        "(drawn with the seed; the rest of the training split is left out, the validation "
        "split keeps every label), in train and in adapt with target_labels: all; null: all",
    )
    batch_norm_batches: NonNegativeInt = Field(
        default=50,
        description="after an epoch too short for the running averages (fewer than 44 "
        "steps; every epoch in adapt), recompute batch-norm statistics over this many "
        "training batches with the weights fixed (0: keep the running averages)",
    )
    workers: NonNegativeInt = Field(default=0, description="data loader processes")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto")
    amp: bool = Field(default=True, description="mixed precision on a GPU")
    channels_last: bool = Field(default=True, description="channels-last memory on a GPU")


class OperatingPoint(_Section):
    """How the decision threshold is chosen, on the validation split, before the test."""

    rule: Literal["min_sensitivity", "min_specificity", "youden"] = Field(
        default="min_sensitivity",
        description="min_sensitivity: the most specific threshold whose sensitivity reaches "
        "target; min_specificity: the most sensitive whose specificity reaches target; "
        "youden: the largest sensitivity + specificity",
    )
    target: float | None = Field(
        default=0.9, ge=0.0, le=1.0, description="the sensitivity or specificity to reach"
    )

    @model_validator(mode="after")
    def _target_when_needed(self) -> OperatingPoint:
        if self.rule != "youden" and self.target is None:
            raise ValueError(f"the rule {self.rule} needs a target (e.g. 0.9)")
        return self


class Acceptance(_Section):
    """What the adapted model must reach on this site's test patients to be accepted."""

    min_auroc: float | None = Field(default=None, ge=0.0, le=1.0)
    min_sensitivity: float | None = Field(
        default=None, ge=0.0, le=1.0, description="at the operating point, on the test split"
    )
    min_specificity: float | None = Field(
        default=None, ge=0.0, le=1.0, description="at the operating point, on the test split"
    )
    max_calibration_error: float | None = Field(
        default=None, ge=0.0, le=1.0, description="expected calibration error"
    )
    non_inferiority_margin: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="the model's AUROC may be lower than the baseline's by less than this: "
        "passes when the lower bound of the paired difference's interval is above -margin "
        "(needs validate --baseline)",
    )
    operating_point: OperatingPoint = Field(default_factory=OperatingPoint)
    min_test_patients: PositiveInt = Field(
        default=30, description="fewer test patients than this and the report says no verdict"
    )
    judge_on: Literal["lower_bound", "point"] = Field(
        default="lower_bound",
        description="lower_bound: a criterion passes only when its whole confidence interval "
        "is on the right side (the lower bound for a minimum, the upper bound for a maximum); "
        "point: on the estimate, and the report says where the interval crosses",
    )

    @model_validator(mode="after")
    def _has_a_criterion(self) -> Acceptance:
        criteria = (
            self.min_auroc,
            self.min_sensitivity,
            self.min_specificity,
            self.max_calibration_error,
            self.non_inferiority_margin,
        )
        if all(value is None for value in criteria):
            raise ValueError(
                "set at least one of min_auroc, min_sensitivity, min_specificity, "
                "max_calibration_error, non_inferiority_margin: a gate without a criterion "
                "would accept any model"
            )
        return self


SubgroupAttribute = Literal[
    "manufacturer",
    "manufacturer_model",
    "convolution_kernel",
    "kvp",
    "slice_thickness",
    "pixel_spacing",
    "body_part",
]


class Report(_Section):
    """What the validation report contains."""

    title: str | None = Field(default=None, description="defaults to the site name")
    subgroups: list[SubgroupAttribute] = Field(
        default_factory=lambda: [
            "manufacturer",
            "convolution_kernel",
            "slice_thickness",
            "body_part",
        ],
        description="acquisition attributes results are broken down by",
    )
    formats: list[Literal["html", "json"]] = Field(default_factory=lambda: ["html", "json"])
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1.0)
    recalibrate: bool = Field(
        default=False,
        description="also report calibration after a temperature fitted on the validation "
        "split (reported as such; the acceptance gate judges the model as it is)",
    )
    small_group_patients: PositiveInt = Field(
        default=10, description="subgroups with fewer test patients are flagged as too small"
    )
    failure_examples: NonNegativeInt = Field(
        default=6, description="thumbnails of the most confident errors (pixel data only)"
    )


class Profile(_Section):
    """A hospital profile. Sections left out are not needed by every job: the job that
    needs one says so."""

    site: Site
    intended_use: str = Field(min_length=1, description="what the model is for, and for whom")
    body_region: Literal[
        "head", "neck", "chest", "abdomen", "pelvis", "spine", "extremities", "whole-body"
    ]
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**31,
        description="drives every random number generator (0 to 2147483647: every generator "
        "takes it, and seed, seed+1, ... of adapt --seeds)",
    )
    task: Task
    data: Data | None = None
    preprocessing: Preprocessing
    augmentations: list[AugmentationChoice] = Field(default_factory=list)
    backbone: BackboneChoice | None = None
    adaptation: AdaptationChoice | None = None
    selection: SelectionChoice | None = None
    training: Training = Field(default_factory=Training)
    acceptance: Acceptance
    report: Report = Field(default_factory=Report)

    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _series_level_fits_the_patches(self) -> Profile:
        mode, slices = self.preprocessing.patch_mode, self.preprocessing.slices
        if self.task.level == "lesion":
            if slices is not None:
                raise ValueError(
                    "preprocessing.slices and pooling make a sample of a series' slices: "
                    "they need task.level: series"
                )
            return self
        if mode == "2.5d" or (mode == "2d" and slices is None):
            raise ValueError(
                "task.level series takes whole series: 3d patches (a 3D backbone), or 2d "
                "patches with preprocessing.slices and preprocessing.pooling (mean or max)"
            )
        return self

    @property
    def base_dir(self) -> Path | None:
        """The folder of the profile file: relative paths in component parameters start here."""
        return self._base_dir


# --- errors -------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ProfileIssue:
    """One problem in one profile file."""

    file: Path
    loc: Loc
    message: str
    line: int | None = None

    @property
    def key(self) -> str:
        """The key path as a person writes it: ``augmentations[0].params.prob``."""
        text = ""
        for part in self.loc:
            text += f"[{part}]" if isinstance(part, int) else f".{part}"
        return text.lstrip(".")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.key}: {self.message}" if self.loc else f"{where}: {self.message}"


class ProfileError(InvalidInputError):
    """A profile is invalid; :attr:`issues` lists every problem found."""

    def __init__(self, issues: Sequence[ProfileIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


# --- loading ------------------------------------------------------------------------------


def load_profile(path: Path | str, registry: ComponentRegistry | None = None) -> Profile:
    """Read and validate a hospital profile.

    Args:
        path: the YAML file.
        registry: when given, every component the profile names must exist there and
            accept its parameters, and the components must suit the task.

    Raises:
        ProfileError: every problem found, each with file, line, key path and expectation.

    Example:
        >>> profile = load_profile("hospital_profiles/template.yaml")
        >>> profile.site.name
        'Hospital B'
    """
    path = Path(path)
    document = _ProfileDocument.read(path)
    try:
        profile = Profile.model_validate(document.data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ProfileError(document.issues_from(exc, Profile)) from None
    profile._base_dir = path.parent
    if registry is not None:
        issues = _check_components(profile, registry, document)
        if issues:
            raise ProfileError(issues)
    return profile


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _ProfileDocument:
    """A profile's parsed YAML, with the line of every key for error messages."""

    def __init__(self, path: Path, data: dict[str, Any], root: yaml.Node) -> None:
        self.path = path
        self.data = data
        self._root = root

    @classmethod
    def read(cls, path: Path) -> _ProfileDocument:
        def fail(message: str, line: int | None = None) -> ProfileError:
            return ProfileError([ProfileIssue(path, (), message, line)])

        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise fail("no such file") from None
        except IsADirectoryError:
            raise fail("is a folder; give the profile's YAML file") from None
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise fail(
                f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save the profile as "
                "UTF-8",
                line,
            ) from None
        except OSError as exc:
            raise fail(f"cannot read the profile: {exc.strerror or exc}") from None
        try:
            root = yaml.compose(text, Loader=_UniqueKeyLoader)
            data = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "not valid YAML"
            raise fail(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise fail(f"not valid YAML: {exc}") from None
        expected = f"a mapping with the keys {', '.join(Profile.model_fields)}"
        if data is None:
            raise fail(f"the profile is empty; expected {expected}")
        if not isinstance(data, dict) or root is None:
            raise fail(f"expected {expected}, got {_describe(data)}")
        return cls(path, data, root)

    def line(self, loc: Loc) -> int:
        """The 1-based line of the deepest part of ``loc`` present in the file."""
        node = self._root
        line = node.start_mark.line
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                found = [(k, v) for k, v in node.value if k.value == str(part)]
                if not found:
                    break
                key_node, node = found[0]
                line = key_node.start_mark.line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line
            else:
                break
        return line + 1

    def issue(self, loc: Loc, message: str) -> ProfileIssue:
        return ProfileIssue(self.path, loc, message, self.line(loc))

    def issues_from(
        self, exc: ValidationError, model: type[BaseModel], base: Loc = ()
    ) -> list[ProfileIssue]:
        """Turn pydantic's errors into issues a person can act on."""
        issues = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            issues.append(self.issue(base + loc, _explain(error, model, loc)))
        return issues


def _explain(error: Mapping[str, Any], model: type[BaseModel], loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        return (
            f"unknown key{did_you_mean(str(loc[-1]), allowed)}; "
            f"allowed keys are: {', '.join(allowed)}"
        )
    if kind == "missing":
        field_model = _model_at(model, loc[:-1])
        field = field_model.model_fields.get(str(loc[-1])) if field_model else None
        about = f" ({field.description})" if field and field.description else ""
        return f"required key is missing{about}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        target = _model_at(model, loc)
        keys = f" with the keys {', '.join(target.model_fields)}" if target else ""
        return f"expected a mapping{keys}, got {_describe(error['input'])}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind.startswith("value_error") or kind == "assertion_error":
        return message
    return f"{message}; got {_describe(error['input'])}"


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``loc``, if that value is a model."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        current = _as_model(annotation)
        if current is None or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
    return _as_model(annotation)


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in {list, typing.Union, types.UnionType}:
        for argument in typing.get_args(annotation):
            found = _as_model(argument)
            if found is not None:
                return found
    return None


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- component checks ---------------------------------------------------------------------


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


def _check_components(
    profile: Profile, registry: ComponentRegistry, document: _ProfileDocument
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


# --- summary ------------------------------------------------------------------------------


def summarize(profile: Profile) -> dict[str, Any]:
    """The few facts that tell a person which profile this is, for ``profile check``.

    Example:
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
