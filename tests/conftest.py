"""Shared fixtures: throwaway plugins, installed-distribution fakes and profile files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from medadapt.engine import (
    AdaptationMethod,
    Augmentation,
    Backbone,
    DataSource,
    LabelProperty,
    ProfilePath,
    ScanResult,
    SelectionScore,
    hookimpl,
)
from medadapt.engine.plugins import PluginHost, get_plugin_host

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "hospital_profiles" / "template.yaml"


# --- a throwaway plugin that provides one component of every kind --------------------------


class FolderSource(DataSource):
    """Reads nothing; stands in for a data source with a required parameter."""

    name = "toy-folder"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        root: ProfilePath
        recursive: bool = True

    def scan(self) -> ScanResult:
        return ScanResult(records=[])

    def load(self, record):
        raise NotImplementedError


class GentleNoise(Augmentation):
    """Adds noise of a bounded amplitude: changes HU by at most `amplitude`."""

    name = "toy-noise"
    preserves: ClassVar = frozenset({LabelProperty.LATERALITY, LabelProperty.SIZE})

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        amplitude: float = Field(default=5.0, ge=0)

    def max_hu_shift(self) -> float:
        return self.params.amplitude

    def transform(self):
        return lambda patch: patch


class Mirror(Augmentation):
    """Flips left and right: keeps everything but laterality."""

    name = "toy-mirror"
    preserves: ClassVar = frozenset(set(LabelProperty) - {LabelProperty.LATERALITY})

    def transform(self):
        return lambda patch: patch[..., ::-1]


class VolumeNet(Backbone):
    """A 3D-only backbone."""

    name = "toy-volume-net"
    spatial_dims: ClassVar = frozenset({3})

    def build(self, in_channels, weights):
        raise NotImplementedError


class SupervisedTuning(AdaptationMethod):
    """Needs labels at the target site."""

    name = "toy-finetune"
    needs_source_data = False
    needs_target_labels = True

    def setup(self, model, feature_dim, num_classes):
        self.model = model

    def update(self, source_batch, target_batch):
        return {}


class MaxProbability(SelectionScore):
    """Mean of the largest predicted probability."""

    name = "toy-confidence"
    higher_is_better = True

    def score(self, probabilities, features=None):
        return float(np.asarray(probabilities).max(axis=1).mean())


class ToyPlugin:
    """A plugin object, as a test would register it."""

    @hookimpl
    def medadapt_data_sources(self):
        return [FolderSource]

    @hookimpl
    def medadapt_augmentations(self):
        return [GentleNoise, Mirror]

    @hookimpl
    def medadapt_backbones(self):
        return [VolumeNet]

    @hookimpl
    def medadapt_adaptation_methods(self):
        return [SupervisedTuning]

    @hookimpl
    def medadapt_selection_scores(self):
        return [MaxProbability]


@pytest.fixture
def host() -> PluginHost:
    """A fresh host with the installed plugins loaded, independent of the CLI's."""
    fresh = PluginHost()
    fresh.load_entry_points()
    return fresh


@pytest.fixture
def register() -> Iterator[Callable[[object, str], None]]:
    """Register throwaway plugins in the CLI's host; they are removed after the test."""
    cli_host = get_plugin_host()
    names: list[str] = []

    def _register(plugin: object, name: str) -> None:
        cli_host.register(plugin, name)
        names.append(name)

    try:
        yield _register
    finally:
        for name in names:
            cli_host.unregister(name)


@pytest.fixture
def toy() -> ToyPlugin:
    """A plugin providing one toy component of every kind."""
    return ToyPlugin()


@pytest.fixture
def toy_plugin(register, toy) -> None:
    """The toy plugin, registered in the CLI's host for this test."""
    register(toy, "toy")


# --- installed distributions, for the real entry-point path --------------------------------


@pytest.fixture
def install_distribution(tmp_path, monkeypatch) -> Callable[..., Path]:
    """Write an installed distribution (dist-info with entry points, and its modules) into a
    folder on sys.path, so importlib.metadata finds it exactly as it finds a pip install."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def _install(name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        dist_info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (dist_info / "entry_points.txt").write_text(f"[medadapt]\n{lines}")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        return site

    yield _install
    for module in list(sys.modules):
        if module.startswith("thirdparty_"):
            del sys.modules[module]


# --- profiles ------------------------------------------------------------------------------


@pytest.fixture
def write_profile(tmp_path) -> Callable[..., Path]:
    """Write the template profile with some sections replaced; None removes a section."""

    def _write(name: str = "site.yaml", **sections: object) -> Path:
        data = yaml.safe_load(TEMPLATE.read_text())
        for key, value in sections.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return _write


@pytest.fixture
def run_medadapt() -> Callable[..., subprocess.CompletedProcess]:
    """Run the installed command line in a new process, as a user would."""

    def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "medadapt.engine", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    return _run
