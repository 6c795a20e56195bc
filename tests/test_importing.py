"""``medadapt model import``: state dicts trained elsewhere become medadapt model folders."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from medadapt.engine import InvalidInputError
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.models.importing import import_model
from medadapt.engine.models.model import build_classifier, load_model
from medadapt.engine.profile import load_profile

PROFILE = {
    "site": {"name": "Elsewhere Hospital"},
    "intended_use": "tests",
    "body_region": "chest",
    "task": {
        "classes": ["benign", "malignant"],
        "positive_class": "malignant",
        "label_depends_on": ["shape", "texture", "absolute-hu"],
    },
    "preprocessing": {
        "window": {"level": -600, "width": 1500},
        "patch_mode": "2d",
        "patch_size": [48, 48],
    },
    "backbone": {"name": "resnet18"},
    "acceptance": {"min_auroc": 0.8},
}


@pytest.fixture
def profile(tmp_path):
    def _write(backbone: str = "resnet18", classes: tuple[str, ...] = ("benign", "malignant")):
        data = json.loads(json.dumps(PROFILE))
        data["backbone"]["name"] = backbone
        data["task"]["classes"] = list(classes)
        path = tmp_path / f"{backbone}-{len(classes)}.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_profile(path, get_plugin_host().registry())

    return _write


def resnet(outputs: int) -> torchvision.models.ResNet:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=outputs).eval()
    for module in net.modules():  # batch-norm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


def imported(weights, profile, out):
    registry = get_plugin_host().registry()
    result = import_model(weights, profile, registry, out)
    return result, load_model(out, registry)


def grey_patches() -> torch.Tensor:
    return torch.randn(32, 1, 48, 48, generator=torch.Generator().manual_seed(1))


def test_a_torchvision_state_dict_imports_and_gives_the_networks_own_probabilities(
    tmp_path, profile
):
    net = resnet(2)
    torch.save(net.state_dict(), tmp_path / "resnet18.pt")  # as a site saves it
    result, loaded = imported(tmp_path / "resnet18.pt", profile(), tmp_path / "model")
    assert result.layout == "torchvision"
    assert any("summed over the channels" in note for note in result.notes)
    card = loaded.card
    assert card.classes == ["benign", "malignant"]
    assert card.imported.file == "resnet18.pt"
    assert card.imported.layout == "torchvision"
    patches = grey_patches()
    with torch.no_grad():
        theirs = net(patches.repeat(1, 3, 1, 1)).softmax(1)  # a grey image as three channels
        ours = loaded.model.eval()(patches).softmax(1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_one_logit_sigmoid_model_keeps_its_probabilities(tmp_path, profile):
    net = resnet(1)
    save_file(net.state_dict(), str(tmp_path / "binary.safetensors"))
    result, loaded = imported(tmp_path / "binary.safetensors", profile(), tmp_path / "model")
    assert any("one-logit output" in note for note in result.notes)
    patches = grey_patches()
    with torch.no_grad():
        theirs = net(patches.repeat(1, 3, 1, 1)).sigmoid()[:, 0]
        ours = loaded.model.eval()(patches).softmax(1)[:, 1]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_monai_densenet_state_dict_imports(tmp_path, profile):
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    torch.save(net.state_dict(), tmp_path / "densenet.pt")
    result, loaded = imported(tmp_path / "densenet.pt", profile("densenet121"), tmp_path / "m")
    assert result.layout == "monai"
    patches = grey_patches()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.eval()(patches).softmax(1), net(patches).softmax(1), atol=1e-5, rtol=0
        )


def test_medadapts_own_layout_imports_as_it_is(tmp_path, profile):
    registry = get_plugin_host().registry()
    backbone = registry.create("backbones", "resnet18", {})
    model = build_classifier(backbone, "2d", 2)
    save_file(model.state_dict(), str(tmp_path / "ours.safetensors"))
    result, loaded = imported(tmp_path / "ours.safetensors", profile(), tmp_path / "model")
    assert result.layout == "medadapt"
    assert result.notes == []
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


def test_refuses_a_whole_pickled_model_saying_how_to_save_a_state_dict(tmp_path, profile):
    torch.save(resnet(2), tmp_path / "whole.pt")
    with pytest.raises(InvalidInputError) as refused:
        imported(tmp_path / "whole.pt", profile(), tmp_path / "model")
    assert "torch.save(model.state_dict(), 'weights.pt')" in str(refused.value)
    assert not (tmp_path / "model").exists()


def test_refuses_a_torchscript_file_with_the_reason(tmp_path, profile):
    torch.jit.save(torch.jit.trace(resnet(2), torch.randn(1, 3, 48, 48)), tmp_path / "ts.pt")
    with pytest.raises(InvalidInputError, match=r"a TorchScript file.*cannot be adapted"):
        imported(tmp_path / "ts.pt", profile(), tmp_path / "model")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.pop("layer1.0.conv1.weight"), "missing: layer1.0.conv1.weight"),
        (lambda s: s.update(extra=torch.zeros(1)), "unexpected: extra"),
        (lambda s: s.update({"layer4.1.bn2.weight": torch.ones(3)}), "wrong shape: layer4.1.bn2"),
        (lambda s: [s.pop("fc.weight"), s.pop("fc.bias")], "no classifier layer fc.weight"),
    ],
)
def test_refuses_weights_that_do_not_fit_naming_the_keys(tmp_path, profile, change, expected):
    state = resnet(2).state_dict()
    change(state)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(InvalidInputError, match=expected.replace(".", r"\.")):
        imported(tmp_path / "w.pt", profile(), tmp_path / "model")


def test_backbone_weights_alone_are_refused_with_advice_that_profile_check_accepts(
    tmp_path, profile
):
    state = resnet(2).state_dict()
    del state["fc.weight"], state["fc.bias"]
    torch.save(state, tmp_path / "features.pt")
    with pytest.raises(InvalidInputError) as refused:
        imported(tmp_path / "features.pt", profile(), tmp_path / "model")
    assert "give the file as backbone.weights (" in str(refused.value)
    data = json.loads(json.dumps(PROFILE))
    data["backbone"]["weights"] = str(tmp_path / "features.pt")  # as the refusal advises
    (tmp_path / "advised.yaml").write_text(yaml.safe_dump(data))
    checked = CliRunner().invoke(cli, ["profile", "check", str(tmp_path / "advised.yaml")])
    assert checked.exit_code == 0, checked.output


def test_refuses_a_classifier_with_another_number_of_classes(tmp_path, profile):
    torch.save(resnet(2).state_dict(), tmp_path / "w.pt")
    three = profile(classes=("benign", "malignant", "other"))
    with pytest.raises(InvalidInputError) as refused:
        imported(tmp_path / "w.pt", three, tmp_path / "model")
    assert "fc.weight has 2 outputs, but the profile's task.classes has 3 (benign" in str(
        refused.value
    )


def test_the_command_imports_and_jobs_point_files_to_it(tmp_path):
    profile_file = tmp_path / "elsewhere.yaml"
    profile_file.write_text(yaml.safe_dump(PROFILE))
    torch.save(resnet(2).state_dict(), tmp_path / "resnet18.pt")
    done = CliRunner().invoke(
        cli,
        [
            "model",
            "import",
            str(tmp_path / "resnet18.pt"),
            "-p",
            str(profile_file),
            "--out",
            str(tmp_path / "model"),
        ],
    )
    assert done.exit_code == 0, done.output
    assert f"model written to {tmp_path / 'model'} (from torchvision key names)" in done.stdout
    # The file itself where a model folder is wanted: the way to make one is named.
    refused = CliRunner().invoke(
        cli,
        ["validate", "-p", str(profile_file), "--model", str(tmp_path / "resnet18.pt")],
    )
    assert refused.exit_code == 2
    assert "a file, not a model folder" in refused.output
    assert "medadapt model import" in refused.output


@pytest.mark.slow
def test_an_imported_torchvision_model_is_adapted_and_validated_like_any_other(tmp_path):
    # The source-free case: a model from elsewhere, and no source data at all.
    preprocessing = {
        "window": {"level": 40, "width": 400},
        "spacing_mm": [2.0, 1.0, 1.0],
        "patch_mode": "2d",
        "patch_size": [32, 32],
    }
    elsewhere = json.loads(json.dumps(PROFILE))
    elsewhere["preprocessing"] = preprocessing
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(elsewhere))
    target = json.loads(json.dumps(elsewhere))
    target["site"] = {"name": "Target Hospital"}
    target["seed"] = 3
    target["data"] = {
        "source": "phantom",
        "params": {"patients": 24, "seed": 8, "slices": 12, "size": 96},
        "split": {"train": 0.5, "validation": 0.25, "test": 0.25},
    }
    target["adaptation"] = {"method": "adabn"}
    target["training"] = {"epochs": 1, "batch_size": 8, "early_stopping_patience": None}
    target["acceptance"] = {"min_auroc": 0.5, "judge_on": "point"}
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(target))
    torch.save(resnet(2).state_dict(), tmp_path / "resnet18.pt")
    runner = CliRunner()

    def run(*args: str, allowed: tuple[int, ...] = (0,)):
        done = runner.invoke(cli, list(args))
        assert done.exit_code in allowed, done.output
        return done

    run(
        "model",
        "import",
        str(tmp_path / "resnet18.pt"),
        "-p",
        str(tmp_path / "elsewhere.yaml"),
        "--out",
        str(tmp_path / "imported"),
    )
    run(
        "adapt",
        "-p",
        str(tmp_path / "target.yaml"),
        "--from",
        str(tmp_path / "imported"),
        "--out",
        str(tmp_path / "adapt"),
    )
    run(
        "validate",
        "-p",
        str(tmp_path / "target.yaml"),
        "--model",
        str(tmp_path / "adapt" / "model"),
        "--baseline",
        str(tmp_path / "imported"),
        "--out",
        str(tmp_path / "validate"),
        allowed=(0, 1, 5),  # a random network on 6 test patients: the verdict is not the point
    )
    registry = get_plugin_host().registry()
    adapted = load_model(tmp_path / "adapt" / "model", registry).card
    assert adapted.adaptation.method == "adabn"
    assert adapted.trained_at == "Elsewhere Hospital"
    report = json.loads((tmp_path / "validate" / "report.json").read_text())
    assert report["results"]["model"]["auroc"]["value"] is not None
    assert (tmp_path / "validate" / "report.html").is_file()
    # And as a batch job: adapt and validate on a Dask worker, from the imported folder.
    from medadapt.engine.batch import FINISHED, read_jobs_file, run_batch

    (tmp_path / "jobs.yaml").write_text(
        yaml.safe_dump(
            {
                "defaults": {"from": str(tmp_path / "imported"), "method": "adabn"},
                "jobs": [{"profile": "target.yaml"}],
            }
        )
    )
    outcomes = run_batch(read_jobs_file(tmp_path / "jobs.yaml"), tmp_path / "batch", workers=1)
    assert [o.status for o in outcomes] == [FINISHED], outcomes


# --- MONAI bundles ----------------------------------------------------------------------------


def monai_bundle(root, net, spatial_dims=2, **changes):
    """A bundle laid out as MONAI's model zoo lays them out, around ``net``."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "0.2.0",
        "name": "Lesion classification",
        "task": "benign or malignant lesion",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "num_channels": 1,
                    "spatial_shape": [48, 48],
                    "dtype": "float32",
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "num_channels": 2,
                    "channel_def": {"0": "benign", "1": "malignant"},
                }
            },
        },
    }
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_dims": spatial_dims,
        "network_def": {
            "_target_": "DenseNet121",
            "spatial_dims": "@spatial_dims",
            "in_channels": 1,
            "out_channels": 2,
        },
        "network": "$@network_def.to(@device)",
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
            }
        ],
    }
    for change in changes.get("metadata", []):
        change(metadata)
    for change in changes.get("inference", []):
        change(inference)
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    # MONAI's CheckpointSaver keeps the network under its load_dict name.
    torch.save({"model": net.state_dict()}, root / "models" / "model.pt")
    return root


def densenet(spatial_dims=2):
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    return DenseNet121(spatial_dims=spatial_dims, in_channels=1, out_channels=2).eval()


def test_a_monai_bundle_imports_with_its_densenet_and_gives_its_probabilities(tmp_path, profile):
    net = densenet()
    bundle = monai_bundle(tmp_path / "lesion_classification", net)
    result, loaded = imported(bundle, profile("densenet121"), tmp_path / "model")
    assert result.layout == "monai"
    record = loaded.card.imported
    assert record.file == "lesion_classification/models/model.pt"
    assert record.bundle["network"] == "DenseNet121"
    assert record.bundle["version"] == "0.2.0"
    assert len(record.bundle["metadata_sha256"]) == 64
    patches = grey_patches()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.eval()(patches).softmax(1), net(patches).softmax(1), atol=1e-5, rtol=0
        )


def test_a_3d_bundle_imports_for_3d_patches(tmp_path, write_profile):
    net = densenet(spatial_dims=3)
    bundle = monai_bundle(tmp_path / "b", net, spatial_dims=3)
    data = json.loads(json.dumps(PROFILE))
    data["backbone"]["name"] = "densenet121"
    data["preprocessing"].update(patch_mode="3d", patch_size=[32, 32, 32])
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(data))
    result, loaded = imported(
        bundle, load_profile(path, get_plugin_host().registry()), tmp_path / "m"
    )
    assert any("made for inputs of [48, 48]" in note for note in result.notes)
    volume = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.eval()(volume).softmax(1), net(volume).softmax(1), atol=1e-5, rtol=0
        )


def _set(section, key, value):
    return lambda config: config[section].__setitem__(key, value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"inference": [_set("network_def", "_target_", "UNet")]},
            r"network_def builds 'UNet', which is not the profile's backbone 'densenet121'",
        ),
        (
            {"inference": [_set("network_def", "in_channels", "$int(1)")]},
            r"network_def.in_channels is an expression .*never runs its code",
        ),
        (
            {"inference": [_set("network_def", "out_channels", "@classes")]},
            r"network_def.out_channels refers to '@classes', which is not a value",
        ),
        ({"inference": [lambda c: c.__setitem__("spatial_dims", 3)]}, r"spatial_dims is 3"),
        (
            {
                "metadata": [
                    lambda m: m["network_data_format"]["outputs"]["pred"].__setitem__(
                        "channel_def", {"0": "malignant", "1": "benign"}
                    )
                ]
            },
            r"the outputs are malignant, benign .* give the classes in the order",
        ),
    ],
)
def test_refuses_a_bundle_that_does_not_fit_naming_the_field(tmp_path, profile, changes, expected):
    bundle = monai_bundle(tmp_path / "b", densenet(), **changes)
    with pytest.raises(InvalidInputError, match=expected):
        imported(bundle, profile("densenet121"), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_refuses_a_bundle_with_only_torchscript_weights_with_the_reason(tmp_path, profile):
    net = densenet()
    bundle = monai_bundle(tmp_path / "b", net)
    (bundle / "models" / "model.pt").unlink()
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 1, 48, 48)), bundle / "models" / "model.ts")
    with pytest.raises(InvalidInputError, match=r"only weights are TorchScript.*models/model\.pt"):
        imported(bundle, profile("densenet121"), tmp_path / "model")


def test_refuses_a_folder_that_is_not_a_bundle(tmp_path, profile):
    (tmp_path / "weights").mkdir()
    with pytest.raises(InvalidInputError, match="not a MONAI bundle"):
        imported(tmp_path / "weights", profile(), tmp_path / "model")
