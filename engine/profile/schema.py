"""What a profile may say: every section as a pydantic model, unknown keys forbidden, each
field with its default and its limits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from medadapt.engine.contracts.components import (
    LabelProperty,
    ProfilePath,
)
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
#: Where a job computes (``training.device``, ``--device``).
Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def validation_labelled(target_labels: str) -> bool:
    """Whether adaptation may see the validation patients' labels."""
    return target_labels in ("validation", "all")


#: The components ``adapt`` uses where the profile names none, each a built-in plugin's (one
#: place, so the engine's jobs and the profile reference cannot disagree): the decision rule
#: with and without labelled validation patients, and the label-free selection score with
#: and without the source site's profile. DEV is no method's training objective, so it
#: favours none of them; information maximisation is what SHOT maximises, so it tends to
#: favour SHOT, and is used only when the source profile is not given.
DEFAULT_RULE_WITH_LABELS = "validation-bootstrap"
DEFAULT_RULE_WITHOUT_LABELS = "agreement-guard"
DEFAULT_SCORE = "information-maximization"
DEFAULT_SCORE_WITH_SOURCE = "dev"


class DecisionChoice(_Section):
    """How ``auto`` decides which candidate to keep, the unadapted model among them."""

    rule: str | None = Field(
        default=None,
        description=f"a decision rule component; default {DEFAULT_RULE_WITH_LABELS} when the "
        f"validation patients are labelled, else {DEFAULT_RULE_WITHOUT_LABELS}",
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
    device: Device = Field(
        default="auto",
        description="where to compute: auto (a GPU when there is one), cpu, cuda or mps "
        "(Apple's GPU); a command's --device overrides it. It belongs to the machine, not "
        "to the site: it is not part of the profile's hash",
    )
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

    def on_device(self, device: str | None) -> Profile:
        """This profile computing on ``device`` (``--device``); None keeps its own.

        The device is the machine's, not the site's: :func:`profile_hash
        <medadapt.engine.models.card.profile_hash>` leaves it out, so a model trained with
        ``--device cuda`` has the card of one trained on the CPU from the same profile.
        """
        if device is None or device == self.training.device:
            return self
        training = self.training.model_copy(update={"device": device})
        return self.model_copy(update={"training": training})

    @property
    def adaptation_settings(self) -> AdaptationChoice:
        """The ``adaptation`` section, or its defaults when the profile has none."""
        return self.adaptation or AdaptationChoice()

    @property
    def base_dir(self) -> Path | None:
        """The folder of the profile file: relative paths in component parameters start here."""
        return self._base_dir
