"""Every augmentation keeps its own safety contract, and unsafe ones are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from medadapt.engine import ComponentKind, LabelProperty
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.profile import ProfileError, load_profile

REGISTRY = get_plugin_host().registry()
BUILT_IN = [
    name
    for name in REGISTRY.names(ComponentKind.AUGMENTATIONS)
    if REGISTRY.provider(ComponentKind.AUGMENTATIONS, name) == "augmentations"
]
SHAPES = {"2d": (1, 32, 32), "2.5d": (3, 32, 32), "3d": (1, 12, 32, 32)}


def augmentation(name, **params):
    return REGISTRY.create(ComponentKind.AUGMENTATIONS, name, {"probability": 1.0, **params})


def random_patch(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1000.0, 1000.0, size=shape).astype(np.float32)


def apply(aug, patch, seed):
    transform = aug.transform()
    transform.set_random_state(seed=seed)
    return np.asarray(transform(patch.copy()), dtype=np.float32)


def test_the_built_in_set_is_complete():
    assert set(BUILT_IN) == {
        "random-flip",
        "random-rotate",
        "random-scale",
        "random-shift",
        "random-elastic",
        "gaussian-noise",
        "kernel-smooth",
        "kernel-sharpen",
        "thicker-slices",
        "hu-shift",
        "hu-scale",
        "window-jitter",
        "contrast-jitter",
        "random-crop",
    }


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("mode", list(SHAPES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_augmentation_keeps_its_declared_bounds(name, mode, seed):
    aug = augmentation(name)
    patch = random_patch(SHAPES[mode], seed)
    out = apply(aug, patch, seed)
    assert out.shape == patch.shape
    changes = aug.changes()
    hu_bound = changes.get(LabelProperty.ABSOLUTE_HU, 0.0)
    if hu_bound == 0.0:
        # Geometry only: values move, but interpolation never leaves the range (or air).
        assert out.min() >= min(patch.min(), -1000.0) - 1e-3
        assert out.max() <= patch.max() + 1e-3
    elif math.isfinite(hu_bound):
        assert np.abs(out - patch).max() <= hu_bound + 1e-3
    for kept in aug.preserves:
        assert kept not in changes


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_same_seed_gives_the_same_augmented_sample(name):
    aug = augmentation(name)
    patch = random_patch(SHAPES["2d"], 5)
    np.testing.assert_array_equal(apply(aug, patch, 11), apply(aug, patch, 11))


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_same_seed_gives_the_same_sample_through_the_training_composition(name):
    # As the engine runs them: composed, then seeded per sample through the composition.
    from medadapt.engine.data.augment import SeededCompose

    composed = SeededCompose([augmentation(name).transform()])
    patch = random_patch(SHAPES["3d"] if name == "thicker-slices" else SHAPES["2d"], 5)

    def draw(seed):
        composed.set_random_state(seed=seed)
        return np.asarray(composed(patch.copy()), dtype=np.float32)

    np.testing.assert_array_equal(draw(11), draw(11))
    if name not in ("random-flip",):  # a flip has only two outcomes
        assert any(not np.array_equal(draw(11), draw(s)) for s in range(12, 16))


def test_the_composition_seeds_each_transform_and_runs_it_as_monai_would():
    # Each transform seeded with the next draw of RandomState(seed), and run with MONAI's
    # metadata tracking on (its default) gives what the composition gives with it off; the
    # composition leaves the tracking as it found it.
    from monai.data import get_track_meta
    from monai.utils import MAX_SEED

    from medadapt.engine.data.augment import SeededCompose

    names = [n for n in BUILT_IN if n != "thicker-slices"]
    transforms = [augmentation(name).transform() for name in names]
    patch = random_patch(SHAPES["2d"], 5)
    expected = patch.copy()
    draw = np.random.RandomState(11)
    assert get_track_meta()
    for transform in transforms:
        transform.set_random_state(seed=int(draw.randint(MAX_SEED, dtype="uint32")))
        expected = transform(expected)
    composed = SeededCompose(transforms).set_random_state(seed=11)
    got = composed(patch.copy())
    assert get_track_meta()
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), np.asarray(expected))


def test_reseeding_in_place_draws_what_new_generators_would_sample_after_sample():
    # The composition reuses each transform's generator from one sample to the next (a new
    # RandomState per transform and sample was a third of the time an epoch spent on data);
    # every sample must still be what MONAI's own seeding of fresh transforms gives. The
    # rotation's composition with air outside the patch (a Compose inside) is nested.
    from monai.utils import MAX_SEED

    from medadapt.engine.data.augment import SeededCompose

    names = [n for n in BUILT_IN if n != "thicker-slices"]
    composed = SeededCompose([augmentation(name).transform() for name in names])
    patch = random_patch(SHAPES["2d"], 7)
    for seed in (3, 3, 4, 2**32 - 1, 0):
        fresh = [augmentation(name).transform() for name in names]
        draw = np.random.RandomState(seed)
        expected = patch.copy()
        for transform in fresh:
            transform.set_random_state(seed=int(draw.randint(MAX_SEED, dtype="uint32")))
            expected = transform(expected)
        got = composed.set_random_state(seed=seed)(patch.copy())
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), np.asarray(expected))


def test_a_flip_is_an_exact_mirror_and_only_left_right_changes_laterality():
    patch = random_patch(SHAPES["2d"], 3)
    left_right = augmentation("random-flip", axis="left-right")
    np.testing.assert_array_equal(apply(left_right, patch, 0), patch[..., ::-1])
    assert LabelProperty.LATERALITY in left_right.changes()
    front_back = augmentation("random-flip", axis="anterior-posterior")
    np.testing.assert_array_equal(apply(front_back, patch, 0), patch[:, ::-1])
    assert LabelProperty.LATERALITY not in front_back.changes()


def test_scaling_changes_size_within_its_bound():
    yy, xx = np.mgrid[:64, :64]
    disk = np.where((yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 12**2, 40.0, -1000.0)
    patch = disk[np.newaxis].astype(np.float32)
    aug = augmentation("random-scale", max_scale=0.2, max_shift_voxels=0.0)
    for seed in range(5):
        out = apply(aug, patch, seed)
        ratio = math.sqrt((out > -480).sum() / (patch > -480).sum())
        assert abs(ratio - 1) <= 0.2 + 0.05
    assert aug.changes() == {LabelProperty.SIZE: 0.2}


def test_geometric_transforms_pad_with_air_not_water():
    patch = np.full((1, 32, 32), 500.0, dtype=np.float32)
    out = apply(augmentation("random-rotate", max_degrees=45), patch, 1)
    assert out.min() < -900  # the corners come from outside: air


def test_noise_is_clipped_at_three_standard_deviations():
    aug = augmentation("gaussian-noise", max_sd_hu=10.0)
    assert aug.changes()[LabelProperty.ABSOLUTE_HU] == 30.0
    patch = np.zeros((1, 64, 64), dtype=np.float32)
    assert np.abs(apply(aug, patch, 4)).max() <= 30.0


def test_window_jitter_is_a_window_moved_and_widened_about_its_level():
    aug = augmentation("window-jitter", level_hu=40.0, max_level_hu=20.0, max_width_change=0.1)
    patch = random_patch(SHAPES["2d"], 6)
    out = apply(aug, patch, 2)
    # An affine map in HU that keeps the order of values: a window, not a new image.
    slope, offset = np.polyfit(patch.ravel(), out.ravel(), 1)
    assert 0.9 - 1e-6 <= slope <= 1.1 + 1e-6
    assert abs(offset - 40.0 * (1 - slope)) <= 20.0 + 1e-3
    np.testing.assert_allclose(out, slope * patch + offset, atol=1e-2)
    assert aug.changes() == {LabelProperty.ABSOLUTE_HU: 20.0 + 0.1 * 1040.0}


def test_contrast_jitter_keeps_the_patch_range_and_the_order_of_values():
    aug = augmentation("contrast-jitter", max_gamma_change=0.3)
    patch = random_patch(SHAPES["2d"], 7)
    out = apply(aug, patch, 3)
    assert out.min() == pytest.approx(patch.min(), abs=1e-2)
    assert out.max() == pytest.approx(patch.max(), abs=1e-2)
    order = np.argsort(patch.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= -1e-3)
    assert not np.allclose(out, patch)


@pytest.mark.parametrize("mode", list(SHAPES))
def test_random_crop_keeps_the_centre_in_place_and_fills_the_rest_with_air(mode):
    aug = augmentation("random-crop", min_fraction=0.5)
    patch = random_patch(SHAPES[mode], 8)
    for seed in range(20):
        out = apply(aug, patch, seed)
        kept = out != -1000.0
        np.testing.assert_array_equal(out[kept], patch[kept])
        centre = (..., patch.shape[-2] // 2, patch.shape[-1] // 2)
        np.testing.assert_array_equal(out[centre], patch[centre])
        assert kept.mean() >= 0.5**2 - 1e-6


# --- the contract in profiles ----------------------------------------------------------------


def profile_with(write_profile, augmentations, **task):
    base = {
        "classes": ["benign", "malignant"],
        "positive_class": "malignant",
        "label_depends_on": ["shape", "texture", "absolute-hu"],
    }
    return write_profile(augmentations=augmentations, task={**base, **task})


def test_an_hu_shift_beyond_the_tolerance_is_refused_with_an_explanation(write_profile):
    path = profile_with(write_profile, [{"name": "hu-shift", "params": {"max_shift_hu": 300}}])
    result = CliRunner().invoke(cli, ["profile", "check", str(path)])
    assert result.exit_code == 2
    assert "augmentations[0].name: the augmentation 'hu-shift' changes absolute-hu by up to " in (
        result.output
    )
    assert "300 HU" in result.output
    assert "the labels tolerate 0 HU (task.hu_tolerance)" in result.output
    assert "use one that is safe for this task: random-flip, random-rotate, random-scale, " in (
        result.output
    )
    assert "random-elastic" not in result.output  # it changes shape, which labels depend on


def test_an_hu_shift_within_the_tolerance_is_accepted(write_profile):
    path = profile_with(
        write_profile, [{"name": "hu-shift", "params": {"max_shift_hu": 15}}], hu_tolerance=20
    )
    load_profile(path, REGISTRY)


@pytest.mark.parametrize(
    ("augmentations", "depends", "expected"),
    [
        (
            [{"name": "random-flip", "params": {"axis": "left-right"}}],
            ["laterality"],
            "changes laterality without a bound",
        ),
        ([{"name": "random-scale"}], ["size"], "changes size by up to 0.1"),
        ([{"name": "kernel-smooth"}], ["texture"], "changes texture without a bound"),
    ],
)
def test_augmentations_that_break_what_labels_depend_on_are_refused(
    write_profile, augmentations, depends, expected
):
    path = profile_with(write_profile, augmentations, label_depends_on=depends)
    with pytest.raises(ProfileError, match=expected):
        load_profile(path, REGISTRY)


def test_the_safe_set_passes_for_the_phantom_task(write_profile):
    safe = [
        {"name": "random-flip", "params": {"axis": "left-right"}},
        {"name": "random-flip", "params": {"axis": "anterior-posterior"}},
        {"name": "random-rotate"},
        {"name": "random-shift"},
    ]
    load_profile(profile_with(write_profile, safe), REGISTRY)


def test_augment_preview_writes_an_image(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path / "cache"))
    profile = tmp_path / "site.yaml"
    profile.write_text(
        """
site: {name: Preview Hospital}
intended_use: tests
body_region: chest
task: {classes: [benign, malignant], positive_class: malignant,
       label_depends_on: [shape, texture, absolute-hu]}
data:
  source: phantom
  params: {patients: 6, seed: 1, slices: 10, size: 96}
preprocessing: {window: {level: -600, width: 1500}, patch_mode: 2d, patch_size: [32, 32]}
augmentations:
  - {name: random-rotate}
  - {name: random-flip, params: {axis: left-right}}
acceptance: {min_auroc: 0.8}
"""
    )
    get_plugin_host().add_commands(cli)
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        cli, ["augment-preview", "-p", str(profile), "--out", str(out), "--n", "4"]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4 samples, 4 augmented versions each" in result.output
