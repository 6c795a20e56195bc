"""A third-party plugin, pip-installed from examples/, is found and used like a built-in."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medadapt.engine import ComponentKind
from medadapt.engine.contracts.host import PluginHost

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "medadapt-example-scores"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory, pip_install_example) -> Path:
    """The example package pip-installed into its own folder (a site-packages of its own)."""
    return pip_install_example(EXAMPLE, tmp_path_factory.mktemp("example"))


@pytest.fixture
def profile_using_example(tmp_path) -> Path:
    data = yaml.safe_load((REPO / "hospital_profiles" / "template.yaml").read_text())
    data["selection"] = {"score": "prevalence-match", "params": {"expected_prevalence": 0.05}}
    path = tmp_path / "hospital-c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_path(target: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if target is not None:
        env["PYTHONPATH"] = str(target)
    return env


@pytest.mark.slow
def test_installed_example_is_listed_with_its_distribution(installed_example, run_medadapt):
    result = run_medadapt("plugins", "--json", env=with_path(installed_example))
    assert result.returncode == 0, result.stderr
    plugins = {plugin["name"]: plugin for plugin in json.loads(result.stdout)["plugins"]}
    example = plugins["example-scores"]
    assert example["distribution"] == "medadapt-example-scores"
    assert example["version"] == "1.0.0"
    assert example["provides"]["selection_scores"] == ["prevalence-match"]
    assert "selection-scores" in plugins


@pytest.mark.slow
def test_installed_example_is_usable_from_a_profile(
    installed_example, profile_using_example, run_medadapt
):
    result = run_medadapt(
        "profile", "check", str(profile_using_example), env=with_path(installed_example)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "selection score prevalence-match" in result.stdout


@pytest.mark.slow
def test_example_parameters_are_checked_by_the_example(
    installed_example, profile_using_example, run_medadapt
):
    text = profile_using_example.read_text().replace("0.05", "1.5")
    profile_using_example.write_text(text)
    result = run_medadapt(
        "profile", "check", str(profile_using_example), env=with_path(installed_example)
    )
    assert result.returncode == 2
    assert "selection.params.expected_prevalence: Input should be less than 1" in result.stdout


def test_without_the_example_the_profile_names_the_missing_component(
    profile_using_example, run_medadapt
):
    result = run_medadapt("profile", "check", str(profile_using_example), env=with_path(None))
    assert result.returncode == 2
    assert str(profile_using_example) in result.stdout
    assert "selection.score: unknown selection score 'prevalence-match'" in result.stdout
    assert "Installed: 'dev', 'entropy', 'information-maximization', 'snd'" in result.stdout


@pytest.fixture
def example_on_path(installed_example, monkeypatch):
    """The installed example importable in this process, forgotten after the test."""
    monkeypatch.syspath_prepend(str(installed_example))
    yield
    sys.modules.pop("medadapt_example_scores", None)


@pytest.mark.slow
@pytest.mark.usefixtures("example_on_path")
def test_engine_finds_and_runs_the_installed_example():
    host = PluginHost()
    host.load_entry_points()
    registry = host.registry()
    assert registry.provider(ComponentKind.SELECTION_SCORES, "prevalence-match") == "example-scores"
    score = registry.create(
        ComponentKind.SELECTION_SCORES, "prevalence-match", {"expected_prevalence": 0.1}
    )
    calls_everyone_positive = np.array([[0.0, 1.0]] * 4)
    matches_prevalence = np.array([[0.9, 0.1]] * 4)
    assert score.score(calls_everyone_positive) == pytest.approx(-0.9)
    assert score.score(matches_prevalence) == pytest.approx(0.0)
