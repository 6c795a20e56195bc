"""Training augmentations from a profile, checked against the task before they run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, Randomizable
from monai.utils import MAX_SEED

from medadapt.engine.contracts.components import Augmentation, SampleRecord
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.samples import PatchLoader
from medadapt.engine.output.text import pyplot
from medadapt.engine.profile import Profile, unsafe_augmentation


def training_transform(
    profile: Profile, registry: ComponentRegistry
) -> Callable[[Any], Any] | None:
    """The profile's augmentations as one MONAI transform, or None when there are none.

    Raises:
        InvalidInputError: an augmentation would change what the labels depend on (the same
            check as ``medadapt profile check``, repeated here so no job can skip it).
    """
    if not profile.augmentations:
        return None
    transforms = []
    for choice in profile.augmentations:
        augmentation = registry.build(
            Augmentation, choice.name, choice.params, base_dir=profile.base_dir
        )
        problem = unsafe_augmentation(augmentation, profile.task, registry)
        if problem:
            raise InvalidInputError(problem)
        transforms.append(augmentation.transform())
    return SeededCompose(transforms)


class SeededCompose(Compose):
    """MONAI's Compose, seeding every transform that has ``set_random_state``.

    MONAI's own Compose seeds only subclasses of its ``Randomizable``; a plugin's transform
    that merely has the method (as the contract asks) would keep drawing from an unseeded
    state, and the same seed would not give the same augmented samples.
    """

    def set_random_state(self, seed: int | None = None, state: Any = None) -> SeededCompose:
        if state is not None:
            super().set_random_state(seed=seed, state=state)
            draw = state
        else:
            # What Compose's own method would do, less its seeding of each transform, which
            # the loop below replaces. This runs for every training sample, and a new
            # RandomState costs about 160 microseconds where reseeding one costs 2.
            draw = self.R = _reseeded(self, seed)
        for transform in self.transforms:
            if hasattr(transform, "set_random_state"):
                _seed(transform, int(draw.randint(MAX_SEED, dtype="uint32")))
        return self

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        """The transforms in turn, on plain tensors: MONAI's metadata tracking (MetaTensor,
        for inverting transforms) is switched off while they run; the input is a bare patch
        with no metadata to track, and tracking took a third of each sample's time."""
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            set_track_meta(tracking)


def _reseeded(transform: Any, seed: int | None) -> np.random.RandomState:
    """``np.random.RandomState(seed)``, by reseeding the transform's own one where it has one.

    ``RandomState.seed(n)`` leaves a generator in exactly the state ``RandomState(n)`` starts
    in. A transform that never had its own generator reads MONAI's class-wide one, which is
    never reseeded here: it gets a new one.
    """
    own = vars(transform).get("R")
    if isinstance(own, np.random.RandomState) and seed is not None:
        own.seed(seed)
        return own
    return np.random.RandomState(seed)


def _seed(transform: Any, seed: int) -> None:
    """``transform.set_random_state(seed=seed)``, with the same draws, faster for MONAI's own.

    MONAI's ``Randomizable.set_random_state`` replaces the transform's generator by
    ``RandomState(seed % MAX_SEED)``, and ``Compose``'s also seeds each of its transforms
    from its generator's next draws; both are done here by reseeding the generators in place.
    A transform with a method of its own (a plugin's, or one of MONAI's that seeds more than
    its generator) has that method called.
    """
    method = type(transform).set_random_state
    if method is Randomizable.set_random_state:
        transform.R = _reseeded(transform, seed % MAX_SEED)
    elif method is Compose.set_random_state:
        transform.R = _reseeded(transform, seed % MAX_SEED)
        for inner in transform.transforms:
            if isinstance(inner, Randomizable):
                _seed(inner, int(transform.R.randint(MAX_SEED, dtype="uint32")))
    else:
        transform.set_random_state(seed=seed)


@dataclass(frozen=True)
class Preview:
    """Samples and their augmented versions as windowed middle slices, ready to draw.

    ``rows`` holds one (class, slices) pair per sample: the original slice first, then each
    augmented version, every value in [0, 1] (the profile's window)."""

    title: str
    rows: list[tuple[str, list[np.ndarray]]]


def preview(
    profile: Profile,
    registry: ComponentRegistry,
    loader: PatchLoader,
    records: list[SampleRecord],
    variants: int = 4,
) -> Preview:
    """The profile's augmentations on ``records``, each seeded from the profile's seed.

    Slices shown are the patch's middle slice (2D: the slice; 2.5D: the middle channel;
    3D: the middle z)."""
    transform = training_transform(profile, registry)
    columns = 1 + (variants if transform is not None else 0)
    rows = []
    for row, record in enumerate(records):
        original = np.array(loader.patch_hu(record), dtype=np.float32)
        shown = [original]
        for variant in range(columns - 1):
            assert transform is not None
            transform.set_random_state(seed=profile.seed * 1_000 + row * 10 + variant)
            shown.append(np.asarray(transform(original.copy()), dtype=np.float32))
        slices = [np.asarray(_middle_slice(loader.window(hu)), dtype=np.float32) for hu in shown]
        rows.append((record.label or "unlabelled", slices))
    names = ", ".join(choice.name for choice in profile.augmentations) or "no augmentation"
    return Preview(f"{profile.site.name}: {names}", rows)


def draw_preview(shown: Preview, out: Path) -> Path:
    """A PNG grid of ``shown``: each row a sample, the original then its augmented versions,
    each row labelled with the sample's class."""
    plt = pyplot()
    columns = max(len(slices) for _, slices in shown.rows)
    figure, axes = plt.subplots(
        len(shown.rows), columns, figsize=(1.6 * columns, 1.6 * len(shown.rows)), squeeze=False
    )
    for row, (label, slices) in enumerate(shown.rows):
        for column, image in enumerate(slices):
            axis = axes[row][column]
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if column == 0 else f"augmented {column}", fontsize=8)
        axes[row][0].set_ylabel(label, fontsize=8)
    figure.suptitle(shown.title, fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def preview_grid(
    profile: Profile,
    registry: ComponentRegistry,
    loader: PatchLoader,
    records: list[SampleRecord],
    out: Path,
    variants: int = 4,
) -> Path:
    """A PNG grid of ``records`` and their augmented versions (:func:`preview`) at ``out``."""
    return draw_preview(preview(profile, registry, loader, records, variants), out)


def one_of_each_class(records: list[SampleRecord], count: int) -> list[SampleRecord]:
    """Up to ``count`` records taking each class in turn, in the records' order."""
    by_class: dict[str | None, list[SampleRecord]] = {}
    for record in records:
        by_class.setdefault(record.label, []).append(record)
    return [r for group in zip(*by_class.values(), strict=False) for r in group][:count]


def _middle_slice(patch: np.ndarray) -> np.ndarray:
    if patch.ndim == 4:  # (1, z, y, x)
        return patch[0, patch.shape[1] // 2]
    return patch[patch.shape[0] // 2]  # (channels, y, x)
