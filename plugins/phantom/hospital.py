"""Simulated hospitals: patients drawn, scanned by a preset, written as DICOM with labels."""

from __future__ import annotations

import csv
import json
import os
import shutil
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medadapt.engine import InvalidInputError, csv_row, read_json_file
from medadapt.plugins.dicom_ct.writer import ct_slice
from medadapt.plugins.phantom.anatomy import BODY_REGIONS, Patient, draw_patient, render_volume
from medadapt.plugins.phantom.scanner import ScannerPreset, acquire, check_kernel, preset

#: Bump when the same settings would give different images, to retire cached volumes.
GENERATOR_VERSION = 2
#: Bump when the files are laid out differently (2: case folders, not PatientIDs).
FOLDER_LAYOUT = 2
_INTERCEPT = -1024.0
_MANIFEST = "phantom.json"
_SEG_FILE = Path("SEG") / "SEG0001.dcm"


class HospitalSpec(BaseModel):
    """Everything that defines a simulated hospital; the same spec gives the same files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scanner: str = Field(default="siemens-smooth-standard-dose", description="a scanner preset")
    kernel: str | None = Field(default=None, description="overrides the preset's kernel")
    dose_mgy: float | None = Field(default=None, gt=0, description="overrides CTDIvol (mGy)")
    hu_offset: float | None = Field(default=None, description="overrides the HU calibration")
    pixel_spacing_mm: float | None = Field(default=None, gt=0)
    slice_thickness_mm: float | None = Field(default=None, gt=0)
    body_region: str = Field(default="chest", description="chest, head, abdomen or water")
    patients: int = Field(default=20, ge=1, le=100_000)
    seed: int = Field(default=0, ge=0)
    slices: int = Field(default=24, ge=1, le=2000)
    size: int = Field(default=256, ge=32, le=1024)
    malignant_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    difficulty: float = Field(default=0.3, ge=0.0, le=1.0)
    contrast_enhancement_hu: float = Field(
        default=0.0,
        ge=0.0,
        le=300.0,
        description="an iodinated contrast agent: every lesion reads this much denser (HU)",
    )

    @model_serializer(mode="wrap")
    def _without_defaults_added_later(self, handler: Any) -> dict[str, Any]:
        # Settings added after hospitals were made are left out at their default, so that
        # every hospital made before them keeps its manifest, UIDs and cached volumes.
        dumped = handler(self)
        if self.contrast_enhancement_hu == 0.0:
            dumped.pop("contrast_enhancement_hu", None)
        return dumped

    @field_validator("scanner")
    @classmethod
    def _known_scanner(cls, value: str) -> str:
        preset(value)
        return value

    @field_validator("kernel")
    @classmethod
    def _known_kernel(cls, value: str | None) -> str | None:
        return None if value is None else check_kernel(value)

    @field_validator("body_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value not in BODY_REGIONS:
            raise ValueError(f"body_region must be one of {', '.join(BODY_REGIONS)}")
        return value

    def scanner_preset(self) -> ScannerPreset:
        """The preset with this spec's protocol changes."""
        return preset(
            self.scanner,
            kernel=self.kernel,
            ctdi_vol_mgy=self.dose_mgy,
            hu_offset=self.hu_offset,
            pixel_spacing_mm=self.pixel_spacing_mm,
            slice_thickness_mm=self.slice_thickness_mm,
        )

    @property
    def pixel_mm(self) -> float:
        return self.scanner_preset().pixel_spacing(self.size)

    @property
    def thickness_mm(self) -> float:
        return self.scanner_preset().slice_thickness_mm

    def slice_positions(self) -> np.ndarray:
        """z of each slice centre, contiguous slices centred on z = 0."""
        return (np.arange(self.slices) - (self.slices - 1) / 2) * self.thickness_mm

    def grid_origin(self) -> float:
        """x (and y) of the first pixel's centre: the image is centred on the patient."""
        return -(self.size - 1) / 2 * self.pixel_mm


@dataclass(frozen=True)
class ScannedPatient:
    """A patient and what the scanner reconstructed, in HU."""

    patient: Patient
    hu: np.ndarray


#: Patients are drawn for a scan of this slice thickness, the thinnest of the presets, so
#: that every protocol with slices at least this thick covers every lesion.
NOMINAL_THICKNESS_MM = 1.25


def draw(spec: HospitalSpec, index: int) -> Patient:
    """Draw patient ``index`` of the hospital (anatomy and lesions, before any scanner).

    The patient depends on the seed, the body region, the number of slices and the lesion
    settings only, so the same patients can be scanned by every scanner and protocol.
    """
    half_coverage = spec.slices * min(NOMINAL_THICKNESS_MM, spec.thickness_mm) / 2
    rng = np.random.default_rng([spec.seed, index, 0])
    return draw_patient(
        index,
        spec.body_region,
        rng,
        (-half_coverage, half_coverage),
        malignant_fraction=spec.malignant_fraction,
        difficulty=spec.difficulty,
        enhancement_hu=spec.contrast_enhancement_hu,
    )


def scan_patient(spec: HospitalSpec, index: int) -> ScannedPatient:
    """Draw patient ``index`` and scan them with the spec's scanner and protocol."""
    patient = draw(spec, index)
    scanner = spec.scanner_preset()
    truth = render_volume(
        patient, spec.pixel_mm, spec.size, spec.slice_positions(), spec.thickness_mm
    )
    protocol = zlib.crc32(scanner.model_dump_json().encode())
    noise_rng = np.random.default_rng([spec.seed, index, 1, protocol])
    return ScannedPatient(patient, acquire(truth, scanner, spec.pixel_mm, noise_rng))


def patient_id(spec: HospitalSpec, index: int) -> str:
    """The obviously synthetic PatientID of patient ``index``."""
    return f"PHANTOM-{spec.seed}-{index:04d}"


def _uid(spec: HospitalSpec, *parts: Any) -> str:
    """A UID that depends only on the spec and the parts: the same files on every run."""
    source = "|".join([spec.model_dump_json(), *map(str, parts)])
    return str(generate_uid(entropy_srcs=[source]))


@dataclass(frozen=True)
class HospitalSummary:
    """What a generated hospital holds."""

    folder: Path
    patients: int
    lesions: dict[str, int]
    spec: HospitalSpec

    def as_dict(self) -> dict[str, Any]:
        scanner = self.spec.scanner_preset()
        return {
            "folder": str(self.folder),
            "dicom": str(self.folder / "dicom"),
            "labels": str(self.folder / "labels.csv"),
            "series_labels": str(self.folder / "series_labels.csv"),
            "patients": self.patients,
            "lesions": self.lesions,
            "body_region": self.spec.body_region,
            "slices": self.spec.slices,
            "size": self.spec.size,
            "pixel_spacing_mm": round(self.spec.pixel_mm, 4),
            "slice_thickness_mm": self.spec.thickness_mm,
            "scanner": scanner.model_dump(),
        }


def write_hospital(
    spec: HospitalSpec,
    folder: Path,
    *,
    workers: int = 1,
    on_patient: Callable[[int], None] | None = None,
    segmentations: bool = False,
) -> HospitalSummary:
    """Write the hospital: one CT series per patient under folder/dicom, labels.csv (one
    row per lesion) and series_labels.csv (one row per series: :func:`series_label`).

    A patient whose series is already complete in ``folder`` is not written again, so an
    interrupted run resumes. A folder holding a different hospital is refused.

    Args:
        segmentations: also write each patient's lesions as a DICOM SEG (one segment per
            lesion, labelled with its class) in ``<series folder>/SEG/``, as a viewer would
            save them: the same lesions as labels.csv.

    Raises:
        InvalidInputError: ``folder`` holds a hospital made with other settings.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / _MANIFEST
    # SEG files are not part of the hospital's identity: asking for them later writes them
    # (a patient without its SEG is not complete).
    wanted = {
        "generator": GENERATOR_VERSION,
        "layout": FOLDER_LAYOUT,
        "spec": spec.model_dump(mode="json"),
    }
    if manifest.exists() and read_json_file(manifest, "a simulated hospital's settings") != wanted:
        raise InvalidInputError(
            f"{folder} already holds a simulated hospital made with other settings (or by an "
            "older medadapt, which named folders differently); choose another folder or "
            "delete it"
        )
    manifest.write_text(json.dumps(wanted, indent=2))
    todo = [i for i in range(spec.patients) if not _complete(spec, folder, i, segmentations)]
    done = spec.patients - len(todo)
    for _ in range(done):
        if on_patient:
            on_patient(1)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            jobs = [(spec, folder, i, segmentations) for i in todo]
            for _ in pool.map(_write_patient, jobs):
                if on_patient:
                    on_patient(1)
    else:
        for index in todo:
            _write_patient((spec, folder, index, segmentations))
            if on_patient:
                on_patient(1)
    counts = _write_labels(spec, folder)
    return HospitalSummary(folder, spec.patients, counts, spec)


def _series_folder(spec: HospitalSpec, folder: Path, index: int) -> Path:
    # Named by the case's number, never by the PatientID, as a careful exporter does: a
    # folder name reaches logs and messages that the PatientID inside the files does not.
    return folder / "dicom" / f"case-{index + 1:04d}"


def _complete(spec: HospitalSpec, folder: Path, index: int, segmentations: bool) -> bool:
    series = _series_folder(spec, folder, index)
    complete = series.is_dir() and len(list(series.glob("*.dcm"))) == spec.slices
    if not complete or not segmentations:
        return complete
    return (series / _SEG_FILE).is_file() or not draw(spec, index).lesions


def _write_patient(job: tuple[HospitalSpec, Path, int, bool]) -> None:
    spec, folder, index, segmentations = job
    scanned = scan_patient(spec, index)
    scanner = spec.scanner_preset()
    target = _series_folder(spec, folder, index)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    study_uid, series_uid = _uid(spec, index, "study"), _uid(spec, index, "series")
    origin = spec.grid_origin()
    stored = np.clip(np.rint(scanned.hu - _INTERCEPT), -32768, 32767).astype(np.int16)
    attributes = {
        "PatientName": f"PHANTOM^SYNTHETIC^{index:04d}",
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyDate": "20000101",
        "StudyDescription": "medadapt simulated hospital",
        "SeriesDescription": f"{spec.body_region} {scanner.kernel} {scanner.ctdi_vol_mgy:g} mGy",
        "BodyPartExamined": spec.body_region.upper(),
        "Manufacturer": scanner.manufacturer,
        "ManufacturerModelName": scanner.model,
        "ConvolutionKernel": scanner.kernel,
        "KVP": scanner.kvp,
        "CTDIvol": scanner.ctdi_vol_mgy,
        "SpacingBetweenSlices": scanner.slice_thickness_mm,
    }
    written = []
    for k, z in enumerate(spec.slice_positions()):
        ds = ct_slice(
            stored[k],
            patient_id=patient_id(spec, index),
            study_uid=study_uid,
            series_uid=series_uid,
            position=(origin, origin, float(z)),
            pixel_spacing=(spec.pixel_mm, spec.pixel_mm),
            slice_thickness=scanner.slice_thickness_mm,
            instance=k + 1,
            sop_uid=_uid(spec, index, "image", k),
            intercept=_INTERCEPT,
            attributes=attributes,
        )
        ds.save_as(staging / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
        written.append(ds)
    if segmentations and scanned.patient.lesions:
        (staging / _SEG_FILE).parent.mkdir()
        _segmentation(spec, index, scanned.patient, written).save_as(staging / _SEG_FILE)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _segmentation(
    spec: HospitalSpec, index: int, patient: Patient, images: list[Dataset]
) -> Dataset:
    """The patient's lesions as a DICOM SEG drawn on ``images``: one segment per lesion,
    the voxels within its mean radius of its centre (at least the voxel at the centre),
    labelled with its class, as a radiologist's would be."""
    import highdicom
    from pydicom.sr.codedict import codes

    frame_of_reference = _uid(spec, index, "frame-of-reference")
    for ds in images:  # what a scanner's images carry and the SEG copies (not saved again)
        ds.FrameOfReferenceUID = frame_of_reference
        for keyword in ("AccessionNumber", "StudyID", "StudyTime", "ReferringPhysicianName"):
            if keyword not in ds:
                setattr(ds, keyword, "")
        if "SeriesNumber" not in ds:
            ds.SeriesNumber = 1
    first = images[0]
    rows, columns = int(first.Rows), int(first.Columns)
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    x0, y0 = float(first.ImagePositionPatient[0]), float(first.ImagePositionPatient[1])
    x = x0 + np.arange(columns) * column_mm
    y = y0 + np.arange(rows) * row_mm
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in images])
    mask = np.zeros((len(images), rows, columns, len(patient.lesions)), dtype=bool)
    descriptions = []
    for number, lesion in enumerate(patient.lesions, start=1):
        cx, cy, cz = lesion.centre
        distance = (
            (x[None, None, :] - cx) ** 2
            + (y[None, :, None] - cy) ** 2
            + (z[:, None, None] - cz) ** 2
        )
        inside = distance <= lesion.radius**2
        inside.flat[int(np.argmin(distance))] = True
        mask[..., number - 1] = inside
        descriptions.append(
            highdicom.seg.SegmentDescription(
                segment_number=number,
                segment_label=lesion.label,
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Nodule,
                algorithm_type="MANUAL",
                tracking_id=f"lesion {number}",
                tracking_uid=_uid(spec, index, "lesion", number),
            )
        )
    seg = highdicom.seg.Segmentation(
        source_images=images,
        pixel_array=mask,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=_uid(spec, index, "segmentation-series"),
        series_number=100,
        sop_instance_uid=_uid(spec, index, "segmentation"),
        instance_number=1,
        manufacturer="medadapt",
        manufacturer_model_name="phantom",
        software_versions=str(GENERATOR_VERSION),
        device_serial_number="0",
        series_description="lesions",
    )
    # highdicom stamps the time of writing and a random dimension organisation UID: the same
    # spec must give the same file.
    seg.ContentDate, seg.ContentTime = "20000101", "000000"
    for keyword in ("SeriesDate", "SeriesTime", "InstanceCreationDate", "InstanceCreationTime"):
        if keyword in seg:
            setattr(seg, keyword, "20000101" if keyword.endswith("Date") else "000000")
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = "20000101000000"
    organisation = _uid(spec, index, "dimension-organization")
    for sequence in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(sequence, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = organisation
    return seg


def series_label(patient: Patient) -> str | None:
    """A whole series' label: ``malignant`` when any of its lesions is, else ``benign``
    (None for a patient without lesions, as in the water phantom)."""
    if not patient.lesions:
        return None
    return (
        "malignant" if any(lesion.label == "malignant" for lesion in patient.lesions) else "benign"
    )


def _write_labels(spec: HospitalSpec, folder: Path) -> dict[str, int]:
    counts = {"benign": 0, "malignant": 0}
    rows, series = [], []
    for index in range(spec.patients):
        patient = draw(spec, index)
        identity = {
            "patient_id": patient_id(spec, index),
            "series_uid": _uid(spec, index, "series"),
        }
        for number, lesion in enumerate(patient.lesions, start=1):
            counts[lesion.label] += 1
            x, y, z = lesion.centre
            rows.append(
                {
                    **identity,
                    "label": lesion.label,
                    "x_mm": f"{x:.2f}",
                    "y_mm": f"{y:.2f}",
                    "z_mm": f"{z:.2f}",
                    "lesion_id": f"{identity['patient_id']}-L{number}",
                }
            )
        label = series_label(patient)
        if label is not None:
            series.append({**identity, "label": label})
    _write_csv(
        folder / "labels.csv",
        ["patient_id", "series_uid", "label", "x_mm", "y_mm", "z_mm", "lesion_id"],
        rows,
    )
    _write_csv(folder / "series_labels.csv", ["patient_id", "series_uid", "label"], series)
    return counts


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    temporary = path.with_suffix(".csv.partial")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_row(columns))
        writer.writerows(csv_row(row.get(column, "") for column in columns) for row in rows)
    os.replace(temporary, path)
