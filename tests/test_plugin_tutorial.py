"""docs/plugins.md's tutorial: its method is the example package's file, and it works."""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from medadapt.engine import ComponentKind
from medadapt.engine.adaptation import run_method
from medadapt.engine.contracts.hookspecs import RunInfo
from medadapt.engine.contracts.host import PluginHost
from medadapt.engine.models.model import Classifier
from medadapt.engine.profile import Training
from medadapt.engine.training.distributed import World

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "examples" / "medadapt-pseudo-label"
MODULE = PACKAGE / "medadapt_pseudo_label.py"
TUTORIAL = REPO / "docs" / "plugins.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TUTORIAL.read_text(), flags=re.DOTALL)


def test_the_tutorial_shows_the_example_files_as_they_are():
    assert MODULE.read_text() in code_blocks("python")
    assert (PACKAGE / "pyproject.toml").read_text() in code_blocks("toml")


def test_the_method_is_one_file_of_under_50_lines():
    assert len(MODULE.read_text().splitlines()) < 50


@pytest.fixture(scope="module")
def installed(tmp_path_factory, pip_install_example) -> Path:
    return pip_install_example(PACKAGE, tmp_path_factory.mktemp("pseudo-label"))


def on_path(target: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(target)}


@pytest.mark.slow
def test_the_installed_method_is_listed(installed, run_medadapt):
    listed = run_medadapt("plugins", "--json", env=on_path(installed))
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert plugins["pseudo-label"]["distribution"] == "medadapt-pseudo-label"
    assert plugins["pseudo-label"]["provides"]["adaptation_methods"] == ["pseudo-label"]


@pytest.mark.slow
def test_a_profile_uses_it_and_its_parameters_are_checked(installed, run_medadapt, tmp_path):
    document = yaml.safe_load((REPO / "hospital_profiles" / "hospital_b_chest.yaml").read_text())
    document["data"]["params"]["root"] = str(tmp_path)
    document["adaptation"] = {
        "method": "pseudo-label",
        "target_labels": "none",
        "params": {"threshold": 0.95},
    }
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump(document))
    checked = run_medadapt("profile", "check", str(profile), env=on_path(installed))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "adaptation: pseudo-label" in checked.stdout
    profile.write_text(profile.read_text().replace("0.95", "1.5"))
    refused = run_medadapt("profile", "check", str(profile), env=on_path(installed))
    assert refused.returncode == 2
    assert "adaptation.params.threshold" in refused.stdout


def _site(n: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    patches = torch.randn(n, 1, 12, 12, generator=generator) * 0.3
    for i, label in enumerate(labels.tolist()):
        half = 3 if label else 2
        patches[i, 0, 6 - half : 6 + half, 6 - half : 6 + half] += 1.0
    return TensorDataset(patches * scale + shift, labels)


@pytest.mark.slow
def test_the_engine_trains_with_it(installed, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    try:
        host = PluginHost()
        host.load_entry_points()
        method = host.registry().create(ComponentKind.ADAPTATION_METHODS, "pseudo-label")
        torch.manual_seed(0)
        features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        model = Classifier(features, 8, 2)
        before = copy.deepcopy(model.state_dict())
        target = _site(96, 3, scale=1.5, shift=0.5)
        unlabelled = TensorDataset(target.tensors[0], torch.full((96,), -1))
        training = Training.model_validate(
            {"epochs": 2, "batch_size": 32, "early_stopping_patience": None, "device": "cpu"}
        )
        fit = run_method(
            model,
            method,
            unlabelled,
            unlabelled,
            training,
            RunInfo("adapt", "target", tmp_path, 0),
            World(0, 1, torch.device("cpu")),
            host,
            positive_index=1,
            source_train=_site(128, 1),
        )
        assert len(fit.history) == 2
        assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in fit.history)
        changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
        assert changed, "adaptation changed no weight"
    finally:
        sys.modules.pop("medadapt_pseudo_label", None)
