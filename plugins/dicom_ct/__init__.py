"""The ``dicom-ct`` data source: CT series from a folder exported from PACS.

Reads every file's header once, groups files into series, orders slices by their position
in the patient, converts pixels to Hounsfield units through the modality LUT, and explains
every file it cannot use. Patient, study, series and image identifiers leave this plugin
only as keyed pseudonyms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from medadapt.engine import DataSource, Image, ProfilePath, SampleRecord, ScanResult, hookimpl
from medadapt.engine.pseudonym import Pseudonymizer
from medadapt.plugins.dicom_ct.inspect import inspect_command
from medadapt.plugins.dicom_ct.labels import columns_problem, join_labels
from medadapt.plugins.dicom_ct.pixels import load_hu
from medadapt.plugins.dicom_ct.scan import scan_folder
from medadapt.plugins.dicom_ct.series import Volume


class DicomCT(DataSource):
    """CT series from a folder of DICOM files, in Hounsfield units."""

    name = "dicom-ct"

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

    def pseudonymizer(self, *, allow_ephemeral: bool = False) -> Pseudonymizer:
        """The pseudonymizer this source's identifiers go through."""
        key = self.params.pseudonym_key
        return Pseudonymizer.from_settings(
            key.get_secret_value() if key else None, allow_ephemeral=allow_ephemeral
        )

    def check_label_file(self, label_file: Path) -> str | None:
        """A label file needs patient_id, label and a lesion location (mm or voxel)."""
        return columns_problem(label_file)

    def scan(self, label_file: ProfilePath | None = None) -> ScanResult:
        """One sample per labelled lesion, or per volume when there is no label file."""
        pseudonymizer = self.pseudonymizer()
        found = scan_folder(
            self.params.root,
            pseudonymizer,
            modalities=self.params.modalities,
            recursive=self.params.recursive,
        )
        rejections = list(found.rejections)
        if label_file is None:
            records = [_record(volume) for volume in found.volumes]
        else:
            lesions, unmatched = join_labels(label_file, found.volumes, pseudonymizer)
            rejections.extend(unmatched)
            records = [
                _record(lesion.volume, lesion.label, lesion.centre, lesion.lesion_id)
                for lesion in lesions
            ]
        used = {record.series_key for record in records}
        warnings = [
            f"series {volume.series_key}: {warning}"
            for volume in found.volumes
            if volume.series_key in used
            for warning in volume.warnings
        ]
        return ScanResult(records=records, rejections=rejections, warnings=warnings)

    def load(self, record: SampleRecord) -> Image:
        """The record's whole volume in HU, axes (z, y, x) towards head, back and left."""
        return load_hu(Volume.from_locator(record.locator))

    def fingerprint(self, record: SampleRecord) -> str:
        """The identity of the record's files: path, size and modification time of each."""
        return Volume.from_locator(record.locator).fingerprint()


def _record(
    volume: Volume,
    label: str | None = None,
    centre: tuple[float, float, float] | None = None,
    lesion_id: str | None = None,
) -> SampleRecord:
    attributes: dict[str, str | float | int | None] = dict(volume.attributes)
    if lesion_id is not None:
        attributes["lesion_id"] = lesion_id
    return SampleRecord(
        patient_key=volume.patient_key,
        series_key=volume.series_key,
        locator=volume.to_locator(),
        attributes=attributes,
        label=label,
        centre=centre,
    )


@hookimpl
def medadapt_data_sources() -> Sequence[type[DataSource]]:
    return [DicomCT]


@hookimpl
def medadapt_commands(cli: click.Group) -> None:
    cli.add_command(inspect_command)
