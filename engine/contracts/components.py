"""The component contracts every plugin builds to.

A component is a small class with a ``name`` (what a profile calls it), a pydantic ``Params``
model (what a profile may set, checked before any work starts) and the few methods its kind
needs. Plugins hand the classes to the engine through the collecting hooks in
:mod:`medadapt.engine.contracts.hookspecs`; the engine builds them from a profile with
:meth:`Component.from_params`.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

if TYPE_CHECKING:
    from torch import Tensor, nn


class ComponentKind(enum.StrEnum):
    """The kinds of component a plugin can provide; each value is its key in JSON output."""

    DATA_SOURCES = "data_sources"
    AUGMENTATIONS = "augmentations"
    BACKBONES = "backbones"
    ADAPTATION_METHODS = "adaptation_methods"
    SELECTION_SCORES = "selection_scores"
    DECISION_RULES = "decision_rules"
    EXPORTERS = "exporters"

    @property
    def label(self) -> str:
        """The singular name a person reads: ``"adaptation method"``."""
        return self.value.removesuffix("s").replace("_", " ")

    @property
    def hook_name(self) -> str:
        """The collecting hook that gathers this kind: ``"medadapt_backbones"``."""
        return f"medadapt_{self.value}"


def _resolve_against_profile(path: Path, info: ValidationInfo) -> Path:
    base_dir = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


#: A path in a profile or in component parameters: relative paths are taken from the folder
#: of the profile file, so a profile and its label file can move together.
ProfilePath = Annotated[Path, AfterValidator(_resolve_against_profile)]


class NoParams(BaseModel):
    """The parameters of a component that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(ABC):
    """What every component shares: a name, a kind and validated parameters.

    Subclasses set ``name`` (lower case, words joined by ``-``) and, when they take
    parameters, a nested ``Params`` pydantic model with ``extra="forbid"``.

    Args:
        params: validated parameters; ``None`` means every parameter at its default.
    """

    name: ClassVar[str]
    kind: ClassVar[ComponentKind]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: For a family of components under one name: ``name:<variant>`` in a profile sets
    #: this parameter to ``<variant>`` (``timm:efficientnet_lite0`` sets ``arch``).
    variant_param: ClassVar[str | None] = None

    def __init__(self, params: BaseModel | None = None) -> None:
        self.params = self.Params() if params is None else params

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any] | None = None, *, base_dir: Path | None = None
    ) -> Self:
        """Validate raw parameters (from a profile) and build the component.

        Args:
            params: the component's ``params`` mapping from a profile.
            base_dir: the folder relative :data:`ProfilePath` parameters are resolved from.

        Raises:
            pydantic.ValidationError: a parameter is unknown or has the wrong type or value.

        Example:
            >>> from medadapt.plugins.selection_scores import Entropy
            >>> Entropy.from_params({}).name
            'entropy'
        """
        return cls(cls.Params.model_validate(dict(params or {}), context={"base_dir": base_dir}))

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring: one sentence on what the component does."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


# --- data ---------------------------------------------------------------------------------


class Split(enum.StrEnum):
    """The patient-level split a sample belongs to."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


@dataclass(frozen=True)
class SampleRecord:
    """What a data source knows about one sample before any pixel is read.

    Attributes:
        patient_key: keyed pseudonym of the patient; never the PatientID itself.
        series_key: keyed pseudonym of the series the sample comes from.
        locator: where the data source finds the pixels again (a path, an index); it may
            contain identifying text, so it is never written to reports or logs.
        attributes: acquisition attributes used for subgroups and shift analysis
            (manufacturer, convolution kernel, kVp, slice thickness, ...).
        label: the class name, or ``None`` for unlabelled data.
        centre: the lesion centre as a (z, y, x) voxel index into the image ``load``
            returns, or ``None`` when the sample is the whole image.
        split: the patient-level split, or ``None`` until the engine assigns one.
        shape: the (z, y, x) shape of the image ``load`` returns, when the headers tell it;
            with ``spacing_mm``, the engine refuses an image too small for the profile's
            patch before any pixel is read.
        spacing_mm: the (z, y, x) voxel size of that image, in mm.
    """

    patient_key: str
    series_key: str
    locator: str
    attributes: Mapping[str, str | float | int | None] = field(default_factory=dict)
    label: str | None = None
    centre: tuple[float, float, float] | None = None
    split: Split | None = None
    shape: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Rejection:
    """An input a data source could not use, and why, in words a physicist can act on.

    Attributes:
        path: the file (or the label file, for a label row).
        reason: what is wrong and, where possible, what to do.
        image_key: the pseudonym of the image (SOP instance), when it could be read.
    """

    path: Path
    reason: str
    image_key: str | None = None


@dataclass(frozen=True)
class ScanResult:
    """Everything a scan found: the usable samples and every input it had to reject."""

    records: list[SampleRecord]
    rejections: list[Rejection] = field(default_factory=list)
    #: What was usable only after a correction, or may mislead (a tilted series resampled,
    #: a gap between slices), each naming its series by pseudonym.
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """A CT volume in Hounsfield units.

    Attributes:
        hu: float32 array, axes (z, y, x) for a volume or (y, x) for a single slice.
        spacing_mm: voxel size along the same axes, in millimetres.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.hu.dtype != np.float32:
            raise TypeError(f"Image.hu must be float32 Hounsfield units, got {self.hu.dtype}")
        if self.hu.ndim not in (2, 3):
            raise ValueError(f"Image.hu must have 2 or 3 axes, got shape {self.hu.shape}")
        if len(self.spacing_mm) != self.hu.ndim or not all(
            math.isfinite(s) and s > 0 for s in self.spacing_mm
        ):
            raise ValueError(
                f"Image.spacing_mm must be {self.hu.ndim} positive numbers (one per axis), "
                f"got {self.spacing_mm}"
            )


class DataSource(Component):
    """Finds samples and reads their pixels.

    ``scan`` reads metadata only and never stops at a bad input: it returns a
    :class:`Rejection` for it. ``load`` returns the pixels of one record in HU.
    """

    kind = ComponentKind.DATA_SOURCES
    #: The ``task.level`` values the source reads: ``lesion`` (a sample per lesion, centred
    #: on it) and, where the source can, ``series`` (a sample per series, labelled as a
    #: whole). The engine passes ``level="series"`` to :meth:`scan` only to a source that
    #: lists it.
    label_levels: ClassVar[frozenset[str]] = frozenset({"lesion"})

    @abstractmethod
    def scan(self, label_file: Path | None = None) -> ScanResult:
        """Find every usable sample and every rejected input.

        Args:
            label_file: the profile's ``data.label_file``; without it, every image is one
                unlabelled sample.

        A source that lists ``series`` in :attr:`label_levels` also takes
        ``level: str = "lesion"``: with ``"series"``, one sample per series, ``centre``
        None (the engine crops around the middle of the series).
        """

    @abstractmethod
    def load(self, record: SampleRecord) -> Image:
        """Read the HU pixels and spacing of one sample found by :meth:`scan`."""

    def check_label_file(self, label_file: Path) -> str | None:
        """Why this source cannot read ``label_file``, or None: ``profile check`` calls it
        so that a label file without the columns the source needs is refused before any
        job scans the images. Read the header only. The default checks nothing."""
        return None

    def label_file_level(self, label_file: Path) -> str | None:
        """The ``task.level`` the label file's header fits (``lesion`` when it places
        lesions, ``series`` when it labels whole series), or None when the source cannot
        tell; ``profile check`` compares it with the profile's. Read the header only."""
        return None

    def fingerprint(self, record: SampleRecord) -> str | None:
        """A string that changes whenever the record's pixels may have changed.

        The engine caches loaded volumes and patches under it. ``None``, the default,
        means the source cannot tell, and nothing it loads is cached.
        """
        return None


# --- augmentations ------------------------------------------------------------------------


class LabelProperty(enum.StrEnum):
    """A property of the image a label can depend on, and an augmentation may break."""

    #: The label depends on exact Hounsfield units (fat, calcium, contrast uptake).
    ABSOLUTE_HU = "absolute-hu"
    #: The label depends on left versus right.
    LATERALITY = "laterality"
    #: The label depends on physical size (a nodule's diameter).
    SIZE = "size"
    #: The label depends on the outline (spiculation, lobulation).
    SHAPE = "shape"
    #: The label depends on fine texture (ground glass, noise-like patterns).
    TEXTURE = "texture"


class Augmentation(Component):
    """A random change applied to training patches only, with a declared safety contract.

    ``preserves`` lists the image properties the augmentation never changes, whatever its
    parameters; :meth:`changes` says what this instance may change, with a bound. The
    profile says what its labels depend on and how much change they tolerate; the engine
    refuses an augmentation whose bound exceeds that tolerance.
    """

    kind = ComponentKind.AUGMENTATIONS
    preserves: ClassVar[frozenset[LabelProperty]]

    def changes(self) -> dict[LabelProperty, float]:
        """What this augmentation, with its parameters, may change, and by how much at most.

        Bounds are in HU for ``absolute-hu`` and a fraction for ``size`` (0.1 is 10%);
        ``math.inf`` where there is no bound. By default: everything not in ``preserves``,
        unbounded. Augmentations with parameter-dependent bounds override this.
        """
        return {p: math.inf for p in LabelProperty if p not in self.preserves}

    @abstractmethod
    def transform(self) -> Callable[[Any], Any]:
        """The MONAI transform applied to a channel-first training patch in HU.

        Random transforms have ``set_random_state(seed)`` (MONAI's ``Randomizable``), so
        that the engine seeds every sample from the profile's seed: the same seed gives
        the same augmented samples.
        """


# --- models -------------------------------------------------------------------------------


class Backbone(Component):
    """A feature extractor; the engine puts a classification head on top of it."""

    kind = ComponentKind.BACKBONES
    #: 2 for slice (2D and 2.5D) patches, 3 for volume patches.
    spatial_dims: ClassVar[frozenset[int]]
    #: The stages a profile may freeze (``training.freeze``), from input to output.
    stage_names: ClassVar[tuple[str, ...]] = ()
    #: Where torchvision publishes this backbone's ImageNet weights; ``None`` when there are
    #: none. The engine only ever reads the file from the torch hub cache.
    imagenet_url: ClassVar[str | None] = None
    #: The smallest patch side (in voxels) the backbone's downsampling can take.
    min_patch_size: ClassVar[int] = 1
    #: The name prefix of the classifier layer in the layout the backbone publishes
    #: (``fc.`` for torchvision's ResNets): ``medadapt model import`` makes it the head of a
    #: model trained elsewhere. ``None`` when the published layout has none.
    classifier_prefix: ClassVar[str | None] = None
    #: The ``_target_`` names a MONAI bundle's ``network_def`` gives this network under
    #: (``DenseNet121``, ``monai.networks.nets.DenseNet121``), whose weights are in the
    #: published layout: ``medadapt model import`` takes such a bundle.
    bundle_networks: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def build(
        self,
        in_channels: int,
        spatial_dims: int,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> tuple[nn.Module, int]:
        """Build the feature extractor, with pretrained weights when given.

        Args:
            in_channels: channels of the input patch (1 for 2D and 3D, 3 for 2.5D).
            spatial_dims: 2 or 3.
            state_dict: pretrained weights in the layout the backbone publishes (for
                torchvision backbones, torchvision's); ``None`` for random initialisation.
                Weights for three input channels are adapted to ``in_channels``.

        Returns:
            The module mapping a batch of patches to feature vectors, and the vector length.
        """

    def stages(self, features: nn.Module) -> dict[str, list[nn.Module]]:
        """The modules of each stage in :attr:`stage_names`, for freezing."""
        return {}


#: The label index of an unlabelled sample in a batch's ``"labels"``.
UNLABELLED = -1


class AdaptationMethod(Component):
    """One way to carry a model to a new site: a loss computed per training step.

    The engine owns the loop, the optimiser, checkpoints and model selection; a method says
    what data it needs, which parameters learn, and what to minimise. A batch is a mapping
    with ``"patches"`` (a float tensor) and ``"labels"`` (class indices; ``-1`` where the
    sample has no label, as on a target site without labels).

    After every epoch the engine recomputes the batch-norm statistics on target training
    patches (engine/training/batchnorm.py), so every adapted model is evaluated with target
    statistics; ``adabn`` is exactly that and nothing else.
    """

    kind = ComponentKind.ADAPTATION_METHODS
    #: Whether the method needs labelled data from the source hospital at adaptation time.
    needs_source_data: ClassVar[bool]
    #: Whether the method needs labels at the target hospital.
    needs_target_labels: ClassVar[bool]
    #: False for a method that takes no gradient step (``adabn``): the engine runs one
    #: epoch start and no training.
    trains: ClassVar[bool] = True
    #: Whether an epoch leaves out the target's last incomplete training batch (as SKADA
    #: does, and as the source's batches always do): an epoch of fewer steps. Never when
    #: the target holds less than one batch. Set per method where the development seeds
    #: showed it costs no accuracy (docs/adaptation.md); False: every target patch is seen
    #: every epoch.
    drop_incomplete_batch: ClassVar[bool] = False
    #: How far training is: the steps already taken over the run's steps, 0 at the first
    #: step; the engine sets it before every step (DANN's warm-up reads it).
    progress: float = 0.0

    def setup(self, model: nn.Module, feature_dim: int, num_classes: int) -> None:
        """Receive the model being adapted (``model.features``, ``model.head``) first.

        Methods that build modules (a domain discriminator) or freeze layers extend this
        and call ``super().setup(...)``.
        """
        self.model: nn.Module = model
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def parameter_groups(self, lr: float, backbone_lr: float) -> list[dict[str, Any]]:
        """What the optimiser updates: by default the features at ``backbone_lr``, the
        head and the method's own modules at ``lr``; parameters without gradient are left
        out."""
        extra = [p for m in self.extra_modules().values() for p in m.parameters()]
        groups = [
            {"params": list(self.model.features.parameters()), "lr": backbone_lr},
            {"params": list(self.model.head.parameters()) + extra, "lr": lr},
        ]
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
        return [g for g in groups if g["params"]]

    def epoch_start(self, target_patches: Callable[[], Iterable[Tensor]]) -> None:
        """Called before each epoch (and once for a method that does not train).

        Args:
            target_patches: returns an iterator over the target training patches, in
                batches, in a fixed order, without augmentation. SHOT computes its class
                centroids here; AdaBN its statistics.
        """

    @abstractmethod
    def update(
        self, source_batch: Mapping[str, Tensor] | None, target_batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Compute this step's losses; the engine minimises the ``"loss"`` entry.

        ``source_batch`` is None unless the method needs source data.
        """

    def extra_modules(self) -> dict[str, nn.Module]:
        """Modules the method owns (a domain discriminator), checkpointed with the model."""
        return {}


# --- model selection ----------------------------------------------------------------------


@dataclass(frozen=True)
class SourceValidation:
    """A model's predictions on the source site's labelled validation split.

    Only scores that declare ``needs_source_data`` receive it, and only when the source
    site's profile was given.
    """

    probabilities: np.ndarray  # (samples, classes)
    features: np.ndarray  # (samples, feature_dim)
    labels: np.ndarray  # (samples,) class indices


class SelectionScore(Component):
    """A label-free score of how well a model fits the target site, for model selection."""

    kind = ComponentKind.SELECTION_SCORES
    #: Whether a larger score means a better model.
    higher_is_better: ClassVar[bool]
    #: Whether the score also needs the model's predictions on labelled source validation
    #: data (DEV does); then ``score`` receives them as ``source``.
    needs_source_data: ClassVar[bool] = False

    def goodness(self, value: float) -> float:
        """``value`` turned so that larger is better: the one order every comparison of
        this score's values uses (epochs in training, runs in ``adapt``)."""
        return value if self.higher_is_better else -value

    @abstractmethod
    def score(self, probabilities: np.ndarray, features: np.ndarray | None = None) -> float:
        """Score a model from its predictions on unlabelled target data.

        Args:
            probabilities: shape (samples, classes); each row sums to 1.
            features: shape (samples, feature_dim), for scores that look at features.

        A score with ``needs_source_data`` takes a third argument, ``source``
        (:class:`SourceValidation`).
        """


# --- the decision ---------------------------------------------------------------------------

#: The name under which the unadapted source model stands among the candidates.
UNADAPTED = "source-only"


@dataclass(frozen=True)
class Candidate:
    """One model ``adapt`` may keep: a method's run at one seed, or the unadapted model.

    Attributes:
        method: the adaptation method, or :data:`UNADAPTED`.
        seed: the run's seed.
        probabilities: its predicted probabilities on the target validation samples (at
            its best epoch), shape (samples, classes), in :class:`Evidence` order.
    """

    method: str
    seed: int
    probabilities: np.ndarray

    @property
    def unadapted(self) -> bool:
        return self.method == UNADAPTED


@dataclass(frozen=True)
class Evidence:
    """What a decision rule may look at: every candidate's predictions on the target
    validation samples, whose patients they belong to, and their labels where the site
    gave them. The test split is never part of it.

    Attributes:
        candidates: the candidates; the unadapted model is always among them, once.
        patients: the pseudonymised patient of each validation sample.
        labels: 1 where a sample is of the positive class, 0 where it is of another, -1
            where the site gave no label; None when no validation sample is labelled.
        seed: fixes every resample a rule draws, so a decision can be repeated.
    """

    candidates: tuple[Candidate, ...]
    patients: tuple[str, ...]
    labels: np.ndarray | None
    positive_index: int
    seed: int = 0

    @property
    def unadapted(self) -> Candidate:
        """The unadapted model."""
        return next(c for c in self.candidates if c.unadapted)

    def name(self, candidate: Candidate) -> str:
        """How a person reads a candidate: ``"coral"``, or ``"coral seed 5"`` where a
        method ran with several seeds."""
        seeds = {c.seed for c in self.candidates if c.method == candidate.method}
        return candidate.method if len(seeds) == 1 else f"{candidate.method} seed {candidate.seed}"

    @property
    def labelled_patients(self) -> int:
        """How many validation patients have at least one labelled sample."""
        if self.labels is None:
            return 0
        return len({p for p, y in zip(self.patients, self.labels, strict=True) if y >= 0})


@dataclass(frozen=True)
class Decision:
    """Which candidate a rule keeps, and what that rests on.

    Attributes:
        kept: the candidate kept.
        evidence: ``"labels"`` when validation labels measured the candidates;
            ``"label-free"`` when they did not: the choice is then a proposal that
            ``validate`` must confirm.
        statement: one sentence a person reads, with the figures it rests on.
        margin: with labels: the kept model's validation AUROC minus the unadapted model's,
            ``{"value", "low", "high", "level", "patients"}`` (paired patient bootstrap);
            the best adapted model's when the unadapted model is kept. None without labels.
        figures: per candidate (by :meth:`Evidence.name`), the figures the rule compared
            (validation AUROC, agreement).
    """

    kept: Candidate
    evidence: Literal["labels", "label-free"]
    statement: str
    margin: dict[str, float | int | None] | None = None
    figures: dict[str, dict[str, float | None]] = field(default_factory=dict)


class DecisionRule(Component):
    """How ``auto`` decides which candidate to keep, the unadapted model among them.

    A rule sees the :class:`Evidence` (validation predictions, patients, labels where
    given) and returns a :class:`Decision` whose words say what it rests on. A rule that
    ``needs_labels`` is used only when the site labels its validation patients; a label-free
    rule's decision is always a proposal.
    """

    kind = ComponentKind.DECISION_RULES
    #: Whether the rule needs labelled validation samples.
    needs_labels: ClassVar[bool]

    @abstractmethod
    def decide(self, evidence: Evidence) -> Decision:
        """Choose among ``evidence.candidates``; keep the unadapted model unless the
        evidence says otherwise."""
