"""Writing CT images as DICOM, as a scanner would export them.

Used by the simulated hospitals, the tests and the benchmarks, so that everything medadapt
reads in those places went through one well-formed path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(
    stored: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    position: Sequence[float],
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    pixel_spacing: Sequence[float] = (0.7, 0.7),
    slice_thickness: float = 1.0,
    instance: int = 1,
    sop_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    attributes: Mapping[str, Any] | None = None,
) -> Dataset:
    """One single-frame CT image with signed 16-bit stored values.

    Args:
        stored: the stored values, (rows, columns); HU = stored * slope + intercept.
        patient_id: PatientID (use obviously synthetic identities).
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        position: ImagePositionPatient of the first pixel, in mm.
        orientation: ImageOrientationPatient (row direction, then column direction).
        pixel_spacing: PixelSpacing (between rows, between columns), in mm.
        slice_thickness: SliceThickness in mm.
        instance: InstanceNumber.
        sop_uid: SOPInstanceUID; a new random one when None.
        slope: RescaleSlope.
        intercept: RescaleIntercept.
        attributes: further attributes by DICOM keyword (Manufacturer, ConvolutionKernel...).

    Example:
        >>> ds = ct_slice(np.zeros((4, 4), np.int16), patient_id="SYNTHETIC-1",
        ...               study_uid="1.2.3", series_uid="1.2.3.4", position=(0, 0, 0))
        >>> ds.Modality, ds.Rows, float(ds.RescaleIntercept)
        ('CT', 4, -1024.0)
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = float(slice_thickness)
    ds.RescaleSlope = float(slope)
    ds.RescaleIntercept = float(intercept)
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.int16).tobytes()
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    return ds
