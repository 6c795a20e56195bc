"""Lesions from DICOM SEG files (through highdicom): the same samples as the label file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.plugins.dicom_ct import DicomCT
from medadapt.plugins.phantom.hospital import HospitalSpec, draw, write_hospital

KEY = "site-secret-for-the-tests-0001"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A simulated hospital written with its label file and a DICOM SEG per patient."""
    folder = tmp_path_factory.mktemp("seg-site")
    spec = HospitalSpec(patients=10, seed=5, slices=12, size=96)
    summary = write_hospital(spec, folder, segmentations=True)
    return spec, folder, summary


@pytest.fixture
def copy(site, tmp_path):
    """A copy of the site's export to change."""
    shutil.copytree(site[1] / "dicom", tmp_path / "dicom")
    return tmp_path / "dicom"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", KEY)
    get_plugin_host().add_commands(cli)  # inspect is the dicom-ct plugin's command


def seg_source(root, **params):
    return DicomCT.from_params({"root": str(root), "lesions_from_seg": True, **params})


def seg_files(root):
    return sorted(root.rglob("SEG/*.dcm"))


def test_the_same_site_from_csv_labels_and_from_seg_files_gives_the_same_samples(site):
    _, folder, summary = site
    from_csv = DicomCT.from_params({"root": str(folder / "dicom")}).scan(
        label_file=folder / "labels.csv"
    )
    from_seg = seg_source(folder / "dicom").scan()
    assert from_seg.rejections == []
    assert len(from_seg.records) == len(from_csv.records) == sum(summary.lesions.values())
    unmatched = list(from_seg.records)
    worst = 0.0
    for record in from_csv.records:
        same = [
            r for r in unmatched if (r.series_key, r.label) == (record.series_key, record.label)
        ]
        nearest = min(same, key=lambda r: np.abs(np.subtract(r.centre, record.centre)).max())
        worst = max(worst, float(np.abs(np.subtract(nearest.centre, record.centre)).max()))
        unmatched.remove(nearest)
        assert nearest.patient_key == record.patient_key
    assert unmatched == []
    assert worst < 1.0  # every centre within a voxel of the label file's
    # Read from the label file, the SEG files are listed as not read, with the setting.
    unread = [r for r in from_csv.rejections if "a DICOM SEG, not read" in r.reason]
    assert len(unread) == len(seg_files(folder / "dicom"))
    assert "lesions_from_seg: true" in unread[0].reason


def test_a_label_file_and_lesions_from_seg_at_once_is_refused(site):
    from medadapt.engine import InvalidInputError

    _, folder, _ = site
    with pytest.raises(InvalidInputError, match="from one or the other"):
        seg_source(folder / "dicom").scan(label_file=folder / "labels.csv")


def test_a_segment_keeps_the_lesions_size_and_a_pseudonymous_id(site):
    spec, folder, _ = site
    records = seg_source(folder / "dicom").scan().records
    radii = sorted(lesion.radius for i in range(spec.patients) for lesion in draw(spec, i).lesions)
    diameters = sorted(r.attributes["lesion_diameter_mm"] / 2 for r in records)
    # A sphere drawn on 3.75 mm pixels: its equivalent radius is the lesion's, to a pixel.
    np.testing.assert_allclose(diameters, radii, atol=3.75)
    for record in records:
        assert record.attributes["lesion_volume_mm3"] > 0
        assert record.attributes["lesion_id"].startswith("segment ")
        assert "PHANTOM" not in record.attributes["lesion_id"]


def test_segment_labels_are_mapped_to_classes_and_an_unmapped_label_is_rejected(site):
    _, folder, _ = site
    mapped = seg_source(folder / "dicom", segment_labels={" Malignant ": "cancer"}).scan()
    assert {r.label for r in mapped.records} == {"cancer"}
    reasons = [r.reason for r in mapped.rejections]
    assert reasons
    assert all("the label 'benign' is not in data.params.segment_labels" in r for r in reasons)


def test_a_seg_without_its_series_and_a_segment_without_a_label_are_listed_by_inspect(copy, site):
    first, second = seg_files(copy)[:2]
    for image in first.parent.parent.glob("IM*.dcm"):  # the first SEG's CT is not exported
        image.unlink()
    ds = pydicom.dcmread(second)
    ds.SegmentSequence[0].SegmentLabel = ""
    ds.save_as(second)
    done = CliRunner().invoke(cli, ["inspect", str(copy), "--json"])
    assert done.exit_code == 0, done.output
    listed = json.loads(done.stdout)
    reasons = {r["path"]: r["reason"] for r in listed["rejections"]}
    assert "not among the usable series of this export" in reasons[str(first.relative_to(copy))]
    assert "segment 1: no segment label" in reasons[str(second.relative_to(copy))]
    usable = {s["path"]: s for s in listed["segmentations"]}
    assert str(first.relative_to(copy)) not in usable
    assert sum(s["lesions"] for s in usable.values()) == sum(site[2].lesions.values()) - (
        len(draw(site[0], 0).lesions) + 1
    )
    text = CliRunner().invoke(cli, ["inspect", str(copy)], env={"COLUMNS": "200"})
    assert "of 10 DICOM SEG files give lesions" in text.stdout


def test_a_seg_of_another_patient_or_without_references_is_rejected(copy):
    first, second = seg_files(copy)[:2]
    ds = pydicom.dcmread(first)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(first)
    ds = pydicom.dcmread(second)
    del ds.ReferencedSeriesSequence
    ds.save_as(second)
    result = seg_source(copy).scan()
    reasons = {r.path: r.reason for r in result.rejections}
    assert "one of the two is mislabelled" in reasons[first]
    assert "SOMEONE-ELSE" not in reasons[first]  # the patient only by pseudonym
    assert "references no series" in reasons[second]


def test_the_phantom_writes_the_same_seg_files_for_the_same_spec(site, tmp_path):
    spec, folder, _ = site
    write_hospital(spec, tmp_path, segmentations=True)
    for original in seg_files(folder / "dicom"):
        assert (tmp_path / original.relative_to(folder)).read_bytes() == original.read_bytes()


def test_asking_for_segs_in_a_hospital_written_without_them_adds_them(tmp_path):
    spec = HospitalSpec(patients=2, seed=5, slices=4, size=32)
    write_hospital(spec, tmp_path)
    assert seg_files(tmp_path) == []
    images = sorted(p.read_bytes() for p in tmp_path.rglob("IM*.dcm"))
    write_hospital(spec, tmp_path, segmentations=True)
    assert len(seg_files(tmp_path)) == sum(1 for i in range(2) if draw(spec, i).lesions)
    assert sorted(p.read_bytes() for p in tmp_path.rglob("IM*.dcm")) == images
