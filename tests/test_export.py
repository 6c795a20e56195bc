"""``medadapt model export``: TorchScript, ONNX and MONAI bundles that give medadapt's
probabilities."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from click.testing import CliRunner

from medadapt.engine import Exporter, InvalidInputError, Split, hookimpl, probe_patches
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.data.datasets import PatchDataset
from medadapt.engine.data.samples import PatchLoader, open_site_data
from medadapt.engine.data.splits import site_split
from medadapt.engine.models.export import (
    PROBES,
    TOLERANCE,
    ExportDisagrees,
    Probabilities,
    UninformativeCheck,
    export_model,
    informative_probes,
    validation_patches,
)
from medadapt.engine.models.importing import import_model
from medadapt.engine.models.model import load_model, save_model
from medadapt.engine.profile import load_profile
from medadapt.engine.validation.evaluate import predict_records
from medadapt.plugins.export import onnx as onnx_export
from medadapt.plugins.export import torchscript
from medadapt.plugins.export.onnx import run_onnx
from medadapt.plugins.export.torchscript import run_torchscript


@pytest.fixture
def registry():
    return get_plugin_host().registry()


def probabilities(model_dir, registry, patches):
    with torch.no_grad():
        return Probabilities(load_model(model_dir, registry).model).eval()(patches).numpy()


def test_torchscript_export_gives_the_models_probabilities_and_carries_its_card(
    tmp_path, registry, small_model
):
    result = export_model(small_model, registry, "torchscript", tmp_path / "model.ts")
    assert result.agreement.patches == 32
    assert result.agreement.max_difference <= 1e-5
    patches = torch.rand(5, 1, 24, 24, generator=torch.Generator().manual_seed(9))
    np.testing.assert_allclose(
        run_torchscript(tmp_path / "model.ts", patches),
        probabilities(small_model, registry, patches),
        atol=1e-5,
        rtol=0,
    )
    extra = {"medadapt/card.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    card = json.loads(extra["medadapt/card.json"])
    assert card["classes"] == ["benign", "malignant"]
    assert card["weights_sha256"] == load_model(small_model, registry).card.weights_sha256


def test_onnx_export_runs_in_onnxruntime_with_any_batch_size_and_carries_its_card(
    tmp_path, registry, small_model
):
    import onnx

    result = export_model(small_model, registry, "onnx", tmp_path / "model.onnx")
    assert result.agreement.max_difference <= 1e-5
    for batch in (1, 7):
        patches = torch.rand(batch, 1, 24, 24, generator=torch.Generator().manual_seed(batch))
        np.testing.assert_allclose(
            run_onnx(tmp_path / "model.onnx", patches),
            probabilities(small_model, registry, patches),
            atol=1e-5,
            rtol=0,
        )
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(props["classes"]) == ["benign", "malignant"]
    assert props["positive_class"] == "malignant"
    assert "windowed at level 40 and width 400" in props["input"]
    assert json.loads(props["medadapt_card"])["site"] == "Export Hospital"


def test_a_monai_bundle_runs_through_monais_own_parser(
    tmp_path, registry, small_model, small_model_profile
):
    from monai.bundle import ConfigParser

    result = export_model(small_model, registry, "monai-bundle", tmp_path / "bundle")
    assert any("no validation figures" in note for note in result.notes)
    bundle = tmp_path / "bundle"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network")
    patches = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        np.testing.assert_allclose(
            network(patches).numpy(),
            probabilities(small_model, registry, patches),
            atol=1e-5,
            rtol=0,
        )
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    data_format = metadata["network_data_format"]
    assert data_format["inputs"]["image"]["spatial_shape"] == [24, 24]
    assert data_format["outputs"]["pred"]["channel_def"] == {"0": "benign", "1": "malignant"}
    assert metadata["medadapt"]["preprocessing"]["window"] == {"level": 40.0, "width": 400.0}
    assert metadata["medadapt"]["validation"] is None
    assert "No validation figures" in (bundle / "docs" / "README.md").read_text()
    # The bundle goes back into medadapt: its state dict, in medadapt's own key names.
    back = import_model(
        bundle,
        load_profile(small_model_profile, registry),
        registry,
        tmp_path / "again",
    )
    assert back.layout == "medadapt"
    np.testing.assert_allclose(
        probabilities(tmp_path / "again", registry, patches),
        probabilities(small_model, registry, patches),
        atol=1e-6,
        rtol=0,
    )


def test_a_bundle_takes_the_figures_of_this_models_report_and_refuses_another_models(
    tmp_path, registry, small_model
):
    sha = load_model(small_model, registry).card.weights_sha256
    interval = {"value": 0.91, "low": 0.84, "high": 0.97, "n": 40}
    report = {
        "site": "Export Hospital",
        "date": "2026-12-01",
        "confidence_level": 0.95,
        "operating_point_rule": "the threshold with the largest sensitivity + specificity",
        "models": {"model": {"weights_sha256": sha}},
        "results": {
            "model": {
                "threshold": 0.42,
                "auroc": interval,
                "sensitivity": interval,
                "specificity": interval,
            }
        },
        "data": {"patients": {"test": 20}, "validated_samples": {"test": 40}},
        "acceptance": {"verdict": "pass"},
        # A report names patients by pseudonym among its failures; none of it is exported.
        "failures": [{"patient": "pseudonym-0001"}],
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    export_model(
        small_model,
        registry,
        "monai-bundle",
        tmp_path / "bundle",
        report=tmp_path / "report.json",
    )
    metadata = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    figures = metadata["medadapt"]["validation"]
    assert figures["auroc"]["value"] == 0.91
    assert figures["test_patients"] == 20
    assert figures["verdict"] == "pass"
    readme = (tmp_path / "bundle" / "docs" / "README.md").read_text()
    assert "on 20 test patients (40 samples)" in readme
    assert "AUROC 0.910 (95% interval 0.840 to 0.970)" in readme
    every_file = b"".join(p.read_bytes() for p in (tmp_path / "bundle").rglob("*") if p.is_file())
    assert b"pseudonym-0001" not in every_file
    report["models"]["model"]["weights_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(report))
    with pytest.raises(InvalidInputError, match="this report measured another model"):
        export_model(
            small_model,
            registry,
            "monai-bundle",
            tmp_path / "b2",
            report=tmp_path / "other.json",
        )
    assert not (tmp_path / "b2").exists()


def test_an_export_that_disagrees_with_medadapt_is_not_kept(
    tmp_path, registry, small_model, monkeypatch
):
    monkeypatch.setattr(torchscript, "run_torchscript", lambda path, patches: np.zeros((32, 2)))
    with pytest.raises(ExportDisagrees, match=r"differ from medadapt's by up to .* nothing"):
        export_model(small_model, registry, "torchscript", tmp_path / "model.ts")
    assert list(tmp_path.glob("model.ts*")) == []
    assert list(tmp_path.glob(".model.ts*")) == []


def test_refuses_to_write_over_a_file_and_says_what_onnx_needs(
    tmp_path, registry, small_model, monkeypatch
):
    (tmp_path / "model.ts").write_text("something of the user's")
    with pytest.raises(InvalidInputError, match="exists; give --overwrite"):
        export_model(small_model, registry, "torchscript", tmp_path / "model.ts")
    assert (tmp_path / "model.ts").read_text() == "something of the user's"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="is not a MONAI bundle; refusing"):
        export_model(small_model, registry, "monai-bundle", tmp_path / "notes", overwrite=True)
    monkeypatch.setattr(onnx_export, "_installed", lambda name: name != "onnxscript")
    with pytest.raises(InvalidInputError, match=r"needs the onnxscript package.*medadapt\[onnx\]"):
        export_model(small_model, registry, "onnx", tmp_path / "model.onnx")


def test_onnx_without_onnxruntime_is_written_and_said_to_be_unchecked(
    tmp_path, registry, small_model, monkeypatch
):
    monkeypatch.setattr(onnx_export, "_installed", lambda name: name != "onnxruntime")
    result = export_model(small_model, registry, "onnx", tmp_path / "model.onnx")
    assert result.agreement is None
    assert any("not checked: onnxruntime is not installed" in note for note in result.notes)
    assert zipfile.is_zipfile(tmp_path / "model.onnx") is False  # one protobuf file


def test_the_command_exports_and_says_how_it_checked(tmp_path, small_model):
    done = CliRunner().invoke(
        cli,
        [
            "model",
            "export",
            str(small_model),
            "--format",
            "torchscript",
            "--out",
            str(tmp_path / "model.ts"),
        ],
    )
    assert done.exit_code == 0, done.output
    assert "agrees with medadapt on 32 probe patches, 32 of them with probabilities within" in (
        done.stdout
    )
    refused = CliRunner().invoke(
        cli,
        [
            "model",
            "export",
            str(small_model),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "x"),
            "--report",
            str(small_model / "card.json"),
        ],
    )
    assert refused.exit_code == 2
    assert "use it with --format monai-bundle" in refused.output


@pytest.mark.slow
def test_torchscript_and_onnx_match_medadapt_on_32_test_patches(tmp_path, registry, phantom_site):
    # A torchvision ResNet-18 trained elsewhere, imported, then exported: its probabilities
    # on 32 patches of a site's test patients, as `validate` computes them, are the export's.
    site = phantom_site("Export Hospital", seed=5, patients=60, split=(0.25, 0.25, 0.5))
    site["backbone"] = {"name": "resnet18"}
    site["preprocessing"]["patch_size"] = [32, 32]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    profile = load_profile(tmp_path / "site.yaml", registry)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "resnet18.pt")
    import_model(tmp_path / "resnet18.pt", profile, registry, tmp_path / "model")
    loaded = load_model(tmp_path / "model", registry)
    data = open_site_data(profile, registry)
    test = [r for r in site_split(data.records, profile) if r.split is Split.TEST][:32]
    assert len(test) == 32
    loader = PatchLoader(data.source, loaded.card.preprocessing)
    patches = torch.stack([x for x, _ in PatchDataset(loader, test, loaded.card.classes)])
    scores = predict_records(loaded, "malignant", data.source, test).scores
    for fmt, out, run in (
        ("torchscript", tmp_path / "model.ts", run_torchscript),
        ("onnx", tmp_path / "model.onnx", run_onnx),
    ):
        result = export_model(tmp_path / "model", registry, fmt, out, probes=patches)
        assert result.agreement.patches == 32
        exported = run(out, patches)
        assert np.abs(exported[:, 1] - scores).max() <= 1e-5, fmt
        assert np.ptp(scores) > 0.01  # the patches are not all alike to the network


class _VendorFormat:
    """A third party's export format, as docs/hooks.md writes one: a plugin module."""

    class PlainTorchScript(Exporter):
        """TorchScript without the model card inside."""

        name = "plain-torchscript"
        writes = "file"
        wrong = False

        def write(self, network, card, out, figures):
            with torch.no_grad():
                torch.jit.trace(network, probe_patches(card, count=2)).save(str(out))
            return ["the model card is not inside this file"]

        def run(self, out, patches, notes):
            with torch.no_grad():
                probabilities = torch.jit.load(str(out))(patches).numpy()
            return probabilities[:, ::-1].copy() if self.wrong else probabilities

    @staticmethod
    @hookimpl
    def medadapt_exporters():
        return [_VendorFormat.PlainTorchScript]


def test_a_plugins_export_format_is_written_and_checked_like_the_built_in_ones(
    tmp_path, small_model, register, monkeypatch
):
    register(_VendorFormat, "vendor-format")
    registry = get_plugin_host().registry()
    result = export_model(small_model, registry, "plain-torchscript", tmp_path / "model.pt")
    assert result.agreement.patches == 32
    assert result.notes == ["the model card is not inside this file"]
    assert (tmp_path / "model.pt").is_file()
    # A format whose file disagrees with medadapt is not kept, whoever wrote it.
    monkeypatch.setattr(_VendorFormat.PlainTorchScript, "wrong", True)
    with pytest.raises(ExportDisagrees, match="nothing was written"):
        export_model(small_model, registry, "plain-torchscript", tmp_path / "other.pt")
    assert not (tmp_path / "other.pt").exists()


def test_an_unknown_format_and_a_report_for_a_format_without_metadata_are_refused(
    tmp_path, registry, small_model
):
    with pytest.raises(InvalidInputError, match="unknown exporter 'tflite'"):
        export_model(small_model, registry, "tflite", tmp_path / "model.tflite")
    with pytest.raises(InvalidInputError, match="--report goes into the metadata of monai-bundle"):
        export_model(small_model, registry, "torchscript", tmp_path / "m.ts", report=tmp_path)
    assert list(tmp_path.glob("m.ts*")) == []


@pytest.fixture
def sure_model(tmp_path, registry, small_model) -> Path:
    """``small_model`` made as sure of itself as an adapted model is on uniform noise: its
    probabilities on the old probes (noise in [0, 1]) are 0 and 1 to within 1e-7."""
    loaded = load_model(small_model, registry)
    model = loaded.model.eval()
    with torch.no_grad():
        logits = model(probe_patches(loaded.card))
        centre = float((logits[:, 1] - logits[:, 0]).mean())
        model.head.weight.mul_(1000)
        model.head.bias.mul_(1000)
        model.head.bias[1] += -1000 * centre + 20
    return save_model(tmp_path / "sure", model, loaded.card)


def _probabilities_of(model_dir, registry, patches) -> np.ndarray:
    return probabilities(model_dir, registry, patches)[:, 1]


def test_the_probes_spread_where_uniform_noise_saturates(tmp_path, registry, sure_model):
    card = load_model(sure_model, registry).card
    on_noise = _probabilities_of(sure_model, registry, probe_patches(card))
    assert on_noise.min() > 1 - 1e-7  # the check the issue found: 0 against 0
    probes = informative_probes(load_model(sure_model, registry).model, card)
    assert probes.shape == (PROBES, 1, 24, 24)
    assert float(probes.min()) >= 0.0  # windowed patches' range
    assert float(probes.max()) <= 1.0
    spread = np.sort(_probabilities_of(sure_model, registry, probes))
    assert spread[0] <= 0.2, spread  # SPREAD: class 0's aimed probes count from the top
    assert spread[-1] >= 0.8, spread
    assert ((spread > 0.01) & (spread < 0.99)).all(), spread
    result = export_model(sure_model, registry, "torchscript", tmp_path / "model.ts")
    assert result.agreement.informative == PROBES
    # The same probes every time: an export is checked the same way on every machine.
    again = informative_probes(load_model(sure_model, registry).model, card)
    torch.testing.assert_close(again, probes)


def _perturbed(exporter, monkeypatch, shift: float) -> None:
    """The exporter's file computes the network with its positive logit moved by ``shift``
    (for a probability p, a difference of about p (1 - p) shift)."""
    write = exporter.write

    def perturbed_write(self, network, card, out, figures):
        wrong = copy.deepcopy(network)
        with torch.no_grad():
            wrong.classifier.head.bias[1] += shift
        return write(self, wrong, card, out, figures)

    monkeypatch.setattr(exporter, "write", perturbed_write)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_an_export_perturbed_by_1e_4_is_caught_where_noise_would_let_it_through(
    tmp_path, registry, sure_model, monkeypatch, fmt
):
    exporter = {"torchscript": torchscript.TorchScript, "onnx": onnx_export.Onnx}[fmt]
    _perturbed(exporter, monkeypatch, 1e-4)
    out = tmp_path / f"model.{fmt}"
    # On the old probes, uniform noise, the perturbed file agrees to the last bit.
    noise = probe_patches(load_model(sure_model, registry).card)
    with pytest.raises(UninformativeCheck, match=r"saturated .* on 32 of the 32 probe patches"):
        export_model(sure_model, registry, fmt, out, probes=noise)
    assert not out.exists()
    with pytest.raises(ExportDisagrees, match=r"differ from medadapt's by up to 2.\de-05"):
        export_model(sure_model, registry, fmt, out)
    assert list(tmp_path.glob("model.*")) == list(tmp_path.glob(".model.*")) == []
    monkeypatch.undo()
    result = export_model(sure_model, registry, fmt, out)
    assert result.agreement.max_difference <= TOLERANCE


def test_the_sites_validation_patches_join_the_probes_and_never_its_test_patches(
    tmp_path, registry, small_model, phantom_site, monkeypatch
):
    site = phantom_site("Export Hospital", seed=5, patients=24, split=(0.5, 0.25, 0.25))
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    profile = load_profile(tmp_path / "site.yaml", registry)
    card = load_model(small_model, registry).card
    seen = []
    original = PatchDataset.__init__

    def recording(self, loader, records, classes, *args, **kwargs):
        seen.extend(records)
        original(self, loader, records, classes, *args, **kwargs)

    monkeypatch.setattr(PatchDataset, "__init__", recording)
    patches = validation_patches(profile, registry, card)
    splits = {r.split for r in site_split(open_site_data(profile, registry).records, profile)}
    assert Split.TEST in splits
    assert seen
    assert {r.split for r in seen} == {Split.VALIDATION}
    assert patches.shape == (len(seen), 1, 24, 24)
    count = len(seen)
    result = export_model(small_model, registry, "torchscript", tmp_path / "m.ts", profile=profile)
    assert result.agreement.patches == count + PROBES
    done = CliRunner().invoke(
        cli,
        ["model", "export", str(small_model), "--format", "torchscript", "--out",
         str(tmp_path / "m2.ts"), "-p", str(tmp_path / "site.yaml"), "--json"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    checked = json.loads(done.stdout)["checked"]
    assert checked["patches"] == count + PROBES
    assert checked["tolerance"] == TOLERANCE
