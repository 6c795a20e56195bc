"""The timm backbone family: ``backbone.name: timm:<arch>``, weights from local files only."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from safetensors.torch import save_file

from medadapt.engine import ComponentKind, InvalidInputError
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.contracts.registry import UnknownComponentError
from medadapt.engine.models.model import build_classifier
from medadapt.engine.models.weights import load_weights_file

BACKBONES = ComponentKind.BACKBONES
SMALL = "test_efficientnet"  # timm's own tiny EfficientNet (0.1 M parameters)


@pytest.fixture
def registry():
    return get_plugin_host().registry()


def test_medadapt_plugins_lists_the_timm_family():
    listing = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    [builtin] = [p for p in listing["plugins"] if p["name"] == "backbones"]
    assert "timm" in builtin["provides"]["backbones"]


@pytest.mark.parametrize(("mode", "channels"), [("2d", 1), ("2.5d", 3)])
def test_a_small_timm_network_reads_one_or_three_channel_patches(registry, mode, channels):
    backbone = registry.create(BACKBONES, f"timm:{SMALL}", {})
    assert backbone.params.arch == SMALL
    model = build_classifier(backbone, mode, 2).eval()
    with torch.no_grad():
        assert model(torch.rand(2, channels, 32, 32)).shape == (2, 2)
    first = next(m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == channels
    assert backbone.stages(model.features)["stem"], "the stem can be frozen"


def test_weights_come_from_a_safetensors_file_in_timms_layout(registry, tmp_path):
    torch.manual_seed(0)
    theirs = timm.create_model(SMALL, pretrained=False, num_classes=5).eval()  # RGB, own head
    save_file(theirs.state_dict(), str(tmp_path / "weights.safetensors"))
    backbone = registry.create(BACKBONES, f"timm:{SMALL}", {})
    state = load_weights_file(tmp_path / "weights.safetensors")
    model = build_classifier(backbone, "2d", 2, state).eval()
    grey = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.forward_head(theirs.forward_features(grey.repeat(1, 3, 1, 1)), True)
        torch.testing.assert_close(model.features(grey), expected, atol=1e-5, rtol=1e-4)
    assert backbone.classifier_prefix == "classifier."


def test_a_pickled_weights_file_is_refused(tmp_path):
    torch.save(timm.create_model(SMALL, pretrained=False), tmp_path / "whole.pt")
    with pytest.raises(InvalidInputError, match=r"torch\.save\(model\.state_dict\(\)"):
        load_weights_file(tmp_path / "whole.pt")


def test_names_and_parameters_that_do_not_fit_are_refused(registry):
    with pytest.raises(ValidationError, match="timm has no architecture 'efficientnet_lite9'"):
        registry.create(BACKBONES, "timm:efficientnet_lite9", {})
    with pytest.raises(UnknownComponentError, match="'resnet18:x'"):
        registry.get(BACKBONES, "resnet18:x")  # not a family
    with pytest.raises(ValueError, match="give it once"):
        registry.create(BACKBONES, f"timm:{SMALL}", {"arch": "resnet18"})
    assert registry.create(BACKBONES, "timm", {"arch": SMALL}).params.arch == SMALL
