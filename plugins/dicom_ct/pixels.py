"""Reading a volume's pixels in Hounsfield units."""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import scipy.ndimage
from pydicom.pixels import apply_modality_lut

from medadapt.engine import Image, InvalidInputError
from medadapt.plugins.dicom_ct.headers import frame_rescale, infer_transfer_syntax
from medadapt.plugins.dicom_ct.series import SliceRef, Volume

log = logging.getLogger(__name__)

#: A series keeps going without at most this share of its slices (and at least one), filled
#: in from their neighbours; more undecodable slices reject it.
MAX_FILLED_FRACTION = 0.1


class UndecodableFile(InvalidInputError):
    """One file of a volume whose pixels cannot be read (the message names it, and only it)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UndecodableSeries(InvalidInputError):
    """Too many of a series' slices cannot be decoded to fill them in: the series is rejected.

    Attributes:
        failed: each undecodable file, with its own reason.
        slices: how many slices the series has.
    """

    def __init__(self, failed: list[UndecodableFile], missing: int, slices: int) -> None:
        allowed = max(1, int(MAX_FILLED_FRACTION * slices))
        first = failed[0]
        more = f" (and {len(failed) - 1} more of its files)" if len(failed) > 1 else ""
        super().__init__(
            f"{first.path}: {first.reason}{more}: {missing} of the series' {slices} slices "
            f"cannot be read, more than the {allowed} that may be filled in from their "
            "neighbours"
        )
        self.failed = failed
        self.missing = missing
        self.slices = slices


def load_hu(
    volume: Volume, on_undecodable: Callable[[UndecodableFile], None] | None = None
) -> Image:
    """Decode every slice, apply its modality LUT and orient the stack (z, y, x).

    HU values equal pydicom's ``apply_modality_lut`` on each slice, as float32. A series whose
    slices lie on no regular grid (a gap, uneven spacing) is resampled onto one along the
    slice normal (linear interpolation between the two nearest slices). A slice that cannot be
    decoded is left out and filled in the same way from its neighbours, so the volume keeps
    its shape and every lesion its place: each one is passed to ``on_undecodable``, or logged
    as a warning that names the file, when no callback is given.

    Raises:
        UndecodableSeries: more than a tenth of the slices (or every slice) cannot be
            decoded; the message names the first file and, for a compressed file, the
            package to install.
    """
    stack = np.empty((len(volume.slices), volume.rows, volume.columns), dtype=np.float32)
    by_file: dict[Path, list[tuple[int, SliceRef]]] = defaultdict(list)
    for index, ref in enumerate(volume.slices):
        by_file[ref.path].append((index, ref))
    failed: list[UndecodableFile] = []
    missing: set[int] = set()
    for path, refs in by_file.items():
        try:
            _read_file(path, refs, volume, stack)
        except UndecodableFile as exc:
            failed.append(exc)
            missing.update(index for index, _ in refs)
    if failed:
        _tolerate(volume, failed, missing, on_undecodable)
        stack[sorted(missing)] = 0.0  # never read: replaced from the neighbours below
    if volume.shear is not None:
        _unshear(stack, volume.shear)
    if missing or volume.heights is not None:
        kept = [i for i in range(len(volume.slices)) if i not in missing]
        heights = np.asarray(volume.slice_heights(), dtype=float)[kept]
        stack = _onto_grid(stack[kept], heights, volume.depth, volume.acquisition_spacing[0])
    oriented = np.transpose(stack, volume.axes)
    for axis, flip in enumerate(volume.flips):
        if flip:
            oriented = np.flip(oriented, axis=axis)
    return Image(hu=np.ascontiguousarray(oriented), spacing_mm=volume.spacing_mm)


def _read_file(
    path: Path, refs: list[tuple[int, SliceRef]], volume: Volume, stack: np.ndarray
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings may quote identifying values
        try:
            ds = infer_transfer_syntax(pydicom.dcmread(path, force=True))
            pixels = ds.pixel_array
        except Exception as exc:
            why = f"the pixel data cannot be decoded: {_why(exc)}"
            raise UndecodableFile(path, why) from None
    for index, ref in refs:
        # pydicom returns a 2D array for a multi-frame file that holds one frame.
        frame = pixels if ref.frame is None or pixels.ndim == 2 else pixels[ref.frame]
        if frame.shape != (volume.rows, volume.columns):
            raise UndecodableFile(
                path,
                f"the image is {frame.shape[0]} x {frame.shape[1]} pixels, the header "
                f"says {volume.rows} x {volume.columns}",
            )
        stack[index] = apply_modality_lut(frame, frame_rescale(ds, ref.frame))


def _tolerate(
    volume: Volume,
    failed: list[UndecodableFile],
    missing: set[int],
    on_undecodable: Callable[[UndecodableFile], None] | None,
) -> None:
    """Accept a few undecodable slices (each reported), or reject the series."""
    total = len(volume.slices)
    if len(missing) > max(1, int(MAX_FILLED_FRACTION * total)) or len(missing) == total:
        raise UndecodableSeries(failed, len(missing), total)
    for exc in failed:
        if on_undecodable is not None:
            on_undecodable(exc)
        else:
            log.warning(
                "%s: %s; left out of series %s, whose slice there is filled in by linear "
                "interpolation between its neighbours",
                exc.path,
                exc.reason,
                volume.series_key,
            )


def _onto_grid(stack: np.ndarray, heights: np.ndarray, depth: int, between: float) -> np.ndarray:
    """The slices at ``heights`` (mm, ascending) resampled onto ``depth`` slices ``between``
    apart from height 0: linear interpolation between the two nearest, the nearest one
    beyond the ends."""
    out = np.empty((depth, *stack.shape[1:]), dtype=np.float32)
    for index in range(depth):
        height = index * between
        upper = int(np.searchsorted(heights, height))
        if upper == 0 or (upper < len(heights) and heights[upper] - height < 1e-6 * between):
            out[index] = stack[min(upper, len(heights) - 1)]
        elif upper == len(heights):
            out[index] = stack[-1]
        else:
            lower = upper - 1
            weight = (height - heights[lower]) / (heights[upper] - heights[lower])
            out[index] = (1.0 - weight) * stack[lower] + weight * stack[upper]
    return out


def _unshear(stack: np.ndarray, shear: list[tuple[float, float]]) -> None:
    """Move each slice of a tilted series back by its in-plane offset (linear
    interpolation), so that the stack lies on a grid along the slice normal; what moves in
    from outside the image is the slice's lowest value (air, or the padding)."""
    for index, offset in enumerate(shear):
        if offset == (0.0, 0.0):
            continue
        stack[index] = scipy.ndimage.shift(
            stack[index], offset, order=1, mode="constant", cval=float(stack[index].min())
        )


def _why(exc: Exception) -> str:
    text = str(exc)
    if "missing dependencies" in text or "plugins are missing" in text:
        return f"a decoder is missing ({text.splitlines()[0]}); install pylibjpeg and its plugins"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
