"""Simulated hospitals: anatomy, scanner physics, DICOM output, and the phantom source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.plugins.dicom_ct import DicomCT
from medadapt.plugins.phantom import Phantom
from medadapt.plugins.phantom.anatomy import draw_patient
from medadapt.plugins.phantom.hospital import HospitalSpec, draw, scan_patient, write_hospital
from medadapt.plugins.phantom.scanner import KERNELS, PRESETS, acquire, noise_sd, preset


def water_slices(scanner: str = "philips-standard", slices: int = 6, **overrides) -> np.ndarray:
    spec = HospitalSpec(
        body_region="water", patients=1, slices=slices, scanner=scanner, **overrides
    )
    return scan_patient(spec, 0).hu


def centre_roi(hu: np.ndarray, half: int = 30) -> np.ndarray:
    c = hu.shape[-1] // 2
    return hu[..., c - half : c + half, c - half : c + half]


# --- scanner physics -------------------------------------------------------------------------


def test_noise_falls_as_one_over_the_square_root_of_dose():
    measured = {dose: float(centre_roi(water_slices(dose_mgy=dose)).std()) for dose in (2, 8, 32)}
    reference = measured[8] * np.sqrt(8)
    for dose, sd in measured.items():
        assert sd * np.sqrt(dose) == pytest.approx(reference, rel=0.15), measured
    assert measured[2] == pytest.approx(2 * measured[8], rel=0.15)


def test_measured_noise_matches_the_noise_power_spectrum():
    spec = HospitalSpec(body_region="water", patients=1, slices=6, scanner="philips-standard")
    expected = noise_sd(spec.scanner_preset(), spec.pixel_mm, spec.size)
    assert float(centre_roi(scan_patient(spec, 0).hu).std()) == pytest.approx(expected, rel=0.1)


def edge_rise_mm(kernel: str) -> float:
    """10-90% rise of the air-to-water edge on the right side of the water cylinder."""
    pixel = 0.5  # a 256 mm field of view: the 200 mm cylinder's edge is 28 mm inside
    hu = water_slices(kernel=kernel, pixel_spacing_mm=pixel, slices=12, size=512)
    c = hu.shape[-1] // 2
    profile = hu[:, c - 5 : c + 6, :].mean(axis=(0, 1))[::-1]  # from air into water
    x = np.arange(profile.size) * pixel
    low, high = profile[:20].mean(), profile[c - 20 : c].mean()
    p10, p90 = low + 0.1 * (high - low), low + 0.9 * (high - low)
    start = int(np.argmax(profile > p10))
    rising = slice(start - 2, int(np.argmax(profile > p90)) + 1)
    return float(
        np.interp(p90, profile[rising], x[rising]) - np.interp(p10, profile[rising], x[rising])
    )


def test_a_sharper_kernel_is_noisier_and_resolves_edges_faster():
    smooth, sharp = "B30f", "B70f"
    noise_smooth = float(centre_roi(water_slices(kernel=smooth)).std())
    noise_sharp = float(centre_roi(water_slices(kernel=sharp)).std())
    assert noise_sharp > 1.5 * noise_smooth
    rise_smooth, rise_sharp = edge_rise_mm(smooth), edge_rise_mm(sharp)
    assert rise_sharp < 0.6 * rise_smooth
    # A Gaussian MTF of width sigma gives a 10-90% edge rise of 2.563 sigma.
    assert rise_smooth == pytest.approx(2.563 * KERNELS[smooth], rel=0.2)


@pytest.mark.parametrize("name", list(PRESETS))
def test_water_reads_as_the_presets_calibration_offset(name):
    water = centre_roi(water_slices(scanner=name))
    assert float(water.mean()) == pytest.approx(PRESETS[name].hu_offset, abs=5.0)


def test_slice_thickness_averages_partial_volumes_and_noise():
    thin = HospitalSpec(body_region="water", patients=1, slices=6, slice_thickness_mm=1.0)
    thick = thin.model_copy(update={"slice_thickness_mm": 4.0})
    sd_thin = float(centre_roi(scan_patient(thin, 0).hu).std())
    sd_thick = float(centre_roi(scan_patient(thick, 0).hu).std())
    assert sd_thin == pytest.approx(2 * sd_thick, rel=0.15)


def test_acquire_is_deterministic_for_a_seeded_stream():
    truth = np.zeros((2, 64, 64))
    scanner = preset("ge-sharp-low-dose")
    first = acquire(truth, scanner, 1.0, np.random.default_rng(1))
    again = acquire(truth, scanner, 1.0, np.random.default_rng(1))
    np.testing.assert_array_equal(first, again)


# --- anatomy and lesions ---------------------------------------------------------------------


def test_tissues_have_real_ct_values():
    spec = HospitalSpec(body_region="chest", patients=1, slices=1, size=256)
    patient = draw(spec, 0)
    coords = (np.arange(256) - 127.5) * spec.pixel_mm
    x, y = np.meshgrid(coords, coords)
    truth = patient.render(x, y, 0.0)
    lung = patient.hosts[0]
    values = set(np.round(truth.ravel(), -1))
    assert truth[0, 0] == -1000  # air outside the body
    assert -900 <= float(np.median(truth[lung.mask(x, y, 0.0)])) <= -800
    assert -100 in values  # fat
    assert 40 in values  # soft tissue
    assert truth.max() >= 700  # cortical bone


def test_lesion_classes_differ_in_size_shape_and_calcification():
    rng = np.random.default_rng(0)
    lesions = [
        lesion
        for i in range(80)
        for lesion in draw_patient(i, "chest", rng, (-30.0, 30.0), difficulty=0.3).lesions
    ]
    benign = [lesion for lesion in lesions if lesion.label == "benign"]
    malignant = [lesion for lesion in lesions if lesion.label == "malignant"]
    assert len(benign) > 20
    assert len(malignant) > 20
    assert np.mean([lesion.radius for lesion in malignant]) > np.mean(
        [lesion.radius for lesion in benign]
    )

    def spiculated(lesion):
        return any(sharp > 30 for _, _, sharp in lesion.lobes)

    assert not any(spiculated(lesion) for lesion in benign)
    assert 0.4 < np.mean([spiculated(lesion) for lesion in malignant]) < 0.8
    assert not any(lesion.calcification for lesion in malignant)
    assert np.mean([lesion.texture for lesion in malignant]) > np.mean(
        [lesion.texture for lesion in benign]
    )
    # Hamartomas: benign, large and lobulated like malignant lesions, told apart by calcium
    # only, so that the class depends on absolute HU.
    hamartomas = [b for b in benign if b.radius > 5 and b.lobes and b.calcification]
    assert hamartomas
    assert all(calcium >= 300 for _, calcium in (h.calcification for h in hamartomas))


def test_the_same_seed_gives_the_same_patients_and_another_seed_other_ones():
    spec = HospitalSpec(patients=3, seed=4)
    same = [draw(spec, i).lesions for i in range(3)]
    assert same == [draw(spec, i).lesions for i in range(3)]
    other = HospitalSpec(patients=3, seed=5)
    assert same != [draw(other, i).lesions for i in range(3)]


def test_the_same_patients_can_be_scanned_by_another_scanner():
    a = HospitalSpec(patients=2, seed=3, scanner="siemens-smooth-standard-dose")
    b = a.model_copy(update={"scanner": "ge-sharp-low-dose"})
    assert draw(a, 1).lesions == draw(b, 1).lesions


def test_contrast_enhancement_makes_the_same_lesions_denser_and_leaves_calcium():
    plain = HospitalSpec(patients=4, seed=2, body_region="head", slices=12, size=128)
    enhanced = plain.model_copy(update={"contrast_enhancement_hu": 45.0})
    for index in range(4):
        before, after = draw(plain, index).lesions, draw(enhanced, index).lesions
        assert [(a.centre, a.radius, a.label) for a in after] == [
            (b.centre, b.radius, b.label) for b in before
        ]
        assert [a.hu - b.hu for a, b in zip(after, before, strict=True)] == pytest.approx(
            [45.0] * len(before)
        )
        assert [a.calcification for a in after] == [b.calcification for b in before]
    lesion = draw(enhanced, 0).lesions[0]
    z = int(np.argmin(np.abs(enhanced.slice_positions() - lesion.centre[2])))
    pixel, origin = enhanced.pixel_mm, enhanced.grid_origin()
    row = round((lesion.centre[1] - origin) / pixel)
    col = round((lesion.centre[0] - origin) / pixel)
    gained = scan_patient(enhanced, 0).hu[z, row, col] - scan_patient(plain, 0).hu[z, row, col]
    assert 30.0 < gained < 60.0  # the centre of the lesion, through the scanner's blur


def test_a_setting_at_its_default_leaves_the_hospitals_identity_as_it_was():
    spec = HospitalSpec(patients=2)
    assert "contrast_enhancement_hu" not in spec.model_dump(mode="json")
    assert "contrast_enhancement_hu" not in spec.model_dump_json()
    enhanced = spec.model_copy(update={"contrast_enhancement_hu": 40.0})
    assert enhanced.model_dump(mode="json")["contrast_enhancement_hu"] == 40.0
    assert HospitalSpec.model_validate(enhanced.model_dump(mode="json")) == enhanced


# --- DICOM output ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hospital")
    spec = HospitalSpec(scanner="ge-sharp-low-dose", patients=3, seed=11, slices=12, size=128)
    summary = write_hospital(spec, folder, workers=2)
    return spec, folder, summary


def test_written_files_are_valid_dicom_with_the_presets_headers(hospital):
    spec, folder, _ = hospital
    files = sorted((folder / "dicom").rglob("*.dcm"))
    assert len(files) == 3 * 12
    ds = pydicom.dcmread(files[0])  # no force: a complete DICOM file
    scanner = spec.scanner_preset()
    assert ds.Modality == "CT"
    assert ds.Manufacturer == scanner.manufacturer
    assert ds.ConvolutionKernel == scanner.kernel
    assert float(ds.CTDIvol) == scanner.ctdi_vol_mgy
    assert float(ds.PixelSpacing[0]) == pytest.approx(spec.pixel_mm)
    assert float(ds.SliceThickness) == spec.thickness_mm
    assert str(ds.PatientName).startswith("PHANTOM^SYNTHETIC")
    assert ds.PatientID.startswith("PHANTOM-")


def test_the_dicom_ct_source_reads_the_hospital_and_its_labels(hospital, monkeypatch):
    spec, folder, summary = hospital
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "site-secret-for-the-tests-0001")
    source = DicomCT.from_params({"root": str(folder / "dicom")})
    result = source.scan(label_file=folder / "labels.csv")
    assert result.rejections == []
    assert len(result.records) == sum(summary.lesions.values())
    by_lesion = {record.attributes["lesion_id"]: record for record in result.records}
    record = by_lesion["PHANTOM-11-0000-L1"]
    image = source.load(record)
    expected = scan_patient(spec, 0).hu
    np.testing.assert_allclose(image.hu, expected, atol=0.51)  # stored as whole HU
    lesion = draw(spec, 0).lesions[0]
    z, row, column = (round(c) for c in record.centre)
    assert image.hu[z, row - 1 : row + 2, column - 1 : column + 2].mean() > -500, lesion


def test_the_same_spec_writes_byte_identical_files(hospital, tmp_path):
    spec, folder, _ = hospital
    write_hospital(spec, tmp_path, workers=1)
    for original in (folder / "dicom").rglob("*.dcm"):
        copy = tmp_path / original.relative_to(folder)
        assert copy.read_bytes() == original.read_bytes()
    assert (tmp_path / "labels.csv").read_bytes() == (folder / "labels.csv").read_bytes()


def test_an_interrupted_hospital_resumes_and_another_one_is_refused(hospital, tmp_path):
    from medadapt.engine import InvalidInputError

    spec, folder, _ = hospital
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    series = sorted((copy / "dicom").iterdir())[1]
    kept = sorted((copy / "dicom").iterdir())[0]
    before = kept.stat().st_mtime_ns
    for path in list(series.iterdir())[:5]:
        path.unlink()
    write_hospital(spec, copy)
    assert len(list(series.iterdir())) == spec.slices
    assert kept.stat().st_mtime_ns == before
    with pytest.raises(InvalidInputError, match="made with other settings"):
        write_hospital(spec.model_copy(update={"seed": 12}), copy)


# --- command line and data source ------------------------------------------------------------


def test_phantom_then_inspect_lists_every_series_with_the_preset(tmp_path):
    get_plugin_host().add_commands(cli)
    runner = CliRunner()
    made = runner.invoke(
        cli,
        [
            "phantom",
            str(tmp_path / "b"),
            "--scanner",
            "canon-smooth-thick-100kv",
            "--patients",
            "3",
            "--slices",
            "8",
            "--size",
            "96",
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    assert summary["patients"] == 3
    listed = runner.invoke(cli, ["inspect", "--json", str(tmp_path / "b" / "dicom")])
    assert listed.exit_code == 0, listed.output
    series = json.loads(listed.stdout)["series"]
    assert len(series) == 3
    for s in series:
        assert s["manufacturer"] == "TOSHIBA"
        assert s["convolution_kernel"] == "FC13"
        assert s["pixel_spacing_mm"] == pytest.approx([400 / 96, 400 / 96])
        assert s["slice_thickness_mm"] == 5.0
        assert s["kvp"] == 100.0


def test_phantom_rejects_an_unknown_preset(tmp_path):
    get_plugin_host().add_commands(cli)
    result = CliRunner().invoke(cli, ["phantom", str(tmp_path), "--scanner", "siemens"])
    assert result.exit_code == 2
    assert "siemens-smooth-standard-dose" in result.output


def test_the_phantom_source_serves_patients_from_memory():
    source = Phantom.from_params({"patients": 2, "seed": 2, "slices": 10, "size": 96})
    result = source.scan()
    assert {record.label for record in result.records} <= {"benign", "malignant"}
    record = result.records[0]
    image = source.load(record)
    assert image.hu.shape == (10, 96, 96)
    z, row, column = (round(c) for c in record.centre)
    assert image.hu[z, row, column] > -500  # the centre of a lesion, not lung
    assert record.attributes["manufacturer"] == "SIEMENS"
    assert source.fingerprint(record) == source.fingerprint(record)


def test_the_phantom_source_validates_its_parameters():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown scanner preset 'ge-sharp'"):
        Phantom.from_params({"scanner": "ge-sharp"})
    with pytest.raises(ValidationError, match="unknown reconstruction kernel 'B31f'"):
        Phantom.from_params({"kernel": "B31f"})


def test_a_phantom_profile_gives_patches_without_any_file(tmp_path):
    from medadapt.engine.data.samples import open_site_data
    from medadapt.engine.profile import load_profile

    registry = get_plugin_host().registry()
    shipped = Path(__file__).resolve().parent.parent / "hospital_profiles"
    profile = load_profile(shipped / "phantom-hospital-b.yaml", registry)
    data = open_site_data(profile, registry, tmp_path / "cache")
    assert data.rejections == []
    assert len({record.patient_key for record in data.records}) == 40
    sample = data.loader.sample(data.records[0])
    assert sample.patch.shape == (1, 48, 48)
    assert sample.attributes["convolution_kernel"] == "LUNG"


def test_thick_slices_average_a_small_lesion_into_its_surroundings():
    from medadapt.plugins.phantom.anatomy import render_volume

    spec = HospitalSpec(patients=30, seed=9, difficulty=0.0)
    patient, lesion = next(
        (p, lesion)
        for p in (draw(spec, i) for i in range(30))
        for lesion in p.lesions
        if lesion.label == "benign" and lesion.radius < 4 and lesion.calcification is None
    )
    at = np.array([lesion.centre[2]])
    thin = render_volume(patient, 0.5, 512, at, thickness_mm=1.0)[0]
    thick = render_volume(patient, 0.5, 512, at, thickness_mm=5.0 * lesion.radius)[0]
    row = round(lesion.centre[1] / 0.5 + 255.5)
    column = round(lesion.centre[0] / 0.5 + 255.5)
    assert thin[row, column] > -200  # the lesion itself
    assert thick[row, column] < thin[row, column] - 200  # mixed with the lung around it
