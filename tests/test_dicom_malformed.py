"""Wrong-but-readable DICOM: each mistake caught where it enters, said once, never passed on."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest

from medadapt.plugins.dicom_ct.pixels import load_hu
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


def test_every_hu_value_a_scan_accepts_is_a_number(ct, pseudonymizer):
    files, stored = ct.series("fine", slices=3, slope=0.5, intercept=-1000.0)
    (volume,) = scan_folder(ct.root / "fine", pseudonymizer).volumes
    hu = load_hu(volume).hu
    assert all(math.isfinite(v) for v in (hu.min(), hu.max()))
    np.testing.assert_allclose(hu, stored * 0.5 - 1000.0)
