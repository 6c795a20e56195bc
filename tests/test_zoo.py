"""benchmarks/zoo.py: ImageNet EfficientNet-Lite0 from a PyPI wheel, mapped onto timm, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch

from medadapt.engine import ComponentKind
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.models.model import build_classifier
from medadapt.engine.models.weights import load_weights_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import zoo

sys.path.pop(0)


def test_a_tensor_that_does_not_fit_is_refused_by_name():
    source = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_bn0.weight": torch.zeros(32)}
    target = {"conv_stem.weight": torch.zeros(32, 3, 3, 3), "bn1.weight": torch.zeros(16)}
    with pytest.raises(zoo.ZooError, match=r"_bn0\.weight \(32,\) does not map onto .*bn1"):
        zoo.map_state_dict(source, target)
    swapped = {"bn1.weight": torch.zeros(32), "conv_stem.weight": torch.zeros(32, 3, 3, 3)}
    with pytest.raises(zoo.ZooError, match="does not map"):
        zoo.map_state_dict(source, swapped)  # same shapes nowhere: roles differ
    with pytest.raises(zoo.ZooError, match="1 tensors in the package, 2"):
        zoo.map_state_dict(dict(list(source.items())[:1]), target)


def test_the_wheels_weights_give_the_packages_own_logits_and_load_as_a_ct_backbone(tmp_path):
    weights = zoo.efficientnet_lite0(tmp_path)
    record = json.loads((tmp_path / f"{zoo.ARCH}.json").read_text())
    assert record["tensors"] == 296
    assert record["max_logit_difference"] <= zoo.LOGIT_TOLERANCE
    # Symmetric padding with the same tensors is another network: the check can fail.
    assert record["max_logit_difference_symmetric_padding"] > 0.1

    imagenet = timm.create_model(zoo.ARCH, pretrained=False).eval()
    imagenet.load_state_dict(load_weights_file(weights))
    backbone = get_plugin_host().registry().create(ComponentKind.BACKBONES, zoo.BACKBONE, {})
    model = build_classifier(backbone, "2d", 2, load_weights_file(weights)).eval()
    grey = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = imagenet.forward_head(imagenet.forward_features(grey.repeat(1, 3, 1, 1)), True)
        torch.testing.assert_close(model.features(grey), expected, atol=1e-4, rtol=1e-4)
    assert zoo.efficientnet_lite0(tmp_path) == weights  # written once
