"""Lesion-centred patches (2D, 2.5D, 3D), resampling, windowing and the disk cache."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medadapt.engine import Image
from medadapt.engine.data.cache import ArrayCache, cache_key
from medadapt.engine.data.patches import sample_patch_hu, window
from medadapt.engine.data.samples import PatchLoader
from medadapt.engine.profile import Preprocessing
from medadapt.plugins.dicom_ct import DicomCT

PHI = ("Doe^Jane", "MRN-0042-PHI", "19700101", "ACC-PHI-991")


def preprocessing(mode: str, size: list[int], spacing=None, level=0.0, width=2000.0):
    return Preprocessing.model_validate(
        {
            "window": {"level": level, "width": width},
            "spacing_mm": spacing,
            "patch_mode": mode,
            "patch_size": size,
        }
    )


@pytest.fixture
def volume() -> Image:
    hu = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14) - 500
    return Image(hu=hu, spacing_mm=(2.0, 1.0, 1.0))


def test_2d_patch_at_native_spacing_is_the_slice_around_the_centre(volume):
    patch = sample_patch_hu(volume, (4, 6, 7), preprocessing("2d", [4, 4]))
    assert patch.shape == (1, 4, 4)
    np.testing.assert_allclose(patch[0], volume.hu[4, 4:8, 5:9], atol=1e-3)


def test_25d_patch_holds_three_adjacent_slices_as_channels(volume):
    patch = sample_patch_hu(volume, (4, 6, 7), preprocessing("2.5d", [3, 3]))
    assert patch.shape == (3, 3, 3)
    for channel, z in enumerate((3, 4, 5)):
        np.testing.assert_allclose(patch[channel], volume.hu[z, 5:8, 6:9], atol=1e-3)


def test_3d_patch_is_a_volume_with_one_channel(volume):
    patch = sample_patch_hu(volume, (4, 6, 7), preprocessing("3d", [3, 3, 3]))
    assert patch.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(patch[0], volume.hu[3:6, 5:8, 6:9], atol=1e-3)


def test_patch_is_resampled_to_the_profile_spacing(volume):
    coarse = sample_patch_hu(volume, (4, 6, 7), preprocessing("3d", [3, 3, 3], [4.0, 2.0, 2.0]))
    np.testing.assert_allclose(coarse[0], volume.hu[2:7:2, 4:9:2, 5:10:2], atol=1e-3)
    fine = sample_patch_hu(volume, (4, 6, 7), preprocessing("2d", [3, 3], [2.0, 0.5, 0.5]))
    np.testing.assert_allclose(
        fine[0, 1],
        [volume.hu[4, 6, 6] + 0.5, volume.hu[4, 6, 7], volume.hu[4, 6, 7] + 0.5],
        atol=1e-3,
    )


def test_outside_the_scan_the_patch_is_air(volume):
    patch = sample_patch_hu(volume, (0, 0, 0), preprocessing("2d", [4, 4]))
    assert patch[0, 0, 0] == -1000.0
    assert patch[0, -1, -1] == volume.hu[0, 1, 1]


def test_window_maps_hu_to_the_unit_range():
    lung = window(np.array([-1350.0, -600.0, 150.0, 400.0]), level=-600, width=1500)
    assert lung.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert lung.dtype == np.float32


def test_patch_without_a_centre_is_taken_at_the_middle(volume):
    patch = window(sample_patch_hu(volume, None, preprocessing("2d", [2, 2])), level=0, width=4000)
    assert patch.shape == (1, 2, 2)
    assert 0.0 < float(patch.mean()) < 1.0


# --- cache -----------------------------------------------------------------------------------


class CountingDicomCT(DicomCT):
    """The real source, counting how often pixels are decoded."""

    loads = 0

    def load(self, record):
        CountingDicomCT.loads += 1
        return super().load(record)


@pytest.fixture
def labelled_site(ct, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "site-secret-for-the-tests-0001")
    files, stored = ct.series("a", slices=6, size=24)
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label,slice,row,column\nMRN-0042-PHI,malignant,2,10,12\n")
    CountingDicomCT.loads = 0
    source = CountingDicomCT.from_params({"root": str(ct.root)})
    [record] = source.scan(label_file=labels).records
    return source, record, files, stored


def test_patches_are_lesion_centred_windowed_and_carry_attributes(labelled_site, tmp_path):
    source, record, _, stored = labelled_site
    loader = PatchLoader(
        source, preprocessing("2.5d", [4, 4], level=0, width=2000), tmp_path / "cache"
    )
    sample = loader.sample(record)
    assert sample.patch.shape == (3, 4, 4)
    expected = window(stored[1:4, 8:12, 10:14] - 1024.0, level=0, width=2000)
    np.testing.assert_allclose(sample.patch, expected, atol=1e-5)
    assert sample.label == "malignant"
    assert sample.attributes["convolution_kernel"] == "B30f"


def test_second_pass_reads_the_cache_and_a_changed_file_is_read_again(labelled_site, tmp_path):
    source, record, files, _ = labelled_site
    cache = tmp_path / "cache"
    spec = preprocessing("2d", [4, 4])
    first = PatchLoader(source, spec, cache).patch(record)
    second = PatchLoader(source, spec, cache).patch(record)
    np.testing.assert_array_equal(first, second)
    assert CountingDicomCT.loads == 1
    PatchLoader(source, preprocessing("2d", [6, 6]), cache).patch(record)
    assert CountingDicomCT.loads == 1, "the volume itself comes from the cache"
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    PatchLoader(source, spec, cache).patch(record)
    assert CountingDicomCT.loads == 2


def test_a_loader_keeps_its_patches_in_memory_read_only_and_within_its_budget(
    labelled_site, tmp_path, monkeypatch
):
    import medadapt.engine.data.samples as samples

    source, record, _, _ = labelled_site
    cache = tmp_path / "cache"
    loader = PatchLoader(source, preprocessing("2d", [4, 4]), cache)
    first = loader.patch_hu(record)
    shutil.rmtree(cache)  # later reads come from memory: the disk cache is not read again
    np.testing.assert_array_equal(loader.patch_hu(record), first)
    assert not first.flags.writeable  # kept for every later read: nobody may change it
    assert not cache.exists()
    # Past the budget, patches are read when asked for and not kept.
    monkeypatch.setattr(samples, "KEPT_PATCH_BYTES", 0)
    small = PatchLoader(source, preprocessing("2d", [4, 4]), cache)
    small.patch_hu(record)
    shutil.rmtree(cache)
    small.patch_hu(record)
    assert cache.exists(), "with no budget, the second read went to the disk cache again"


def test_the_cache_holds_no_identifying_values(labelled_site, tmp_path):
    source, record, _, _ = labelled_site
    cache = tmp_path / "cache"
    PatchLoader(source, preprocessing("3d", [2, 4, 4]), cache).patch(record)
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert len(entries) == 3  # volume, its spacing, the patch
    for entry in entries:
        content = entry.read_bytes()
        for value in PHI:
            assert value.encode() not in content
            assert value not in str(entry)


def _fill(args: tuple[str, int]) -> float:
    root, seed = args
    cache = ArrayCache(Path(root), "race")
    array = cache.get_or_compute(cache_key("shared"), lambda: np.full((256, 256), 7.0))
    return float(np.asarray(array).sum()) + seed * 0


def test_several_processes_can_fill_one_cache_entry(tmp_path):
    with ProcessPoolExecutor(max_workers=2) as pool:
        sums = list(pool.map(_fill, [(str(tmp_path), i) for i in range(8)]))
    assert sums == [7.0 * 256 * 256] * 8
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_unreadable_cache_entry_is_recomputed(tmp_path):
    cache = ArrayCache(tmp_path, "broken")
    key = cache_key("k")
    cache.put(key, np.ones(4))
    next(tmp_path.rglob("*.npy")).write_bytes(b"not an array")
    assert cache.get_or_compute(key, lambda: np.zeros(2)).tolist() == [0.0, 0.0]


# --- from a profile to patches ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "size", "shape"),
    [("2d", [8, 8], (1, 8, 8)), ("2.5d", [8, 8], (3, 8, 8)), ("3d", [4, 8, 8], (1, 4, 8, 8))],
)
def test_a_profile_with_dicom_ct_and_labels_gives_training_patches(
    ct, write_profile, tmp_path, monkeypatch, mode, size, shape
):
    from medadapt.engine.contracts.host import get_plugin_host
    from medadapt.engine.data.samples import open_site_data
    from medadapt.engine.profile import load_profile

    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", "site-secret-for-the-tests-0001")
    ct.series("a", slices=8, size=32, patient_id="MRN-0042-PHI")
    ct.series("b", slices=8, size=32, patient_id="MRN-0077-PHI", seed=3)
    (tmp_path / "labels.csv").write_text(
        "patient_id,label,x_mm,y_mm,z_mm\n"
        "MRN-0042-PHI,malignant,-10.4,-9.5,107.5\n"
        "MRN-0077-PHI,benign,-5.6,-6.0,105.0\n"
    )
    profile_path = write_profile(
        data={"source": "dicom-ct", "params": {"root": "dicom"}, "label_file": "labels.csv"},
        preprocessing={
            "window": {"level": -600, "width": 1500},
            "spacing_mm": [2.5, 0.7, 0.8],
            "patch_mode": mode,
            "patch_size": size,
        },
    )
    registry = get_plugin_host().registry()
    data = open_site_data(load_profile(profile_path, registry), registry, tmp_path / "cache")
    assert data.rejections == []
    samples = [data.loader.sample(record) for record in data.records]
    assert sorted(s.label for s in samples) == ["benign", "malignant"]
    for sample in samples:
        assert sample.patch.shape == shape
        assert sample.patch.dtype == np.float32
        assert float(sample.patch.min()) >= 0.0
        assert float(sample.patch.max()) <= 1.0
        assert sample.attributes["manufacturer"] == "Test Vendor"
        assert sample.patient_key.startswith("patient-")


def test_a_profile_without_data_cannot_open_site_data(write_profile):
    from medadapt.engine import InvalidInputError
    from medadapt.engine.contracts.host import get_plugin_host
    from medadapt.engine.data.samples import open_site_data
    from medadapt.engine.profile import load_profile

    registry = get_plugin_host().registry()
    profile = load_profile(write_profile(data=None), registry)
    with pytest.raises(InvalidInputError, match="has no 'data' section"):
        open_site_data(profile, registry)
