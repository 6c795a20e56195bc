"""`medadapt inspect`, the label file join, and what never leaves the loader."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from click.testing import CliRunner
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless

from medadapt.engine import ExitCode, InvalidInputError
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.profile import load_profile
from medadapt.plugins.dicom_ct import DicomCT

PHI = ("Doe^Jane", "Jane", "MRN-0042-PHI", "MRN-0077-PHI", "19700101", "ACC-PHI-991")


@pytest.fixture(autouse=True)
def _plugin_commands():
    get_plugin_host().add_commands(cli)


@pytest.fixture
def site_key(monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "site-secret-for-the-tests-0001")


def inspect(*args: str):
    return CliRunner().invoke(cli, ["inspect", *args], env={"COLUMNS": "200"})


def test_inspect_lists_every_series_and_every_rejection(pydicom_test_files):
    result = inspect("--json", str(pydicom_test_files))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["series"]) == 5
    fields = {
        "series",
        "patient",
        "manufacturer",
        "model",
        "convolution_kernel",
        "kvp",
        "slice_thickness_mm",
        "pixel_spacing_mm",
        "spacing_between_slices_mm",
        "slices",
        "shape",
        "hu_min",
        "hu_max",
        "warnings",
    }
    assert all(set(s) == fields for s in report["series"])
    small = next(s for s in report["series"] if s["shape"] == [1, 128, 128])
    assert small["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert small["kvp"] == 120.0
    assert all(set(r) == {"path", "in_outputs", "image", "reason"} for r in report["rejections"])
    # How logs and reports name the file: by pseudonym inside the data folder.
    assert all(re.fullmatch(r"<data>/path-[0-9a-f]{16}\.\w+", r["in_outputs"])
               for r in report["rejections"] if "." in r["path"])  # fmt: skip
    assert {"path": "MR_small.dcm", "reason": "modality MR, not CT"}.items() <= next(
        r for r in report["rejections"] if r["path"] == "MR_small.dcm"
    ).items()
    assert "Traceback" not in result.output


def test_inspect_table_for_people(pydicom_test_files):
    result = inspect(str(pydicom_test_files))
    assert result.exit_code == 0
    assert "5 CT series in" in result.output
    assert "LightSpeed Ultra" in result.output
    assert "localizer (scout) image" in result.output


def test_inspect_exits_non_zero_when_nothing_is_usable(pydicom_test_files, tmp_path):
    (tmp_path / "MR_small.dcm").write_bytes((pydicom_test_files / "MR_small.dcm").read_bytes())
    result = inspect(str(tmp_path))
    assert result.exit_code == ExitCode.NOT_PASSED
    assert "no usable CT series" in result.output


def test_inspect_output_and_logs_never_show_identifying_values(ct, caplog, site_key):
    ct.series("a", slices=3)
    files, _ = ct.series("b", slices=1)
    files[0].write_bytes(files[0].read_bytes()[:-50])
    with caplog.at_level(logging.DEBUG):
        table = inspect(str(ct.root))
        machine = inspect("--json", str(ct.root))
    for output in (table.output, machine.output, caplog.text):
        for value in PHI:
            assert value not in output
    assert json.loads(machine.stdout)["series"][0]["patient"].startswith("patient-")


def test_pseudonyms_are_stable_with_a_site_key(ct, site_key):
    ct.series("a", slices=2)
    first = json.loads(inspect("--json", str(ct.root)).stdout)["series"][0]
    second = json.loads(inspect("--json", str(ct.root)).stdout)["series"][0]
    assert first["patient"] == second["patient"]
    assert first["series"] == second["series"]


# --- labels ----------------------------------------------------------------------------------


def write_labels(path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def two_patients(ct):
    _, stored_a = ct.series("a", slices=6, patient_id="MRN-0042-PHI")
    ct.series("b", slices=6, patient_id="MRN-0077-PHI", seed=5)
    return ct.root, stored_a


def test_labels_join_to_lesions_by_patient_with_mm_or_voxel_centres(
    two_patients, tmp_path, site_key
):
    root, _ = two_patients
    labels = tmp_path / "labels.csv"
    write_labels(
        labels,
        [
            "patient_id,label,x_mm,y_mm,z_mm,slice,row,column,lesion_id",
            "MRN-0042-PHI,malignant,-16.0,-13.0,105.0,,,,L1",
            "MRN-0077-PHI,benign,,,,3,4,5,L2",
        ],
    )
    result = DicomCT.from_params({"root": str(root)}).scan(label_file=labels)
    assert result.rejections == []
    first, second = sorted(result.records, key=lambda r: r.attributes["lesion_id"])
    assert first.label == "malignant"
    # x -16 mm is column 5 (0.8 mm from -20), y -13 mm is row 10 (0.7 mm), z 105 is slice 2.
    assert first.centre == pytest.approx((2.0, 10.0, 5.0))
    assert second.centre == pytest.approx((3.0, 4.0, 5.0))
    assert first.patient_key != second.patient_key
    for record in result.records:
        for value in PHI:
            assert value not in repr(record.patient_key) + repr(record.attributes)


def test_a_row_placing_its_lesion_both_in_mm_and_by_index_must_place_it_once(
    two_patients, tmp_path, site_key
):
    root, _ = two_patients
    labels = tmp_path / "labels.csv"
    write_labels(
        labels,
        [
            "patient_id,label,x_mm,y_mm,z_mm,slice,row,column,lesion_id",
            "MRN-0042-PHI,malignant,-16.0,-13.0,105.0,2,10,5,same",  # one voxel both ways
            "MRN-0077-PHI,benign,-16.0,-13.0,105.0,4,10,5,apart",  # two slices apart
        ],
    )
    result = DicomCT.from_params({"root": str(root)}).scan(label_file=labels)
    assert [r.attributes["lesion_id"] for r in result.records] == ["same"]
    [rejected] = result.rejections
    assert rejected.reason.startswith("row 3: the lesion centre in mm (x_mm, y_mm, z_mm) is")
    assert "2.0 voxels apart" in rejected.reason


def test_label_rows_that_match_nothing_are_reported_not_dropped(two_patients, tmp_path, site_key):
    root, _ = two_patients
    labels = tmp_path / "labels.csv"
    write_labels(
        labels,
        [
            "patient_id,label,slice,row,column",
            "MRN-9999-PHI,benign,1,1,1",
            "MRN-0042-PHI,benign,40,1,1",
            "MRN-0042-PHI,,1,1,1",
            "MRN-0042-PHI,benign,one,1,1",
            "MRN-0042-PHI,benign,1,1,1",
        ],
    )
    result = DicomCT.from_params({"root": str(root)}).scan(label_file=labels)
    assert len(result.records) == 1
    reasons = [r.reason for r in result.rejections]
    assert reasons[0].startswith("row 2: no usable series for patient patient-")
    assert reasons[1].startswith("row 3: the lesion centre lies outside the series")
    assert reasons[2] == "row 4: the label is empty"
    assert reasons[3].startswith("row 5: the lesion location needs numbers")
    assert all(r.path == labels for r in result.rejections)
    assert all("MRN" not in reason for reason in reasons)


def test_the_label_file_counts_a_repeated_lesion_once_and_refuses_contradictory_rows(
    two_patients, tmp_path, site_key
):
    root, _ = two_patients
    labels = tmp_path / "labels.csv"
    write_labels(
        labels,
        [
            "patient_id,label,slice,row,column,lesion_id",
            "MRN-0042-PHI,benign,1,2,3,A",
            "MRN-0042-PHI,benign,1,2,3,A",  # an exact copy of row 2
            "MRN-0042-PHI,benign,1.2,2,3,A-again",  # the same lesion, within a voxel
            "MRN-0077-PHI,benign,3,4,5,B",
            "MRN-0077-PHI,malignant,3,4,5,B",  # the same lesion, the other class
        ],
    )
    result = DicomCT.from_params({"root": str(root)}).scan(label_file=labels)
    assert [(r.label, r.attributes["lesion_id"]) for r in result.records] == [("benign", "A")]
    reasons = sorted(r.reason for r in result.rejections)
    assert reasons[0] == "row 3: repeats row 2 exactly; counted once"
    assert reasons[1].startswith("row 4: the same lesion as row 2 (patient patient-")
    assert reasons[1].endswith("benign); counted once")
    assert "is labelled benign and malignant in rows 5, 6" in reasons[2]
    assert reasons[2].startswith("row 5:")
    assert reasons[3].startswith("row 6:")
    assert all("MRN" not in reason for reason in reasons)


def test_a_patient_with_several_series_needs_a_series_uid(ct, tmp_path, site_key):
    ct.series("a", slices=3, series_uid="1.2.3.4.1")
    ct.series("b", slices=3, series_uid="1.2.3.4.2", seed=1)
    labels = tmp_path / "labels.csv"
    write_labels(
        labels,
        [
            "patient_id,series_uid,label,slice,row,column",
            "MRN-0042-PHI,,benign,1,1,1",
            "MRN-0042-PHI,1.2.3.4.2,benign,1,1,1",
        ],
    )
    result = DicomCT.from_params({"root": str(ct.root)}).scan(label_file=labels)
    assert "has 2 usable series; add series_uid" in result.rejections[0].reason
    [record] = result.records
    assert record.series_key != result.rejections[0].reason


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("id,label,slice,row,column", "missing column(s) patient_id"),
        ("patient_id,label", "no lesion location"),
    ],
)
def test_a_label_file_without_required_columns_is_refused(ct, tmp_path, site_key, header, message):
    ct.series("a", slices=1)
    labels = tmp_path / "labels.csv"
    write_labels(labels, [header])
    with pytest.raises(InvalidInputError, match=re.escape(message)) as caught:
        DicomCT.from_params({"root": str(ct.root)}).scan(label_file=labels)
    assert str(labels) in str(caught.value)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        # A spreadsheet that added a second label column (with a BOM before the first).
        ("\ufeffpatient_id,label,slice,row,column,label", "'label' in columns 2, 6"),
        ("patient_id,Label,slice,row,column,label ", "'label' in columns 2, 6"),
        # A UTF-8 byte-order mark read as Windows-1252 and saved again.
        ("\u00ef\u00bb\u00bfpatient_id,label,slice,row,column", "column 1 of the header"),
    ],
)
def test_a_label_file_with_a_repeated_or_mangled_column_is_refused_by_jobs_and_check(
    ct, tmp_path, site_key, write_profile, header, message
):
    ct.series("a", slices=6, patient_id="MRN-0042-PHI")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{header}\nMRN-0042-PHI,benign,1,2,3,malignant\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=re.escape(message)) as caught:
        DicomCT.from_params({"root": str(ct.root)}).scan(label_file=labels)
    assert str(labels) in str(caught.value)
    profile = write_profile(
        data={"source": "dicom-ct", "params": {"root": str(ct.root)}, "label_file": str(labels)}
    )
    checked = CliRunner().invoke(cli, ["profile", "check", str(profile)])
    assert checked.exit_code == ExitCode.INVALID_INPUT
    assert message in checked.output
    assert "data.label_file" in checked.output


def test_a_profile_using_dicom_ct_is_checked(write_profile, tmp_path):
    from medadapt.engine.profile import ProfileError, load_profile

    registry = get_plugin_host().registry()
    good = write_profile(
        data={"source": "dicom-ct", "params": {"root": "dicom"}, "label_file": "labels.csv"}
    )
    profile = load_profile(good, registry)
    assert profile.data.source == "dicom-ct"
    bad = write_profile("bad.yaml", data={"source": "dicom-ct", "params": {"folder": "x"}})
    with pytest.raises(ProfileError) as caught:
        load_profile(bad, registry)
    messages = [str(issue) for issue in caught.value.issues]
    assert any("data.params.folder: unknown key" in m for m in messages)
    assert any("data.params.root: required key is missing" in m for m in messages)


def test_loaded_volume_is_float32_hu(two_patients, site_key):
    root, stored = two_patients
    source = DicomCT.from_params({"root": str(root / "a")})
    [record] = source.scan().records
    image = source.load(record)
    assert image.hu.dtype == np.float32
    np.testing.assert_array_equal(image.hu, stored - 1024.0)


def test_a_job_names_the_label_rows_it_cannot_use(two_patients, tmp_path, site_key, caplog):
    from medadapt.engine.data.samples import open_site_data

    root, _ = two_patients
    labels = tmp_path / "labels.csv"
    write_labels(
        labels,
        [
            "patient_id,label,slice,row,column",
            "MRN-9999-PHI,benign,1,1,1",
            "MRN-0042-PHI,benign,1,1,1",
        ],
    )
    profile = tmp_path / "site.yaml"
    document = yaml.safe_load(
        (Path(__file__).parent.parent / "hospital_profiles" / "template.yaml").read_text()
    )
    document["data"] = {
        "source": "dicom-ct",
        "params": {"root": str(root)},
        "label_file": str(labels),
    }
    document["preprocessing"]["patch_size"] = [8, 8]  # the test's series are 16 x 16 pixels
    profile.write_text(yaml.safe_dump(document))
    registry = get_plugin_host().registry()
    with caplog.at_level(logging.WARNING, logger="medadapt"):
        site = open_site_data(load_profile(profile, registry), registry, tmp_path / "cache")
    assert len(site.records) == 1
    warning = caplog.text
    assert "Hospital B: 1 input not used" in warning
    assert f"{labels}: row 2: no usable series for patient patient-" in warning
    assert "MRN" not in warning


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_inspect_json_is_strict_and_brackets_in_names_are_shown_as_they_are(ct, site_key):
    files, _ = ct.series("scans", slices=3, ConvolutionKernel="[red]B30F")
    for path in files:
        ds = pydicom.dcmread(path)
        ds["KVP"] = pydicom.dataelem.RawDataElement(
            pydicom.tag.Tag(0x00180060), "DS", 4, b"nan ", 0, True, True
        )
        ds.save_as(path)
    (ct.root / "scans" / "notes[bold].txt").write_text("not DICOM")
    as_json = inspect(str(ct.root / "scans"), "--json")
    assert as_json.exit_code == 0, as_json.output
    (series,) = strict(as_json.output)["series"]
    assert series["kvp"] is None  # a NaN in the header, null in strict JSON
    shown = inspect(str(ct.root / "scans"))
    assert shown.exit_code == 0, shown.output
    assert "[red]B30F" in shown.output
    assert "notes[bold].txt" in shown.output


def test_one_undecodable_file_is_rejected_alone_and_its_series_keeps_the_rest(ct, site_key):
    files, _ = ct.series("one-bad", slices=6)
    ds = pydicom.dcmread(files[2])
    ds.compress(RLELossless)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[:70]])  # the frame cut short: its RLE segments end early
    ds.save_as(files[2])
    result = inspect(str(ct.root / "one-bad"), "--json")
    assert result.exit_code == 0, result.output
    found = strict(result.output)
    (series,) = found["series"]
    assert series["slices"] == 5
    assert series["shape"] == [6, 16, 16]  # the slice filled in, as every job does
    assert f"{files[2].name} cannot be decoded: its slice is filled in" in "".join(
        series["warnings"]
    )
    assert [(r["path"], r["reason"][:34]) for r in found["rejections"]] == [
        (files[2].name, "the pixel data cannot be decoded: ")
    ]
    assert "Traceback" not in result.output
