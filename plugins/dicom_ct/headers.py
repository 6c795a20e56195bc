"""Reading one DICOM file's header: everything a scan needs, and nothing identifying.

A file becomes a :class:`FileHeader` (one or more :class:`FrameHeader`, one per 2D image)
or a :class:`~medadapt.engine.Rejection` that says in plain words why it cannot be used.
Pixel data is never read here: large values are deferred, so scanning thousands of files
keeps memory flat, yet the presence and length of the pixel data are still checked.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from medadapt.engine import Pseudonymizer, Rejection, printable

PIXEL_DATA = 0x7FE00010
_DEFER_BYTES = 2048
_UNDEFINED_LENGTH = 0xFFFFFFFF
_NATIVE_SYNTAXES = {
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
}
#: No CT image file decodes to more than this; a header that claims more is corrupt, and
#: believing it would allocate that much memory.
MAX_DECODED_BYTES = 2 * 2**30
#: The most a compressed transfer syntax can shrink pixel data: RLE's longest run (128 bytes
#: in 2) with headroom; others (JPEG-LS and JPEG 2000 code long runs in a few bits) bounded
#: generously. A header claiming more than this times the file's size is corrupt.
_MAX_RATIO = {pydicom.uid.RLELossless: 130, None: 2000}
_CT_IMAGE_CLASSES = {pydicom.uid.CTImageStorage, pydicom.uid.EnhancedCTImageStorage}
_DECODER_PACKAGES = {
    pydicom.uid.JPEG2000Lossless: "pylibjpeg-openjpeg",
    pydicom.uid.JPEG2000: "pylibjpeg-openjpeg",
    pydicom.uid.JPEGLSLossless: "pylibjpeg-libjpeg",
    pydicom.uid.JPEGLSNearLossless: "pylibjpeg-libjpeg",
    pydicom.uid.JPEGLossless: "pylibjpeg-libjpeg",
    pydicom.uid.JPEGLosslessSV1: "pylibjpeg-libjpeg",
    pydicom.uid.JPEGBaseline8Bit: "pylibjpeg-libjpeg",
    pydicom.uid.JPEGExtended12Bit: "pylibjpeg-libjpeg",
    pydicom.uid.RLELossless: "pylibjpeg-rle",
}

#: Acquisition attributes attached to every sample, by name: the DICOM keyword they come from.
ACQUISITION_ATTRIBUTES = {
    "manufacturer": "Manufacturer",
    "manufacturer_model": "ManufacturerModelName",
    "convolution_kernel": "ConvolutionKernel",
    "kvp": "KVP",
    "slice_thickness": "SliceThickness",
    "body_part": "BodyPartExamined",
}


@dataclass(frozen=True)
class FrameHeader:
    """One 2D image: a single-frame file, or one frame of an enhanced multi-frame file."""

    path: Path
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float]
    instance_number: int | None


@dataclass(frozen=True)
class FileHeader:
    """What a scan keeps of one usable file. Identifiers are pseudonyms already."""

    path: Path
    patient_key: str
    study_key: str
    series_key: str
    image_key: str | None
    rows: int
    columns: int
    frames: list[FrameHeader]
    slice_thickness: float | None
    spacing_between_slices: float | None
    attributes: dict[str, str | float | None]
    notes: list[str] = field(default_factory=list)


#: Segmentation Storage: the SOP class of a DICOM SEG.
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class SegmentationFile:
    """What a scan keeps of a SEG file's header. Identifiers are pseudonyms already."""

    path: Path
    image_key: str | None
    patient_key: str
    series_keys: tuple[str, ...]


def is_segmentation(ds: Dataset) -> bool:
    """Whether a dataset is a DICOM SEG."""
    return str(ds.get("SOPClassUID", "") or "") == SEGMENTATION_STORAGE


def segmentation_header(
    path: Path, ds: Dataset, pseudonymizer: Pseudonymizer, image_key: str | None
) -> SegmentationFile | Rejection:
    """The series a SEG file references, or why it cannot be matched to any."""
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        return Rejection(path, "a DICOM SEG without a PatientID: it cannot be matched", image_key)
    uids = [
        str(item.get("SeriesInstanceUID", "") or "")
        for item in ds.get("ReferencedSeriesSequence", None) or []
    ]
    uids = [uid for uid in uids if uid]
    if not uids:
        return Rejection(
            path,
            "a DICOM SEG that references no series (ReferencedSeriesSequence is empty): it "
            "cannot be matched to the CT it was drawn on",
            image_key,
        )
    return SegmentationFile(
        path,
        image_key,
        pseudonymizer.pseudonym("patient", patient_id),
        tuple(pseudonymizer.pseudonym("series", uid) for uid in uids),
    )


def read_header(
    path: Path,
    pseudonymizer: Pseudonymizer,
    allowed_modalities: Sequence[str] = ("CT",),
) -> FileHeader | SegmentationFile | Rejection:
    """Read one file's header, or explain why the file cannot be used. A DICOM SEG gives
    the series it was drawn on (plugins/dicom_ct/segmentation.py reads its segments).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> header = read_header(Path(get_testdata_file("CT_small.dcm")), Pseudonymizer("x" * 16))
        >>> header.rows, header.columns, header.attributes["manufacturer"]
        (128, 128, 'GE MEDICAL SYSTEMS')
    """
    notes: list[str] = []
    with warnings.catch_warnings():
        # pydicom warns with element values; some may identify a patient. Our own words only.
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except InvalidDicomError:
            try:
                ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=True)
            except Exception:
                return Rejection(path, "not a DICOM file")
            if "SOPInstanceUID" not in ds and "Modality" not in ds:
                return Rejection(path, "not a DICOM file")
            notes.append("no DICOM preamble; read anyway")
        except (OSError, EOFError) as exc:
            return Rejection(path, f"cannot be read: {type(exc).__name__}")
        except Exception as exc:
            return Rejection(path, f"corrupt or truncated file ({_brief(exc)})")
        infer_transfer_syntax(ds)
        uid = str(ds.get("SOPInstanceUID", "") or "")
        image_key = pseudonymizer.pseudonym("image", uid) if uid else None
        if is_segmentation(ds):
            return segmentation_header(path, ds, pseudonymizer, image_key)
        try:
            checked = _check(path, ds, pseudonymizer, allowed_modalities, notes, image_key)
        except Exception as exc:
            checked = f"header cannot be interpreted ({_brief(exc)})"
        return Rejection(path, checked, image_key) if isinstance(checked, str) else checked


def infer_transfer_syntax(ds: Dataset) -> Dataset:
    """Give a file read without file meta (no preamble, no group 0002) the transfer syntax
    it was read with, so that its pixel data can be decoded; such files can only be
    uncompressed (implicit or explicit VR, little or big endian)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return ds
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None or little is None:
        implicit, little = True, True
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian
        if implicit
        else pydicom.uid.ExplicitVRLittleEndian
        if little
        else pydicom.uid.ExplicitVRBigEndian
    )
    return ds


def _check(
    path: Path,
    ds: Dataset,
    pseudonymizer: Pseudonymizer,
    allowed_modalities: Sequence[str],
    notes: list[str],
    image_key: str | None,
) -> FileHeader | str:
    if len(ds) == 0:
        return "the file ends right after its file meta header: an empty or truncated copy"
    if ds.get("DirectoryRecordSequence") is not None:
        return "a DICOMDIR index of other files, not an image"
    modality = str(ds.get("Modality", "") or "")
    if modality not in allowed_modalities:
        what = f"modality {modality}" if modality else "no modality"
        return f"{what}, not {' or '.join(allowed_modalities)}"
    if PIXEL_DATA not in ds:
        if str(ds.get("SOPClassUID", "")) in _CT_IMAGE_CLASSES:
            return "a CT image without its pixel data: the file ends early (a truncated copy?)"
        return "no pixel data (a report, a dose sheet or a header-only file)"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        return (
            f"colour image ({photometric or f'{samples} samples per pixel'}) stored as CT: "
            "a screen capture or a rendering, not Hounsfield units"
        )
    image_type = [str(v).strip().upper() for v in _as_list(ds.get("ImageType"))]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer (scout) image, not part of a volume"
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if not ds.get(keyword):
            return f"the pixel description is incomplete: {keyword} is missing"
    problem = _pixel_data_problem(path, ds)
    if problem:
        return problem
    frames = _frames(path, ds)
    if isinstance(frames, str):
        return frames
    for frame in frames:
        problem = rescale_problem(frame_rescale(ds, frame.frame), required=modality == "CT")
        if problem:
            where = f"frame {frame.frame + 1}: " if frame.frame is not None else ""
            return where + problem
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not series_uid:
        return "no SeriesInstanceUID: the file cannot be placed in a series"
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        return (
            "no PatientID: the image cannot be told apart from other patients', so a split "
            "by patient could not be trusted"
        )
    attributes: dict[str, str | float | None] = {}
    for name, keyword in ACQUISITION_ATTRIBUTES.items():
        value = _first_in_groups(
            ds,
            keyword,
            ("CTAcquisitionDetailsSequence", "CTReconstructionSequence", "PixelMeasuresSequence"),
        )
        attributes[name] = _plain(value)
    return FileHeader(
        path=path,
        patient_key=pseudonymizer.pseudonym("patient", patient_id),
        study_key=pseudonymizer.pseudonym("study", str(ds.get("StudyInstanceUID", "") or "")),
        series_key=pseudonymizer.pseudonym("series", series_uid),
        image_key=image_key,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=frames,
        slice_thickness=_float(attributes["slice_thickness"]),
        spacing_between_slices=_float(ds.get("SpacingBetweenSlices")),
        attributes=attributes,
        notes=notes,
    )


def _pixel_data_problem(path: Path, ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    syntax = (meta.get("TransferSyntaxUID") if meta else None) or pydicom.uid.ImplicitVRLittleEndian
    raw = ds._dict[PIXEL_DATA]  # the undecoded element: its length without reading the value
    length = getattr(raw, "length", None)
    tell = getattr(raw, "value_tell", None)
    if length is not None and length != _UNDEFINED_LENGTH and tell is not None:
        size = os.path.getsize(path)
        if tell + length > size:
            return (
                f"truncated file: the pixel data needs {tell + length} bytes, the file has "
                f"{size} (an interrupted copy?)"
            )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.BitsAllocated) // 8
    if expected > MAX_DECODED_BYTES:
        return (
            f"the header claims {ds.Rows} x {ds.Columns} pixels x {frames} frame(s) of "
            f"{ds.BitsAllocated} bits ({expected / 2**30:.1f} GiB decoded), more than the "
            f"{MAX_DECODED_BYTES / 2**30:.0f} GiB any CT image needs: a corrupt header"
        )
    if syntax not in _NATIVE_SYNTAXES:
        ratio = _MAX_RATIO.get(syntax, _MAX_RATIO[None])
        size = os.path.getsize(path)
        if expected > ratio * size:
            return (
                f"the header claims {ds.Rows} x {ds.Columns} pixels x {frames} frame(s) "
                f"({expected} bytes decoded), more than {ratio} times the file's {size} "
                f"bytes that {syntax.name} can hold: a corrupt header"
            )
    if syntax in _NATIVE_SYNTAXES and length not in (None, _UNDEFINED_LENGTH):
        if length < expected:
            return (
                f"the pixel data has {length} bytes but Rows x Columns x frames x bits "
                f"({ds.Rows} x {ds.Columns} x {frames} x {ds.BitsAllocated}) needs {expected}"
            )
        if length > expected + 1:  # one byte pads an odd length
            return (
                f"the pixel data has {length} bytes, more than the {expected} that Rows x "
                f"Columns x frames x bits ({ds.Rows} x {ds.Columns} x {frames} x "
                f"{ds.BitsAllocated}) describe: BitsAllocated or the size is wrong, and the "
                "pixels would be misread"
            )
    elif syntax not in _NATIVE_SYNTAXES:
        decoder = get_decoder(syntax) if _has_decoder(syntax) else None
        if decoder is None:
            return f"compressed with {syntax.name}, which pydicom cannot decode"
        if not decoder.is_available:
            package = _DECODER_PACKAGES.get(syntax, "pylibjpeg")
            return f"compressed with {syntax.name}; install the package {package} to read it"
    return None


def _has_decoder(syntax: pydicom.uid.UID) -> bool:
    try:
        get_decoder(syntax)
    except NotImplementedError:
        return False
    return True


def _frames(path: Path, ds: Dataset) -> list[FrameHeader] | str:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if per_frame is None:
        if count > 1:
            return "a multi-frame image without per-frame positions: its slices cannot be placed"
        spacing = _pair(ds.get("PixelSpacing"))
        if spacing is None:
            return "no PixelSpacing: the size of a pixel is unknown"
        return [
            FrameHeader(
                path=path,
                frame=None,
                position=_triple(ds.get("ImagePositionPatient")),
                orientation=_sextuple(ds.get("ImageOrientationPatient")),
                pixel_spacing=spacing,
                instance_number=_int(ds.get("InstanceNumber")),
            )
        ]
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    frames = []
    for index, group in enumerate(per_frame):
        frame_type = _group_value(group, shared, "CTImageFrameTypeSequence", "FrameType")
        if frame_type and "LOCALIZER" in [str(v).upper() for v in _as_list(frame_type)]:
            continue
        spacing = _pair(_group_value(group, shared, "PixelMeasuresSequence", "PixelSpacing"))
        if spacing is None:
            return f"frame {index + 1} has no PixelSpacing: the size of a pixel is unknown"
        frames.append(
            FrameHeader(
                path=path,
                frame=index,
                position=_triple(
                    _group_value(group, shared, "PlanePositionSequence", "ImagePositionPatient")
                ),
                orientation=_sextuple(
                    _group_value(
                        group, shared, "PlaneOrientationSequence", "ImageOrientationPatient"
                    )
                ),
                pixel_spacing=spacing,
                instance_number=index + 1,
            )
        )
    if not frames:
        return "every frame is a localizer"
    return frames


#: Rescale values beyond these are no CT scanner's: the stored values would not become HU.
MAX_RESCALE_SLOPE = 100.0
MAX_RESCALE_INTERCEPT = 32768.0


def rescale_problem(ds: Dataset, required: bool = True) -> str | None:
    """What is wrong with a frame's modality LUT (RescaleSlope and RescaleIntercept, Type 1
    in the CT Image module, or a ModalityLUTSequence), or None when it gives HU.

    Args:
        required: the rescale must be there (CT); other modalities may leave it out.
    """
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        return None
    missing = [k for k in ("RescaleSlope", "RescaleIntercept") if ds.get(k) in (None, "")]
    if missing and not required and len(missing) == 2:
        return None
    if missing:
        return (
            f"{' and '.join(missing)} missing: the stored values cannot be turned into HU "
            "(the CT Image module requires both; air would be off by the intercept, "
            "usually 1024 HU)"
        )
    values = {}
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        raw = ds[keyword].value
        try:
            values[keyword] = float(raw)
        except (TypeError, ValueError):
            return f"{keyword} is {_shown(raw)}, not a number"
        if not math.isfinite(values[keyword]):
            return f"{keyword} is {values[keyword]}: the HU values would not be numbers"
    slope, intercept = values["RescaleSlope"], values["RescaleIntercept"]
    if not 0 < slope <= MAX_RESCALE_SLOPE:
        return (
            f"RescaleSlope is {slope:g}: expected a positive number (CT scanners write 1, "
            f"sometimes another up to {MAX_RESCALE_SLOPE:g}); the HU values would be "
            + ("constant" if slope == 0 else "reversed or meaningless")
        )
    if abs(intercept) > MAX_RESCALE_INTERCEPT:
        return (
            f"RescaleIntercept is {intercept:g}: expected a value within "
            f"±{MAX_RESCALE_INTERCEPT:g} (usually -1024 or 0)"
        )
    return None


def _shown(value: Any) -> str:
    """A header value in a message: short, one line, printable."""
    text = repr(value if not isinstance(value, bytes) else value[:40])
    return text if len(text) <= 40 else text[:37] + "..."


def frame_rescale(ds: Dataset, frame: int | None) -> Dataset:
    """A dataset holding the modality LUT of one frame, for pydicom's apply_modality_lut.

    Enhanced multi-frame CT keeps RescaleSlope and RescaleIntercept per frame in functional
    groups; single-frame CT keeps them at the top level.
    """
    if frame is None or "PerFrameFunctionalGroupsSequence" not in ds:
        return ds
    group = ds.PerFrameFunctionalGroupsSequence[frame]
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    rescale = Dataset()
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        value = _group_value(group, shared, "PixelValueTransformationSequence", keyword)
        if value is None and keyword in ds:  # some writers keep them at the top level
            value = ds[keyword].value
        if value is not None:
            setattr(rescale, keyword, value)
    for keyword in ("BitsStored", "PixelRepresentation"):
        if keyword in ds:
            setattr(rescale, keyword, ds[keyword].value)
    return rescale


def _group_value(group: Dataset, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    for container in (group, shared):
        if container is None:
            continue
        item = _first_item(container.get(sequence))
        if item is not None and keyword in item:
            return item[keyword].value
    return None


def _first_in_groups(ds: Dataset, keyword: str, sequences: Sequence[str]) -> Any:
    if keyword in ds:
        return ds[keyword].value
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    first = _first_item(ds.get("PerFrameFunctionalGroupsSequence"))
    for sequence in sequences:
        value = _group_value(first, shared, sequence, keyword) if first is not None else None
        if value is not None:
            return value
    return None


def _first_item(sequence: Any) -> Dataset | None:
    return sequence[0] if sequence else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _numbers(value: Any, count: int) -> tuple[float, ...] | None:
    values = _as_list(value)
    if len(values) != count:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(n) for n in numbers) else None


def _pair(value: Any) -> tuple[float, float] | None:
    numbers = _numbers(value, 2)
    return numbers if numbers and all(n > 0 for n in numbers) else None  # type: ignore[return-value]


def _triple(value: Any) -> tuple[float, float, float] | None:
    return _numbers(value, 3)  # type: ignore[return-value]


def _sextuple(value: Any) -> tuple[float, float, float, float, float, float] | None:
    return _numbers(value, 6)  # type: ignore[return-value]


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _plain(value: Any) -> str | float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.IS):
        return float(value)
    if isinstance(value, pydicom.multival.MultiValue | list):
        return printable("\\".join(str(v) for v in value))
    return printable(str(value).strip())


def _brief(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__
