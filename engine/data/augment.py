"""Training augmentations from a profile, checked against the task before they run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose
from monai.utils import MAX_SEED

from medadapt.engine.contracts.components import Augmentation, ComponentKind, SampleRecord
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
        augmentation = registry.create(
            ComponentKind.AUGMENTATIONS, choice.name, choice.params, base_dir=profile.base_dir
        )
        assert isinstance(augmentation, Augmentation)
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
            # the loop below replaces: a RandomState is costly to make, and this runs for
            # every training sample.
            draw = self.R = np.random.RandomState(seed)
        for transform in self.transforms:
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=int(draw.randint(MAX_SEED, dtype="uint32")))
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


def preview_grid(
    profile: Profile,
    registry: ComponentRegistry,
    loader: PatchLoader,
    records: list[SampleRecord],
    out: Path,
    variants: int = 4,
) -> Path:
    """A PNG grid: each row a sample, the original then augmented versions, in the window.

    Slices shown are the patch's middle slice (2D: the slice; 2.5D: the middle channel;
    3D: the middle z). Each row is labelled with the sample's class.
    """
    plt = pyplot()
    transform = training_transform(profile, registry)
    columns = 1 + (variants if transform is not None else 0)
    figure, axes = plt.subplots(
        len(records), columns, figsize=(1.6 * columns, 1.6 * len(records)), squeeze=False
    )
    for row, record in enumerate(records):
        original = np.array(loader.patch_hu(record), dtype=np.float32)
        shown = [original]
        for variant in range(columns - 1):
            assert transform is not None
            transform.set_random_state(seed=profile.seed * 1_000 + row * 10 + variant)
            shown.append(np.asarray(transform(original.copy()), dtype=np.float32))
        for column, hu in enumerate(shown):
            axis = axes[row][column]
            axis.imshow(_middle_slice(loader.window(hu)), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if column == 0 else f"augmented {column}", fontsize=8)
        axes[row][0].set_ylabel(record.label or "unlabelled", fontsize=8)
    names = ", ".join(choice.name for choice in profile.augmentations) or "no augmentation"
    figure.suptitle(f"{profile.site.name}: {names}", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _middle_slice(patch: np.ndarray) -> np.ndarray:
    if patch.ndim == 4:  # (1, z, y, x)
        return patch[0, patch.shape[1] // 2]
    return patch[patch.shape[0] // 2]  # (channels, y, x)
