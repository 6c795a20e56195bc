"""Deterministic preprocessing: a lesion-centred patch, resampled and windowed.

Resampling and cropping happen in one step: the patch grid, at the profile's spacing, is
placed around the lesion centre and the volume is sampled there with linear interpolation.
Only the voxels the patch needs are computed, whatever the size of the volume. Outside the
scanned volume the patch reads as air (-1000 HU).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medadapt.engine.contracts.components import Image
from medadapt.engine.profile import Preprocessing

AIR_HU = -1000.0


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1]: ``level - width/2`` and below to 0, ``level + width/2`` and above to 1.

    Example:
        >>> window(np.array([-1000.0, 40.0, 240.0, 1000.0]), level=40, width=400).tolist()
        [0.0, 0.5, 1.0, 1.0]
    """
    low = level - width / 2
    return np.clip((hu - low) / width, 0.0, 1.0).astype(np.float32)


def sample_patch_hu(
    image: Image,
    centre: tuple[float, float, float] | None,
    preprocessing: Preprocessing,
) -> np.ndarray:
    """The patch in HU, channel first: (1, y, x) for 2d, (3, y, x) for 2.5d, (1, z, y, x) for
    3d, and (1, slices, y, x) for the slices of a series (2d with ``preprocessing.slices``).

    Args:
        image: the volume, axes (z, y, x).
        centre: the lesion centre as a (z, y, x) voxel index; None for the volume's centre.
        preprocessing: spacing, patch mode and size from the profile.
    """
    hu = image.hu if image.hu.ndim == 3 else image.hu[np.newaxis]
    spacing = np.asarray(image.spacing_mm if image.hu.ndim == 3 else (1.0, *image.spacing_mm))
    target = np.asarray(preprocessing.spacing_mm or spacing, dtype=float)
    middle = (np.asarray(hu.shape, dtype=float) - 1) / 2
    centre_index = np.asarray(centre if centre is not None else middle, dtype=float)
    volume = preprocessing.patch_mode == "3d" or preprocessing.slices is not None
    if preprocessing.patch_mode == "3d":
        depths = _offsets(preprocessing.patch_size[0])
        rows, columns = preprocessing.patch_size[1:]
    elif preprocessing.slices is not None:
        depths = _offsets(preprocessing.slices)
        rows, columns = preprocessing.patch_size
    elif preprocessing.patch_mode == "2.5d":
        depths = np.array([-1.0, 0.0, 1.0])
        rows, columns = preprocessing.patch_size
    else:
        depths = np.array([0.0])
        rows, columns = preprocessing.patch_size
    # Offsets from the centre in voxels of the source volume, per axis.
    z = centre_index[0] + depths * target[0] / spacing[0]
    y = centre_index[1] + _offsets(rows) * target[1] / spacing[1]
    x = centre_index[2] + _offsets(columns) * target[2] / spacing[2]
    grid = np.stack(np.meshgrid(z, y, x, indexing="ij"))
    patch = ndimage.map_coordinates(
        hu, grid, order=1, mode="constant", cval=AIR_HU, prefilter=False
    ).astype(np.float32)
    return patch[np.newaxis] if volume else patch


def preprocessing_key(preprocessing: Preprocessing) -> dict[str, Any]:
    """The part of the profile a patch depends on, for cache keys."""
    return preprocessing.model_dump(mode="json")


def _offsets(count: int) -> np.ndarray:
    """Positions of ``count`` samples around 0, one unit apart; 0 is always a sample, so a
    patch at native spacing copies voxels exactly (an even count has one more before 0).

    Example:
        >>> _offsets(4).tolist()
        [-2.0, -1.0, 0.0, 1.0]
    """
    return np.arange(count, dtype=float) - count // 2
