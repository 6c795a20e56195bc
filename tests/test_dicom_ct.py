"""The dicom-ct data source on real pydicom test files and on series the tests write."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import JPEG2000Lossless, RLELossless

from medadapt.engine import Rejection
from medadapt.plugins.dicom_ct import DicomCT
from medadapt.plugins.dicom_ct.headers import read_header
from medadapt.plugins.dicom_ct.pixels import load_hu
from medadapt.plugins.dicom_ct.scan import scan_folder


def reference_hu(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def only_volume(folder, pseudonymizer, **kwargs):
    found = scan_folder(folder, pseudonymizer, **kwargs)
    assert len(found.volumes) == 1, found
    return found.volumes[0], found.rejections


# --- real files shipped with pydicom ---------------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_single_ct_files_give_pydicom_reference_hu(pydicom_test_files, pseudonymizer, name):
    volume, rejections = only_volume(pydicom_test_files / name, pseudonymizer)
    assert rejections == []
    image = load_hu(volume)
    np.testing.assert_array_equal(image.hu[0], reference_hu(pydicom_test_files / name))


@pytest.mark.parametrize("series", ["98892001/CT5N", "77654033/CT2"])
def test_ct_series_from_dicomdir_tests_is_ordered_by_position(
    pydicom_test_files, pseudonymizer, series
):
    folder = pydicom_test_files / "dicomdirtests" / series
    volume, _ = only_volume(folder, pseudonymizer)
    files = sorted(folder.iterdir(), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    expected = np.stack([reference_hu(f) for f in files])
    image = load_hu(volume)
    assert image.hu.shape == expected.shape
    np.testing.assert_array_equal(image.hu, expected)


@pytest.mark.parametrize("series", ["98892001/CT5N", "77654033/CT2"])
def test_decoding_on_processes_gives_the_hu_of_one_process_in_the_same_order(
    pydicom_test_files, pseudonymizer, series, monkeypatch
):
    from medadapt.plugins.dicom_ct import pixels

    monkeypatch.setattr(pixels, "PARALLEL_MIN_FILES", 1)  # these series are a few files,
    monkeypatch.setattr(pixels, "costly_to_decode", lambda path: True)  # and uncompressed
    volume, _ = only_volume(pydicom_test_files / "dicomdirtests" / series, pseudonymizer)
    one = load_hu(volume, workers=1).hu
    shared = pixels._decode_in_processes  # the parallel path must really be taken
    monkeypatch.setattr(pixels, "_decode_in_processes", spy := Spy(shared))
    np.testing.assert_array_equal(load_hu(volume, workers=2).hu, one)
    assert spy.returned == ["decoded"]


class Spy:
    """Calls a function and notes whether it decoded (or gave the work back: None)."""

    def __init__(self, function):
        self.function, self.returned = function, []

    def __call__(self, *args):
        result = self.function(*args)
        self.returned.append("decoded" if result is not None else "declined")
        return result


def test_a_long_series_is_decoded_on_processes_with_its_undecodable_slice_filled_in_alike(
    ct, pseudonymizer, monkeypatch, caplog
):
    from medadapt.plugins.dicom_ct import pixels

    monkeypatch.setattr(pixels, "_decode_in_processes", spy := Spy(pixels._decode_in_processes))
    monkeypatch.setattr(pixels, "costly_to_decode", lambda path: True)
    files, stored = ct.series("long", slices=pixels.PARALLEL_MIN_FILES + 9)
    random.Random(0).shuffle(files)
    broken = pydicom.dcmread(files[5])  # its header reads, its RLE frame is cut short
    broken.compress(RLELossless)
    (frame,) = generate_frames(broken.PixelData, number_of_frames=1)
    broken.PixelData = encapsulate([frame[:70]])
    broken.save_as(files[5])
    (volume,) = scan_folder(ct.root / "long", pseudonymizer).volumes
    with caplog.at_level("WARNING", logger="medadapt.plugins.dicom_ct.pixels"):
        one = load_hu(volume, workers=1).hu
        assert spy.returned == []
        many = load_hu(volume, workers=3).hu
    assert spy.returned == ["decoded"]
    np.testing.assert_array_equal(many, one)
    said = [r.getMessage() for r in caplog.records if r.name.endswith("pixels")]
    assert len(said) == 2
    assert said[0] == said[1]
    assert said[0].startswith(str(files[5]))
    assert one.shape == stored.shape


def test_a_series_is_decoded_in_its_own_process_where_shared_memory_has_no_room(
    ct, pseudonymizer, monkeypatch
):
    from medadapt.plugins.dicom_ct import pixels

    monkeypatch.setattr(pixels, "_room_in_shared_memory", lambda size: False)
    monkeypatch.setattr(pixels, "costly_to_decode", lambda path: True)
    monkeypatch.setattr(pixels, "_decode_in_processes", spy := Spy(pixels._decode_in_processes))
    ct.series("long", slices=pixels.PARALLEL_MIN_FILES)
    (volume,) = scan_folder(ct.root / "long", pseudonymizer).volumes
    np.testing.assert_array_equal(load_hu(volume, workers=2).hu, load_hu(volume, workers=1).hu)
    assert spy.returned == ["declined"]


@pytest.mark.parametrize(
    ("name", "costly"),
    [
        ("CT_small.dcm", False),  # uncompressed: faster decoded than handed on
        ("MR_small_RLE.dcm", False),
        ("MR_small_jp2klossless.dcm", True),
        ("MR_small_jpeg_ls_lossless.dcm", True),
        ("693_J2KI.dcm", True),
    ],
)
def test_only_costly_codecs_are_decoded_on_processes(pydicom_test_files, name, costly):
    from medadapt.plugins.dicom_ct.pixels import costly_to_decode

    assert costly_to_decode(pydicom_test_files / name) is costly


def test_an_uncompressed_series_is_decoded_in_its_own_process(ct, pseudonymizer, monkeypatch):
    from medadapt.plugins.dicom_ct import pixels

    monkeypatch.setattr(pixels, "_decode_in_processes", spy := Spy(pixels._decode_in_processes))
    ct.series("plain", slices=pixels.PARALLEL_MIN_FILES)
    (volume,) = scan_folder(ct.root / "plain", pseudonymizer).volumes
    load_hu(volume, workers=2)
    assert spy.returned == []


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_compressed_files_decode_to_the_uncompressed_values(
    pydicom_test_files, pseudonymizer, name
):
    volume, _ = only_volume(pydicom_test_files / name, pseudonymizer, modalities=["MR"])
    image = load_hu(volume)
    np.testing.assert_array_equal(image.hu[0], reference_hu(pydicom_test_files / "MR_small.dcm"))


def test_pydicom_test_folder_keeps_ct_and_explains_the_rest(pydicom_test_files, pseudonymizer):
    found = scan_folder(pydicom_test_files, pseudonymizer)
    assert len(found.volumes) == 5
    assert len(found.segmentations) == 2  # pydicom's SEG examples, read as annotations
    assert found.files == (
        len(found.rejections) + sum(len(v.slices) for v in found.volumes) + len(found.segmentations)
    )
    reasons = {r.path.name: r.reason for r in found.rejections}
    assert reasons["MR_small.dcm"] == "modality MR, not CT"
    assert reasons["README.txt"] == "not a DICOM file"
    assert reasons["DICOMDIR"] == "a DICOMDIR index of other files, not an image"
    assert "localizer" in reasons["6293"]
    assert reasons["IM000000"].startswith("a CT image without its pixel data")
    assert reasons["rtplan.dcm"] == "modality RTPLAN, not CT"


# --- series written by the tests -------------------------------------------------------------


def test_file_order_does_not_matter(ct, pseudonymizer, tmp_path):
    files, stored = ct.series("a", slices=8)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    names = [f"{i:02d}.dcm" for i in range(len(files))]
    random.Random(3).shuffle(names)
    for source, name in zip(files, names, strict=True):
        shutil.copy(source, shuffled / name)
    volume, _ = only_volume(shuffled, pseudonymizer)
    image = load_hu(volume)
    np.testing.assert_array_equal(image.hu, stored.astype(np.float32) - 1024)
    assert image.spacing_mm == pytest.approx((2.5, 0.7, 0.8))
    assert volume.warnings == []


def test_reversed_orientation_gives_the_same_oriented_volume(ct, pseudonymizer):
    _, stored = ct.series("standard", slices=5)
    # The same anatomy exported with the slice normal pointing to the feet and the rows
    # running towards the patient's right.
    files, _ = ct.series(
        "reversed",
        slices=5,
        row_dir=(-1.0, 0.0, 0.0),
        col_dir=(0.0, 1.0, 0.0),
        origin=(-20.0 + 15 * 0.8, -20.0, 110.0),
    )
    mirrored = stored[::-1, :, ::-1]
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.PixelData = mirrored[k].astype(np.int16).tobytes()
        ds.save_as(path)
    standard, _ = only_volume(ct.root / "standard", pseudonymizer)
    reversed_volume, _ = only_volume(ct.root / "reversed", pseudonymizer)
    assert reversed_volume.flips == (True, False, True)
    np.testing.assert_array_equal(load_hu(reversed_volume).hu, load_hu(standard).hu)


def test_oblique_slices_are_ordered_along_their_normal(ct, pseudonymizer):
    tilt = np.deg2rad(20)
    col_dir = (0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    files, stored = ct.series("tilted", slices=6, col_dir=col_dir)
    volume, _ = only_volume(ct.root / "tilted", pseudonymizer)
    assert [s.path for s in volume.slices] == files
    assert volume.acquisition_spacing[0] == pytest.approx(2.5)
    np.testing.assert_array_equal(load_hu(volume).hu, stored - 1024.0)


def test_a_missing_slice_is_reported_as_a_gap(ct, pseudonymizer):
    files, _ = ct.series("gap", slices=6)
    files[3].unlink()
    volume, _ = only_volume(ct.root / "gap", pseudonymizer)
    assert len(volume.slices) == 5
    assert any("gap of 5.00 mm between slices 3 and 4" in w for w in volume.warnings)


def test_uneven_spacing_is_reported(ct, pseudonymizer):
    ct.series("uneven", slices=5, positions=[0.0, 2.5, 5.0, 7.2, 9.9])
    volume, _ = only_volume(ct.root / "uneven", pseudonymizer)
    assert any(w.startswith("uneven slice spacing") for w in volume.warnings)


def test_repeated_positions_keep_the_first_and_reject_the_rest(ct, pseudonymizer):
    ct.series("gated", slices=6, positions=[0.0, 2.5, 5.0, 0.0, 2.5, 5.0])
    volume, rejections = only_volume(ct.root / "gated", pseudonymizer)
    assert len(volume.slices) == 3
    assert [r.path.name for r in rejections] == ["slice-003.dcm", "slice-004.dcm", "slice-005.dcm"]
    assert all("repeats the position" in r.reason for r in rejections)
    assert all(r.image_key.startswith("image-") for r in rejections)
    assert any("3 image(s) repeat a position" in w for w in volume.warnings)


def test_two_series_in_one_folder_are_two_volumes(ct, pseudonymizer):
    ct.series("mixed", slices=4, seed=1)
    ct.series("mixed-2", slices=3, seed=2)
    for path in (ct.root / "mixed-2").iterdir():
        path.rename(ct.root / "mixed" / f"other-{path.name}")
    found = scan_folder(ct.root / "mixed", pseudonymizer)
    assert sorted(len(v.slices) for v in found.volumes) == [3, 4]


def test_a_series_mixing_image_sizes_is_split(ct, pseudonymizer):
    files, _ = ct.series("sizes", slices=4)
    ds = pydicom.dcmread(files[0])
    ds.Rows = ds.Columns = 8
    ds.PixelData = np.zeros((8, 8), np.int16).tobytes()
    ds.ImagePositionPatient = [-20.0, -20.0, 50.0]
    ds.save_as(files[0])
    found = scan_folder(ct.root / "sizes", pseudonymizer)
    assert sorted(len(v.slices) for v in found.volumes) == [1, 3]
    assert all("split into 2 volumes" in v.warnings[-1] for v in found.volumes)


def test_missing_positions_fall_back_to_instance_number_with_a_warning(ct, pseudonymizer):
    files, stored = ct.series("nopos", slices=4)
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    volume, _ = only_volume(ct.root / "nopos", pseudonymizer)
    assert "ordered by InstanceNumber" in volume.warnings[0]
    np.testing.assert_array_equal(load_hu(volume).hu, stored - 1024.0)


def test_rescale_slope_and_intercept_give_hounsfield_units(ct, pseudonymizer):
    files, stored = ct.series("rescale", slices=2, slope=0.5, intercept=-1000.0)
    volume, _ = only_volume(ct.root / "rescale", pseudonymizer)
    hu = load_hu(volume).hu
    np.testing.assert_allclose(hu, stored * 0.5 - 1000.0)
    np.testing.assert_array_equal(hu[0], reference_hu(files[0]))


def test_a_modality_lut_sequence_gives_the_reference_hu(ct, pseudonymizer):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    files, stored = ct.series("lut", slices=2)
    lut = np.arange(4096, dtype=np.uint16) // 2
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.ModalityLUTType = "HU"
        item.add_new(0x00283006, "US", lut.tolist())  # LUTData
        ds.ModalityLUTSequence = Sequence([item])
        ds.save_as(path)
    volume, _ = only_volume(ct.root / "lut", pseudonymizer)
    hu = load_hu(volume).hu
    np.testing.assert_array_equal(hu[0], reference_hu(files[0]))
    np.testing.assert_array_equal(hu, (stored // 2).astype(np.float32))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_written_by_pydicom_decode_exactly(ct, pseudonymizer, syntax):
    files, stored = ct.series("compressed", slices=3, size=64)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11  # the values fit in 12 bits; JPEG 2000 needs it said
        ds.compress(syntax)
        ds.save_as(path)
    volume, _ = only_volume(ct.root / "compressed", pseudonymizer)
    np.testing.assert_array_equal(load_hu(volume).hu, stored - 1024.0)


@pytest.mark.parametrize("order", [[2, 0, 3, 1], [0]], ids=["four-frames", "one-frame"])
def test_enhanced_multiframe_ct_is_read_frame_by_frame(ct, pseudonymizer, tmp_path, order):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    files, stored = ct.series("single", slices=4)
    ds = pydicom.dcmread(files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "RescaleSlope",
        "RescaleIntercept",
        "SliceThickness",
    ):
        delattr(ds, keyword)
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.8]
    measures.SliceThickness = 2.5
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:  # frames stored out of order; per-frame rescale differs
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-20.0, -20.0, 100.0 + 2.5 * k]
        group.PlanePositionSequence = Sequence([position])
        rescale = Dataset()
        rescale.RescaleSlope = 1.0 + k
        rescale.RescaleIntercept = -1024.0
        rescale.RescaleType = "HU"
        group.PixelValueTransformationSequence = Sequence([rescale])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([stored[k] for k in order]).astype(np.int16).tobytes()
    enhanced = tmp_path / "enhanced"
    enhanced.mkdir()
    ds.save_as(enhanced / "enhanced.dcm")
    volume, _ = only_volume(enhanced, pseudonymizer)
    expected = np.stack([stored[k] * (1.0 + k) - 1024.0 for k in sorted(order)])
    np.testing.assert_array_equal(load_hu(volume).hu, expected)


# --- rejections ------------------------------------------------------------------------------


def rejection_of(path, pseudonymizer) -> Rejection:
    result = read_header(path, pseudonymizer)
    assert isinstance(result, Rejection), result
    return result


def test_a_localizer_is_rejected(ct, pseudonymizer):
    files, _ = ct.series("scout", slices=1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert rejection_of(files[0], pseudonymizer).reason.startswith("localizer (scout) image")


def test_a_truncated_copy_is_rejected(ct, pseudonymizer):
    files, _ = ct.series("cut", slices=1)
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) - 100])
    assert rejection_of(files[0], pseudonymizer).reason.startswith("truncated file")


@pytest.mark.parametrize(
    ("kept", "expected"), [(300, "ends right after"), (800, "a truncated copy?")]
)
def test_a_file_cut_inside_its_header_is_rejected_without_a_crash(
    ct, pseudonymizer, kept, expected
):
    files, _ = ct.series("cut", slices=1)
    files[0].write_bytes(files[0].read_bytes()[:kept])
    assert expected in rejection_of(files[0], pseudonymizer).reason


def test_an_mr_file_is_rejected_unless_allowed(ct, pseudonymizer):
    files, _ = ct.series("mr", slices=1, Modality="MR")
    assert rejection_of(files[0], pseudonymizer).reason == "modality MR, not CT"
    assert not isinstance(read_header(files[0], pseudonymizer, ["CT", "MR"]), Rejection)


def test_an_rgb_screen_capture_saved_as_ct_is_rejected(ct, pseudonymizer):
    files, _ = ct.series("capture", slices=1)
    ds = pydicom.dcmread(files[0])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((16, 16, 3), np.uint8).tobytes()
    ds.save_as(files[0])
    assert "colour image (RGB) stored as CT" in rejection_of(files[0], pseudonymizer).reason


def test_pixel_data_shorter_than_the_header_says_is_rejected(ct, pseudonymizer):
    files, _ = ct.series("short", slices=1)
    ds = pydicom.dcmread(files[0])
    ds.PixelData = ds.PixelData[:200]
    ds.save_as(files[0])
    reason = rejection_of(files[0], pseudonymizer).reason
    assert reason == (
        "the pixel data has 200 bytes but Rows x Columns x frames x bits "
        "(16 x 16 x 1 x 16) needs 512"
    )


def test_a_file_without_preamble_is_read_with_a_note(ct, pseudonymizer):
    files, stored = ct.series("nopreamble", slices=1)
    ds = pydicom.dcmread(files[0])
    ds.preamble = None
    pydicom.dcmwrite(files[0], ds, enforce_file_format=False)
    assert files[0].read_bytes()[128:132] != b"DICM"
    volume, rejections = only_volume(ct.root / "nopreamble", pseudonymizer)
    assert rejections == []
    assert "no DICOM preamble; read anyway" in volume.warnings[0]
    np.testing.assert_array_equal(load_hu(volume).hu[0], stored[0] - 1024.0)


def test_an_image_without_patient_id_is_rejected(ct, pseudonymizer):
    files, _ = ct.series("anonymous", slices=1, PatientID="")
    assert rejection_of(files[0], pseudonymizer).reason.startswith("no PatientID")


def test_a_file_that_is_not_dicom_is_rejected(ct, pseudonymizer):
    path = ct.root / "notes.txt"
    path.write_text("scan protocol notes\n" * 20)
    assert rejection_of(path, pseudonymizer).reason == "not a DICOM file"


def test_a_missing_decoder_names_the_package_to_install(
    pydicom_test_files, pseudonymizer, monkeypatch
):
    from medadapt.plugins.dicom_ct import headers

    class Unavailable:
        is_available = False

    monkeypatch.setattr(headers, "get_decoder", lambda syntax: Unavailable())
    reason = rejection_of(pydicom_test_files / "693_J2KI.dcm", pseudonymizer).reason
    assert reason == (
        "compressed with JPEG 2000 Image Compression; install the package "
        "pylibjpeg-openjpeg to read it"
    )


# --- the data source -------------------------------------------------------------------------


def test_the_source_scans_without_labels_one_sample_per_volume(ct, monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "site-secret-for-the-test-0001")
    _, stored = ct.series("a", slices=3)
    source = DicomCT.from_params({"root": str(ct.root)})
    result = source.scan()
    [record] = result.records
    assert record.label is None
    assert record.attributes["manufacturer"] == "Test Vendor"
    assert record.attributes["convolution_kernel"] == "B30f"
    assert record.attributes["kvp"] == 120.0
    image = source.load(record)
    np.testing.assert_array_equal(image.hu, stored - 1024.0)


def test_the_source_needs_a_pseudonym_key(ct, monkeypatch):
    from medadapt.engine import InvalidInputError

    monkeypatch.delenv("MEDADAPT_PSEUDONYM_KEY", raising=False)
    ct.series("a", slices=1)
    with pytest.raises(InvalidInputError, match="MEDADAPT_PSEUDONYM_KEY"):
        DicomCT.from_params({"root": str(ct.root)}).scan()


def test_scanning_reads_headers_only_so_memory_stays_flat(ct, pseudonymizer):
    import tracemalloc

    ct.series("big", slices=60, size=256)  # 60 x 128 KiB of pixels = 7.5 MiB
    tracemalloc.start()
    try:
        found = scan_folder(ct.root, pseudonymizer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found.volumes[0].slices) == 60
    assert peak < 2 * 1024 * 1024, f"scanning held {peak / 2**20:.1f} MiB"
