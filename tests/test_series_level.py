"""Labels per series (``task.level: series``): a sample is a whole series, read by a 3D
backbone or by a 2D backbone over its slices, their features pooled."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from medadapt.engine import InvalidInputError
from medadapt.engine.adaptation.access import check_fit
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.data.pseudonym import Pseudonymizer
from medadapt.engine.models.card import ModelCard
from medadapt.engine.models.model import SlicePooling, build_classifier, load_model, patch_shape
from medadapt.engine.profile import load_profile
from medadapt.plugins.dicom_ct import DicomCT
from medadapt.plugins.dicom_ct.labels import join_series_labels
from medadapt.plugins.phantom import Phantom
from medadapt.plugins.phantom.hospital import HospitalSpec, draw, series_label, write_hospital

KEY = "site-secret-for-the-tests-0001"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two simulated hospitals, each with series_labels.csv (one row per series)."""
    root = tmp_path_factory.mktemp("series")
    sites = {}
    for name, seed, scanner in (
        ("a", 21, "siemens-smooth-standard-dose"),
        ("b", 22, "ge-sharp-low-dose"),
    ):
        spec = HospitalSpec(patients=24, seed=seed, slices=12, size=96, scanner=scanner)
        write_hospital(spec, root / name)
        sites[name] = (spec, root / name)
    return sites


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", KEY)


def test_a_series_label_file_labels_each_series_and_refuses_what_it_cannot_place(written, tmp_path):
    spec, folder = written["a"]
    found = DicomCT.from_params({"root": str(folder / "dicom")}).scan(
        label_file=folder / "series_labels.csv", level="series"
    )
    assert found.rejections == []
    assert len(found.records) == spec.patients
    assert {r.label for r in found.records} == {"benign", "malignant"}
    assert all(r.centre is None for r in found.records)
    # One row per patient (no series_uid) labels the patient's series; a series labelled
    # twice the same way is counted once; two ways, never; an unknown patient is reported.
    rows = [
        "patient_id,label",
        "PHANTOM-21-0000,malignant",
        "PHANTOM-21-0000,malignant",
        "PHANTOM-21-0001,benign",
        "PHANTOM-21-0001,malignant",
        "NOBODY,benign",
        "PHANTOM-21-0002,",
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    source = DicomCT.from_params({"root": str(folder / "dicom")})
    scanned = source.scan(label_file=None)
    from medadapt.plugins.dicom_ct.scan import scan_folder

    volumes = scan_folder(folder / "dicom", Pseudonymizer(KEY)).volumes
    labelled, rejected = join_series_labels(tmp_path / "labels.csv", volumes, Pseudonymizer(KEY))
    assert [entry.label for entry in labelled] == ["malignant"]
    reasons = [r.reason for r in rejected]
    assert any("row 3: labels series" in r and "counted once" in r for r in reasons)
    assert sum("is labelled benign and malignant in rows 4, 5" in r for r in reasons) == 2
    assert any(r.startswith("row 6: no usable series for patient") for r in reasons)
    assert "NOBODY" not in " ".join(reasons)
    assert "row 7: the label is empty" in reasons
    assert len(scanned.records) == spec.patients  # without a label file: unlabelled series


def test_the_phantom_labels_a_series_by_its_lesions():
    spec = HospitalSpec(patients=6, seed=3, slices=8, size=64)
    records = Phantom.from_params(spec.model_dump()).scan(level="series").records
    assert [r.label for r in records] == [series_label(draw(spec, i)) for i in range(6)]
    assert all(r.centre is None for r in records)


def test_slice_pooling_gives_the_mean_of_the_slice_logits_and_the_strongest_slice():
    registry = get_plugin_host().registry()
    backbone = registry.create("backbones", "small-cnn", {})
    torch.manual_seed(0)
    mean = build_classifier(backbone, "2d", 2, pooling="mean").eval()
    series = torch.rand(3, 1, 5, 24, 24)
    with torch.no_grad():
        slices = mean.features.slices(series.transpose(1, 2).reshape(15, 1, 24, 24))
        per_slice = mean.head(slices).reshape(3, 5, 2)
        torch.testing.assert_close(mean(series), per_slice.mean(dim=1))
        maximum = build_classifier(backbone, "2d", 2, pooling="max").eval()
        maximum.load_state_dict(mean.state_dict())
        pooled = maximum.features(series)
        torch.testing.assert_close(pooled, slices.reshape(3, 5, -1).amax(dim=1))
    assert isinstance(mean.features, SlicePooling)


def test_a_lesion_model_is_not_adapted_or_validated_at_series_level(tmp_path, written):
    card = ModelCard.model_validate(
        {
            "site": "A",
            "classes": ["benign", "malignant"],
            "positive_class": "malignant",
            "preprocessing": {
                "window": {"level": 40, "width": 400},
                "patch_mode": "3d",
                "patch_size": [8, 32, 32],
            },
            "backbone": {"name": "resnet18-3d"},
        }
    )
    path = tmp_path / "series.yaml"
    path.write_text(yaml.safe_dump(profile_document("B", written["b"][1], "3d")))
    target = load_profile(path, get_plugin_host().registry())
    with pytest.raises(InvalidInputError, match=r"predicts per lesion .* task.level is series"):
        check_fit(card, target)


def profile_document(name: str, folder, mode: str) -> dict:
    preprocessing = {"window": {"level": 40, "width": 400}, "spacing_mm": [3.0, 7.5, 7.5]}
    if mode == "3d":
        preprocessing.update(patch_mode="3d", patch_size=[8, 48, 48])
        backbone = {"name": "resnet18-3d", "params": {"widen_factor": 0.25}}
    else:
        preprocessing.update(patch_mode="2d", patch_size=[48, 48], slices=8, pooling="max")
        backbone = {"name": "small-cnn"}
    return {
        "site": {"name": f"Hospital {name}"},
        "intended_use": "tests: is there a malignant lesion in this series",
        "body_region": "chest",
        "seed": 2,
        "task": {
            "classes": ["benign", "malignant"],
            "positive_class": "malignant",
            "label_depends_on": ["shape", "texture", "absolute-hu"],
            "level": "series",
        },
        "data": {
            "source": "dicom-ct",
            "params": {"root": str(folder / "dicom")},
            "label_file": str(folder / "series_labels.csv"),
            "split": {"train": 0.5, "validation": 0.25, "test": 0.25},
        },
        "preprocessing": preprocessing,
        "backbone": backbone,
        "training": {"epochs": 2, "batch_size": 4, "early_stopping_patience": None},
        "adaptation": {"method": "adabn"},
        "acceptance": {"min_auroc": 0.5, "min_test_patients": 1, "judge_on": "point"},
    }


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["3d", "2d"])
def test_a_site_labelled_per_series_trains_adapts_and_validates(written, tmp_path, mode):
    profiles = {}
    for name in ("a", "b"):
        profiles[name] = tmp_path / f"{name}.yaml"
        document = profile_document(name.upper(), written[name][1], mode)
        profiles[name].write_text(yaml.safe_dump(document))
    runner = CliRunner()

    def run(*args: str, allowed: tuple[int, ...] = (0,)) -> None:
        done = runner.invoke(cli, list(args))
        assert done.exit_code in allowed, done.output[-3000:]

    run("profile", "check", str(profiles["a"]), str(profiles["b"]))
    run("train", "-p", str(profiles["a"]), "--out", str(tmp_path / "train"))
    run(
        "adapt", "-p", str(profiles["b"]), "--from", str(tmp_path / "train" / "model"),
        "--out", str(tmp_path / "adapt"),
    )  # fmt: skip
    run(
        "shift", "-p", str(profiles["b"]), "--against", str(profiles["a"]),
        "--model", str(tmp_path / "train" / "model"), "--out", str(tmp_path / "shift"),
    )  # fmt: skip
    run(
        "validate", "-p", str(profiles["b"]), "--model", str(tmp_path / "adapt" / "model"),
        "--baseline", str(tmp_path / "train" / "model"), "--out", str(tmp_path / "validate"),
        "--shift", str(tmp_path / "shift" / "shift.json"),
        allowed=(0, 1, 5),  # six test patients and two epochs: the verdict is not the point
    )  # fmt: skip
    registry = get_plugin_host().registry()
    card = load_model(tmp_path / "adapt" / "model", registry).card
    assert card.level == "series"
    assert patch_shape(card.preprocessing) == ((1, 8, 48, 48))
    report = json.loads((tmp_path / "validate" / "report.json").read_text())
    samples = report["data"]["validated_samples"]["test"]
    assert samples == report["data"]["patients"]["test"]  # one sample per series (patient)
    assert report["results"]["model"]["auroc"]["value"] is not None
    assert report["level"] == "series"
    assert report["shift"] is not None
    html = (tmp_path / "validate" / "report.html").read_text()
    assert "a patient's series are" in html


@pytest.mark.slow
def test_a_2d_state_dict_imports_as_a_series_model_over_pooled_slices(tmp_path, written):
    import torchvision

    from medadapt.engine.models.export import export_model
    from medadapt.engine.models.importing import import_model
    from medadapt.plugins.export.onnx import run_onnx

    registry = get_plugin_host().registry()
    document = profile_document("B", written["b"][1], "2d")
    document["backbone"] = {"name": "resnet18"}
    document["preprocessing"]["pooling"] = "mean"
    (tmp_path / "series.yaml").write_text(yaml.safe_dump(document))
    profile = load_profile(tmp_path / "series.yaml", registry)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    torch.save(net.state_dict(), tmp_path / "resnet18.pt")
    import_model(tmp_path / "resnet18.pt", profile, registry, tmp_path / "model")
    loaded = load_model(tmp_path / "model", registry)
    assert loaded.card.level == "series"
    series = torch.rand(2, 1, 8, 48, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        slices = net(series.transpose(1, 2).reshape(16, 1, 48, 48).repeat(1, 3, 1, 1))
        ours = loaded.model.eval()(series)
    # Mean pooling: the series' logits are the mean of the network's own slice logits.
    torch.testing.assert_close(ours, slices.reshape(2, 8, 2).mean(dim=1), atol=1e-5, rtol=0)
    result = export_model(tmp_path / "model", registry, "onnx", tmp_path / "model.onnx")
    assert result.agreement.max_difference <= 1e-5
    assert run_onnx(tmp_path / "model.onnx", series).shape == (2, 2)
