"""Reading a volume's pixels in Hounsfield units."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import warnings
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pydicom
import scipy.ndimage
from pydicom.pixels import apply_modality_lut
from pydicom.uid import RLELossless

from medadapt.engine import Image, InvalidInputError
from medadapt.plugins.dicom_ct.headers import frame_rescale, infer_transfer_syntax
from medadapt.plugins.dicom_ct.series import SliceRef, Volume

log = logging.getLogger(__name__)

#: A series keeps going without at most this share of its slices (and at least one), filled
#: in from their neighbours; more undecodable slices reject it.
MAX_FILLED_FRACTION = 0.1
#: A series of fewer files is decoded in one process (chosen in benchmarks/dicom_loading.py).
PARALLEL_MIN_FILES = 16


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


def decode_workers() -> int:
    """Processes that decode a series: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def load_hu(
    volume: Volume,
    on_undecodable: Callable[[UndecodableFile], None] | None = None,
    workers: int | None = None,
) -> Image:
    """Decode every slice, apply its modality LUT and orient the stack (z, y, x).

    A series of :data:`PARALLEL_MIN_FILES` files or more whose pixels are compressed with a
    codec that costs more to decode than to move (JPEG, JPEG-LS, JPEG 2000: see
    :func:`costly_to_decode`) is decoded by ``workers`` processes (default
    :func:`decode_workers`; see :func:`_decode_in_processes`), each file into its own slices
    of one array, so the HU values and their order are those of decoding the files one after
    another. Any other series, or one met where processes cannot be started, is decoded in
    this process: uncompressed or RLE pixels are decoded faster than they can be handed
    between processes (benchmarks/dicom_loading.py measures both).

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
    shape = (len(volume.slices), volume.rows, volume.columns)
    by_file: dict[Path, list[tuple[int, SliceRef]]] = defaultdict(list)
    for index, ref in enumerate(volume.slices):
        by_file[ref.path].append((index, ref))
    failed: list[UndecodableFile] = []
    missing: set[int] = set()
    items = list(by_file.items())
    workers = decode_workers() if workers is None else workers
    decoded = None
    if workers > 1 and len(items) >= PARALLEL_MIN_FILES and costly_to_decode(items[0][0]):
        decoded = _decode_in_processes(items, shape, workers)
    if decoded is None:
        stack = np.empty(shape, dtype=np.float32)
        reasons = _decode(items, stack)
    else:
        stack, reasons = decoded
    outcomes = [
        UndecodableFile(path, reasons[number]) if number in reasons else None
        for number, (path, _) in enumerate(items)
    ]
    for (_, refs), outcome in zip(items, outcomes, strict=True):
        if outcome is not None:
            failed.append(outcome)
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


#: Compressed transfer syntaxes that decode faster than a pool could hand their pixels on.
_CHEAP = {RLELossless}


def costly_to_decode(path: Path) -> bool:
    """Whether the file's pixel data are compressed with a codec worth decoding in parallel
    (JPEG, JPEG-LS, JPEG 2000 and the like: a JPEG 2000 series decoded 1.8 times as fast on
    two processes in benchmarks/dicom_loading.py), read from its header only; False when it
    cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote identifying values
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        syntax = ds.file_meta.TransferSyntaxUID
    except Exception:
        return False
    return bool(syntax.is_compressed) and syntax not in _CHEAP


def _decode(
    items: list[tuple[Path, list[tuple[int, SliceRef]]]], stack: np.ndarray
) -> dict[int, str]:
    """Decode ``items`` (files and their slices) into ``stack``; why each file that could not
    be decoded was not, by its place in ``items``.

    pydicom's warnings may quote identifying values: they are silenced. The filter is the
    process's, so it is set once here, around the whole loop.
    """
    reasons = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number, (path, refs) in enumerate(items):
            try:
                _read_file(path, refs, stack)
            except UndecodableFile as exc:
                reasons[number] = exc.reason
    return reasons


def _decode_in_processes(
    items: list[tuple[Path, list[tuple[int, SliceRef]]]],
    shape: tuple[int, int, int],
    workers: int,
) -> tuple[np.ndarray, dict[int, str]] | None:
    """Decode ``items`` on a pool of ``workers`` processes, each writing its files' slices
    into one array in shared memory (only file names and reasons travel between processes).

    The pool is started on first use (``spawn``: a forked copy of a process that runs
    PyTorch's threads is unsafe) and kept for the process's life, so only the first series
    pays for its start. Returns None, and the caller decodes in its own process, where
    processes cannot help or cannot run: in a daemonic process (a data loader's worker),
    when shared memory (``/dev/shm``) has too little room for the volume, or when the pool
    fails.
    """
    size = int(np.prod(shape)) * 4
    if multiprocessing.current_process().daemon or not _room_in_shared_memory(size):
        return None
    try:
        memory = shared_memory.SharedMemory(create=True, size=max(size, 1))
    except OSError:
        return None
    try:
        pool = _decode_pool(workers)
        numbered = list(enumerate(items))
        parts = [numbered[k::workers] for k in range(workers)]
        futures = [pool.submit(_decode_part, memory.name, shape, part) for part in parts if part]
        reasons = {number: why for future in futures for number, why in future.result()}
        stack = np.ndarray(shape, dtype=np.float32, buffer=memory.buf).copy()
    except (OSError, BrokenProcessPool) as exc:
        log.debug("decoding in one process: the decoding pool failed (%s)", exc)
        _drop_pool()
        return None
    finally:
        memory.close()
        memory.unlink()
    return stack, reasons


def _decode_part(
    name: str, shape: tuple[int, int, int], part: list[tuple[int, tuple[Path, list]]]
) -> list[tuple[int, str]]:
    """In a pool's process: decode ``part`` into the shared array ``name``."""
    memory = shared_memory.SharedMemory(name=name)
    try:
        stack = np.ndarray(shape, dtype=np.float32, buffer=memory.buf)
        reasons = _decode([item for _, item in part], stack)
        del stack  # before the memory it views is closed
        return [(part[k][0], why) for k, why in reasons.items()]
    finally:
        memory.close()


_POOL: tuple[int, ProcessPoolExecutor] | None = None


def _decode_pool(workers: int) -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != workers:
        _drop_pool()
        context = multiprocessing.get_context("spawn")
        _POOL = (workers, ProcessPoolExecutor(workers, mp_context=context))
    return _POOL[1]


def _drop_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown(wait=False, cancel_futures=True)
        _POOL = None


def _room_in_shared_memory(size: int) -> bool:
    """Whether ``/dev/shm`` (where shared memory lives on Linux) has room for ``size``
    bytes and as much again; elsewhere, yes."""
    folder = Path("/dev/shm")
    if not folder.is_dir():
        return True
    return shutil.disk_usage(folder).free >= 2 * size


def _read_file(path: Path, refs: list[tuple[int, SliceRef]], stack: np.ndarray) -> None:
    rows, columns = stack.shape[1:]
    try:  # (warnings are silenced by the caller, _decode)
        ds = infer_transfer_syntax(pydicom.dcmread(path, force=True))
        pixels = ds.pixel_array
    except Exception as exc:
        why = f"the pixel data cannot be decoded: {_why(exc)}"
        raise UndecodableFile(path, why) from None
    for index, ref in refs:
        # pydicom returns a 2D array for a multi-frame file that holds one frame.
        frame = pixels if ref.frame is None or pixels.ndim == 2 else pixels[ref.frame]
        if frame.shape != (rows, columns):
            raise UndecodableFile(
                path,
                f"the image is {frame.shape[0]} x {frame.shape[1]} pixels, the header "
                f"says {rows} x {columns}",
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
