"""Checking hospital profiles: structure first, then the components they name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medadapt.engine import ComponentKind
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.profile import ProfileError, load_profile, summarize

TEMPLATE = Path(__file__).resolve().parent.parent / "hospital_profiles" / "template.yaml"


def check(*files: Path):
    return CliRunner().invoke(cli, ["profile", "check", *map(str, files)])


def issues_of(path: Path, with_components: bool = True) -> list[str]:
    registry = get_plugin_host().registry() if with_components else None
    with pytest.raises(ProfileError) as caught:
        load_profile(path, registry)
    return [str(issue) for issue in caught.value.issues]


def test_the_template_passes_the_check_with_a_summary():
    result = check(TEMPLATE)
    assert result.exit_code == 0, result.output
    assert f"{TEMPLATE}: valid" in result.output
    assert "site: Hospital B (chest)" in result.output
    assert "selection score information-maximization" in result.output


def test_a_misspelt_key_fails_with_file_key_and_allowed_keys(tmp_path):
    profile = tmp_path / "hospital-b.yaml"
    profile.write_text(TEMPLATE.read_text().replace("augmentations: []", "augmentatons: []"))
    result = check(profile)
    assert result.exit_code == 2
    line = next(line for line in result.output.splitlines() if "augmentatons" in line)
    assert str(profile) in line
    assert "augmentatons: unknown key (did you mean 'augmentations'?)" in line
    assert "allowed keys are: site, intended_use, body_region, seed, task, data" in line


def test_each_problem_names_the_line_it_is_on(tmp_path):
    profile = tmp_path / "site.yaml"
    text = TEMPLATE.read_text().replace("level: -600", "level: lung")
    profile.write_text(text)
    line_number = next(
        n for n, line in enumerate(text.splitlines(), start=1) if "level: lung" in line
    )
    [issue] = issues_of(profile)
    assert issue.startswith(f"{profile}:{line_number}: preprocessing.window.level: ")
    assert "valid number" in issue
    assert "got 'lung'" in issue


def test_every_structural_problem_is_reported_at_once(write_profile):
    path = write_profile(
        body_region="chst",
        task={"classes": ["benign", "malignant"], "positive_class": "malignant", "extra": 1},
        acceptance={},
    )
    issues = issues_of(path)
    assert len(issues) == 3
    assert any("body_region: Input should be 'head'" in i and "got 'chst'" in i for i in issues)
    assert any("task.extra: unknown key" in i for i in issues)
    assert any("acceptance: set at least one of min_auroc" in i for i in issues)


def test_a_missing_required_key_says_what_it_is_for(write_profile):
    [issue] = issues_of(write_profile(intended_use=None))
    assert "intended_use: required key is missing (what the model is for, and for whom)" in issue


def test_a_section_of_the_wrong_type_says_what_it_expects(write_profile):
    [issue] = issues_of(write_profile(site="Hospital B"))
    assert "site: expected a mapping with the keys name, description, got 'Hospital B'" in issue


def test_positive_class_must_be_one_of_the_classes(write_profile):
    task = {"classes": ["benign", "malignant"], "positive_class": "malignent"}
    [issue] = issues_of(write_profile(task=task))
    assert "positive_class 'malignent' is not one of the classes" in issue
    assert "did you mean 'malignant'" in issue


def test_patch_size_must_match_the_patch_mode(write_profile):
    preprocessing = {
        "window": {"level": 40, "width": 400},
        "patch_mode": "3d",
        "patch_size": [64, 64],
    }
    [issue] = issues_of(write_profile(preprocessing=preprocessing))
    assert "patch_size needs 3 numbers for 3d patches (z, y, x), got [64, 64]" in issue


def test_split_fractions_must_add_up_to_one(write_profile, toy_plugin):
    data = {
        "source": "toy-folder",
        "params": {"root": "images"},
        "split": {"train": 0.8, "validation": 0.2, "test": 0.2},
    }
    [issue] = issues_of(write_profile(data=data))
    assert "data.split: train + validation + test must add up to 1, got 1.2" in issue


def test_an_unknown_component_suggests_close_names(write_profile):
    [issue] = issues_of(write_profile(selection={"score": "entropi"}))
    assert "selection.score: unknown selection score 'entropi'; did you mean 'entropy'?" in issue


def test_parameters_the_component_rejects_are_reported_with_their_key_path(
    write_profile, toy_plugin
):
    augmentations = [
        {"name": "toy-noise", "params": {"amplitude": -1}},
        {"name": "toy-noise", "params": {"amplitud": 2}},
    ]
    issues = issues_of(write_profile(augmentations=augmentations))
    assert len(issues) == 2
    assert (
        "augmentations[0].params.amplitude: Input should be greater than or equal to 0"
        in (issues[0])
    )
    assert (
        "augmentations[1].params.amplitud: unknown key (did you mean 'amplitude'?); " in (issues[1])
    )
    assert "allowed keys are: amplitude" in issues[1]


def test_a_missing_component_parameter_is_reported(write_profile, toy_plugin):
    [issue] = issues_of(write_profile(data={"source": "toy-folder"}))
    assert "data.params.root: required key is missing" in issue


def test_an_augmentation_that_breaks_what_labels_depend_on_is_refused(write_profile, toy_plugin):
    task = {
        "classes": ["left", "right"],
        "positive_class": "left",
        "label_depends_on": ["laterality"],
    }
    [issue] = issues_of(write_profile(task=task, augmentations=[{"name": "toy-mirror"}]))
    assert "augmentations[0].name: the augmentation 'toy-mirror' changes laterality" in issue


def test_an_intensity_augmentation_is_allowed_within_the_hu_tolerance(write_profile, toy_plugin):
    task = {
        "classes": ["fat", "calcium"],
        "positive_class": "calcium",
        "label_depends_on": ["absolute-hu"],
        "hu_tolerance": 10,
    }
    gentle = [{"name": "toy-noise", "params": {"amplitude": 5}}]
    load_profile(write_profile(task=task, augmentations=gentle), get_plugin_host().registry())
    strong = [{"name": "toy-noise", "params": {"amplitude": 50}}]
    [issue] = issues_of(write_profile(task=task, augmentations=strong))
    assert "'toy-noise' changes absolute-hu" in issue


def test_a_backbone_must_take_the_patches_the_profile_makes(write_profile, toy_plugin):
    [issue] = issues_of(write_profile(backbone={"name": "toy-volume-net"}))
    assert "backbone.name: the backbone 'toy-volume-net' takes 3D input" in issue
    assert "'2.5d' gives 2D patches" in issue


def test_a_method_that_needs_target_labels_needs_them_allowed(write_profile, toy_plugin):
    [issue] = issues_of(write_profile(adaptation={"method": "toy-finetune"}))
    assert "'toy-finetune' needs labels at this site, and adaptation.target_labels is none" in issue
    allowed = {"method": "toy-finetune", "target_labels": "few"}
    assert load_profile(write_profile(adaptation=allowed), get_plugin_host().registry())


def test_auto_and_its_candidates_are_checked(write_profile, toy_plugin):
    registry = get_plugin_host().registry()
    assert load_profile(write_profile(adaptation={"method": "auto"}), registry)
    [issue] = issues_of(write_profile(adaptation={"candidates": ["toy-finetun"]}))
    assert "adaptation.candidates[0]" in issue
    assert "did you mean 'toy-finetune'" in issue


def test_relative_paths_are_taken_from_the_profile_folder(write_profile, toy_plugin, tmp_path):
    data = {"source": "toy-folder", "params": {"root": "dicom"}, "label_file": "labels.csv"}
    profile = load_profile(write_profile(data=data, backbone=None), get_plugin_host().registry())
    assert profile.data.label_file == tmp_path / "labels.csv"
    source = (
        get_plugin_host()
        .registry()
        .create(ComponentKind.DATA_SOURCES, "toy-folder", profile.data.params, base_dir=tmp_path)
    )
    assert source.params.root == tmp_path / "dicom"


def test_a_key_given_twice_is_an_error(tmp_path):
    profile = tmp_path / "twice.yaml"
    profile.write_text(TEMPLATE.read_text() + "\nseed: 7\n")
    [issue] = issues_of(profile)
    assert "not valid YAML: the key 'seed' is given twice" in issue


def test_broken_yaml_names_the_line(tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text("site:\n  name: [Hospital B\n")
    [issue] = issues_of(profile)
    assert issue.startswith(f"{profile}:3: not valid YAML")


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "the profile is empty"), ("- a\n- b\n", "expected a mapping with the keys site")],
)
def test_a_profile_that_is_not_a_mapping_is_explained(tmp_path, content, expected):
    profile = tmp_path / "odd.yaml"
    profile.write_text(content)
    [issue] = issues_of(profile)
    assert expected in issue


def test_several_files_are_checked_and_any_invalid_one_fails(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = check(TEMPLATE, missing)
    assert result.exit_code == 2
    assert f"{TEMPLATE}: valid" in result.output
    assert f"{missing}: no such file" in result.output


def test_rejects_a_profile_that_is_not_utf8_or_is_a_folder_naming_the_line(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("site:\n  name: H\xf4pital B\n".encode("latin-1"))
    result = check(latin, tmp_path)
    assert result.exit_code == 2
    assert f"{latin}:2: is not UTF-8 text (byte 0xf4): save the profile as UTF-8" in result.output
    assert f"{tmp_path}: is a folder; give the profile's YAML file" in result.output
    assert "codec" not in result.output


def test_check_json_gives_one_object_per_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEMPLATE.read_text().replace("seed: 20261128", "seed: -1"))
    result = CliRunner().invoke(cli, ["profile", "check", "--json", str(TEMPLATE), str(bad)])
    assert result.exit_code == 2
    valid, invalid = json.loads(result.output)
    assert valid["valid"] is True
    assert valid["summary"]["components"]["selection_score"] == "information-maximization"
    assert invalid["valid"] is False
    assert invalid["issues"][0]["key"] == "seed"
    seed_line = TEMPLATE.read_text().splitlines().index("seed: 20261128") + 1
    assert invalid["issues"][0]["line"] == seed_line


def test_summarize_reports_what_the_profile_chose():
    summary = summarize(load_profile(TEMPLATE, get_plugin_host().registry()))
    assert summary["site"] == "Hospital B"
    assert summary["patches"] == "2.5d 64x64"
    assert summary["acceptance"]["min_auroc"] == 0.85


@pytest.mark.parametrize(
    "profile", sorted((TEMPLATE.parent).glob("*.yaml")), ids=lambda path: path.name
)
def test_every_shipped_hospital_profile_passes_the_check(profile):
    result = check(profile)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["hospital_a_chest", "hospital_b_chest", "hospital_b_head"])
def test_the_demos_profiles_carry_the_demos_key_and_say_a_real_site_must_not(name, monkeypatch):
    from medadapt.engine.data.pseudonym import KEY_ENV, Pseudonymizer
    from medadapt.plugins.phantom.demo import DEMO_KEY

    monkeypatch.delenv(KEY_ENV, raising=False)
    path = TEMPLATE.parent / f"{name}.yaml"
    text = path.read_text()
    assert "A real site's profile must not hold its key" in text
    registry = get_plugin_host().registry()
    profile = load_profile(path, registry)
    source = registry.create(ComponentKind.DATA_SOURCES, profile.data.source, profile.data.params)
    # The README's workflow on the demo's sites needs no key of the user's, and gives the
    # demo's pseudonyms.
    ours = source.pseudonymizer().pseudonym("patient", "p1")
    assert ours == Pseudonymizer(DEMO_KEY).pseudonym("patient", "p1")


def test_the_template_holds_no_key():
    assert "pseudonym_key" not in TEMPLATE.read_text()


def test_profile_check_refuses_a_label_file_without_lesion_columns(tmp_path):
    profile = tmp_path / "hospital-b.yaml"
    profile.write_text(TEMPLATE.read_text())
    labels = tmp_path / "labels.csv"
    # One row per series ("haemorrhage: yes"): no lesion location for a lesion classifier.
    labels.write_text("patient_id,series_uid,label\nP1,1.2.3,malignant\n")
    result = check(profile)
    assert result.exit_code == 2, result.output
    line = next(line for line in result.output.splitlines() if "label_file" in line)
    assert f"{profile}:" in line
    assert "data.label_file" in line
    assert "no lesion location (x_mm, y_mm, z_mm or slice, row, column)" in line
    assert "fits task.level: series; this profile's task.level is lesion" in line
    labels.write_text("patient_id,label,x_mm,y_mm,z_mm\nP1,malignant,1,2,3\n")
    assert check(profile).exit_code == 0


def test_profile_check_says_which_level_a_label_file_fits(tmp_path):
    document = yaml.safe_load(TEMPLATE.read_text())
    document["task"]["level"] = "series"
    document["preprocessing"].update(patch_mode="3d", patch_size=[16, 64, 64])
    document["backbone"] = {"name": "resnet18-3d"}
    profile = tmp_path / "hospital-b.yaml"
    profile.write_text(yaml.safe_dump(document))
    labels = tmp_path / document["data"]["label_file"]
    labels.write_text("patient_id,label,x_mm,y_mm,z_mm\nP1,malignant,1,2,3\n")
    result = check(profile)
    assert result.exit_code == 2, result.output
    assert "places lesions (it has lesion location columns), which fits task.level: lesion" in (
        result.output.replace("\n", " ")
    )
    labels.write_text("patient_id,series_uid,label\nP1,1.2.3,malignant\n")
    assert check(profile).exit_code == 0, check(profile).output
    # Pooled 2D slices need the slices and the pooling; 2.5d is refused at series level.
    document["preprocessing"].update(patch_mode="2d", patch_size=[64, 64])
    profile.write_text(yaml.safe_dump(document))
    assert "preprocessing.slices and preprocessing.pooling" in check(profile).output
    document["preprocessing"].update(slices=8, pooling="max")
    document["backbone"] = {"name": "resnet18"}
    profile.write_text(yaml.safe_dump(document))
    assert check(profile).exit_code == 0, check(profile).output
