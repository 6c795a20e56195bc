"""Built-in augmentations, on MONAI transforms, each with its safety contract.

Every augmentation works on a channel-first patch in Hounsfield units, before the HU
window is applied, and says what it keeps (``preserves``) and what it may change, with a
bound (:meth:`~medadapt.engine.Augmentation.changes`). A profile whose labels depend on a
property an augmentation changes beyond the task's tolerance is refused before training.

Geometric transforms pad with air (-1000 HU), never with water. The noise, kernel and
calibration transforms double as "scanner randomisation": they imitate what differs between
scanners, so a model trained with them travels better between hospitals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medadapt.engine import Augmentation, LabelProperty, hookimpl

EVERYTHING = frozenset(LabelProperty)
AIR_HU = -1000.0


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    probability: float = Field(default=0.5, ge=0.0, le=1.0, description="chance per sample")


def _on_air(transform: Any) -> Callable[[Any], Any]:
    """Run a MONAI spatial transform with air, not water, outside the patch."""
    from monai.transforms import Compose, ShiftIntensity

    return Compose([ShiftIntensity(-AIR_HU), transform, ShiftIntensity(AIR_HU)])


class RandomFlip(Augmentation):
    """Mirrors the patch left-right or front-back."""

    name = "random-flip"
    preserves: ClassVar = EVERYTHING - {LabelProperty.LATERALITY}

    class Params(_Params):
        axis: Literal["left-right", "anterior-posterior"] = Field(
            default="anterior-posterior", description="left-right changes laterality"
        )

    def changes(self) -> dict[LabelProperty, float]:
        if self.params.axis == "left-right":
            return {LabelProperty.LATERALITY: math.inf}
        return {}

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandFlip

        axis = -1 if self.params.axis == "left-right" else -2
        return RandFlip(prob=self.params.probability, spatial_axis=axis)


class RandomRotate(Augmentation):
    """Turns the patch in the slice plane by a small angle."""

    name = "random-rotate"
    preserves: ClassVar = EVERYTHING

    class Params(_Params):
        max_degrees: float = Field(default=15.0, gt=0.0, le=45.0)

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandRotate

        angle = math.radians(self.params.max_degrees)
        return _on_air(
            RandRotate(range_x=angle, prob=self.params.probability, padding_mode="zeros")
        )


class RandomScale(Augmentation):
    """Zooms in or out a little, and moves the patch: lesions look bigger or smaller."""

    name = "random-scale"
    preserves: ClassVar = EVERYTHING - {LabelProperty.SIZE}

    class Params(_Params):
        max_scale: float = Field(default=0.1, gt=0.0, le=0.5, description="0.1 is +-10%")
        max_shift_voxels: float = Field(default=2.0, ge=0.0)

    def changes(self) -> dict[LabelProperty, float]:
        return {LabelProperty.SIZE: self.params.max_scale}

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandAffine

        shift = self.params.max_shift_voxels
        return _on_air(
            RandAffine(
                prob=self.params.probability,
                scale_range=self.params.max_scale,
                translate_range=(shift, shift, shift),
                padding_mode="zeros",
            )
        )


class RandomShift(Augmentation):
    """Moves the patch by a few voxels: the lesion is not always dead centre."""

    name = "random-shift"
    preserves: ClassVar = EVERYTHING

    class Params(_Params):
        max_voxels: float = Field(default=3.0, gt=0.0)

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandAffine

        shift = self.params.max_voxels
        return _on_air(
            RandAffine(
                prob=self.params.probability,
                translate_range=(shift, shift, shift),
                padding_mode="zeros",
                mode="nearest",
            )
        )


class RandomElastic(Augmentation):
    """Bends the patch gently: outlines change a little."""

    name = "random-elastic"
    preserves: ClassVar = EVERYTHING - {LabelProperty.SHAPE}

    class Params(_Params):
        magnitude: float = Field(default=1.0, gt=0.0, le=5.0, description="voxels")

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import Rand2DElastic, Rand3DElastic

        magnitude = (0.0, self.params.magnitude)
        return _BySpatialDims(
            _on_air(
                Rand2DElastic(
                    spacing=(8, 8),
                    magnitude_range=magnitude,
                    prob=self.params.probability,
                    padding_mode="zeros",
                )
            ),
            _on_air(
                Rand3DElastic(
                    sigma_range=(4, 6),
                    magnitude_range=magnitude,
                    prob=self.params.probability,
                    padding_mode="zeros",
                )
            ),
        )


class GaussianNoise(Augmentation):
    """Adds noise in HU, like a lower dose; clipped at three standard deviations."""

    name = "gaussian-noise"
    preserves: ClassVar = EVERYTHING - {LabelProperty.TEXTURE, LabelProperty.ABSOLUTE_HU}

    class Params(_Params):
        max_sd_hu: float = Field(default=20.0, gt=0.0, le=200.0)

    def changes(self) -> dict[LabelProperty, float]:
        return {
            LabelProperty.TEXTURE: math.inf,
            LabelProperty.ABSOLUTE_HU: 3 * self.params.max_sd_hu,
        }

    def transform(self) -> Callable[[Any], Any]:
        return _ClippedNoise(self.params.probability, self.params.max_sd_hu)


class Smooth(Augmentation):
    """Blurs like a smoother reconstruction kernel; small bright spots lose HU."""

    name = "kernel-smooth"
    preserves: ClassVar = EVERYTHING - {LabelProperty.TEXTURE, LabelProperty.ABSOLUTE_HU}

    class Params(_Params):
        max_sigma_voxels: float = Field(default=1.0, gt=0.0, le=3.0)

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandGaussianSmooth

        sigma = (0.25, self.params.max_sigma_voxels)
        return RandGaussianSmooth(sigma, sigma, sigma, prob=self.params.probability)


class Sharpen(Augmentation):
    """Sharpens like a sharper reconstruction kernel; edges overshoot in HU."""

    name = "kernel-sharpen"
    preserves: ClassVar = EVERYTHING - {LabelProperty.TEXTURE, LabelProperty.ABSOLUTE_HU}
    Params = _Params

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandGaussianSharpen

        return RandGaussianSharpen(alpha=(2.0, 8.0), prob=self.params.probability)


class ThickerSlices(Augmentation):
    """Averages adjacent slices, as a thicker slice reconstruction does (2.5D and 3D)."""

    name = "thicker-slices"
    preserves: ClassVar = EVERYTHING - {LabelProperty.TEXTURE, LabelProperty.ABSOLUTE_HU}
    Params = _Params

    def transform(self) -> Callable[[Any], Any]:
        return _ThickerSlices(self.params.probability)


class HUShift(Augmentation):
    """Adds one offset to every voxel, like a scanner off its calibration."""

    name = "hu-shift"
    preserves: ClassVar = EVERYTHING - {LabelProperty.ABSOLUTE_HU}

    class Params(_Params):
        max_shift_hu: float = Field(default=10.0, gt=0.0, le=500.0)

    def changes(self) -> dict[LabelProperty, float]:
        return {LabelProperty.ABSOLUTE_HU: self.params.max_shift_hu}

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandShiftIntensity

        return RandShiftIntensity(offsets=self.params.max_shift_hu, prob=self.params.probability)


class HUScale(Augmentation):
    """Multiplies HU by a factor near 1 (contrast); bounded for values within +-1000 HU."""

    name = "hu-scale"
    preserves: ClassVar = EVERYTHING - {LabelProperty.ABSOLUTE_HU}

    class Params(_Params):
        max_change: float = Field(default=0.02, gt=0.0, le=0.5, description="0.02 is +-2%")

    def changes(self) -> dict[LabelProperty, float]:
        return {LabelProperty.ABSOLUTE_HU: self.params.max_change * 1000.0}

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandScaleIntensity

        return RandScaleIntensity(factors=self.params.max_change, prob=self.params.probability)


class WindowJitter(Augmentation):
    """Moves the display window a little: level by a few HU, width by a few per cent.

    What the model sees through the window at level ``L`` and width ``W`` after this
    transform is what it would see through a window at ``L + d`` and width ``W / s``; the
    transform maps ``hu`` to ``L + s (hu - L) + d``. Set ``level_hu`` to the profile's
    window level.
    """

    name = "window-jitter"
    preserves: ClassVar = EVERYTHING - {LabelProperty.ABSOLUTE_HU}

    class Params(_Params):
        level_hu: float = Field(default=40.0, description="the profile's window level")
        max_level_hu: float = Field(default=10.0, ge=0.0, le=500.0)
        max_width_change: float = Field(default=0.05, ge=0.0, le=0.5, description="0.05 is 5%")

    def changes(self) -> dict[LabelProperty, float]:
        """For values within +-1000 HU, like ``hu-scale``."""
        p = self.params
        return {
            LabelProperty.ABSOLUTE_HU: p.max_level_hu
            + p.max_width_change * (1000.0 + abs(p.level_hu))
        }

    def transform(self) -> Callable[[Any], Any]:
        p = self.params
        return _WindowJitter(p.probability, p.level_hu, p.max_level_hu, p.max_width_change)


class ContrastJitter(Augmentation):
    """Bends the grey scale with a gamma curve over the patch's own HU range.

    The bound on the HU change holds for patches within +-1000 HU (a range of 2000 HU),
    like ``hu-scale``: ``max |x^gamma - x|`` over the unit range, times 2000.
    """

    name = "contrast-jitter"
    preserves: ClassVar = EVERYTHING - {LabelProperty.ABSOLUTE_HU, LabelProperty.TEXTURE}

    class Params(_Params):
        max_gamma_change: float = Field(
            default=0.1, gt=0.0, le=1.0, description="gamma drawn in [1/(1+g), 1+g]"
        )

    def gammas(self) -> tuple[float, float]:
        g = self.params.max_gamma_change
        return 1.0 / (1.0 + g), 1.0 + g

    def changes(self) -> dict[LabelProperty, float]:
        unit = np.linspace(0.0, 1.0, 10_001)
        worst = max(float(np.abs(unit**gamma - unit).max()) for gamma in self.gammas())
        return {LabelProperty.ABSOLUTE_HU: worst * 2000.0, LabelProperty.TEXTURE: math.inf}

    def transform(self) -> Callable[[Any], Any]:
        from monai.transforms import RandAdjustContrast

        return RandAdjustContrast(prob=self.params.probability, gamma=self.gammas())


class RandomCrop(Augmentation):
    """Keeps a random window of the patch in place and fills the rest with air.

    The window covers at least ``min_fraction`` of each in-plane side and always the
    patch centre, where the lesion is; a large lesion can be cut, so size and shape are
    not kept.
    """

    name = "random-crop"
    preserves: ClassVar = EVERYTHING - {LabelProperty.SIZE, LabelProperty.SHAPE}

    class Params(_Params):
        min_fraction: float = Field(default=0.75, ge=0.5, le=1.0)

    def transform(self) -> Callable[[Any], Any]:
        return _ContextCrop(self.params.probability, self.params.min_fraction)


class _BySpatialDims:
    """One transform for slice patches (channel, y, x), another for volumes."""

    def __init__(self, two: Any, three: Any) -> None:
        self.two, self.three = two, three

    def set_random_state(self, seed: int | None = None, state: Any = None) -> _BySpatialDims:
        self.two.set_random_state(seed, state)
        self.three.set_random_state(seed, state)
        return self

    def __call__(self, patch: Any) -> Any:
        return (self.three if np.ndim(patch) == 4 else self.two)(patch)


class _Seeded:
    """A transform with its own random state, seeded the way MONAI's Randomizable is."""

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.R = np.random.RandomState()

    def set_random_state(self, seed: int | None = None, state: Any = None) -> _Seeded:
        self.R = state if state is not None else np.random.RandomState(seed)
        return self

    def _skip(self) -> bool:
        """Whether this sample is left as it is (drawn with the probability)."""
        return bool(self.R.rand() >= self.probability)


class _ClippedNoise(_Seeded):
    """Gaussian noise of a random standard deviation, clipped at +-3 standard deviations."""

    def __init__(self, probability: float, max_sd: float) -> None:
        super().__init__(probability)
        self.max_sd = max_sd

    def __call__(self, patch: Any) -> Any:
        if self._skip():
            return patch
        sd = self.R.uniform(0.0, self.max_sd)
        noise = np.clip(self.R.standard_normal(np.shape(patch)), -3.0, 3.0) * sd
        return patch + noise.astype(np.float32)


class _ThickerSlices(_Seeded):
    """Averages each slice with its neighbours along the slice axis."""

    def __call__(self, patch: Any) -> Any:
        from scipy.ndimage import uniform_filter1d

        array = np.asarray(patch)
        if self._skip():
            return patch
        axis = 1 if array.ndim == 4 else 0  # 3D: the z axis; 2.5D: the slice channels
        if array.shape[axis] < 2:
            return patch
        return uniform_filter1d(
            array, size=2 + int(self.R.randint(0, 2)), axis=axis, mode="nearest"
        )


class _WindowJitter(_Seeded):
    def __init__(self, probability: float, level: float, shift: float, change: float) -> None:
        super().__init__(probability)
        self.level, self.shift, self.change = level, shift, change

    def __call__(self, patch: Any) -> Any:
        if self._skip():
            return patch
        scale = 1.0 + self.R.uniform(-self.change, self.change)
        offset = self.R.uniform(-self.shift, self.shift)
        return (self.level + scale * (np.asarray(patch) - self.level) + offset).astype(np.float32)


class _ContextCrop(_Seeded):
    def __init__(self, probability: float, min_fraction: float) -> None:
        super().__init__(probability)
        self.min_fraction = min_fraction

    def __call__(self, patch: Any) -> Any:
        if self._skip():
            return patch
        array = np.asarray(patch)
        kept = np.full_like(array, AIR_HU)
        window: list[slice] = [slice(None)] * (array.ndim - 2)
        for side in array.shape[-2:]:
            width = round(side * self.R.uniform(self.min_fraction, 1.0))
            width = min(side, max(width, (side + 1) // 2 + 1))
            # Any start from 0 to side - width keeps the centre voxel inside the window.
            start = int(self.R.randint(0, side - width + 1))
            window.append(slice(start, start + width))
        kept[tuple(window)] = array[tuple(window)]
        return kept


@hookimpl
def medadapt_augmentations() -> Sequence[type[Augmentation]]:
    return [
        RandomFlip,
        RandomRotate,
        RandomScale,
        RandomShift,
        RandomElastic,
        GaussianNoise,
        Smooth,
        Sharpen,
        ThickerSlices,
        HUShift,
        HUScale,
        WindowJitter,
        ContrastJitter,
        RandomCrop,
    ]
