"""Reading a volume's pixels in Hounsfield units."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import scipy.ndimage
from pydicom.pixels import apply_modality_lut

from medadapt.engine import Image, InvalidInputError
from medadapt.plugins.dicom_ct.headers import frame_rescale, infer_transfer_syntax
from medadapt.plugins.dicom_ct.series import SliceRef, Volume


class UndecodableFile(InvalidInputError):
    """One file of a volume whose pixels cannot be read (the message names it, and only it)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def load_hu(volume: Volume) -> Image:
    """Decode every slice, apply its modality LUT and orient the stack (z, y, x).

    HU values equal pydicom's ``apply_modality_lut`` on each slice, as float32.

    Raises:
        InvalidInputError: a file cannot be decoded; the message names the file and, for a
            compressed file, the package to install.
    """
    stack = np.empty((len(volume.slices), volume.rows, volume.columns), dtype=np.float32)
    by_file: dict[Path, list[tuple[int, SliceRef]]] = defaultdict(list)
    for index, ref in enumerate(volume.slices):
        by_file[ref.path].append((index, ref))
    for path, refs in by_file.items():
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
    if volume.shear is not None:
        _unshear(stack, volume.shear)
    oriented = np.transpose(stack, volume.axes)
    for axis, flip in enumerate(volume.flips):
        if flip:
            oriented = np.flip(oriented, axis=axis)
    return Image(hu=np.ascontiguousarray(oriented), spacing_mm=volume.spacing_mm)


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
