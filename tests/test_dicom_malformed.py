"""Wrong-but-readable DICOM: each mistake caught where it enters, said once, never passed on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless

from medadapt.engine import InvalidInputError
from medadapt.plugins.dicom_ct import DicomCT
from medadapt.plugins.dicom_ct.pixels import UndecodableSeries, load_hu
from medadapt.plugins.dicom_ct.scan import scan_folder


def rewrite(path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def set_raw(ds, keyword: str, text: str) -> None:
    """Store ``text`` as the element's value exactly, valid or not."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    ds[tag] = pydicom.dataelem.RawDataElement(
        pydicom.tag.Tag(tag), "DS", len(text), text.encode(), 0, True, True
    )


def reasons(found) -> list[str]:
    return [r.reason for r in found.rejections]


@pytest.mark.parametrize(
    ("slope", "intercept", "expected"),
    [
        ("nan", "-1024", "RescaleSlope is nan"),
        ("inf", "-1024", "RescaleSlope is inf"),
        ("0", "-1024", "RescaleSlope is 0: expected a positive number"),
        ("-1", "-1024", "RescaleSlope is -1: expected a positive number"),
        ("5000", "-1024", "RescaleSlope is 5000: expected a positive number"),
        ("1", "1e9", "RescaleIntercept is 1e+09: expected a value within"),
        ("one", "-1024", "RescaleSlope is 'one', not a number"),
    ],
)
def test_rejects_a_rescale_that_gives_no_hounsfield_units(
    ct, pseudonymizer, slope, intercept, expected
):
    files, _ = ct.series("bad", slices=6)
    for path in files[2:3]:

        def change(ds, slope=slope, intercept=intercept):
            set_raw(ds, "RescaleSlope", slope)
            set_raw(ds, "RescaleIntercept", intercept)

        rewrite(path, change)
    found = scan_folder(ct.root / "bad", pseudonymizer)
    assert [r.path for r in found.rejections] == [files[2]]
    assert expected in found.rejections[0].reason
    # The series keeps its good slices, and says where the gap is.
    (volume,) = found.volumes
    assert len(volume.slices) == 5
    assert any("gap of" in w for w in volume.warnings)
    assert np.isfinite(load_hu(volume).hu).all()


def test_rejects_a_file_without_rescale_tags_instead_of_hu_off_by_1024(ct, pseudonymizer):
    files, _ = ct.series("missing", slices=3)

    def change(ds):
        del ds.RescaleSlope, ds.RescaleIntercept

    for path in files:
        rewrite(path, change)
    found = scan_folder(ct.root / "missing", pseudonymizer)
    assert found.volumes == []
    assert all("RescaleSlope and RescaleIntercept missing" in r for r in reasons(found))


def test_a_file_without_preamble_or_file_meta_is_read(ct, pseudonymizer):
    files, stored = ct.series("bare", slices=3)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.preamble = None
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert pydicom.dcmread(files[0], force=True).file_meta.get("TransferSyntaxUID") is None
    found = scan_folder(ct.root / "bare", pseudonymizer)
    assert found.rejections == []
    (volume,) = found.volumes
    np.testing.assert_array_equal(load_hu(volume).hu, stored.astype(np.float32) - 1024)


def test_rejects_a_header_that_claims_more_pixels_than_the_file_holds(ct, pseudonymizer):
    files, _ = ct.series("huge", slices=3)
    ds = pydicom.dcmread(files[1])
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = 60000
    ds.save_as(files[1])
    found = scan_folder(ct.root / "huge", pseudonymizer)  # allocates nothing of the sort
    assert [r.path for r in found.rejections] == [files[1]]
    assert "the header claims 60000 x 60000 pixels" in found.rejections[0].reason
    assert "a corrupt header" in found.rejections[0].reason
    assert len(found.volumes) == 1


def test_rejects_an_8_bit_header_on_16_bit_pixels_alone(ct, pseudonymizer):
    files, _ = ct.series("bits", slices=6)

    def change(ds):
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7

    rewrite(files[3], change)
    found = scan_folder(ct.root / "bits", pseudonymizer)
    assert [r.path for r in found.rejections] == [files[3]]
    assert "BitsAllocated or the size is wrong" in found.rejections[0].reason
    (volume,) = found.volumes
    assert len(volume.slices) == 5


def test_rejects_a_series_shared_by_two_patients(ct, pseudonymizer):
    uid = pydicom.uid.generate_uid()
    first, _ = ct.series("shared", slices=3, series_uid=uid, patient_id="MRN-1")
    second, _ = ct.series("shared-too", slices=3, series_uid=uid, patient_id="MRN-2")
    found = scan_folder(ct.root, pseudonymizer)
    assert found.volumes == []
    assert sorted(r.path for r in found.rejections) == sorted(first + second)
    assert all("shared by files of 2 patients" in r for r in reasons(found))


def test_a_tilted_series_is_resampled_onto_a_grid_along_its_normal(ct, pseudonymizer):
    # Each slice 0.7 mm (one row) further along the column direction: a tilt of 15.6 deg.
    files, _ = ct.series("tilt", slices=8, spacing=2.5, size=24)
    for k, path in enumerate(files):

        def change(ds, k=k):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + 0.7 * k, z]
            pixels = np.zeros((24, 24), dtype=np.int16)
            pixels[12 - k, 5] = 2000  # one point, fixed in the patient, seen one row up
            ds.PixelData = pixels.tobytes()

        rewrite(path, change)
    found = scan_folder(ct.root / "tilt", pseudonymizer)
    assert found.rejections == []
    (volume,) = found.volumes
    (warning,) = [w for w in volume.warnings if "sheared" in w]
    assert "gantry tilt of about 15.6 degrees" in warning
    hu = load_hu(volume).hu  # axes (z, y, x): y runs with the rows here
    peaks = [np.unravel_index(np.argmax(s), s.shape) for s in hu]
    assert {(int(r), int(c)) for r, c in peaks} == {(12, 5)}
    np.testing.assert_allclose([s.max() for s in hu], 2000 - 1024)


def test_the_scan_a_job_runs_passes_the_tilt_warning_on(ct, monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "site-secret-for-the-tests-0001")
    files, _ = ct.series("tilted", slices=6)
    for k, path in enumerate(files):

        def change(ds, k=k):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + 0.9 * k, z]

        rewrite(path, change)
    found = DicomCT.from_params({"root": str(ct.root / "tilted")}).scan()
    assert len(found.records) == 1
    (warning,) = found.warnings
    assert warning.startswith(f"series {found.records[0].series_key}: the slices are sheared")


def test_rejects_a_series_whose_positions_lie_on_no_line(ct, pseudonymizer):
    files, _ = ct.series("zigzag", slices=6)
    for k, path in enumerate(files):

        def change(ds, k=k):
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x + (5.0 if k % 2 else 0.0), y, z]

        rewrite(path, change)
    found = scan_folder(ct.root / "zigzag", pseudonymizer)
    assert found.volumes == []
    assert all("lie on no straight line" in r for r in reasons(found))


def test_a_fifo_is_skipped_with_a_reason_and_does_not_hang_the_scan(ct, pseudonymizer):
    ct.series("with-fifo", slices=3)
    os.mkfifo(ct.root / "with-fifo" / "pipe")
    found = scan_folder(ct.root / "with-fifo", pseudonymizer)
    assert len(found.volumes) == 1
    assert [(r.path.name, r.reason) for r in found.rejections] == [
        ("pipe", "a named pipe (FIFO), not a file; skipped")
    ]


def test_an_unreadable_subfolder_is_reported_not_skipped_silently(ct, pseudonymizer, monkeypatch):
    ct.series("readable", slices=3)
    ct.series("locked", slices=3)
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = scan_folder(ct.root, pseudonymizer)
    assert len(found.volumes) == 1
    assert [(r.path.name, r.reason) for r in found.rejections] == [
        ("locked", "folder cannot be read (Permission denied); skipped")
    ]


def test_a_data_root_that_does_not_exist_is_said_plainly(tmp_path, pseudonymizer):
    with pytest.raises(InvalidInputError, match="the data folder does not exist"):
        scan_folder(tmp_path / "nowhere", pseudonymizer)


# --- gaps and undecodable slices: the volume keeps its grid, so every lesion keeps its place


SITE_KEY = "site-secret-for-the-tests-0001"
PATIENT = "MRN-0042-PHI"  # the CTWriter's first patient (tests/conftest.py)


def corrupt(path: Path) -> None:
    """Cut the file's RLE frame short: its header stays readable, its pixels do not."""
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[:70]])
    ds.save_as(path)


def test_a_missing_slice_is_filled_in_on_the_grid_and_lesions_keep_their_place(
    ct, monkeypatch, tmp_path
):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", SITE_KEY)
    files, stored = ct.series("gap", slices=10, spacing=2.5)
    files[4].unlink()
    labels = tmp_path / "labels.csv"
    # Slice 7 lies at z = 100 + 7 x 2.5 mm: stacked without the gap, it was voxel 6.
    labels.write_text(f"patient_id,label,x_mm,y_mm,z_mm\n{PATIENT},malignant,-15,-15,117.5\n")
    source = DicomCT.from_params({"root": str(ct.root / "gap")})
    found = source.scan(label_file=labels)
    (record,) = found.records
    assert record.centre[0] == pytest.approx(7.0)
    assert any("gap of 5.00 mm between slices 4 and 5" in w for w in found.warnings)
    assert any("resampled onto one 2.50 mm apart" in w for w in found.warnings)
    hu = source.load(record).hu
    assert hu.shape == (10, 16, 16)
    for k in (0, 3, 5, 7, 9):
        np.testing.assert_allclose(hu[k], stored[k] - 1024.0)
    np.testing.assert_allclose(hu[4], (stored[3] + stored[5]) / 2 - 1024.0, rtol=1e-6)


def test_uneven_slices_are_resampled_onto_an_even_grid(ct, pseudonymizer):
    _, stored = ct.series("uneven", slices=6, positions=[0.0, 2.5, 5.5, 7.5, 10.0, 12.5])
    (volume,) = scan_folder(ct.root / "uneven", pseudonymizer).volumes
    assert any(w.startswith("uneven slice spacing") for w in volume.warnings)
    hu = load_hu(volume).hu
    assert hu.shape[0] == 6
    # Height 5.0 mm lies between the slices at 2.5 and 5.5 mm, 5/6 of the way.
    np.testing.assert_allclose(
        hu[2], (stored[1] / 6 + stored[2] * 5 / 6) - 1024.0, rtol=1e-5, atol=1e-3
    )
    np.testing.assert_allclose(hu[3], stored[3] - 1024.0)


def test_a_gap_too_wide_to_fill_in_is_said_plainly(ct, pseudonymizer):
    files, _ = ct.series("wide", slices=12)
    for path in files[3:8]:
        path.unlink()
    (volume,) = scan_folder(ct.root / "wide", pseudonymizer).volumes
    assert volume.shape[0] == 7
    assert any("gap wider than 4 slices is not filled in" in w for w in volume.warnings)


def test_an_undecodable_slice_met_by_a_job_is_filled_in_and_the_file_named(ct, monkeypatch, caplog):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", SITE_KEY)
    files, stored = ct.series("late", slices=12)
    corrupt(files[4])  # the header scans cleanly: the job meets it when it reads the pixels
    source = DicomCT.from_params({"root": str(ct.root / "late")})
    (record,) = source.scan().records
    with caplog.at_level("WARNING", logger="medadapt.plugins.dicom_ct.pixels"):
        hu = source.load(record).hu
    assert hu.shape == (12, 16, 16)
    np.testing.assert_allclose(hu[4], (stored[3] + stored[5]) / 2 - 1024.0, rtol=1e-6)
    (message,) = [r.getMessage() for r in caplog.records if r.name.endswith("pixels")]
    assert message.startswith(f"{files[4]}: the pixel data cannot be decoded")
    assert "filled in by linear interpolation between its neighbours" in message
    assert PATIENT not in message


def test_rejects_a_series_with_too_many_undecodable_slices_naming_the_first(ct, monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", SITE_KEY)
    files, _ = ct.series("broken", slices=12)
    for path in files[2:5]:
        corrupt(path)
    source = DicomCT.from_params({"root": str(ct.root / "broken")})
    (record,) = source.scan().records
    with pytest.raises(UndecodableSeries) as raised:
        source.load(record)
    text = str(raised.value)
    assert text.startswith(f"{files[2]}: the pixel data cannot be decoded")
    assert "(and 2 more of its files): 3 of the series' 12 slices cannot be read" in text


# --- label files as spreadsheets write them ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encode"),
    [
        ("semicolons.csv", lambda text: text.encode("utf-8")),  # Excel in a decimal-comma locale
        ("unicode-text.csv", lambda text: text.replace(";", "\t").encode("utf-16")),
    ],
)
def test_a_label_file_with_semicolons_tabs_or_utf16_is_read_as_a_spreadsheet_wrote_it(
    ct, monkeypatch, tmp_path, name, encode
):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", SITE_KEY)
    ct.series("a", slices=6)
    labels = tmp_path / name
    rows = f"Patient_ID ;Label;x_mm;y_mm;z_mm\n{PATIENT};malignant;-15;-15;107,5\n"
    labels.write_bytes(encode(rows))
    found = DicomCT.from_params({"root": str(ct.root / "a")}).scan(label_file=labels)
    assert found.rejections == []
    (record,) = found.records
    assert record.label == "malignant"
    assert record.centre[0] == pytest.approx(3.0)  # 107.5 mm = 100 + 3 x 2.5


def test_rejects_a_label_file_that_is_not_utf8_naming_the_line(ct, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", SITE_KEY)
    ct.series("a", slices=6)
    labels = tmp_path / "latin1.csv"
    labels.write_bytes(
        f"patient_id,label,x_mm,y_mm,z_mm\n{PATIENT},malin\xe9,-15,-15,105\n".encode("latin-1")
    )
    with pytest.raises(InvalidInputError) as raised:
        DicomCT.from_params({"root": str(ct.root / "a")}).scan(label_file=labels)
    assert str(raised.value) == (
        f"{labels}: line 2 is not UTF-8 (byte 0xe9): save the label file as CSV in UTF-8 "
        "(in Excel: 'CSV UTF-8')"
    )
