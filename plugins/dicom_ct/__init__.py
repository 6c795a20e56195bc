"""The ``dicom-ct`` data source: CT series from a folder exported from PACS.

Reads every file's header once, groups files into series, orders slices by their position
in the patient, converts pixels to Hounsfield units through the modality LUT, and explains
every file it cannot use. Patient, study, series and image identifiers leave this plugin
only as keyed pseudonyms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import click
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from medadapt.engine import (
    DataSource,
    Image,
    InvalidInputError,
    ProfilePath,
    Pseudonymizer,
    Rejection,
    SampleRecord,
    ScanResult,
    hookimpl,
)
from medadapt.plugins.dicom_ct.inspect import inspect_command
from medadapt.plugins.dicom_ct.labels import (
    Lesion,
    columns_problem,
    header,
    join_labels,
    join_series_labels,
    level_of,
)
from medadapt.plugins.dicom_ct.pixels import load_hu
from medadapt.plugins.dicom_ct.scan import FolderScan, scan_folder
from medadapt.plugins.dicom_ct.segmentation import join_segmentations
from medadapt.plugins.dicom_ct.series import Volume

_BOTH_LABEL_SOURCES = (
    "the profile names a label file ({label_file}) and data.params.lesions_from_seg: true; "
    "the lesions come from one or the other: remove data.label_file to read them from the "
    "DICOM SEG files"
)


class DicomCT(DataSource):
    """CT series from a folder of DICOM files, in Hounsfield units."""

    name = "dicom-ct"
    label_levels = frozenset({"lesion", "series"})

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        root: ProfilePath = Field(description="the folder exported from PACS")
        recursive: bool = Field(default=True, description="also read subfolders")
        modalities: list[str] = Field(
            default_factory=lambda: ["CT"], min_length=1, description="modalities accepted"
        )
        pseudonym_key: SecretStr | None = Field(
            default=None,
            description="site secret for pseudonyms; prefer $MEDADAPT_PSEUDONYM_KEY",
        )
        lesions_from_seg: bool = Field(
            default=False,
            description="read the lesions (centre, size, class) from the export's DICOM SEG "
            "files instead of a label file",
        )
        segment_labels: dict[str, str] = Field(
            default_factory=dict,
            description="with lesions_from_seg: segment label to class (case ignored); "
            "empty: a segment's label is its class",
        )

    def pseudonymizer(self, *, allow_ephemeral: bool = False) -> Pseudonymizer:
        """The pseudonymizer this source's identifiers go through."""
        key = self.params.pseudonym_key
        return Pseudonymizer.from_settings(
            key.get_secret_value() if key else None, allow_ephemeral=allow_ephemeral
        )

    def check_label_file(self, label_file: Path) -> str | None:
        """A label file needs patient_id and label, and a lesion location (mm or voxel)
        when it places lesions; it cannot stand beside ``lesions_from_seg``."""
        if self.params.lesions_from_seg:
            return _BOTH_LABEL_SOURCES.format(label_file=label_file)
        try:
            columns = header(label_file)
        except InvalidInputError as exc:
            return str(exc)
        return columns_problem(label_file, columns, level_of(columns))

    def label_file_level(self, label_file: Path) -> str | None:
        """``lesion`` when the header has a lesion location, ``series`` when it does not."""
        try:
            return level_of(header(label_file))
        except InvalidInputError:
            return None  # check_label_file says why

    def scan(self, label_file: ProfilePath | None = None, level: str = "lesion") -> ScanResult:
        """One sample per labelled lesion (a row of the label file, or a segment of the
        export's DICOM SEG files with ``lesions_from_seg``); one per volume without labels.
        At ``level="series"``, one sample per labelled series (its centre left to the
        engine: the middle of the series)."""
        pseudonymizer = self.pseudonymizer()
        found = scan_folder(
            self.params.root,
            pseudonymizer,
            modalities=self.params.modalities,
            recursive=self.params.recursive,
        )
        rejections = list(found.rejections)
        from_seg = self.params.lesions_from_seg
        if from_seg and label_file is not None:
            raise InvalidInputError(_BOTH_LABEL_SOURCES.format(label_file=label_file))
        if not from_seg:
            rejections.extend(
                Rejection(
                    seg.path,
                    "a DICOM SEG, not read: lesions come from SEG files only with "
                    "data.params.lesions_from_seg: true",
                    seg.image_key,
                )
                for seg in found.segmentations
            )
        if level == "series":
            if from_seg:
                raise InvalidInputError(
                    "data.params.lesions_from_seg reads lesions, and task.level is series: "
                    "label whole series in a label file (patient_id, series_uid, label)"
                )
            return self._series(found, label_file, pseudonymizer, rejections)
        if label_file is not None:
            lesions, unmatched = join_labels(label_file, found.volumes, pseudonymizer)
        elif from_seg:
            lesions, unmatched = join_segmentations(
                found.segmentations, found.volumes, self.params.segment_labels
            )
        else:
            lesions, unmatched = [], []
        rejections.extend(unmatched)
        if label_file is None and not from_seg:
            records = [_record(volume) for volume in found.volumes]
        else:
            records = [_lesion_record(lesion) for lesion in lesions]
        return ScanResult(
            records=records, rejections=rejections, warnings=_warnings(found, records)
        )

    def _series(
        self,
        found: FolderScan,
        label_file: Path | None,
        pseudonymizer: Pseudonymizer,
        rejections: list[Rejection],
    ) -> ScanResult:
        if label_file is None:
            records = [_record(volume) for volume in found.volumes]
        else:
            labelled, unmatched = join_series_labels(label_file, found.volumes, pseudonymizer)
            rejections.extend(unmatched)
            records = [_record(entry.volume, entry.label) for entry in labelled]
        return ScanResult(
            records=records, rejections=rejections, warnings=_warnings(found, records)
        )

    def load(self, record: SampleRecord) -> Image:
        """The record's whole volume in HU, axes (z, y, x) towards head, back and left."""
        return load_hu(Volume.from_locator(record.locator))

    def fingerprint(self, record: SampleRecord) -> str:
        """The identity of the record's files: path, size and modification time of each."""
        return Volume.from_locator(record.locator).fingerprint()


def _warnings(found: FolderScan, records: list[SampleRecord]) -> list[str]:
    """The warnings of every series a sample comes from."""
    used = {record.series_key for record in records}
    return [
        f"series {volume.series_key}: {warning}"
        for volume in found.volumes
        if volume.series_key in used
        for warning in volume.warnings
    ]


def _lesion_record(lesion: Lesion) -> SampleRecord:
    return _record(lesion.volume, lesion.label, lesion.centre, lesion.lesion_id, lesion.attributes)


def _record(
    volume: Volume,
    label: str | None = None,
    centre: tuple[float, float, float] | None = None,
    lesion_id: str | None = None,
    more: Mapping[str, float] | None = None,
) -> SampleRecord:
    attributes: dict[str, str | float | int | None] = dict(volume.attributes)
    if lesion_id is not None:
        attributes["lesion_id"] = lesion_id
    attributes.update(more or {})
    return SampleRecord(
        patient_key=volume.patient_key,
        series_key=volume.series_key,
        locator=volume.to_locator(),
        attributes=attributes,
        label=label,
        centre=centre,
        shape=volume.shape,
        spacing_mm=volume.spacing_mm,
    )


@hookimpl
def medadapt_data_sources() -> Sequence[type[DataSource]]:
    return [DicomCT]


@hookimpl
def medadapt_commands(cli: click.Group) -> None:
    cli.add_command(inspect_command)
